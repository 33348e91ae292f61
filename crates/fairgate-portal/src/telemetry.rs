//! Live telemetry pages, from the gateway's in-process rolling windows
//! ([`fairgate_gateway::telemetry`]): no Prometheus or Grafana needed on a single box.
//!
//! - Operators: `/portal/operator/telemetry`, per model requests/s and errors, TTFT p50/p95,
//!   tokens/s in and out, queue depth, prefix-cache hit rate over the last hour, and the top
//!   users and tenants by tokens and by spend. `/portal/api/telemetry` is the same as JSON.
//! - Everyone signed in: their own minutes of the last hour (requests, tokens, TTFT) on the
//!   usage page; `/portal/api/telemetry/me` as JSON.
//!
//! Charts are SVG drawn here; the page's script re-fetches the `live` fragment every 5 s and
//! swaps it in (elements with `data-live-src`), so there is one drawing code, not two.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use fairgate_gateway::telemetry::{ModelPoint, ModelSeries, Overview, PersonPoint, Top};
use fairgate_types::now_millis;
use serde::Deserialize;

use crate::html::{esc, fmt_money, line_chart, page, short_num, table, Line};
use crate::session::{Operator, SignedIn};
use crate::PortalState;

/// How many users and tenants the top lists show.
const TOP: usize = 10;

/// `?minutes=` (5 to 60; 60 when absent or not a number).
#[derive(Deserialize, Default)]
pub(crate) struct Window {
    minutes: Option<String>,
}

impl Window {
    fn minutes(&self) -> i64 {
        self.minutes
            .as_deref()
            .and_then(|m| m.parse::<i64>().ok())
            .map_or(60, |m| m.clamp(5, 60))
    }

    /// About 120 points per chart, in whole 10-second buckets.
    fn step_ms(&self) -> i64 {
        let ms = self.minutes() * 60_000 / 120;
        (ms / 10_000).max(1) * 10_000
    }
}

fn overview(st: &PortalState, w: &Window) -> Overview {
    let models: Vec<&str> = st.upstreams.pools.iter().map(|p| p.name.as_str()).collect();
    st.telemetry.overview(
        now_millis(),
        w.minutes() * 60_000,
        w.step_ms(),
        TOP,
        &models,
    )
}

/// `GET /portal/operator/telemetry`.
pub(crate) async fn operator_page(
    State(st): State<Arc<PortalState>>,
    Query(w): Query<Window>,
    s: Operator,
) -> Html<String> {
    let m = w.minutes();
    let mut body = String::from(
        "<p class=\"muted\">What this gateway served, from its own memory: no Prometheus \
         needed. Updates every 5 s.",
    );
    if st.cluster.is_some() {
        body.push_str(
            " With several replicas each shows its own traffic; the fleet's is in Grafana \
             (<code>deploy/grafana/fairgate.json</code>).",
        );
    }
    body.push_str("</p><p>Window: ");
    let links: Vec<String> = [15, 30, 60]
        .iter()
        .map(|&n| {
            if n == m {
                format!("<strong aria-current=\"page\">{n} min</strong>")
            } else {
                format!("<a href=\"/portal/operator/telemetry?minutes={n}\">{n} min</a>")
            }
        })
        .collect();
    body.push_str(&links.join(" · "));
    body.push_str(&format!(
        "</p><div id=\"telemetry\" data-live-src=\"/portal/operator/telemetry/live?minutes={m}\">"
    ));
    body.push_str(&operator_fragment(&overview(&st, &w), m));
    body.push_str("</div>");
    Html(page("Operator: telemetry", Some(&s.viewer()), &body))
}

/// `GET /portal/operator/telemetry/live`: the page's charts and tables alone.
pub(crate) async fn operator_live(
    State(st): State<Arc<PortalState>>,
    Query(w): Query<Window>,
    _: Operator,
) -> Html<String> {
    Html(operator_fragment(&overview(&st, &w), w.minutes()))
}

/// `GET /portal/api/telemetry`: the operator's view as JSON.
pub(crate) async fn operator_json(
    State(st): State<Arc<PortalState>>,
    Query(w): Query<Window>,
    _: Operator,
) -> Response {
    Json(overview(&st, &w)).into_response()
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), short_num)
}

fn rate(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn operator_fragment(o: &Overview, minutes: i64) -> String {
    let span = format!("{minutes} min ago");
    let mut out = String::new();
    for m in &o.models {
        out.push_str(&model_section(m, &span, o.step_ms));
    }
    out.push_str("<h2>Top users and tenants</h2><div class=\"grid\">");
    for (title, rows) in [
        ("Users by tokens", &o.top_users_by_tokens),
        ("Users by spend", &o.top_users_by_spend),
        ("Tenants by tokens", &o.top_tenants_by_tokens),
        ("Tenants by spend", &o.top_tenants_by_spend),
    ] {
        out.push_str(&format!(
            "<section class=\"top\" aria-label=\"{t}\"><h3>{t}</h3>",
            t = esc(title)
        ));
        out.push_str(&top_table(rows));
        out.push_str("</section>");
    }
    out.push_str("</div>");
    out
}

/// A series of a model's chart: its legend and how to read it from a point.
type Series = (&'static str, fn(&ModelPoint) -> Option<f64>);

/// The charts of each model's section: title, unit, lines.
const MODEL_CHARTS: &[(&str, &str, &[Series])] = &[
    (
        "Requests per second",
        "/s",
        &[
            ("requests", |p| Some(p.requests_per_s)),
            ("errors", |p| Some(p.errors_per_s)),
        ],
    ),
    (
        "Time to first token",
        "ms",
        &[("p50", |p| p.ttft_p50_ms), ("p95", |p| p.ttft_p95_ms)],
    ),
    (
        "Tokens per second",
        "/s",
        &[
            ("in", |p| Some(p.tokens_in_per_s)),
            ("out", |p| Some(p.tokens_out_per_s)),
        ],
    ),
    (
        "Queue depth",
        "",
        &[
            ("mean", |p| p.queue_depth),
            ("max", |p| p.queue_depth.map(|_| p.queue_max as f64)),
        ],
    ),
    (
        "Prefix-cache hit rate",
        "%",
        &[("hits", |p| p.cache_hit_rate.map(|r| r * 100.0))],
    ),
];

fn model_section(m: &ModelSeries, span: &str, step_ms: i64) -> String {
    let mut out = format!(
        "<section class=\"telemetry\" data-model=\"{name}\"><h2>{name}</h2>\
         <p class=\"summary\">{} requests · {} errors · {} tokens in · {} tokens out · spend {} · \
         TTFT p50 {} ms, p95 {} ms · cache hits {} <span class=\"muted\">({} s steps)</span></p>\
         <div class=\"charts\">",
        m.requests,
        m.errors,
        m.tokens_in,
        m.tokens_out,
        fmt_money(m.cost_micros),
        opt(m.ttft_p50_ms),
        opt(m.ttft_p95_ms),
        rate(m.cache_hit_rate),
        step_ms / 1000,
        name = esc(&m.model),
    );
    for (title, unit, lines) in MODEL_CHARTS {
        let lines: Vec<Line<'_>> = lines
            .iter()
            .map(|(name, f)| Line {
                name,
                values: m.points.iter().map(f).collect(),
            })
            .collect();
        out.push_str(&line_chart(title, unit, span, &lines));
    }
    out.push_str("</div></section>");
    out
}

fn top_table(rows: &[Top]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            vec![
                esc(&t.name),
                t.requests.to_string(),
                t.tokens.to_string(),
                fmt_money(t.cost_micros),
            ]
        })
        .collect();
    table(&["Name", "Requests", "Tokens", "Spend"], &cells)
}

/// The signed-in person's minutes of the last hour.
fn my_points(st: &PortalState, s: &SignedIn) -> Vec<PersonPoint> {
    st.telemetry.person(now_millis(), &s.user().email)
}

/// The person's live section on the usage page (the fragment and its refreshing wrapper).
pub(crate) fn my_section(st: &PortalState, s: &SignedIn) -> String {
    let mut out = String::from(
        "<h2>Your last hour, live</h2><p class=\"muted\">Your requests through this gateway, \
         per minute: time to first token and tokens. Updates every 5 s.</p>\
         <div id=\"my-telemetry\" data-live-src=\"/portal/usage/live\">",
    );
    out.push_str(&my_fragment(&my_points(st, s)));
    out.push_str("</div>");
    out
}

/// `GET /portal/usage/live`.
pub(crate) async fn my_live(State(st): State<Arc<PortalState>>, s: SignedIn) -> Html<String> {
    Html(my_fragment(&my_points(&st, &s)))
}

/// `GET /portal/api/telemetry/me`.
pub(crate) async fn my_json(State(st): State<Arc<PortalState>>, s: SignedIn) -> Response {
    Json(serde_json::json!({ "minutes": my_points(&st, &s) })).into_response()
}

fn my_fragment(points: &[PersonPoint]) -> String {
    let requests: u64 = points.iter().map(|p| p.requests).sum();
    let tokens: u64 = points.iter().map(|p| p.tokens_in + p.tokens_out).sum();
    let col = |f: &dyn Fn(&PersonPoint) -> Option<f64>| points.iter().map(f).collect::<Vec<_>>();
    let mut out = format!(
        "<p class=\"summary\">{requests} requests · {tokens} tokens in the last hour</p><div class=\"charts\">"
    );
    out.push_str(&line_chart(
        "Your time to first token",
        "ms",
        "60 min ago",
        &[
            Line {
                name: "p50",
                values: col(&|p| p.ttft_p50_ms),
            },
            Line {
                name: "p95",
                values: col(&|p| p.ttft_p95_ms),
            },
        ],
    ));
    out.push_str(&line_chart(
        "Your tokens per minute",
        "",
        "60 min ago",
        &[
            Line {
                name: "in",
                values: col(&|p| Some(p.tokens_in as f64)),
            },
            Line {
                name: "out",
                values: col(&|p| Some(p.tokens_out as f64)),
            },
        ],
    ));
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_bounded_and_stepped_in_buckets() {
        let w = |m: &str| Window {
            minutes: Some(m.to_owned()),
        };
        assert_eq!(Window::default().minutes(), 60);
        assert_eq!(w("15").minutes(), 15);
        assert_eq!(w("1").minutes(), 5);
        assert_eq!(w("9999").minutes(), 60);
        assert_eq!(w("x").minutes(), 60);
        assert_eq!(Window::default().step_ms(), 30_000);
        assert_eq!(w("15").step_ms(), 10_000);
    }

    #[test]
    fn the_fragments_escape_names() {
        let t = fairgate_gateway::telemetry::Telemetry::default();
        let now = now_millis();
        t.record(&fairgate_gateway::telemetry::Finished {
            now_ms: now,
            model: "<m>",
            tenant: "<t>",
            user: Some("<u>"),
            status: 200,
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 0,
            cost_micros: 5,
            ttft_ms: Some(12),
        });
        let h = operator_fragment(&t.overview(now, 3_600_000, 30_000, TOP, &[]), 60);
        assert!(!h.contains("<m>") && !h.contains("<t>") && !h.contains("<u>"));
        assert!(h.contains("&lt;u&gt;"));
        let me = my_fragment(&t.person(now, "<u>"));
        assert!(me.contains("1 requests · 7 tokens"), "{me}");
    }
}
