//! Tenants (operators): the list with a form for a new one, and one tenant's page with its
//! weight, group, rate limits, queueing, budgets and guardrail modes (the last in
//! [`super::guardrails`]), each a form that is saved live and audited. A refused form comes
//! back on its page, as typed ([`finish`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use fairgate_control::validate::{check_tenant_policy, valid_name};
use fairgate_control::{tenants, ControlError};
use fairgate_types::{
    Budget, BudgetPeriod, Group, Micros, OnLimit, RateLimits, Tenant, TenantPolicy,
};
use http::StatusCode;

use super::fair_share::fair_share_html;
use super::{alert, opt_num, shown, tenant_url, weight_field, Fail, Rejected, Submitted};
use crate::html::{esc, fmt_money, form, page, table};
use crate::reports::{budgets_text, limits_text, urlencode};
use crate::session::{CsrfForm, Operator, Signed};
use crate::{redirect, PortalState, Refusal};

/// Parses an amount in the currency unit (`12.5`) into micros, exactly: no floating point,
/// so what is stored is what was typed.
fn parse_money(raw: &str) -> Result<u64, String> {
    let bad = || format!("`{raw}` is not an amount; write it in the currency unit, like 12.50");
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!(
            "`{raw}` has more than 6 decimal places (the smallest unit is one millionth)"
        ));
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let part: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(1_000_000)
        .and_then(|v| v.checked_add(part))
        .ok_or_else(|| format!("`{raw}` is too large"))
}

fn parse_period(raw: &str) -> Result<BudgetPeriod, String> {
    match raw {
        "day" => Ok(BudgetPeriod::Day),
        "month" => Ok(BudgetPeriod::Month),
        _ => Err(format!("period: `{raw}` must be `day` or `month`")),
    }
}

/// The admin API names policy fields by their JSON path (`policy.limits.rpm`,
/// `policy.budgets[0].cost`); the form names them by label.
fn policy_message(msg: &str, p: &TenantPolicy) -> String {
    let mut m = msg.to_owned();
    for (i, b) in p.budgets.iter().enumerate() {
        let path = format!("policy.budgets[{i}]");
        let name = format!("{} budget", b.period.as_str());
        m = m
            .replace(&format!("{path}."), &format!("{name} "))
            .replace(&path, &name);
    }
    m.replace("policy.limits.", "")
        .replace("policy.", "")
        .replace("leave it out", "leave it empty")
}

fn check_policy(p: &TenantPolicy) -> Result<(), Fail> {
    check_tenant_policy(p).map_err(|e| match Fail::from(e) {
        Fail::Invalid(m) => Fail::Invalid(policy_message(&m, p)),
        other => other,
    })
}

pub(super) async fn load_tenant(st: &PortalState, name: &str) -> Result<Tenant, Refusal> {
    st.store
        .get_tenant(name)
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("There is no tenant `{name}`.")))
}

/// Saves a tenant changed on a form through the control plane (the admin API's PATCH does
/// the same): stored, live and audited there.
async fn save_tenant(st: &PortalState, s: &Signed, t: &Tenant) -> Result<(), Fail> {
    let change = tenants::TenantChange {
        weight: Some(t.weight),
        group: Some(t.group.clone()),
        policy: Some(t.policy.clone()),
    };
    match tenants::update_tenant(st, &s.user().email, &t.name, change).await {
        Ok(_) => Ok(()),
        Err(ControlError::NotFound(_)) => Err(Fail::Refused(Refusal::NotFound(format!(
            "There is no tenant `{}`.",
            t.name
        )))),
        Err(e) => Err(e.into()),
    }
}

/// Which page a form lives on, to show it again when it is refused.
pub(super) enum Place {
    FairShare,
    Tenants,
    Tenant(String),
    /// A key's page (its guardrails form).
    Key(String),
}

impl Place {
    fn url(&self) -> String {
        match self {
            Place::FairShare => "/portal/operator".to_owned(),
            Place::Tenants => "/portal/operator/tenants".to_owned(),
            Place::Tenant(n) => tenant_url(n),
            Place::Key(id) => super::guardrail_view::key_url(id),
        }
    }
}

/// The end of every operator POST: on success back to the page (post/redirect/get); a
/// refused form is that page again, with the message and the typed values, as a 400.
pub(super) async fn finish(
    st: &PortalState,
    s: &Signed,
    place: Place,
    (form, subject): (&'static str, &str),
    f: Submitted,
    outcome: Result<(), Fail>,
) -> Result<Response, Refusal> {
    match outcome {
        Ok(()) => Ok(redirect(&place.url())),
        Err(Fail::Refused(r)) => Err(r),
        Err(Fail::Invalid(message)) => {
            let rej = Rejected {
                form,
                subject: subject.to_owned(),
                message,
                values: f,
            };
            let html = match &place {
                Place::FairShare => fair_share_html(st, s, Some(&rej)).await?,
                Place::Tenants => tenants_html(st, s, Some(&rej)).await?,
                Place::Tenant(name) => {
                    let t = load_tenant(st, name).await?;
                    tenant_html(st, s, &t, Some(&rej)).await?
                }
                Place::Key(id) => {
                    let k = super::guardrail_view::load_key(st, id).await?;
                    super::guardrail_view::key_html(st, s, &k, Some(&rej)).await?
                }
            };
            Ok((StatusCode::BAD_REQUEST, Html(html)).into_response())
        }
    }
}

/// `POST /portal/operator/tenants/{name}/weight`. Sent from the fair-share page, or from the
/// tenant's page (`from=tenant`), which is where it returns.
pub(crate) async fn set_weight(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let mut t = load_tenant(&st, &name).await?;
    let outcome = async {
        t.weight = weight_field(f.get("weight"))?;
        save_tenant(&st, &s, &t).await
    }
    .await;
    let place = if f.get("from") == "tenant" {
        Place::Tenant(name.clone())
    } else {
        Place::FairShare
    };
    finish(&st, &s, place, ("weight", &name), f, outcome).await
}

pub(crate) async fn tenants_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
) -> Result<Html<String>, Refusal> {
    Ok(Html(tenants_html(&st, &s, None).await?))
}

/// `<option>`s for a group picker: "no group" and every group with a weight of its own.
fn group_options(groups: &[Group], selected: &str) -> String {
    let mut out = format!(
        "<option value=\"\"{}>no group (competes on its own)</option>",
        if selected.is_empty() { " selected" } else { "" }
    );
    for g in groups {
        out.push_str(&format!(
            "<option value=\"{0}\"{1}>{0} (weight {2})</option>",
            esc(&g.name),
            if g.name == selected { " selected" } else { "" },
            g.weight
        ));
    }
    out
}

async fn tenants_html(
    st: &PortalState,
    s: &Signed,
    rej: Option<&Rejected>,
) -> Result<String, Refusal> {
    let tenants = st.store.list_tenants().await?;
    let groups = st.store.list_groups().await?;
    let csrf = esc(s.csrf());
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                format!(
                    "<a href=\"{}\" data-tenant-link=\"{}\">{}</a>",
                    esc(&tenant_url(&t.name)),
                    esc(&t.name),
                    esc(&t.name)
                ),
                esc(t.group.as_deref().unwrap_or("")),
                t.weight.to_string(),
                esc(&limits_text(t)),
                esc(&budgets_text(t)),
            ]
        })
        .collect();
    let mut body = alert(rej);
    body.push_str(
        "<p class=\"muted\">Every change here applies to the next request, without a restart, \
         and is recorded in the audit log.</p><h2>Tenants</h2>",
    );
    body.push_str(&table(
        &["Tenant", "Group", "Weight", "Limits", "Budgets"],
        &rows,
    ));
    let r = |field: &str, current: &str| shown(rej, "new-tenant", field, current);
    body.push_str(&format!(
        "<h2>Add a tenant</h2><form id=\"new-tenant\" method=\"post\" action=\"/portal/operator/tenants\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><div class=\"grid\">\
         <label>Name <input name=\"name\" required maxlength=\"64\" placeholder=\"physics\" value=\"{}\"></label>\
         <label>Weight (share of contended capacity, 1-1000000) <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000000\" required value=\"{}\"></label>\
         <label>Group <select name=\"group\">{}</select></label></div>\
         <p class=\"muted\">Names use A-Z a-z 0-9 - _ . @. Limits and budgets are set on the tenant's page next.</p>\
         <button class=\"primary\" type=\"submit\">Add tenant</button></form>",
        r("name", ""),
        r("weight", "1"),
        group_options(
            &groups,
            rej.filter(|r| r.form == "new-tenant")
                .map_or("", |r| r.values.get("group"))
        ),
    ));

    // Tenants may name a group that has no weight of its own yet (it weighs 1): list those too.
    let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &tenants {
        if let Some(g) = &t.group {
            members.entry(g).or_default().push(&t.name);
        }
    }
    let mut names: Vec<(&str, Option<u32>)> = groups
        .iter()
        .map(|g| (g.name.as_str(), Some(g.weight)))
        .collect();
    for g in members.keys() {
        if !groups.iter().any(|x| x.name == *g) {
            names.push((g, None));
        }
    }
    names.sort();
    let group_rows: Vec<Vec<String>> = names
        .iter()
        .map(|(g, w)| {
            let typed = rej.filter(|r| r.subject == *g);
            let field = format!(
                "<label class=\"inline\">Weight <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000000\" value=\"{}\" aria-label=\"weight of group {}\"></label>",
                shown(typed, "group-weight", "weight", w.unwrap_or(1)),
                esc(g),
            );
            vec![
                esc(g),
                match w {
                    Some(w) => format!("<span data-group-weight=\"{}\">{w}</span>", esc(g)),
                    None => "1 (not set)".to_owned(),
                },
                esc(&members.get(g).map(|m| m.join(", ")).unwrap_or_default()),
                form(
                    &format!("/portal/operator/groups/{}/weight", urlencode(g)),
                    s.csrf(),
                    &field,
                    "Set",
                    false,
                ),
            ]
        })
        .collect();
    body.push_str(
        "<h2 id=\"groups\">Groups</h2><p class=\"muted\">Contended capacity is shared between \
         groups by group weight first, then between a group's tenants by tenant weight. A tenant \
         in no group competes as a group of its own.</p>",
    );
    body.push_str(&table(&["Group", "Weight", "Tenants", ""], &group_rows));
    let r = |field: &str, current: &str| shown(rej, "new-group", field, current);
    body.push_str(&format!(
        "<h2>Add a group</h2><form id=\"new-group\" method=\"post\" action=\"/portal/operator/groups\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><div class=\"grid\">\
         <label>Name <input name=\"name\" required maxlength=\"64\" placeholder=\"science\" value=\"{}\"></label>\
         <label>Weight (1-1000000) <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000000\" required value=\"{}\"></label></div>\
         <button class=\"primary\" type=\"submit\">Add group</button></form>",
        r("name", ""),
        r("weight", "1"),
    ));
    Ok(page(
        "Operator: tenants and groups",
        Some(&s.viewer()),
        &body,
    ))
}

/// An existing group for a form's `group` field; empty means none. The portal only offers
/// groups that exist, so a name that does not is a mistake (the admin API is laxer: a group
/// without a row weighs 1).
pub(super) async fn group_field(st: &PortalState, raw: &str) -> Result<Option<String>, Fail> {
    if raw.is_empty() {
        return Ok(None);
    }
    valid_name("group", raw)?;
    if st.store.get_group(raw).await?.is_none() {
        return Err(Fail::Invalid(format!(
            "group `{raw}` does not exist; add it under Groups first"
        )));
    }
    Ok(Some(raw.to_owned()))
}

/// `POST /portal/operator/tenants`: name, weight, optional group.
pub(crate) async fn create_tenant(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let name = f.get("name").to_owned();
    let outcome = async {
        valid_name("tenant name", &name)?;
        let weight = weight_field(f.get("weight"))?;
        let group = group_field(&st, f.get("group")).await?;
        tenants::create_tenant(
            &st,
            &s.user().email,
            tenants::NewTenant {
                name: name.clone(),
                weight,
                group,
                policy: TenantPolicy::default(),
            },
        )
        .await?;
        Ok::<(), Fail>(())
    }
    .await;
    match outcome {
        // On to the new tenant's page, where its limits and budgets are set.
        Ok(()) => Ok(redirect(&tenant_url(&name))),
        Err(e) => finish(&st, &s, Place::Tenants, ("new-tenant", ""), f, Err(e)).await,
    }
}

pub(crate) async fn tenant_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
) -> Result<Html<String>, Refusal> {
    let t = load_tenant(&st, &name).await?;
    Ok(Html(tenant_html(&st, &s, &t, None).await?))
}

fn on_limit_text(p: &TenantPolicy) -> &'static str {
    match p.on_limit {
        None => "gateway default",
        Some(OnLimit::Queue) => "queue (wait for the limit to refill)",
        Some(OnLimit::Reject) => "reject at once (429)",
    }
}

async fn tenant_html(
    st: &PortalState,
    s: &Signed,
    t: &Tenant,
    rej: Option<&Rejected>,
) -> Result<String, Refusal> {
    let groups = st.store.list_groups().await?;
    let csrf = esc(s.csrf());
    let base = tenant_url(&t.name);
    let p = &t.policy;
    let mut body = alert(rej);
    body.push_str(
        "<p><a href=\"/portal/operator/tenants\">All tenants and groups</a> · \
         <a href=\"/portal/operator\">Fair share, live</a></p>",
    );
    let settings = vec![
        vec![
            "Weight".to_owned(),
            format!("<span data-setting=\"weight\">{}</span>", t.weight),
        ],
        vec![
            "Group".to_owned(),
            format!(
                "<span data-setting=\"group\">{}</span>",
                esc(t.group.as_deref().unwrap_or("none"))
            ),
        ],
        vec![
            "Limits".to_owned(),
            format!(
                "<span data-setting=\"limits\">{}</span>",
                esc(&limits_text(t))
            ),
        ],
        vec![
            "Over a limit".to_owned(),
            format!(
                "<span data-setting=\"on_limit\">{}</span>",
                on_limit_text(p)
            ),
        ],
        vec![
            "Budgets".to_owned(),
            format!(
                "<span data-setting=\"budgets\">{}</span>",
                esc(&budgets_text(t))
            ),
        ],
        vec![
            "Guardrails".to_owned(),
            format!(
                "<span data-setting=\"guardrails\">{}</span>",
                esc(&crate::reports::modes_text(&p.guardrails))
            ),
        ],
    ];
    body.push_str("<h2>Current settings</h2>");
    body.push_str(&table(&["Setting", "Value"], &settings));

    // Weight and group.
    let w = shown(rej, "weight", "weight", t.weight);
    let chosen = match rej {
        Some(r) if r.form == "group" => r.values.get("group"),
        _ => t.group.as_deref().unwrap_or(""),
    };
    body.push_str(&format!(
        "<h2>Weight and group</h2><div class=\"grid\">\
         <form method=\"post\" action=\"{base}/weight\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"from\" value=\"tenant\">\
         <label>Weight (1-1000000) <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000000\" required value=\"{w}\"></label>\
         <button type=\"submit\">Set weight</button></form>\
         <form method=\"post\" action=\"{base}/group\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Group <select name=\"group\">{}</select></label>\
         <button type=\"submit\">Set group</button></form></div>",
        group_options(&groups, chosen),
        base = esc(&base),
    ));

    // Limits and queueing.
    let l = &p.limits;
    let r = |field: &str, current: Option<String>| {
        shown(rej, "policy", field, current.unwrap_or_default())
    };
    let on_limit = match rej {
        Some(r) if r.form == "policy" => r.values.get("on_limit").to_owned(),
        _ => match p.on_limit {
            None => String::new(),
            Some(OnLimit::Queue) => "queue".into(),
            Some(OnLimit::Reject) => "reject".into(),
        },
    };
    let opt = |v: &str, label: &str| {
        format!(
            "<option value=\"{v}\"{}>{label}</option>",
            if on_limit == v { " selected" } else { "" }
        )
    };
    let hard_cap = match rej {
        Some(r) if r.form == "policy" => r.values.has("hard_cap"),
        _ => p.hard_cap,
    };
    body.push_str(&format!(
        "<h2>Limits and queueing</h2><p class=\"muted\">Leave a field empty for no limit (or, for \
         the queue settings, the gateway's default). Limits are per tenant, across all its keys.</p>\
         <form id=\"policy\" method=\"post\" action=\"{base}/policy\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <div class=\"grid\">\
         <label>Requests per minute (rpm) <input name=\"rpm\" type=\"number\" min=\"1\" value=\"{}\"></label>\
         <label>Tokens per minute (tpm) <input name=\"tpm\" type=\"number\" min=\"1\" value=\"{}\"></label>\
         <label>Concurrent requests (max_concurrent) <input name=\"max_concurrent\" type=\"number\" min=\"1\" value=\"{}\"></label>\
         <label>Over a limit (on_limit) <select name=\"on_limit\">{}{}{}</select></label>\
         <label>Queued requests per model (max_queue) <input name=\"max_queue\" type=\"number\" min=\"1\" value=\"{}\"></label>\
         <label>Longest wait for admission, ms (max_wait_ms) <input name=\"max_wait_ms\" type=\"number\" min=\"0\" max=\"3600000\" value=\"{}\"></label>\
         </div>\
         <label><input type=\"checkbox\" name=\"hard_cap\" value=\"on\"{}> Hard budget cap: cut a streaming answer off when a budget runs out (otherwise it completes and the overrun is charged)</label>\
         <button class=\"primary\" type=\"submit\">Save limits</button></form>",
        r("rpm", l.rpm.map(|v| v.to_string())),
        r("tpm", l.tpm.map(|v| v.to_string())),
        r("max_concurrent", l.max_concurrent.map(|v| v.to_string())),
        opt("", "gateway default"),
        opt("queue", "queue: wait for the limit to refill"),
        opt("reject", "reject at once with 429"),
        r("max_queue", p.max_queue.map(|v| v.to_string())),
        r("max_wait_ms", p.max_wait_ms.map(|v| v.to_string())),
        if hard_cap { " checked" } else { "" },
        base = esc(&base),
    ));

    // Budgets.
    let budget_rows: Vec<Vec<String>> = p
        .budgets
        .iter()
        .map(|b| {
            let period = b.period.as_str();
            vec![
                format!("per {period}"),
                b.tokens.map_or("no cap".into(), |v| v.to_string()),
                b.cost.map_or("no cap".into(), |c| fmt_money(c.0)),
                form(
                    &format!("{base}/budgets/{period}/remove"),
                    s.csrf(),
                    "",
                    &format!("Remove {period} budget"),
                    false,
                ),
            ]
        })
        .collect();
    body.push_str(
        "<h2>Budgets</h2><p class=\"muted\">Spending caps per UTC day or calendar month, in \
         tokens (prompt + completion), in money (the currency of the models' prices), or both: \
         whichever runs out first. Once spent, requests are refused with 402 until the period \
         resets.</p>",
    );
    body.push_str(&table(&["Period", "Tokens", "Cost", ""], &budget_rows));
    let r = |field: &str, current: &str| shown(rej, "budget", field, current);
    let period = match rej {
        Some(r) if r.form == "budget" => r.values.get("period").to_owned(),
        _ => "day".to_owned(),
    };
    let popt = |v: &str, label: &str| {
        format!(
            "<option value=\"{v}\"{}>{label}</option>",
            if period == v { " selected" } else { "" }
        )
    };
    body.push_str(&format!(
        "<h3>Add or change a budget</h3><form id=\"budget\" method=\"post\" action=\"{base}/budgets\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><div class=\"grid\">\
         <label>Period <select name=\"period\">{}{}</select></label>\
         <label>Tokens per period <input name=\"tokens\" type=\"number\" min=\"1\" value=\"{}\"></label>\
         <label>Cost per period (currency units, e.g. 12.50) <input name=\"cost\" inputmode=\"decimal\" value=\"{}\"></label></div>\
         <p class=\"muted\">Set tokens, cost or both. A period that has a budget already gets the new one instead.</p>\
         <button class=\"primary\" type=\"submit\">Save budget</button></form>",
        popt("day", "per day (UTC)"),
        popt("month", "per calendar month"),
        r("tokens", ""),
        r("cost", ""),
        base = esc(&base),
    ));
    body.push_str(&super::guardrail_view::tenant_section(st, s, t, rej).await?);
    Ok(page(
        &format!("Tenant {}", t.name),
        Some(&s.viewer()),
        &body,
    ))
}

/// `POST /portal/operator/tenants/{name}/group`: assign to an existing group, or none.
pub(crate) async fn set_tenant_group(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let mut t = load_tenant(&st, &name).await?;
    let outcome = async {
        t.group = group_field(&st, f.get("group")).await?;
        save_tenant(&st, &s, &t).await
    }
    .await;
    finish(
        &st,
        &s,
        Place::Tenant(name.clone()),
        ("group", &name),
        f,
        outcome,
    )
    .await
}

/// `POST /portal/operator/tenants/{name}/policy`: limits, queueing and the hard cap; budgets
/// are kept.
pub(crate) async fn set_tenant_policy(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let mut t = load_tenant(&st, &name).await?;
    let outcome = async {
        let none = "no limit";
        let default = "the gateway default";
        let policy = TenantPolicy {
            limits: RateLimits {
                rpm: opt_num("rpm", f.get("rpm"), none).map_err(Fail::Invalid)?,
                tpm: opt_num("tpm", f.get("tpm"), none).map_err(Fail::Invalid)?,
                max_concurrent: opt_num("max_concurrent", f.get("max_concurrent"), none)
                    .map_err(Fail::Invalid)?,
            },
            max_queue: opt_num("max_queue", f.get("max_queue"), default)
                .map_err(Fail::Invalid)?,
            max_wait_ms: opt_num("max_wait_ms", f.get("max_wait_ms"), default)
                .map_err(Fail::Invalid)?,
            on_limit: match f.get("on_limit") {
                "" => None,
                "queue" => Some(OnLimit::Queue),
                "reject" => Some(OnLimit::Reject),
                other => {
                    return Err(Fail::Invalid(format!(
                        "on_limit: `{other}` must be `queue` or `reject` (or empty for the gateway default)"
                    )))
                }
            },
            hard_cap: f.has("hard_cap"),
            // Budgets and fallbacks have their own forms (or the admin API): keep them.
            ..t.policy.clone()
        };
        check_policy(&policy)?;
        t.policy = policy;
        save_tenant(&st, &s, &t).await
    }
    .await;
    finish(
        &st,
        &s,
        Place::Tenant(name.clone()),
        ("policy", &name),
        f,
        outcome,
    )
    .await
}

/// `POST /portal/operator/tenants/{name}/budgets`: adds the period's budget, or replaces it
/// (the store keeps one account per period, so one line per period).
pub(crate) async fn set_tenant_budget(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let mut t = load_tenant(&st, &name).await?;
    let outcome = async {
        let period = parse_period(f.get("period")).map_err(Fail::Invalid)?;
        let tokens = opt_num("tokens", f.get("tokens"), "no token cap").map_err(Fail::Invalid)?;
        let cost = match f.get("cost") {
            "" => None,
            raw => Some(Micros(
                parse_money(raw).map_err(|m| Fail::Invalid(format!("cost: {m}")))?,
            )),
        };
        let line = Budget {
            period,
            tokens,
            cost,
        };
        let mut policy = t.policy.clone();
        match policy.budgets.iter_mut().find(|b| b.period == period) {
            Some(b) => *b = line,
            None => policy.budgets.push(line),
        }
        check_policy(&policy)?;
        t.policy = policy;
        save_tenant(&st, &s, &t).await
    }
    .await;
    finish(
        &st,
        &s,
        Place::Tenant(name.clone()),
        ("budget", &name),
        f,
        outcome,
    )
    .await
}

/// `POST /portal/operator/tenants/{name}/budgets/{period}/remove`.
pub(crate) async fn remove_tenant_budget(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path((name, period)): Path<(String, String)>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let mut t = load_tenant(&st, &name).await?;
    let outcome = async {
        let period = parse_period(&period).map_err(Fail::Invalid)?;
        let n = t.policy.budgets.len();
        t.policy.budgets.retain(|b| b.period != period);
        if t.policy.budgets.len() == n {
            return Err(Fail::Invalid(format!(
                "there is no {} budget to remove",
                period.as_str()
            )));
        }
        save_tenant(&st, &s, &t).await
    }
    .await;
    finish(
        &st,
        &s,
        Place::Tenant(name.clone()),
        ("remove-budget", &name),
        f,
        outcome,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_parsed_exactly_into_micros() {
        assert_eq!(parse_money("12.5"), Ok(12_500_000));
        assert_eq!(parse_money("0.000001"), Ok(1));
        assert_eq!(parse_money("3"), Ok(3_000_000));
        assert_eq!(parse_money(".25"), Ok(250_000));
        assert_eq!(parse_money("7."), Ok(7_000_000));
        assert_eq!(parse_money("0"), Ok(0));
        for bad in ["", ".", "-1", "1,5", "1e3", "abc", "1.2.3", " 1"] {
            assert!(parse_money(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_money("0.0000001").unwrap_err().contains("6 decimal"));
        assert!(parse_money("99999999999999999999").is_err());
    }

    #[test]
    fn money_is_shown_with_at_least_two_decimals() {
        assert_eq!(fmt_money(12_500_000), "12.50");
        assert_eq!(fmt_money(1), "0.000001");
        assert_eq!(fmt_money(3_000_000), "3.00");
        assert_eq!(fmt_money(1_234_500), "1.2345");
        for m in [0, 1, 10, 999_999, 1_000_000, 123_456_789] {
            assert_eq!(parse_money(&fmt_money(m)), Ok(m));
        }
    }

    #[test]
    fn policy_messages_name_form_fields() {
        let p = TenantPolicy {
            budgets: vec![
                Budget {
                    period: BudgetPeriod::Month,
                    tokens: Some(1),
                    cost: None,
                },
                Budget {
                    period: BudgetPeriod::Day,
                    tokens: None,
                    cost: None,
                },
            ],
            ..Default::default()
        };
        let m = check_tenant_policy(&p).unwrap_err().to_string();
        assert_eq!(
            policy_message(&m, &p),
            "day budget: set `tokens` or `cost` (or both)"
        );
        let p = TenantPolicy {
            limits: RateLimits {
                rpm: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        let m = check_tenant_policy(&p).unwrap_err().to_string();
        assert_eq!(
            policy_message(&m, &p),
            "rpm: must be at least 1 (leave it empty for no limit)"
        );
    }
}
