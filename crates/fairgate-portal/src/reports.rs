//! Read-only portal pages over models, a tenant and its usage: `/portal/models` (anyone
//! signed in; counts, never backend addresses), `/portal/tenant` and `/portal/export.csv` (tenant admins for their own tenant,
//! operators for any), `/portal/export-su.csv` (operators: the Slurm jobs' SU report). Each
//! handler's extractor checks the role on the server.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use chrono::{Datelike, NaiveDate};
use fairgate_control::guardrails::FIELDS;
use fairgate_types::{now_millis, GuardrailPolicy, KeyRecord, Role, Tenant};
use http::{header, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::html::{esc, form, page, stacked_table, table};
use super::{fmt_time, Refusal};
use crate::session::{Operator, Signed, SignedIn, TenantAdmin};
use crate::PortalState;
use fairgate_gateway::upstream::ModelPool;

/// Most ledger rows read for the tenant page's per-member totals (newest first).
const TENANT_ROWS: u32 = 10_000;

// ---- models -------------------------------------------------------------------------

/// What `/portal/models` says about one model's load: `ok`, `busy` (every slot taken or
/// requests waiting) or `down` (no backend can take a request).
pub(super) fn model_status(p: &ModelPool) -> (&'static str, &'static str) {
    if !p.has_usable(None) {
        ("down", "bad")
    } else if p.queued() > 0 || p.fair.in_flight() >= p.fair.capacity() {
        ("busy", "warn")
    } else {
        ("ok", "ok")
    }
}

/// `N of M healthy`: backends taking new requests (healthy and not draining) out of all.
pub(super) fn replicas_text(p: &ModelPool) -> String {
    let list = p.backends();
    let healthy = list
        .iter()
        .map(|b| b.status())
        .filter(|s| s.state == "healthy" && !s.draining)
        .count();
    format!("{healthy} of {} healthy", list.len())
}

fn badge(text: &str, class: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", esc(text))
}

/// The model names (models, adapters, aliases) the person's keys may use; `None`: all of them
/// (an operator; a key without a model list; or no active key yet, since a new key may use
/// any).
async fn usable_names(st: &PortalState, s: &Signed) -> Result<Option<Vec<String>>, Refusal> {
    if s.user().role == Role::Operator {
        return Ok(None);
    }
    let Some(tenant) = &s.user().tenant else {
        return Ok(None);
    };
    let now = now_millis();
    let keys: Vec<KeyRecord> = st
        .store
        .list_keys(Some(tenant))
        .await?
        .into_iter()
        .filter(|k| {
            k.user.as_deref() == Some(s.user().email.as_str()) && key_state(k, now) == "active"
        })
        .collect();
    if keys.is_empty() || keys.iter().any(|k| k.models.is_none()) {
        return Ok(None);
    }
    Ok(Some(
        keys.into_iter()
            .flat_map(|k| k.models.unwrap_or_default())
            .collect(),
    ))
}

/// `/portal/models`, for everyone signed in: the models, adapters and aliases their keys may
/// use, with status and load. Counts only: backend addresses are internal topology and stay on
/// the operator's page.
pub(super) async fn models_page(
    State(st): State<Arc<PortalState>>,
    s: SignedIn,
) -> Result<Html<String>, Refusal> {
    let allowed = usable_names(&st, &s).await?;
    let may = |name: &str| allowed.as_ref().is_none_or(|l| l.iter().any(|n| n == name));
    let context = st.context_lengths().await;

    let rows: Vec<(String, Vec<String>)> = st
        .upstreams
        .pools
        .iter()
        .filter(|p| may(&p.name))
        .map(|p| {
            let state = p.fair.state();
            let (status, class) = model_status(p);
            let cells = vec![
                format!("<code>{}</code>", esc(&p.name)),
                fairgate_gateway::context::shown(context.get(&p.name).copied()),
                badge(status, class),
                replicas_text(p),
                state.queued.to_string(),
                format!("{} / {}", state.in_flight, state.max_in_flight),
            ];
            (format!("data-model=\"{}\"", esc(&p.name)), cells)
        })
        .collect();
    let mut body = String::from(
        "<p class=\"muted\">Models you may use through the API, with their state now. \
         <strong>ok</strong>: there is room; <strong>busy</strong>: every slot is taken, so new \
         requests wait their fair turn; <strong>down</strong>: no replica can take a request.</p>",
    );
    if allowed.is_some() {
        body.push_str(
            "<p class=\"muted\">Only the names your API keys are limited to are listed.</p>",
        );
    }
    body.push_str(&stacked_table(
        "",
        &[
            "Model",
            "Context length",
            "Status",
            "Replicas",
            "Queued",
            "In flight / capacity",
        ],
        &rows,
        "No models you may use.",
    ));

    let adapters: Vec<(String, Vec<String>)> = st
        .upstreams
        .pools
        .iter()
        .flat_map(|p| p.adapters.iter().map(move |a| (p, a)))
        .filter(|(_, a)| may(a))
        .map(|(p, a)| {
            let list = p.backends();
            let loaded = list
                .iter()
                .filter(|b| b.status().running_adapters.iter().any(|x| x == a))
                .count();
            let (status, class) = if p.has_usable(Some(a)) {
                model_status(p)
            } else {
                ("down", "bad")
            };
            let cells = vec![
                format!("<code>{}</code>", esc(a)),
                format!("<code>{}</code>", esc(&p.name)),
                badge(status, class),
                format!("{loaded} of {}", list.len()),
            ];
            (String::new(), cells)
        })
        .collect();
    if !adapters.is_empty() {
        body.push_str(
            "<h2>Adapters</h2><p class=\"muted\">LoRA adapters on top of a model: ask for one by \
             name as the <code>model</code>. \"Running on\" counts the replicas that had it \
             loaded at their last report; others load it on first use.</p>",
        );
        body.push_str(&stacked_table(
            "",
            &["Adapter", "Base model", "Status", "Running on"],
            &adapters,
            "",
        ));
    }

    let live = st.live.load();
    let aliases: Vec<(String, Vec<String>)> = live
        .aliases
        .iter()
        .filter(|a| may(&a.name))
        .map(|a| {
            let now = a
                .models
                .iter()
                .find(|m| st.upstreams.get(m).is_some_and(|p| p.has_usable(None)));
            let cells = vec![
                format!("<code>{}</code>", esc(&a.name)),
                a.models
                    .iter()
                    .map(|m| format!("<code>{}</code>", esc(m)))
                    .collect::<Vec<_>>()
                    .join(", then "),
                match now {
                    Some(m) => format!("<code>{}</code>", esc(m)),
                    None => badge("none: all down", "bad"),
                },
            ];
            (String::new(), cells)
        })
        .collect();
    if !aliases.is_empty() {
        body.push_str(
            "<h2>Aliases</h2><p class=\"muted\">Other names: a request for an alias goes to the \
             first of its models that has a healthy replica.</p>",
        );
        body.push_str(&stacked_table(
            "",
            &["Alias", "Models, in order", "Goes to now"],
            &aliases,
            "",
        ));
    }
    Ok(Html(page("Models", Some(&s.viewer()), &body)))
}

// ---- tenant -------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct TenantQuery {
    #[serde(default)]
    tenant: Option<String>,
}

/// The tenant a tenant-level page is about: a tenant admin's own; for an operator the one
/// named in the query, else their own. `Ok(None)`: none applies (an operator with no tenant).
/// Only a [`TenantAdmin`] (or an operator) gets here.
fn scope_tenant(s: &TenantAdmin, asked: Option<&str>) -> Result<Option<String>, Refusal> {
    let asked = asked.map(str::trim).filter(|t| !t.is_empty());
    match (s.user().role, asked) {
        (Role::Operator, Some(t)) => Ok(Some(t.to_owned())),
        (_, Some(t)) if s.user().tenant.as_deref() != Some(t) => {
            Err(Refusal::Forbidden("you may only see your own tenant"))
        }
        _ => Ok(s.user().tenant.clone()),
    }
}

pub(super) fn limits_text(t: &Tenant) -> String {
    let l = &t.policy.limits;
    let mut parts = Vec::new();
    if let Some(v) = l.rpm {
        parts.push(format!("{v} requests/min"));
    }
    if let Some(v) = l.tpm {
        parts.push(format!("{v} tokens/min"));
    }
    if let Some(v) = l.max_concurrent {
        parts.push(format!("{v} concurrent"));
    }
    if let Some(v) = t.policy.max_queue {
        parts.push(format!("{v} queued per model"));
    }
    if let Some(v) = t.policy.max_wait_ms {
        parts.push(format!("{v} ms max wait"));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(super) fn budgets_text(t: &Tenant) -> String {
    if t.policy.budgets.is_empty() {
        return "none".to_owned();
    }
    t.policy
        .budgets
        .iter()
        .map(|b| {
            let period = serde_json::to_value(b.period)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut caps = Vec::new();
            if let Some(n) = b.tokens {
                caps.push(format!("{n} tokens"));
            }
            if let Some(c) = b.cost {
                caps.push(format!("cost {}", super::html::fmt_money(c.0)));
            }
            format!("per {period}: {}", caps.join(" and "))
        })
        .collect::<Vec<_>>()
        .join("; ")
        + if t.policy.hard_cap { " (hard cap)" } else { "" }
}

/// What a key can do now: `revoked`, `disabled`, `expired` or `active`.
pub(crate) fn key_state(k: &KeyRecord, now: i64) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if !k.enabled {
        "disabled"
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

pub(super) async fn tenant_page(
    State(st): State<Arc<PortalState>>,
    s: TenantAdmin,
    Query(q): Query<TenantQuery>,
) -> Result<Html<String>, Refusal> {
    let Some(name) = scope_tenant(&s, q.tenant.as_deref())? else {
        let tenants = st.store.list_tenants().await?;
        let links: String = tenants
            .iter()
            .map(|t| {
                format!(
                    "<li><a href=\"/portal/tenant?tenant={}\">{}</a></li>",
                    urlencode(&t.name),
                    esc(&t.name)
                )
            })
            .collect();
        let body = format!(
            "<p class=\"notice\">Your account does not belong to a tenant. Pick one to view:</p><ul>{links}</ul>"
        );
        return Ok(Html(page("Tenant", Some(&s.viewer()), &body)));
    };
    let Some(tenant) = st.store.get_tenant(&name).await? else {
        return Err(Refusal::BadRequest(format!("no tenant `{name}`")));
    };
    let _ = st.ledger.flush().await;
    let rows = st.store.requests(Some(&name), TENANT_ROWS).await?;
    let mut per_user: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        if let Some(u) = &r.user {
            let e = per_user.entry(u.clone()).or_default();
            e.0 += 1;
            e.1 += r.prompt_tokens + r.completion_tokens;
        }
    }
    let members = st.store.list_users(Some(&name)).await?;
    let member_rows: Vec<Vec<String>> = members
        .iter()
        .map(|u| {
            let (reqs, tokens) = per_user.get(&u.email).copied().unwrap_or_default();
            let mut row = vec![
                esc(&u.email),
                u.role.as_str().to_owned(),
                if u.disabled { "disabled" } else { "active" }.to_owned(),
                reqs.to_string(),
                format!("<span data-tokens=\"{}\">{tokens}</span>", esc(&u.email)),
            ];
            // Operators off-board (and back): sessions end and the person's keys stop.
            if s.user().role == Role::Operator {
                let (action, label) = if u.disabled {
                    ("enable", "Enable")
                } else {
                    ("disable", "Disable")
                };
                row.push(if u.id == s.user().id {
                    String::new()
                } else {
                    form(
                        &format!("/portal/operator/users/{}/{action}", urlencode(&u.id)),
                        s.csrf(),
                        "",
                        label,
                        false,
                    )
                });
            }
            row
        })
        .collect();
    let now = now_millis();
    let keys = st.store.list_keys(Some(&name)).await?;
    let key_rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                esc(&k.name),
                format!("<code>{}</code>", esc(k.id.as_str())),
                esc(k.user.as_deref().unwrap_or("")),
                esc(&k.models.as_ref().map_or("all".to_owned(), |m| m.join(", "))),
                k.expires_at.map(fmt_time).unwrap_or_else(|| "never".into()),
                key_state(k, now).to_owned(),
            ]
        })
        .collect();
    let settings = vec![
        vec!["Weight".to_owned(), tenant.weight.to_string()],
        vec![
            "Group".to_owned(),
            esc(tenant.group.as_deref().unwrap_or("none")),
        ],
        vec!["Limits".to_owned(), esc(&limits_text(&tenant))],
        vec!["Budgets".to_owned(), esc(&budgets_text(&tenant))],
        vec![
            "Guardrails".to_owned(),
            format!(
                "<span data-setting=\"guardrails\">{}</span>",
                esc(&modes_text(&tenant.policy.guardrails))
            ),
        ],
    ];
    let mut body = String::new();
    body.push_str("<h2>Settings</h2>");
    body.push_str(&table(&["Setting", "Value"], &settings));
    body.push_str(&format!(
        "<h2>Members</h2><p class=\"muted\">Tokens over the tenant's last {TENANT_ROWS} requests.</p>"
    ));
    let member_head: &[&str] = if s.user().role == Role::Operator {
        &["Email", "Role", "State", "Requests", "Tokens", ""]
    } else {
        &["Email", "Role", "State", "Requests", "Tokens"]
    };
    body.push_str(&table(member_head, &member_rows));
    body.push_str("<h2>Keys</h2>");
    body.push_str(&table(
        &["Name", "Id", "Owner", "Models", "Expires", "State"],
        &key_rows,
    ));
    body.push_str(&export_form(
        (s.user().role == Role::Operator).then_some(name.as_str()),
    ));
    Ok(Html(page(
        &format!("Tenant {name}"),
        Some(&s.viewer()),
        &body,
    )))
}

/// The "download usage as CSV" form (a GET, so no CSRF token is needed).
pub(super) fn export_form(tenant: Option<&str>) -> String {
    let (since, until) = this_month();
    let hidden = tenant
        .map(|t| {
            format!(
                "<input type=\"hidden\" name=\"tenant\" value=\"{}\">",
                esc(t)
            )
        })
        .unwrap_or_default();
    format!(
        "<h2>Export usage</h2><form method=\"get\" action=\"/portal/export.csv\">{hidden}\
         <div class=\"grid\"><label>From (UTC, inclusive) <input type=\"date\" name=\"since\" value=\"{since}\"></label>\
         <label>Until (UTC, exclusive) <input type=\"date\" name=\"until\" value=\"{until}\"></label></div>\
         <button type=\"submit\">Download CSV</button> \
         <a href=\"/portal/export.csv\">this month's usage as CSV</a></form>"
    )
}

// ---- CSV export ---------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct ExportQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

/// The first day of this month and of the next (UTC).
fn this_month() -> (NaiveDate, NaiveDate) {
    let today = chrono::Utc::now().date_naive();
    let first = today.with_day(1).unwrap_or(today);
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    (first, next.unwrap_or(first))
}

fn parse_day(s: Option<&str>, default: NaiveDate, what: &str) -> Result<NaiveDate, Refusal> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| Refusal::BadRequest(format!("`{what}` must be a date like 2025-01-31"))),
    }
}

fn day_millis(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0)
}

/// One CSV field: formula-looking text is defused with a leading `'` (spreadsheets would
/// otherwise run `=`, `+`, `-`, `@` cells), then fields with a comma, quote or line break are
/// quoted with inner quotes doubled.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Per (tenant, user, model): requests, prompt, completion, total tokens and cost.
type Totals = BTreeMap<(String, String, String), [u64; 5]>;

/// The export's totals from the store's `GROUP BY` (ledger rows and rolled-up days alike).
fn aggregate(rows: &[fairgate_store::UserUsage]) -> Totals {
    rows.iter()
        .map(|r| {
            (
                (r.tenant.clone(), r.user.clone(), r.model.clone()),
                [
                    r.requests,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.prompt_tokens.saturating_add(r.completion_tokens),
                    r.cost.0,
                ],
            )
        })
        .collect()
}

fn to_csv(totals: &Totals) -> String {
    let mut out = String::from(
        "tenant,user,model,requests,prompt_tokens,completion_tokens,total_tokens,cost_micros\r\n",
    );
    for ((tenant, user, model), v) in totals {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\r\n",
            csv_field(tenant),
            csv_field(user),
            csv_field(model),
            v[0],
            v[1],
            v[2],
            v[3],
            v[4]
        ));
    }
    out
}

pub(super) async fn export_csv(
    State(st): State<Arc<PortalState>>,
    s: TenantAdmin,
    Query(q): Query<ExportQuery>,
) -> Result<Response, Refusal> {
    // Operators: the tenant asked for, else every tenant. Tenant admins: their own only.
    let tenant = if s.user().role == Role::Operator {
        q.tenant
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    } else {
        match scope_tenant(&s, q.tenant.as_deref())? {
            Some(t) => Some(t),
            None => {
                return Err(Refusal::Forbidden(
                    "your account does not belong to a tenant",
                ))
            }
        }
    };
    let (first, next) = this_month();
    let since = parse_day(q.since.as_deref(), first, "since")?;
    let until = parse_day(q.until.as_deref(), next, "until")?;
    if until <= since {
        return Err(Refusal::BadRequest("`until` must be after `since`".into()));
    }
    let _ = st.ledger.flush().await;
    let rows = st
        .store
        .usage_by_user(tenant.as_deref(), day_millis(since), day_millis(until))
        .await?;
    let totals = aggregate(&rows);
    Ok(csv_download(
        to_csv(&totals),
        &format!("fairgate-usage-{since}-{until}.csv"),
    ))
}

/// A CSV body as a download named `filename` (which must need no quoting: dates print as
/// digits and dashes only).
fn csv_download(body: String, filename: &str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// ---- SU report ----------------------------------------------------------------------

/// The operator's "download the SU report as CSV" form (a GET, like [`export_form`]).
pub(super) fn su_export_form() -> String {
    let (since, until) = this_month();
    format!(
        "<h2>Export Slurm SUs</h2><p class=\"muted\">Each Slurm job's SUs per UTC day, split \
         among tenants by the tokens the job served them; <code>(idle)</code> when it served \
         none that day.</p><form method=\"get\" action=\"/portal/export-su.csv\">\
         <div class=\"grid\"><label>From (UTC, inclusive) <input type=\"date\" name=\"since\" value=\"{since}\"></label>\
         <label>Until (UTC, exclusive) <input type=\"date\" name=\"until\" value=\"{until}\"></label></div>\
         <button type=\"submit\">Download SU CSV</button> \
         <a href=\"/portal/export-su.csv\">this month's SUs as CSV</a></form>"
    )
}

#[derive(Deserialize)]
pub(super) struct SuExportQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

/// The SU report's lines as CSV. Numbers are printed as Rust prints them (the shortest text
/// that reads back as the same value), so they match the admin API's JSON exactly.
fn su_csv(lines: &[fairgate_types::SuLine]) -> String {
    let mut out = String::from("day,tenant,model,job_id,gpu_hours,sus,tokens,share\r\n");
    for l in lines {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\r\n",
            csv_field(&l.day),
            csv_field(&l.tenant),
            csv_field(&l.model),
            csv_field(&l.job_id),
            l.gpu_hours,
            l.sus,
            l.tokens,
            l.share
        ));
    }
    out
}

/// `GET /portal/export-su.csv?since=&until=` (operators): the SU report of `[since, until)`,
/// UTC days, this month by default.
pub(super) async fn export_su_csv(
    State(st): State<Arc<PortalState>>,
    _operator: Operator,
    Query(q): Query<SuExportQuery>,
) -> Result<Response, Refusal> {
    let (first, next) = this_month();
    let since = parse_day(q.since.as_deref(), first, "since")?;
    let until = parse_day(q.until.as_deref(), next, "until")?;
    if until <= since {
        return Err(Refusal::BadRequest("`until` must be after `since`".into()));
    }
    let _ = st.ledger.flush().await;
    let lines = st
        .store
        .su_report(day_millis(since), day_millis(until), now_millis())
        .await?;
    Ok(csv_download(
        su_csv(&lines),
        &format!("fairgate-su-{since}-{until}.csv"),
    ))
}

/// What [`urlencode`] escapes: everything but RFC 3986 unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query value or a path segment.
pub(super) fn urlencode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A scope's own modes in words: `pii block, injection inherit`.
pub(crate) fn modes_text(p: &GuardrailPolicy) -> String {
    FIELDS
        .iter()
        .map(|f| {
            let m = f.get(p).map_or("inherit", |m| m.as_str());
            format!("{} {m}", f.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=1+2"), "'=1+2");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_field("a=b"), "a=b");
    }

    #[test]
    fn su_csv_escapes_text_and_prints_numbers_exactly() {
        let line = fairgate_types::SuLine {
            day: "2025-03-10".into(),
            tenant: fairgate_types::IDLE_TENANT.into(),
            model: "org/model,v2".into(),
            job_id: "=1".into(),
            gpu_hours: 0.1 + 0.2,
            sus: 5212.8,
            tokens: 0,
            share: 1.0,
        };
        assert_eq!(
            su_csv(&[line]),
            "day,tenant,model,job_id,gpu_hours,sus,tokens,share\r\n\
             2025-03-10,(idle),\"org/model,v2\",'=1,0.30000000000000004,5212.8,0,1\r\n"
        );
    }

    #[test]
    fn this_month_spans_one_month() {
        let (a, b) = this_month();
        assert_eq!(a.day(), 1);
        assert_eq!(b.day(), 1);
        assert!(b > a);
    }

    #[test]
    fn urlencode_escapes_reserved() {
        assert_eq!(urlencode("a b&c"), "a%20b%26c");
        assert_eq!(urlencode("Az09-_.~/+?#%é"), "Az09-_.~%2F%2B%3F%23%25%C3%A9");
    }
}
