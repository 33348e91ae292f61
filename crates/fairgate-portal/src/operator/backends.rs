//! `/portal/operator/backends`: every model's backends (replicas) with health, load and
//! routing counters, refreshed live from `/portal/api/backends`; drain, resume, remove and add
//! backends.
//!
//! Changes go through the admin API's own functions ([`crate::admin::backends`]): the same
//! validation, the same `backend.add|drain|resume|remove` audit entries (with the operator as
//! the actor), and a new backend's health watcher started the same way. Like the admin API,
//! a backend added here lasts until restart unless it is also put in the config file.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use super::{alert, shown, Fail, Rejected, Submitted};
use crate::html::{esc, page, stacked_table};
use crate::reports::{model_status, urlencode};
use crate::session::{CsrfForm, Operator, Signed};
use crate::{redirect, PortalState, Refusal};
use fairgate_control::backends::{
    add_backend, change_backend, default_max_in_flight, Change, NewBackend,
};
use fairgate_control::ControlError;
use fairgate_gateway::upstream::{BackendStatus, ModelPool, Origin};

const PAGE: &str = "/portal/operator/backends";

/// Column headings of a model's backend table; the page's script fills the same columns.
const HEAD: [&str; 13] = [
    "Backend",
    "State",
    "In flight / max",
    "Waiting",
    "Running",
    "KV cache",
    "Metrics age",
    "Failures in a row",
    "Ejections",
    "Last error",
    "Requests / failures / retries",
    "Prefix hits",
    "Actions",
];

/// What the page shows and its script polls.
#[derive(Serialize)]
struct View {
    strategy: &'static str,
    /// KV-cache use at which a backend counts as saturated (its bar turns red).
    saturation_kv_usage: f64,
    /// Scraped numbers older than this are not routed by (marked stale).
    metrics_stale_ms: u64,
    models: Vec<ModelView>,
}

#[derive(Serialize)]
struct ModelView {
    model: String,
    /// `ok`, `busy` or `down`, as users see it on `/portal/models`.
    status: &'static str,
    adapters: Vec<String>,
    context_length: Option<u64>,
    /// Backends taking new requests (healthy, not draining), out of `total`.
    healthy: usize,
    total: usize,
    in_flight: usize,
    capacity: usize,
    queued: usize,
    backends: Vec<BackendStatus>,
}

async fn view(st: &PortalState) -> View {
    let context = st.context_lengths().await;
    let live = st.live.load();
    View {
        strategy: live.routing.strategy.as_str(),
        saturation_kv_usage: live.routing.saturation_kv_usage,
        metrics_stale_ms: live.routing.metrics_stale_ms,
        models: st
            .upstreams
            .pools
            .iter()
            .map(|p| model_view(p, context.get(&p.name).copied()))
            .collect(),
    }
}

fn model_view(p: &ModelPool, context_length: Option<u64>) -> ModelView {
    let backends: Vec<BackendStatus> = p.backends().iter().map(|b| b.status()).collect();
    ModelView {
        model: p.name.clone(),
        status: model_status(p).0,
        adapters: p.adapters.clone(),
        context_length,
        healthy: backends
            .iter()
            .filter(|b| b.state == "healthy" && !b.draining)
            .count(),
        total: backends.len(),
        in_flight: p.fair.in_flight(),
        capacity: p.fair.capacity(),
        queued: p.queued(),
        backends,
    }
}

// ---- rendering (the script at the end renders the same cells from the JSON) --------------

fn badge(text: &str, class: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", esc(text))
}

fn status_class(status: &str) -> &'static str {
    match status {
        "ok" => "ok",
        "busy" => "warn",
        _ => "bad",
    }
}

fn summary(m: &ModelView) -> String {
    format!(
        "{} {} of {} healthy · {} / {} in flight · {} queued · context {}",
        badge(m.status, status_class(m.status)),
        m.healthy,
        m.total,
        m.in_flight,
        m.capacity,
        m.queued,
        m.context_length
            .map_or_else(|| "—".to_owned(), |n| format!("{n} tokens")),
    )
}

fn state_cell(b: &BackendStatus) -> String {
    let mut out = match b.state {
        "healthy" => badge("healthy", "ok"),
        "half_open" => badge("half-open", "warn"),
        _ => badge("ejected", "bad"),
    };
    if b.removing {
        out.push(' ');
        out.push_str(&badge("removing", "warn"));
    } else if b.draining {
        out.push(' ');
        out.push_str(&badge("draining", "warn"));
    }
    out
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn kv_cell(v: Option<f64>, hot: f64) -> String {
    let Some(v) = v else {
        return "—".to_owned();
    };
    let pct = (v * 100.0).round().clamp(0.0, 100.0) as u32;
    // An SVG bar (a width attribute, not a style: the CSP allows no inline style).
    format!(
        "<span class=\"nowrap\"><svg class=\"bar\" aria-hidden=\"true\" viewBox=\"0 0 100 10\" preserveAspectRatio=\"none\"><rect{} width=\"{pct}\" height=\"10\"></rect></svg>{pct}%</span>",
        if v >= hot { " class=\"hot\"" } else { "" }
    )
}

fn age_cell(ms: Option<u64>, stale: u64) -> String {
    let Some(ms) = ms else {
        return "—".to_owned();
    };
    let age = if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{} s", ms / 1000)
    };
    if ms > stale {
        format!("{age} (stale)")
    } else {
        age
    }
}

/// `active`, `draining` or `removing`: which buttons a backend gets.
fn mode(b: &BackendStatus) -> &'static str {
    if b.removing {
        "removing"
    } else if b.draining {
        "draining"
    } else {
        "active"
    }
}

fn button(model: &str, url: &str, csrf: &str, action: &str, label: &str, confirm: bool) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"/portal/operator/models/{}/backends/{action}\"{}>\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"url\" value=\"{}\">\
         <button type=\"submit\" aria-label=\"{label} {}\">{label}</button></form>",
        esc(&urlencode(model)),
        if confirm {
            // app.js asks before submitting.
            " data-confirm=\"Remove this backend? It takes no new requests from now on and leaves once its requests finish.\""
        } else {
            ""
        },
        esc(csrf),
        esc(url),
        esc(url),
    )
}

fn actions_cell(model: &str, b: &BackendStatus, csrf: &str) -> String {
    let (u, c) = (b.url.as_str(), csrf);
    let buttons = match mode(b) {
        "removing" => button(model, u, c, "resume", "Resume", false),
        "draining" => format!(
            "{} {}",
            button(model, u, c, "resume", "Resume", false),
            button(model, u, c, "remove", "Remove", true)
        ),
        _ => format!(
            "{} {}",
            button(model, u, c, "drain", "Drain", false),
            button(model, u, c, "remove", "Remove", true)
        ),
    };
    format!("<span class=\"nowrap\">{buttons}</span>")
}

fn row(v: &View, model: &str, b: &BackendStatus, csrf: &str) -> (String, Vec<String>) {
    let attrs = format!("data-url=\"{}\" data-mode=\"{}\"", esc(&b.url), mode(b));
    let cells = vec![
        format!(
            "<strong>{}</strong> <code>{}</code>{}",
            esc(&b.name),
            esc(&b.url),
            if b.origin == Origin::Api {
                " <span class=\"muted\">(added live)</span>"
            } else {
                ""
            }
        ),
        state_cell(b),
        format!("{} / {}", b.in_flight, b.max_in_flight),
        num(b.waiting),
        num(b.running),
        kv_cell(b.kv_cache_usage, v.saturation_kv_usage),
        age_cell(b.metrics_age_ms, v.metrics_stale_ms),
        b.consecutive_failures.to_string(),
        b.ejections.to_string(),
        b.last_error.as_deref().map_or_else(|| "—".to_owned(), esc),
        format!("{} / {} / {}", b.attempts, b.failures, b.retries),
        b.prefix_hits.to_string(),
        actions_cell(model, b, csrf),
    ];
    (attrs, cells)
}

async fn backends_html(st: &PortalState, s: &Signed, rej: Option<&Rejected>) -> String {
    let v = view(st).await;
    let csrf = esc(s.csrf());
    let mut body = alert(rej);
    body.push_str(&format!(
        "<p class=\"muted\">Every model's backends (replicas): health, load from their last \
         <code>/metrics</code> scrape, and how the router used them. Routing strategy: \
         <code>{}</code>. <strong>Drain</strong>: no new requests, those running finish; \
         <strong>Resume</strong> undoes it. <strong>Remove</strong>: drains, then the backend \
         leaves once idle. A backend added here lasts until restart; put it in the config file \
         to keep it. Every change is in the audit log.</p>\
         <p class=\"muted\" id=\"live-status\" role=\"status\">Updates every 2 s.</p>",
        esc(v.strategy)
    ));
    for (i, m) in v.models.iter().enumerate() {
        let rows: Vec<(String, Vec<String>)> = m
            .backends
            .iter()
            .map(|b| row(&v, &m.model, b, s.csrf()))
            .collect();
        body.push_str(&format!(
            "<section data-model=\"{}\" aria-labelledby=\"model-{i}\">\
             <h2 id=\"model-{i}\"><code>{}</code> <span class=\"muted\" data-f=\"summary\">{}</span></h2>",
            esc(&m.model),
            esc(&m.model),
            summary(m),
        ));
        if !m.adapters.is_empty() {
            body.push_str(&format!(
                "<p class=\"muted\">Adapters: {}</p>",
                m.adapters
                    .iter()
                    .map(|a| format!("<code>{}</code>", esc(a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        body.push_str(&stacked_table(
            "wide",
            &HEAD,
            &rows,
            "No backends: this model is down until one is added.",
        ));
        // Only the refused model's form shows what was typed.
        let typed = rej.filter(|r| r.form == "add" && r.subject == m.model);
        body.push_str(&format!(
            "<h3 id=\"add-{i}-title\">Add a backend to <code>{}</code></h3>\
             <form id=\"add-{i}\" data-model=\"{}\" aria-labelledby=\"add-{i}-title\" method=\"post\" action=\"/portal/operator/models/{}/backends\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><div class=\"grid\">\
             <label>Server root URL (fairgate adds <code>/v1/...</code>) <input name=\"url\" required inputmode=\"url\" autocomplete=\"off\" placeholder=\"http://10.0.0.7:8000\" value=\"{}\"></label>\
             <label>Most requests in flight (max_in_flight) <input name=\"max_in_flight\" type=\"number\" min=\"1\" required value=\"{}\"></label>\
             <label>Name (optional; default host:port) <input name=\"name\" autocomplete=\"off\" value=\"{}\"></label>\
             </div><button class=\"primary\" type=\"submit\">Add backend</button></form></section>",
            esc(&m.model),
            esc(&m.model),
            esc(&urlencode(&m.model)),
            shown(typed, "add", "url", ""),
            shown(typed, "add", "max_in_flight", default_max_in_flight()),
            shown(typed, "add", "name", ""),
        ));
    }
    body.push_str(&slurm_section(st).await);
    page("Operator: models and backends", Some(&s.viewer()), &body)
}

/// The Slurm provisioner's models and jobs (job ids, nodes, phase, time limit), when models
/// are served from Slurm. As of the page's load.
async fn slurm_section(st: &PortalState) -> String {
    let Some(v) = fairgate_slurm::status(st).await else {
        return String::new();
    };
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "<section id=\"slurm\"><h2>Slurm jobs</h2><p class=\"muted\">Through {}. As of this page's load.</p>",
        esc(v["api"].as_str().unwrap_or("Slurm"))
    );
    for m in models {
        let text = |k: &str| esc(&m[k].to_string());
        out.push_str(&format!(
            "<h3><code>{}</code> <span class=\"muted\">{} wanted ({}–{}), {} queued, {} in flight</span></h3>",
            esc(m["model"].as_str().unwrap_or("")),
            text("desired"),
            text("min_replicas"),
            text("max_replicas"),
            text("queued"),
            text("in_flight"),
        ));
        if let Some(e) = m["last_error"].as_str() {
            out.push_str(&format!(
                "<p class=\"error\" role=\"status\">{} ({} failures in a row)</p>",
                esc(e),
                text("failures_in_row")
            ));
        }
        let rows: Vec<(String, Vec<String>)> = m["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| {
                let s = |k: &str| esc(j[k].as_str().unwrap_or("—"));
                let ends = j["end_time"]
                    .as_i64()
                    .filter(|t| *t > 0)
                    .map(|t| crate::fmt_time(t * 1000))
                    .unwrap_or_else(|| "—".into());
                (
                    String::new(),
                    vec![
                        s("id"),
                        s("phase"),
                        s("slurm_state"),
                        s("nodes"),
                        s("backend"),
                        ends,
                        s("retired"),
                    ],
                )
            })
            .collect();
        out.push_str(&stacked_table(
            "",
            &[
                "Job",
                "Phase",
                "Slurm state",
                "Nodes",
                "Backend",
                "Time limit",
                "Retired for",
            ],
            &rows,
            "No job: the first queued request starts one.",
        ));
    }
    out.push_str("</section>");
    out
}

// The live refresh (polling `/portal/api/backends` every 2 s) is in `/portal/static/app.js`.

// ---- routes -------------------------------------------------------------------------

/// `GET /portal/operator/backends`.
pub(crate) async fn backends_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
) -> Result<Html<String>, Refusal> {
    Ok(Html(backends_html(&st, &s, None).await))
}

/// `GET /portal/api/backends`: what the page shows, as JSON (backend addresses included, so
/// operators only).
pub(crate) async fn backends_json(
    State(st): State<Arc<PortalState>>,
    _: Operator,
) -> Result<Response, Refusal> {
    let mut resp = Json(view(&st).await).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The admin API's errors, worded for the form: a conflict is invalid input here.
fn fail(e: ControlError) -> Fail {
    Fail::from(e)
}

fn known_model(st: &PortalState, model: &str) -> Result<(), Refusal> {
    match st.upstreams.get(model) {
        Some(_) => Ok(()),
        None => Err(Refusal::NotFound(format!("There is no model `{model}`."))),
    }
}

/// On success back to the page (post/redirect/get); a refused form is the page again, with
/// the message and what was typed, as a 400.
async fn finish(
    st: &PortalState,
    s: &Signed,
    (form, model): (&'static str, &str),
    f: Submitted,
    outcome: Result<(), Fail>,
) -> Result<Response, Refusal> {
    match outcome {
        Ok(()) => Ok(redirect(PAGE)),
        Err(Fail::Refused(r)) => Err(r),
        Err(Fail::Invalid(message)) => {
            let rej = Rejected {
                form,
                subject: model.to_owned(),
                message,
                values: f,
            };
            let html = backends_html(st, s, Some(&rej)).await;
            Ok((StatusCode::BAD_REQUEST, Html(html)).into_response())
        }
    }
}

/// `POST /portal/operator/models/{model}/backends`: `url` and `max_in_flight`.
pub(crate) async fn add(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(model): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    known_model(&st, &model)?;
    let outcome = async {
        let url = f.get("url");
        if url.is_empty() {
            return Err(Fail::Invalid(
                "url: give the backend's server root, like http://10.0.0.7:8000".into(),
            ));
        }
        let max_in_flight = match f.get("max_in_flight") {
            "" => default_max_in_flight(),
            raw => raw.parse().map_err(|_| {
                Fail::Invalid(format!(
                    "max_in_flight: `{raw}` is not a whole number of at least 1"
                ))
            })?,
        };
        let req = NewBackend {
            name: Some(f.get("name").trim())
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            ..NewBackend::new(url, max_in_flight)
        };
        add_backend(&st.gateway, &s.user().email, &model, req)
            .await
            .map_err(fail)?;
        tracing::info!(model = %model, backend = %url, by = %s.user().email, "backend added in the portal");
        Ok(())
    }
    .await;
    finish(&st, &s, ("add", &model), f, outcome).await
}

/// Drain, resume or remove the backend the form names; the caller's extractors did the checks.
async fn change(
    st: &PortalState,
    s: &Operator,
    model: String,
    f: Submitted,
    change: Change,
) -> Result<Response, Refusal> {
    known_model(st, &model)?;
    let url = f.get("url");
    let outcome = if url.is_empty() {
        Err(Fail::Invalid(
            "no backend named: the form has no url".into(),
        ))
    } else {
        match change_backend(st, &s.user().email, &model, url, change).await {
            Ok(_) => {
                tracing::info!(model = %model, backend = %url, by = %s.user().email, action = change.action(), "backend changed in the portal");
                Ok(())
            }
            Err(e) => Err(fail(e)),
        }
    };
    finish(st, s, ("change", &model), f, outcome).await
}

/// `POST /portal/operator/models/{model}/backends/drain`: `url`.
pub(crate) async fn drain(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(model): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    change(&st, &s, model, f, Change::Drain).await
}

/// `POST /portal/operator/models/{model}/backends/resume`: `url`.
pub(crate) async fn resume(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(model): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    change(&st, &s, model, f, Change::Resume).await
}

/// `POST /portal/operator/models/{model}/backends/remove`: `url`.
pub(crate) async fn remove(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(model): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    change(&st, &s, model, f, Change::Remove).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_format_like_the_script() {
        assert_eq!(num(None), "—");
        assert_eq!(num(Some(3.0)), "3");
        assert_eq!(num(Some(2.5)), "2.5");
        assert_eq!(age_cell(Some(250), 5000), "250 ms");
        assert_eq!(age_cell(Some(12_345), 5000), "12 s (stale)");
        assert_eq!(age_cell(None, 5000), "—");
        assert!(kv_cell(Some(0.425), 0.9).ends_with("43%</span>"));
        assert!(kv_cell(Some(0.95), 0.9).contains("class=\"hot\""));
        assert_eq!(kv_cell(None, 0.9), "—");
    }

    #[test]
    fn buttons_escape_the_url_and_carry_the_token() {
        let b = button("m/x", "http://h:1/\"><b>", "tok", "drain", "Drain", false);
        assert!(b.contains("action=\"/portal/operator/models/m%2Fx/backends/drain\""));
        assert!(b.contains("value=\"http://h:1/&quot;&gt;&lt;b&gt;\""));
        assert!(b.contains("name=\"csrf\" value=\"tok\""));
        assert!(!b.contains("<b>"));
    }
}
