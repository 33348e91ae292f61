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

/// The portal's one script and one stylesheet, served from `/portal/static/`: the CSP allows
/// neither inline script nor inline style.
pub const APP_JS: &str = include_str!("static/app.js");
pub const APP_CSS: &str = include_str!("static/app.css");

/// A short digest of both assets, put in their URLs (`?v=`): a new build's pages ask for the
/// new files, so the files themselves can be cached for long.
pub fn asset_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let d = Sha256::new()
            .chain_update(APP_JS)
            .chain_update(APP_CSS)
            .finalize();
        d[..6].iter().map(|b| format!("{b:02x}")).collect()
    })
}

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
         <title>{} · fairgate</title>\
         <link rel=\"stylesheet\" href=\"/portal/static/app.css?v={v}\">\
         <script src=\"/portal/static/app.js?v={v}\" defer></script>\
         </head><body><header><strong>fairgate</strong>",
        esc(title),
        v = asset_version()
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

/// Micros in the currency unit, with at least two decimals: `12.50`, `0.000001`.
pub fn fmt_money(micros: u64) -> String {
    let mut frac = format!("{:06}", micros % 1_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{}.{frac}", micros / 1_000_000)
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
