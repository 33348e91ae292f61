//! How guardrail modes are shown in the operator's console (issue 16): the forms, the modes in
//! effect per model with where each comes from (key → tenant → model → gateway), a tenant's
//! section and a key's page. The handlers that change them are in `guardrails.rs`.

use fairgate_control::guardrails::{self as control, GuardField, FIELDS};
use fairgate_types::{GuardrailPolicy, KeyRecord, Tenant};

use super::{alert, tenant_url, Rejected};
use crate::html::{esc, page, table};
use crate::reports::{key_state, modes_text, urlencode};
use crate::session::Signed;
use crate::{fmt_time, PortalState, Refusal};

/// A key's page in the operator's console.
pub(super) fn key_url(id: &str) -> String {
    format!("/portal/operator/keys/{}", urlencode(id))
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
