//! Guardrail modes (operators, issue 16): a tenant's, on its page
//! (`POST /portal/operator/tenants/{name}/guardrails`), and a key's, on the key's page
//! (`GET /portal/operator/keys/{id}`, `POST .../guardrails`).
//!
//! Each form has one select per guardrail, drawn from the control plane's table
//! ([`fairgate_control::guardrails::FIELDS`]), with "inherit" for none; the change goes
//! through `fairgate_control::guardrails` (checked there, stored, live, one audit entry with the
//! modes before and after). Pages show each scope's own modes and the effective ones per model,
//! with where each comes from: key → tenant → model → gateway.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, Response};
use fairgate_control::guardrails::{self as control, GuardField, FIELDS};
use fairgate_control::ControlError;
use fairgate_types::{GuardrailPolicy, KeyRecord, Tenant};

use super::tenants::{finish, load_tenant, Place};
use super::{alert, tenant_url, Fail, Rejected, Submitted};
use crate::html::{esc, page, table};
use crate::reports::{key_state, urlencode};
use crate::session::{CsrfForm, Operator, Signed};
use crate::{fmt_time, PortalState, Refusal};

/// A key's page in the operator's console.
pub(super) fn key_url(id: &str) -> String {
    format!("/portal/operator/keys/{}", urlencode(id))
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

/// The form's values as a policy: `current` with each field of the table set from its select
/// (empty or `inherit`: none; a field the form does not carry keeps its mode). Only the names
/// of modes are checked here; which modes a field may take is the control plane's rule.
fn parse(f: &Submitted, current: &GuardrailPolicy) -> Result<GuardrailPolicy, Fail> {
    let mut p = *current;
    for field in FIELDS.iter().filter(|field| f.has(field.name)) {
        let raw = f.get(field.name);
        let mode = match raw {
            "" | "inherit" => None,
            name => Some(control::parse_mode(name).ok_or_else(|| {
                Fail::Invalid(format!(
                    "{}: `{name}` is not a mode; choose inherit, {}",
                    field.label,
                    field.modes_text()
                ))
            })?),
        };
        p = field.set(&p, mode);
    }
    Ok(p)
}

/// The control plane names a field by its admin API path (`policy.guardrails.injection`); the
/// form by its label.
fn form_message(msg: &str) -> String {
    FIELDS.iter().fold(msg.to_owned(), |m, f| {
        m.replace(&format!("policy.guardrails.{}", f.name), f.label)
    })
}

fn control_fail(e: ControlError) -> Fail {
    match Fail::from(e) {
        Fail::Invalid(m) => Fail::Invalid(form_message(&m)),
        other => other,
    }
}

/// One select per guardrail; a refused form shows what was chosen.
fn form_html(
    id: &str,
    action: &str,
    s: &Signed,
    own: &GuardrailPolicy,
    rej: Option<&Rejected>,
) -> String {
    let select = |field: &GuardField| {
        let chosen = match rej {
            Some(r) if r.form == id => r.values.get(field.name).to_owned(),
            _ => field
                .get(own)
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
        };
        let option = |value: &str, label: &str| {
            format!(
                "<option value=\"{value}\"{}>{}</option>",
                if chosen == value { " selected" } else { "" },
                esc(label)
            )
        };
        let mut options = option("", "inherit");
        for m in field.modes {
            options.push_str(&option(m.as_str(), m.as_str()));
        }
        format!(
            "<label>{} <select name=\"{}\">{options}</select></label>",
            esc(field.label),
            field.name
        )
    };
    let selects: String = FIELDS.iter().map(select).collect();
    format!(
        "<form id=\"{id}\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <div class=\"grid\">{selects}</div>\
         <button class=\"primary\" type=\"submit\">Save guardrails</button></form>",
        esc(action),
        esc(s.csrf()),
    )
}

/// The modes that apply per model, each with the scope it comes from: `scopes` (the key's,
/// the tenant's) over the model's over the gateway's. `models`: the models to list (`None`:
/// every one).
fn effective_html(
    st: &PortalState,
    scopes: &[(&str, GuardrailPolicy)],
    models: Option<&[String]>,
) -> String {
    let live = st.live.load();
    let gateway = live.guardrails.defaults();
    let rows: Vec<Vec<String>> = live
        .models
        .iter()
        .filter(|m| models.is_none_or(|l| l.contains(&m.name)))
        .map(|m| {
            let mut chain = scopes.to_vec();
            chain.push(("model", m.guardrails));
            chain.push(("gateway", gateway));
            let mut row = vec![format!("<code>{}</code>", esc(&m.name))];
            for f in FIELDS {
                let (mode, from) = control::effective(f, &chain);
                row.push(format!(
                    "<span data-effective=\"{}:{}\">{}</span> <span class=\"muted\">({})</span>",
                    esc(&m.name),
                    f.name,
                    mode.as_str(),
                    from.unwrap_or("default")
                ));
            }
            row
        })
        .collect();
    let mut head = vec!["Model"];
    head.extend(FIELDS.iter().map(|f| f.name));
    table(&head, &rows)
}

/// The tenant page's guardrails section: the form, what applies, and the tenant's keys with
/// their own modes (each key's page has its form).
pub(super) async fn tenant_section(
    st: &PortalState,
    s: &Signed,
    t: &Tenant,
    rej: Option<&Rejected>,
) -> Result<String, Refusal> {
    let own = t.policy.guardrails;
    let mut out = String::from(
        "<h2>Guardrails</h2><p class=\"muted\">What each guardrail does with what it finds \
         in this tenant's requests: <strong>log</strong> counts it, <strong>redact</strong> \
         replaces PII in the prompt before the backend sees it, <strong>block</strong> refuses \
         the request (400) or stops the answer. <strong>inherit</strong> leaves it to the \
         model's setting, then the gateway's. A key's own modes go over these.</p>",
    );
    out.push_str(&form_html(
        "guardrails",
        &format!("{}/guardrails", tenant_url(&t.name)),
        s,
        &own,
        rej,
    ));
    out.push_str("<h3>In effect for a key without modes of its own</h3>");
    out.push_str(&effective_html(st, &[("tenant", own)], None));

    let now = fairgate_types::now_millis();
    let keys = st.store.list_keys(Some(&t.name)).await?;
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                format!(
                    "<a href=\"{}\" data-key-link=\"{}\">{}</a>",
                    esc(&key_url(k.id.as_str())),
                    esc(k.id.as_str()),
                    esc(&k.name)
                ),
                esc(k.user.as_deref().unwrap_or("")),
                key_state(k, now).to_owned(),
                esc(&modes_text(&k.policy.guardrails)),
            ]
        })
        .collect();
    out.push_str("<h3>Keys</h3>");
    out.push_str(&table(&["Key", "Owner", "State", "Own modes"], &rows));
    Ok(out)
}

/// `POST /portal/operator/tenants/{name}/guardrails`.
pub(crate) async fn set_tenant_guardrails(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let t = load_tenant(&st, &name).await?;
    let outcome = async {
        let modes = parse(&f, &t.policy.guardrails)?;
        control::set_tenant_guardrails(&st, &s.user().email, &name, modes)
            .await
            .map_err(control_fail)?;
        Ok(())
    }
    .await;
    finish(
        &st,
        &s,
        Place::Tenant(name.clone()),
        ("guardrails", &name),
        f,
        outcome,
    )
    .await
}

pub(super) async fn load_key(st: &PortalState, id: &str) -> Result<KeyRecord, Refusal> {
    st.store
        .get_key(&fairgate_types::KeyId(id.to_owned()))
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("There is no key `{id}`.")))
}

/// A key's page: what it is, its guardrail form and the modes in effect for it.
pub(super) async fn key_html(
    st: &PortalState,
    s: &Signed,
    k: &KeyRecord,
    rej: Option<&Rejected>,
) -> Result<String, Refusal> {
    let tenant = st.store.get_tenant(&k.tenant).await?;
    let mut body = alert(rej);
    body.push_str(&format!(
        "<p><a href=\"{}\">Tenant {}</a> · <a href=\"/portal/operator/tenants\">All tenants</a></p>",
        esc(&tenant_url(&k.tenant)),
        esc(&k.tenant)
    ));
    let details = vec![
        vec![
            "Id".to_owned(),
            format!("<code>{}</code>", esc(k.id.as_str())),
        ],
        vec!["Tenant".to_owned(), esc(&k.tenant)],
        vec!["Owner".to_owned(), esc(k.user.as_deref().unwrap_or(""))],
        vec![
            "Models".to_owned(),
            esc(&k.models.as_ref().map_or("all".to_owned(), |m| m.join(", "))),
        ],
        vec![
            "Expires".to_owned(),
            k.expires_at.map(fmt_time).unwrap_or_else(|| "never".into()),
        ],
        vec![
            "State".to_owned(),
            key_state(k, fairgate_types::now_millis()).to_owned(),
        ],
        vec![
            "Guardrails (own)".to_owned(),
            format!(
                "<span data-setting=\"guardrails\">{}</span>",
                esc(&modes_text(&k.policy.guardrails))
            ),
        ],
    ];
    body.push_str(&table(&["Setting", "Value"], &details));
    body.push_str(
        "<h2>Guardrails</h2><p class=\"muted\">This key's own modes go over \
         its tenant's; <strong>inherit</strong> leaves a guardrail to the tenant, then the model, \
         then the gateway.</p>",
    );
    let own = k.policy.guardrails;
    body.push_str(&form_html(
        "guardrails",
        &format!("{}/guardrails", key_url(k.id.as_str())),
        s,
        &own,
        rej,
    ));
    let tenant_modes = tenant.map(|t| t.policy.guardrails).unwrap_or_default();
    // A key limited to some models: those (when they are models, not only aliases).
    let live_models: Vec<String> = st
        .live
        .load()
        .models
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let models = k
        .models
        .as_deref()
        .filter(|l| l.iter().any(|n| live_models.contains(n)));
    body.push_str("<h3>In effect</h3>");
    body.push_str(&effective_html(
        st,
        &[("key", own), ("tenant", tenant_modes)],
        models,
    ));
    Ok(page(&format!("Key {}", k.name), Some(&s.viewer()), &body))
}

/// `GET /portal/operator/keys/{id}`.
pub(crate) async fn key_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    let k = load_key(&st, &id).await?;
    Ok(Html(key_html(&st, &s, &k, None).await?))
}

/// `POST /portal/operator/keys/{id}/guardrails`.
pub(crate) async fn set_key_guardrails(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(id): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let k = load_key(&st, &id).await?;
    let outcome = async {
        let modes = parse(&f, &k.policy.guardrails)?;
        control::set_key_guardrails(&st, &s.user().email, k.id.as_str(), modes)
            .await
            .map_err(control_fail)?;
        Ok(())
    }
    .await;
    finish(
        &st,
        &s,
        Place::Key(id.clone()),
        ("guardrails", &id),
        f,
        outcome,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::FormData;
    use fairgate_types::GuardMode;

    fn submitted(pairs: &[(&str, &str)]) -> Submitted {
        Submitted::from_pairs(
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        )
    }

    fn field(name: &str) -> &'static GuardField {
        FIELDS.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn the_form_reads_one_select_per_guardrail() {
        let current = field("pii").set(&GuardrailPolicy::default(), Some(GuardMode::Log));
        let p = parse(&submitted(&[("pii", "block"), ("injection", "")]), &current)
            .unwrap_or_else(|_| panic!("parsed"));
        assert_eq!(field("pii").get(&p), Some(GuardMode::Block));
        assert_eq!(field("injection").get(&p), None);
        // "inherit": none; a field the form does not carry keeps its mode.
        let p = parse(&submitted(&[("pii", "inherit")]), &current).unwrap_or_else(|_| panic!());
        assert_eq!(p, GuardrailPolicy::default());
        let p = parse(&submitted(&[("injection", "log")]), &current).unwrap_or_else(|_| panic!());
        assert_eq!(field("pii").get(&p), Some(GuardMode::Log));
        assert_eq!(field("injection").get(&p), Some(GuardMode::Log));
        match parse(&submitted(&[("pii", "sometimes")]), &current) {
            Err(Fail::Invalid(m)) => assert!(m.contains("`sometimes` is not a mode"), "{m}"),
            _ => panic!("accepted"),
        }
        assert!(
            modes_text(&current).starts_with("pii log, injection inherit"),
            "{}",
            modes_text(&current)
        );
    }

    #[test]
    fn control_messages_name_the_form_field() {
        let injection = field("injection");
        let p = injection.set(&GuardrailPolicy::default(), Some(GuardMode::Redact));
        let m = form_message(&control::check(&p).unwrap_err().to_string());
        assert!(m.starts_with(injection.label), "{m}");
        assert!(!m.contains("policy."), "{m}");
    }
}
