//! The person's API keys: the list, a new key (its secret shown exactly once, with a usage
//! snippet), revocation and rotation. Who may touch a key is [`may_manage`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use fairgate_control::keys;
use fairgate_types::{now_millis, KeyId, KeyRecord, Role};
use http::{header, HeaderMap, HeaderValue};

use crate::html::{esc, form, page, table};
use crate::session::{CsrfForm, CsrfOnly, Signed, SignedIn};
use crate::{fmt_time, redirect, PortalState, Refusal};

/// Keys this person may see and revoke: their own; a tenant admin's whole tenant.
fn may_manage(s: &Signed, k: &KeyRecord) -> bool {
    match s.user().role {
        Role::Operator => true,
        Role::TenantAdmin => s.user().tenant.as_deref() == Some(k.tenant.as_str()),
        Role::User => {
            s.user().tenant.as_deref() == Some(k.tenant.as_str())
                && k.user.as_deref() == Some(s.user().email.as_str())
        }
    }
}

/// `GET /portal`: the person's keys (a tenant admin's: the tenant's) and the form for a new one.
pub(crate) async fn keys_page(
    State(st): State<Arc<PortalState>>,
    s: SignedIn,
) -> Result<Html<String>, Refusal> {
    let mut body = String::new();
    let Some(tenant) = s.user().tenant.clone() else {
        body.push_str("<p class=\"notice\">Your account does not belong to a tenant yet, so it cannot have keys. Ask an operator to add you to one.</p>");
        return Ok(Html(page("Your API keys", Some(&s.viewer()), &body)));
    };
    let keys: Vec<KeyRecord> = st
        .store
        .list_keys(Some(&tenant))
        .await?
        .into_iter()
        .filter(|k| may_manage(&s, k))
        .collect();
    let now = now_millis();
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let state = crate::reports::key_state(k, now);
            let action = if state == "revoked" {
                String::new()
            } else {
                let rotate = form(
                    &format!("/portal/keys/{}/rotate", k.id),
                    s.csrf(),
                    "",
                    "Rotate",
                    false,
                );
                let revoke = form(
                    &format!("/portal/keys/{}/revoke", k.id),
                    s.csrf(),
                    "",
                    "Revoke",
                    false,
                );
                format!("{rotate} {revoke}")
            };
            vec![
                esc(&k.name),
                format!("<code>{}</code>", esc(k.id.as_str())),
                esc(k.user.as_deref().unwrap_or("")),
                esc(&k.models.as_ref().map_or("all".to_owned(), |m| m.join(", "))),
                k.expires_at.map(fmt_time).unwrap_or_else(|| "never".into()),
                state.to_owned(),
                action,
            ]
        })
        .collect();
    body.push_str(&table(
        &["Name", "Id", "Owner", "Models", "Expires", "State", ""],
        &rows,
    ));
    let models: String = st
        .upstreams
        .pools
        .iter()
        .map(|p| {
            format!(
                "<label><input type=\"checkbox\" name=\"models\" value=\"{0}\"> {0}</label>",
                esc(&p.name)
            )
        })
        .collect();
    body.push_str(&format!(
        "<h2>Create a key</h2><form method=\"post\" action=\"/portal/keys\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <div class=\"grid\"><label>Name <input name=\"name\" required maxlength=\"128\" placeholder=\"laptop\"></label>\
         <label>Expires in days (empty: never) <input name=\"expires_days\" type=\"number\" min=\"1\" max=\"3650\"></label></div>\
         <fieldset><legend>Models (none checked: all you may use)</legend>{models}</fieldset>\
         <button class=\"primary\" type=\"submit\">Create key</button></form>",
        esc(s.csrf())
    ));
    Ok(Html(page("Your API keys", Some(&s.viewer()), &body)))
}

/// `POST /portal/keys`: a new key for the person, its secret shown once. The form is read
/// as pairs: `models` repeats.
pub(crate) async fn create_key(
    State(st): State<Arc<PortalState>>,
    headers: HeaderMap,
    s: SignedIn,
    CsrfForm(pairs): CsrfForm<Vec<(String, String)>>,
) -> Result<Response, Refusal> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(tenant) = s.user().tenant.clone() else {
        return Err(Refusal::Forbidden(
            "your account does not belong to a tenant",
        ));
    };
    let name = get("name").unwrap_or("").trim().to_owned();
    if name.is_empty() || name.len() > 128 {
        return Err(Refusal::BadRequest(
            "a key needs a name of 1-128 characters".into(),
        ));
    }
    let models: Vec<String> = pairs
        .iter()
        .filter(|(n, _)| n == "models")
        .map(|(_, v)| v.clone())
        .collect();
    for m in &models {
        if st.upstreams.get(m).is_none() {
            return Err(Refusal::BadRequest(format!("unknown model `{m}`")));
        }
    }
    let expires_at = match get("expires_days").map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(d) => match d.parse::<i64>() {
            Ok(d) if (1..=3650).contains(&d) => Some(now_millis() + d * 86_400_000),
            _ => return Err(Refusal::BadRequest("expiry must be 1-3650 days".into())),
        },
    };
    let (rec, minted) = keys::create_key(
        &st,
        &s.user().email,
        keys::NewKey {
            tenant,
            name,
            user: Some(s.user().email.clone()),
            models: (!models.is_empty()).then_some(models),
            expires_at,
            policy: Default::default(),
        },
    )
    .await?;
    let notice = "This is the only time the key is shown. Copy it now; if it is lost, rotate the key for a new secret.";
    Ok(secret_page(
        &st,
        &headers,
        &s,
        &rec,
        minted.expose(),
        "Key created",
        notice,
    ))
}

/// The page that shows a freshly minted secret: the one response that ever carries it.
fn secret_page(
    st: &PortalState,
    headers: &HeaderMap,
    s: &Signed,
    rec: &KeyRecord,
    secret: &str,
    title: &str,
    notice: &str,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let scheme = if links_https(st, headers) {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{host}/v1");
    let model = rec
        .models
        .as_ref()
        .and_then(|m| m.first().cloned())
        .or_else(|| st.upstreams.pools.first().map(|p| p.name.clone()))
        .unwrap_or_else(|| "MODEL".into());
    let snippet = format!(
        "from openai import OpenAI\nclient = OpenAI(base_url=\"{base}\", api_key=\"{secret}\")\nr = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])\nprint(r.choices[0].message.content)"
    );
    let body = format!(
        "<p class=\"notice\">{}</p>\
         <p id=\"secret\" class=\"secret\">{}</p>\
         <button type=\"button\" data-copy=\"secret\">Copy key</button>\
         <h2>Use it</h2><pre id=\"snippet\">{}</pre>\
         <p><a href=\"/portal\">Back to your keys</a></p>",
        esc(notice),
        esc(secret),
        esc(&snippet)
    );
    let mut resp = Html(page(title, Some(&s.viewer()), &body)).into_response();
    // The secret must not be cached anywhere on the way.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether the usage snippet should say https: like [`crate::cookies_secure`], except that any
/// `X-Forwarded-Proto: https` counts (it only changes the text of an example).
fn links_https(st: &PortalState, headers: &HeaderMap) -> bool {
    use fairgate_gateway::config::SecureCookies;
    match st.config.portal.secure_cookies {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => {
            !st.config.listen_addr().is_ok_and(|a| a.ip().is_loopback())
                || headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        }
    }
}

/// `POST /portal/keys/{id}/revoke`: the key stops working before the reply; its history stays.
pub(crate) async fn revoke_key(
    State(st): State<Arc<PortalState>>,
    s: SignedIn,
    Path(id): Path<String>,
    CsrfForm(CsrfOnly): CsrfForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    let Some(k) = st.store.get_key(&KeyId(id)).await? else {
        return Err(Refusal::BadRequest("no such key".into()));
    };
    if !may_manage(&s, &k) {
        return Err(Refusal::Forbidden("this key is not yours to revoke"));
    }
    keys::revoke_key(&st, &s.user().email, k.id.as_str()).await?;
    Ok(redirect("/portal"))
}

/// `POST /portal/keys/{id}/rotate`: a new secret for the same key id (history stays joined),
/// shown once; the old secret stops working with the directory refresh, before the reply.
pub(crate) async fn rotate_key(
    State(st): State<Arc<PortalState>>,
    headers: HeaderMap,
    s: SignedIn,
    Path(id): Path<String>,
    CsrfForm(CsrfOnly): CsrfForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    let Some(mut k) = st.store.get_key(&KeyId(id)).await? else {
        return Err(Refusal::BadRequest("no such key".into()));
    };
    if !may_manage(&s, &k) {
        return Err(Refusal::Forbidden("this key is not yours to rotate"));
    }
    if k.revoked_at.is_some() {
        return Err(Refusal::BadRequest(
            "this key is revoked and cannot be rotated; create a new key instead".into(),
        ));
    }
    let minted = fairgate_control::keys::rotate_key_secret(&st, &s.user().email, &mut k).await?;
    let notice = "The key has a new secret and the old one no longer works. This is the only time the new secret is shown: copy it now and update your clients.";
    Ok(secret_page(
        &st,
        &headers,
        &s,
        &k,
        minted.expose(),
        "Key rotated",
        notice,
    ))
}
