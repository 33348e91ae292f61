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
            out.push_str("<a href=\"/portal/operator\">Fair share</a><a href=\"/portal/operator/telemetry\">Telemetry</a><a href=\"/portal/operator/tenants\">Manage tenants</a><a href=\"/portal/operator/backends\">Backends</a><a href=\"/portal/audit\">Audit log</a>");
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

/// One line of a [`line_chart`]: its name (the legend) and a value per step; `None` is a gap.
pub struct Line<'a> {
    pub name: &'a str,
    pub values: Vec<Option<f64>>,
}

/// A line chart over time (inline SVG, drawn on the server so it needs no script), with the
/// latest values as text in its caption so it reads without colour or sight. `span_label`
/// names the left edge of the x axis (e.g. `60 min ago`); the right edge is now. Lines are
/// told apart by class (`s0`, `s1`, ..., coloured by the stylesheet) and the legend.
pub fn line_chart(title: &str, unit: &str, span_label: &str, lines: &[Line<'_>]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 48.0;
    const TOP: f64 = 8.0;
    const BOTTOM: f64 = 128.0;
    let n = lines.iter().map(|l| l.values.len()).max().unwrap_or(0);
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .fold(0.0f64, |a, &v| if v.is_finite() { a.max(v) } else { a });
    let top = nice_ceiling(max);
    let x = |i: usize| {
        if n <= 1 {
            W - 4.0
        } else {
            LEFT + (W - 4.0 - LEFT) * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| BOTTOM - (BOTTOM - TOP) * (v / top).clamp(0.0, 1.0);
    let latest: Vec<String> = lines
        .iter()
        .map(|l| {
            let v = l.values.iter().rev().flatten().next();
            format!(
                "{} {}",
                l.name,
                v.map_or("—".to_owned(), |v| format!("{} {unit}", short_num(*v)))
            )
        })
        .collect();
    let label = format!("{title}; latest: {}", latest.join(", "));
    let mut out = format!(
        "<figure class=\"chart\"><figcaption>{} <span class=\"muted\">{}</span></figcaption>\
         <svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {H}\" width=\"100%\" preserveAspectRatio=\"xMinYMin meet\">",
        esc(title),
        esc(&latest.join(" · ")),
        esc(&label)
    );
    // Axes: the top value and zero on the left, the span below.
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{}\" y2=\"{BOTTOM}\"></line>\
         <line class=\"grid\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{}\" y2=\"{TOP}\"></line>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\" font-size=\"11\" fill=\"currentColor\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">now</text>",
        W - 4.0,
        W - 4.0,
        LEFT - 4.0,
        TOP + 8.0,
        esc(&short_num(top)),
        LEFT - 4.0,
        BOTTOM,
        BOTTOM + 16.0,
        esc(span_label),
        W - 4.0,
        BOTTOM + 16.0,
    );
    for (k, l) in lines.iter().enumerate() {
        // Runs of known values, each one polyline (a lone point is drawn as a dot).
        let mut run: Vec<(f64, f64)> = Vec::new();
        let flush = |run: &mut Vec<(f64, f64)>, out: &mut String| {
            match run.len() {
                0 => {}
                1 => {
                    let _ = write!(
                        out,
                        "<circle class=\"s{k}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\"></circle>",
                        run[0].0, run[0].1
                    );
                }
                _ => {
                    let pts: Vec<String> =
                        run.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
                    let _ = write!(
                        out,
                        "<polyline class=\"s{k}\" points=\"{}\"></polyline>",
                        pts.join(" ")
                    );
                }
            }
            run.clear();
        };
        for (i, v) in l.values.iter().enumerate() {
            match v {
                Some(v) if v.is_finite() => run.push((x(i), y(*v))),
                _ => flush(&mut run, &mut out),
            }
        }
        flush(&mut run, &mut out);
    }
    out.push_str("</svg><p class=\"legend\">");
    for (k, l) in lines.iter().enumerate() {
        let _ = write!(out, "<span class=\"key s{k}\">{}</span>", esc(l.name));
    }
    out.push_str("</p></figure>");
    out
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (at least 1): a chart's top.
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// A number as a chart label: at most three significant digits, `k` and `M` for large ones.
pub fn short_num(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.2}"))
    }
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
    fn line_charts_draw_runs_and_gaps() {
        let c = line_chart(
            "TTFT <ms>",
            "ms",
            "60 min ago",
            &[
                Line {
                    name: "p50",
                    values: vec![Some(10.0), Some(20.0), None, Some(40.0)],
                },
                Line {
                    name: "p95",
                    values: vec![None, None, None, None],
                },
            ],
        );
        assert!(c.contains("TTFT &lt;ms&gt;"));
        // Two known values, a gap, then a lone point.
        assert_eq!(c.matches("<polyline class=\"s0\"").count(), 1);
        assert_eq!(c.matches("<circle class=\"s0\"").count(), 1);
        assert!(!c.contains("class=\"s1\" points"));
        // The top of the axis is a round number over the largest value; the caption says the
        // latest values.
        assert!(c.contains(">50</text>"), "{c}");
        assert!(c.contains("p50 40 ms"), "{c}");
        assert_eq!(short_num(0.0), "0");
        assert_eq!(short_num(12.5), "12.5");
        assert!(c.contains("p95 —"), "{c}");
        assert_eq!(nice_ceiling(0.3), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(short_num(12_345.0), "12k");
        assert_eq!(short_num(2_500_000.0), "2.5M");
        assert_eq!(short_num(0.25), "0.25");
    }

    #[test]
    fn forms_carry_the_csrf_token_and_escape() {
        let f = form("/portal/x", "tok\"en", "", "Go <now>", true);
        assert!(f.contains("name=\"csrf\" value=\"tok&quot;en\""));
        assert!(f.contains("Go &lt;now&gt;"));
    }
}
