//! Server-rendered HTML for the portal: one layout, an escaping helper and a few building
//! blocks. No template engine: pages are small, and `esc` at every interpolation is the one
//! rule that keeps them safe.

use std::fmt::Write;

use fairgate_types::Role;

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{--fg:#1b1f24;--muted:#5b6470;--line:#d8dde3;--accent:#0b62c4;--bad:#b42318;--ok:#067647;--bg:#fff}
@media (prefers-color-scheme: dark){:root{--fg:#e6e9ee;--muted:#9aa4b0;--line:#343b45;--accent:#6aa8ff;--bad:#ff8a80;--ok:#7ddc9a;--bg:#14171b}}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.75rem 1.25rem;align-items:center;padding:.75rem 1rem;border-bottom:1px solid var(--line)}
header strong{margin-right:auto}nav{display:flex;flex-wrap:wrap;gap:.25rem 1rem}a{color:var(--accent)}
main{max-width:64rem;margin:0 auto;padding:1rem}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line)}
.scroll{overflow-x:auto}form.inline{display:inline}input,select,button{font:inherit;padding:.35rem .5rem}
button{cursor:pointer;border:1px solid var(--line);border-radius:.35rem;background:transparent;color:var(--fg)}
button.primary{background:var(--accent);border-color:var(--accent);color:#fff}
.secret{font-family:ui-monospace,monospace;word-break:break-all;padding:.75rem;border:2px dashed var(--accent);border-radius:.35rem}
.notice{padding:.75rem;border-left:4px solid var(--accent);background:color-mix(in srgb,var(--accent) 8%,transparent)}
.error{padding:.75rem;border-left:4px solid var(--bad);color:var(--bad)}.muted{color:var(--muted)}
pre{overflow-x:auto;padding:.75rem;border:1px solid var(--line);border-radius:.35rem}
label{display:block;margin:.5rem 0}.grid{display:grid;gap:.5rem;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr))}
.badge{display:inline-block;padding:0 .4rem;border:1px solid currentColor;border-radius:.75rem;font-size:.85em;white-space:nowrap}
.ok{color:var(--ok)}.warn{color:#9a6700}.bad{color:var(--bad)}
@media (prefers-color-scheme: dark){.warn{color:#e3b341}}
.bar{display:inline-block;vertical-align:middle;width:4rem;height:.6rem;margin-right:.35rem;border:1px solid var(--line);border-radius:.3rem;overflow:hidden}
.bar>span{display:block;height:100%;background:var(--accent)}.bar>span.hot{background:var(--bad)}
main:has(table.wide){max-width:96rem}.nowrap{white-space:nowrap}
@media (max-width:40rem){table.stack thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
table.stack tr{border-bottom:2px solid var(--line);padding:.35rem 0}
table.stack td{display:flex;gap:1rem;justify-content:space-between;border:0;padding:.2rem .25rem;text-align:right}
table.stack td::before{content:attr(data-label);font-weight:600;text-align:left;color:var(--muted)}
table.stack td[data-label=""]::before{content:none}}
"#;

/// Who is looking at a page, for the header.
pub struct Viewer<'a> {
    pub email: &'a str,
    pub role: Role,
    pub csrf: &'a str,
}

/// A whole page.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · fairgate</title><style>{STYLE}</style></head><body><header><strong>fairgate</strong>",
        esc(title)
    );
    if let Some(v) = viewer {
        out.push_str("<nav aria-label=\"Main\"><a href=\"/portal\">Keys</a><a href=\"/portal/usage\">Usage</a><a href=\"/portal/history\">History</a><a href=\"/portal/models\">Models</a><a href=\"/portal/playground\">Playground</a>");
        if v.role >= Role::TenantAdmin {
            out.push_str("<a href=\"/portal/tenant\">Tenant</a>");
        }
        if v.role == Role::Operator {
            out.push_str("<a href=\"/portal/operator\">Fair share</a><a href=\"/portal/operator/tenants\">Manage tenants</a><a href=\"/portal/operator/backends\">Backends</a><a href=\"/portal/audit\">Audit log</a>");
        }
        let _ = write!(
            out,
            "</nav><span class=\"muted\">{} ({})</span>{}",
            esc(v.email),
            v.role.as_str(),
            form("/portal/logout", v.csrf, "", "Sign out", false)
        );
    }
    let _ = write!(
        out,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// A POST form with the CSRF token; `fields` is trusted HTML.
pub fn form(action: &str, csrf: &str, fields: &str, button: &str, primary: bool) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{fields}<button type=\"submit\"{}>{}</button></form>",
        esc(action),
        esc(csrf),
        if primary { " class=\"primary\"" } else { "" },
        esc(button)
    )
}

/// A table from a header row and rows of already-escaped cells.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" class=\"muted\">Nothing yet.</td></tr>",
            head.len()
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Like [`table`], for wide tables: each cell carries its column's name (`data-label`), so on
/// a phone-sized screen every row is shown as a stack of "name value" lines instead of a table
/// scrolled sideways. `class` is added to the table's (e.g. `wide`, for more room on big
/// screens); `row_attrs` (trusted HTML, one per row, may be empty) go on each `<tr>`.
pub fn stacked_table(
    class: &str,
    head: &[&str],
    rows: &[(String, Vec<String>)],
    empty: &str,
) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table class=\"stack {}\"><thead><tr>",
        esc(class)
    );
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for (attrs, cells) in rows {
        let _ = write!(
            out,
            "<tr{}{attrs}>",
            if attrs.is_empty() { "" } else { " " }
        );
        for (i, c) in cells.iter().enumerate() {
            let label = head.get(i).copied().unwrap_or("");
            let _ = write!(out, "<td data-label=\"{}\">{c}</td>", esc(label));
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr class=\"empty\"><td colspan=\"{}\" data-label=\"\" class=\"muted\">{}</td></tr>",
            head.len(),
            esc(empty)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A horizontal bar chart (inline SVG) of labelled values, with the numbers as text so it
/// reads without colour or sight.
pub fn bar_chart(title: &str, bars: &[(String, u64)]) -> String {
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let row_h = 24;
    let h = row_h * bars.len().max(1) + 8;
    let mut out = format!(
        "<figure><figcaption>{}</figcaption><svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 600 {h}\" width=\"100%\" preserveAspectRatio=\"xMinYMin meet\">",
        esc(title),
        esc(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = i * row_h + 4;
        let w = (*v as f64 / max as f64 * 380.0).round() as u64;
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{}\" font-size=\"13\" fill=\"currentColor\">{}</text>\
             <rect x=\"120\" y=\"{y}\" width=\"{w}\" height=\"16\" fill=\"#0b62c4\"></rect>\
             <text x=\"{}\" y=\"{}\" font-size=\"13\" fill=\"currentColor\">{v}</text>",
            y + 13,
            esc(label),
            126 + w,
            y + 13
        );
    }
    if bars.is_empty() {
        out.push_str(
            "<text x=\"0\" y=\"18\" font-size=\"13\" fill=\"currentColor\">No usage yet.</text>",
        );
    }
    out.push_str("</svg></figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            esc(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn forms_carry_the_csrf_token_and_escape() {
        let f = form("/portal/x", "tok\"en", "", "Go <now>", true);
        assert!(f.contains("name=\"csrf\" value=\"tok&quot;en\""));
        assert!(f.contains("Go &lt;now&gt;"));
    }
}
