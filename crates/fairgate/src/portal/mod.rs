//! The browser portal at `/portal`: people sign in and manage their own keys, usage and
//! history; operators watch and change fair share live. Server-rendered HTML from the same
//! binary, with a few lines of script for the copy button and the live view.
//!
//! Security rules, enforced here for every route:
//! - a session is a random cookie value (HttpOnly, SameSite=Lax, Secure behind TLS); only its
//!   SHA-256 is stored, and signing in always mints a new one (no session fixation);
//! - every POST carries the session's CSRF token and, when the browser sends `Origin`, it must
//!   be this host;
//! - roles are checked on the server ([`require`]): a page or action a role may not use
//!   answers 403;
//! - a key's secret is rendered exactly once, on the page that created it, and never logged.

pub mod auth;
pub mod html;
pub mod oidc;
pub mod reports;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use fairgate_types::{now_millis, KeyId, KeyRecord, Role, Session, User};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::identity::mint_key;
use crate::server::{record_audit, refresh_directory, AppState};
use html::{esc, form, page, table, Viewer};

/// Failed sign-ins allowed per account per window before sign-in is refused for a while.
const LOGIN_FAILURES: u32 = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Portal state that is not in the database.
pub struct Portal {
    pub limiter: auth::LoginLimiter,
    pub oidc: oidc::OidcState,
}

impl Default for Portal {
    fn default() -> Self {
        Portal {
            limiter: auth::LoginLimiter::new(LOGIN_FAILURES, LOGIN_WINDOW),
            oidc: oidc::OidcState::default(),
        }
    }
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(keys_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/oidc/start", get(oidc::start))
        .route("/oidc/callback", get(oidc::callback))
        .route("/keys", post(create_key))
        .route("/keys/{id}/revoke", post(revoke_key))
        .route("/usage", get(usage_page))
        .route("/history", get(history_page))
        .route("/operator", get(operator_page))
        .route("/operator/tenants/{name}/weight", post(set_weight))
        .route("/api/scheduler", get(scheduler_json))
        .route("/audit", get(audit_page))
        .route("/models", get(reports::models_page))
        .route("/playground", get(playground_page))
        .route("/tenant", get(reports::tenant_page))
        .route("/export.csv", get(reports::export_csv))
}

/// A signed-in request.
struct Signed {
    user: User,
    session: Session,
}

impl Signed {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            email: &self.user.email,
            role: self.user.role,
            csrf: &self.session.csrf,
        }
    }
}

/// A page-level refusal, rendered as HTML.
enum Refusal {
    SignIn,
    Forbidden(&'static str),
    BadRequest(String),
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, title, msg) = match self {
            Refusal::SignIn => return Redirect::to("/portal/login").into_response(),
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, "Forbidden", why.to_owned()),
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            Refusal::Internal(m) => {
                tracing::error!(error = %m, "portal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "Something went wrong; the error is in the gateway's log.".to_owned(),
                )
            }
        };
        let body = format!(
            "<p class=\"error\">{}</p><p><a href=\"/portal\">Back</a></p>",
            esc(&msg)
        );
        (status, Html(page(title, None, &body))).into_response()
    }
}

impl From<fairgate_store::StoreError> for Refusal {
    fn from(e: fairgate_store::StoreError) -> Self {
        Refusal::Internal(e.to_string())
    }
}

async fn signed_in(st: &AppState, headers: &HeaderMap) -> Result<Signed, Refusal> {
    let Some(cookie) = auth::session_from_headers(headers) else {
        return Err(Refusal::SignIn);
    };
    let id_hash = auth::hash_session_id(&cookie);
    let Some(session) = st.store.get_session(&id_hash).await? else {
        return Err(Refusal::SignIn);
    };
    if session.expires_at <= now_millis() {
        let _ = st.store.delete_session(&id_hash).await;
        return Err(Refusal::SignIn);
    }
    match st.store.get_user(&session.user_id).await? {
        Some(user) if !user.disabled => Ok(Signed { user, session }),
        _ => Err(Refusal::SignIn),
    }
}

/// The role check every route goes through.
fn require(s: &Signed, role: Role) -> Result<(), Refusal> {
    if s.user.role >= role {
        Ok(())
    } else {
        Err(Refusal::Forbidden("your role may not use this page"))
    }
}

/// CSRF token and same-origin check for a state-changing request.
fn check_post(s: &Signed, headers: &HeaderMap, csrf: &str) -> Result<(), Refusal> {
    if !same_origin(headers) {
        return Err(Refusal::Forbidden("cross-origin form submission refused"));
    }
    if !auth::csrf_ok(csrf, &s.session.csrf) {
        return Err(Refusal::Forbidden(
            "the form's security token is missing or stale; reload the page and try again",
        ));
    }
    Ok(())
}

/// Browsers send `Origin` on POSTs; when present it must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && bare == host
}

fn redirect(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- sign-in ------------------------------------------------------------------------

fn login_form(error: Option<&str>, sso: bool) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "{err}<form method=\"post\" action=\"/portal/login\">\
         <label>Email <input type=\"email\" name=\"email\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button class=\"primary\" type=\"submit\">Sign in</button></form>"
    );
    let body = if sso {
        format!("{body}<p><a href=\"/portal/oidc/start\">Sign in with SSO</a></p>")
    } else {
        body
    };
    page("Sign in", None, &body)
}

async fn login_page(State(st): State<Arc<AppState>>) -> Html<String> {
    Html(login_form(None, st.config.portal.oidc.is_some()))
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
}

async fn login(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return Refusal::Forbidden("cross-origin sign-in refused").into_response();
    }
    let email = f.email.trim().to_lowercase();
    let now = Instant::now();
    if let Err(wait) = st.portal.limiter.check(&email, now) {
        let msg = format!(
            "Too many failed sign-ins for this account; try again in {} minutes.",
            wait.as_secs().div_ceil(60).max(1)
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Html(login_form(Some(&msg), st.config.portal.oidc.is_some())),
        )
            .into_response();
    }
    let user = match st.store.get_user_by_email(&email).await {
        Ok(u) => u,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let ok = match &user {
        Some(u) if !u.disabled => match &u.password_hash {
            Some(h) => auth::verify_password(&f.password, h),
            None => {
                auth::dummy_verify(&f.password);
                false
            }
        },
        // Same work for an unknown account, so timing does not tell which emails exist.
        _ => {
            auth::dummy_verify(&f.password);
            false
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        st.portal.limiter.record_failure(&email, now);
        tracing::info!(email = %email, "portal sign-in failed");
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_form(
                Some("Wrong email or password."),
                st.config.portal.oidc.is_some(),
            )),
        )
            .into_response();
    };
    st.portal.limiter.record_success(&email);
    // Whatever session cookie came with the request is dropped, never promoted.
    if let Some(old) = auth::session_from_headers(&headers) {
        let _ = st.store.delete_session(&auth::hash_session_id(&old)).await;
    }
    match start_session(&st, &user).await {
        Ok(cookie) => {
            tracing::info!(email = %user.email, role = user.role.as_str(), "portal sign-in");
            let mut resp = redirect("/portal");
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
            resp
        }
        Err(r) => r.into_response(),
    }
}

/// Mints a session for `user`; returns its `Set-Cookie` value.
async fn start_session(st: &AppState, user: &User) -> Result<HeaderValue, Refusal> {
    let (value, id_hash, csrf) = auth::new_session_secret();
    let ttl = st.config.portal.session_ttl_s;
    let now = now_millis();
    st.store
        .create_session(&Session {
            id_hash,
            user_id: user.id.clone(),
            csrf,
            created_at: now,
            expires_at: now + (ttl as i64) * 1000,
        })
        .await?;
    Ok(auth::session_cookie(
        &value,
        ttl,
        st.config.portal.secure_cookies,
    ))
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_post(&s, &headers, &f.csrf) {
        return r.into_response();
    }
    let _ = st.store.delete_session(&s.session.id_hash).await;
    let mut resp = redirect("/portal/login");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        auth::clear_session_cookie(st.config.portal.secure_cookies),
    );
    resp
}

// ---- keys ---------------------------------------------------------------------------

fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// Keys this person may see and revoke: their own; a tenant admin's whole tenant.
fn may_manage(s: &Signed, k: &KeyRecord) -> bool {
    match s.user.role {
        Role::Operator => true,
        Role::TenantAdmin => s.user.tenant.as_deref() == Some(k.tenant.as_str()),
        Role::User => {
            s.user.tenant.as_deref() == Some(k.tenant.as_str())
                && k.user.as_deref() == Some(s.user.email.as_str())
        }
    }
}

async fn keys_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let s = signed_in(&st, &headers).await?;
    let mut body = String::new();
    let Some(tenant) = s.user.tenant.clone() else {
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
            let state = if k.revoked_at.is_some() {
                "revoked"
            } else if !k.enabled {
                "disabled"
            } else if k.expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            let action = if state == "revoked" {
                String::new()
            } else {
                form(
                    &format!("/portal/keys/{}/revoke", k.id),
                    &s.session.csrf,
                    "",
                    "Revoke",
                    false,
                )
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
        esc(&s.session.csrf)
    ));
    Ok(Html(page("Your API keys", Some(&s.viewer()), &body)))
}

async fn create_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let s = signed_in(&st, &headers).await?;
    // Repeated `models` fields: parse the form by hand (serde_urlencoded has no lists).
    let pairs: Vec<(String, String)> = form_urlencoded(&body);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    check_post(&s, &headers, get("csrf").unwrap_or(""))?;
    let Some(tenant) = s.user.tenant.clone() else {
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
    let minted = mint_key();
    let rec = KeyRecord {
        id: minted.id.clone(),
        tenant,
        user: Some(s.user.email.clone()),
        name,
        models: (!models.is_empty()).then_some(models),
        secret_hash: minted.secret_hash.clone(),
        expires_at,
        enabled: true,
        created_at: now_millis(),
        revoked_at: None,
        policy: Default::default(),
    };
    st.store.insert_key(&rec).await?;
    refresh_directory(&st).await?;
    record_audit(
        &st,
        &s.user.email,
        "key.create",
        format!("key:{}", rec.id),
        None,
        serde_json::to_string(&rec).ok(),
    )
    .await;
    tracing::info!(key_id = %rec.id, user = %s.user.email, "portal key created");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let scheme = if st.config.portal.secure_cookies {
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
    let secret = minted.expose();
    let snippet = format!(
        "from openai import OpenAI\nclient = OpenAI(base_url=\"{base}\", api_key=\"{secret}\")\nr = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])\nprint(r.choices[0].message.content)"
    );
    let body = format!(
        "<p class=\"notice\">This is the only time the key is shown. Copy it now; if it is lost, revoke it and create another.</p>\
         <p id=\"secret\" class=\"secret\">{}</p>\
         <button type=\"button\" onclick=\"navigator.clipboard.writeText(document.getElementById('secret').textContent)\">Copy key</button>\
         <h2>Use it</h2><pre id=\"snippet\">{}</pre>\
         <p><a href=\"/portal\">Back to your keys</a></p>",
        esc(secret),
        esc(&snippet)
    );
    let mut resp = Html(page("Key created", Some(&s.viewer()), &body)).into_response();
    // The secret must not be cached anywhere on the way.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `application/x-www-form-urlencoded` decoding.
fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn revoke_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Refusal> {
    let s = signed_in(&st, &headers).await?;
    check_post(&s, &headers, &f.csrf)?;
    let Some(mut k) = st.store.get_key(&KeyId(id)).await? else {
        return Err(Refusal::BadRequest("no such key".into()));
    };
    if !may_manage(&s, &k) {
        return Err(Refusal::Forbidden("this key is not yours to revoke"));
    }
    let before = serde_json::to_string(&k).ok();
    if k.revoked_at.is_none() {
        k.revoked_at = Some(now_millis());
    }
    k.enabled = false;
    st.store.update_key(&k).await?;
    refresh_directory(&st).await?;
    record_audit(
        &st,
        &s.user.email,
        "key.revoke",
        format!("key:{}", k.id),
        before,
        serde_json::to_string(&k).ok(),
    )
    .await;
    Ok(redirect("/portal"))
}

// ---- usage and history --------------------------------------------------------------

/// The signed-in person's ledger rows (their keys' requests), newest first.
async fn my_rows(
    st: &AppState,
    s: &Signed,
    limit: u32,
) -> Result<Vec<fairgate_types::LedgerRow>, Refusal> {
    let Some(tenant) = &s.user.tenant else {
        return Ok(Vec::new());
    };
    // Make just-finished requests visible.
    let _ = st.ledger.flush().await;
    Ok(st
        .store
        .requests(Some(tenant), limit)
        .await?
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(s.user.email.as_str()))
        .collect())
}

async fn usage_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let s = signed_in(&st, &headers).await?;
    let rows = my_rows(&st, &s, 10_000).await?;
    let mut by_day: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_model: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for r in &rows {
        let day = chrono::DateTime::from_timestamp_millis(r.ts)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let tokens = r.prompt_tokens + r.completion_tokens;
        *by_day.entry(day).or_default() += tokens;
        let m = by_model
            .entry(r.model.clone().unwrap_or_default())
            .or_default();
        m.0 += 1;
        m.1 += r.prompt_tokens;
        m.2 += r.completion_tokens;
    }
    let days: Vec<(String, u64)> = by_day.into_iter().rev().take(14).rev().collect();
    let models: Vec<(String, u64)> = by_model
        .iter()
        .map(|(m, v)| (m.clone(), v.1 + v.2))
        .collect();
    let mut body = String::new();
    body.push_str(&html::bar_chart(
        "Tokens per day (UTC, last 14 days with use)",
        &days,
    ));
    body.push_str(&html::bar_chart("Tokens per model", &models));
    let table_rows: Vec<Vec<String>> = by_model
        .iter()
        .map(|(m, v)| vec![esc(m), v.0.to_string(), v.1.to_string(), v.2.to_string()])
        .collect();
    body.push_str(&table(
        &["Model", "Requests", "Prompt tokens", "Completion tokens"],
        &table_rows,
    ));
    if s.user.role >= Role::TenantAdmin {
        body.push_str(&reports::export_form(None));
    }
    Ok(Html(page("Your usage", Some(&s.viewer()), &body)))
}

async fn history_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let s = signed_in(&st, &headers).await?;
    let rows = my_rows(&st, &s, 2_000).await?;
    let out: Vec<Vec<String>> = rows
        .iter()
        .take(100)
        .map(|r| {
            vec![
                fmt_time(r.ts),
                esc(r.model.as_deref().unwrap_or("")),
                (r.prompt_tokens + r.completion_tokens).to_string(),
                format!("{} {}", r.status, r.outcome.as_str()),
                r.queue_ms.to_string(),
                r.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
                r.duration_ms.to_string(),
            ]
        })
        .collect();
    let body = table(
        &[
            "Time",
            "Model",
            "Tokens",
            "Status",
            "Queue ms",
            "TTFT ms",
            "Duration ms",
        ],
        &out,
    );
    Ok(Html(page("Your requests", Some(&s.viewer()), &body)))
}

// ---- playground ---------------------------------------------------------------------

/// A chat box that streams a reply through the OpenAI API with a key the user pastes: the
/// portal never has the secret (it is shown once at creation), and going through `/v1` means
/// the call is admitted, limited and recorded like any other.
async fn playground_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let s = signed_in(&st, &headers).await?;
    let options: String = st
        .upstreams
        .pools
        .iter()
        .map(|p| format!("<option>{}</option>", esc(&p.name)))
        .collect();
    let body = format!(
        "<form id=\"play\"><div class=\"grid\">\
         <label>API key <input id=\"key\" type=\"password\" autocomplete=\"off\" required placeholder=\"fgk_...\"></label>\
         <label>Model <select id=\"model\">{options}</select></label></div>\
         <label>Message <textarea id=\"prompt\" rows=\"3\" required style=\"width:100%\">Hello!</textarea></label>\
         <button class=\"primary\" type=\"submit\">Send</button></form>\
         <h2>Reply</h2><pre id=\"reply\" aria-live=\"polite\" style=\"white-space:pre-wrap\"></pre><p id=\"meta\" class=\"muted\"></p>\
         <script>\
         document.getElementById('play').addEventListener('submit',async e=>{{e.preventDefault();\
         const out=document.getElementById('reply'),meta=document.getElementById('meta');out.textContent='';meta.textContent='';\
         const t0=performance.now();let first=null;\
         const r=await fetch('/v1/chat/completions',{{method:'POST',headers:{{'Content-Type':'application/json','Authorization':'Bearer '+document.getElementById('key').value}},\
         body:JSON.stringify({{model:document.getElementById('model').value,stream:true,stream_options:{{include_usage:true}},messages:[{{role:'user',content:document.getElementById('prompt').value}}]}})}});\
         if(!r.ok){{const j=await r.json().catch(()=>null);out.textContent='HTTP '+r.status+': '+(j&&j.error?j.error.message:'');return;}}\
         const rd=r.body.getReader(),dec=new TextDecoder();let buf='',usage=null;\
         for(;;){{const {{done,value}}=await rd.read();if(done)break;buf+=dec.decode(value,{{stream:true}});let i;\
         while((i=buf.indexOf('\\n\\n'))>=0){{const ev=buf.slice(0,i);buf=buf.slice(i+2);\
         for(const line of ev.split('\\n')){{if(!line.startsWith('data: '))continue;const d=line.slice(6);if(d==='[DONE]')continue;\
         try{{const j=JSON.parse(d);if(j.error){{out.textContent+='\\n['+j.error.message+']';continue;}}\
         const c=j.choices&&j.choices[0]&&j.choices[0].delta&&j.choices[0].delta.content;if(c){{if(first===null)first=performance.now();out.textContent+=c;}}\
         if(j.usage)usage=j.usage;}}catch(_){{}}}}}}}}\
         meta.textContent='first token '+Math.round((first??performance.now())-t0)+' ms, queue '+(r.headers.get('x-fairgate-queue-wait-ms')||0)+' ms'+(usage?', '+usage.prompt_tokens+' + '+usage.completion_tokens+' tokens':'');}});\
         </script>"
    );
    Ok(Html(page("Playground", Some(&s.viewer()), &body)))
}

// ---- operator -----------------------------------------------------------------------

async fn operator_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let s = signed_in(&st, &headers).await?;
    require(&s, Role::Operator)?;
    let tenants = st.store.list_tenants().await?;
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            let field = format!(
                "<label class=\"inline\">Weight <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000000\" value=\"{}\" aria-label=\"weight of {}\"></label>",
                t.weight,
                esc(&t.name)
            );
            vec![
                esc(&t.name),
                esc(t.group.as_deref().unwrap_or("")),
                format!("<span data-weight=\"{}\">{}</span>", esc(&t.name), t.weight),
                form(
                    &format!("/portal/operator/tenants/{}/weight", t.name),
                    &s.session.csrf,
                    &field,
                    "Set",
                    false,
                ),
            ]
        })
        .collect();
    let mut body = String::from("<h2>Tenants</h2>");
    body.push_str(&table(&["Tenant", "Group", "Weight", ""], &rows));
    body.push_str(
        "<h2>Fair share, live</h2><p class=\"muted\">Per model and tenant: weight, share of service in the last minute, queued and in-flight requests. Updates every 2 s.</p>\
         <div id=\"live\">",
    );
    body.push_str(&live_table(&st));
    body.push_str(
        "</div><script>\
         async function refresh(){try{const r=await fetch('/portal/api/scheduler',{credentials:'same-origin'});\
         if(!r.ok)return;const d=await r.json();let h='';\
         for(const m of d.models){h+='<h3>'+esc(m.model)+' <span class=\"muted\">'+m.mode+', '+m.in_flight+'/'+m.max_in_flight+' in flight, '+m.queued+' queued</span></h3>';\
         h+='<div class=\"scroll\"><table><thead><tr><th>Tenant</th><th>Weight</th><th>Share (1 min)</th><th>Queued</th><th>In flight</th></tr></thead><tbody>';\
         for(const t of m.tenants){h+='<tr data-tenant=\"'+esc(t.tenant)+'\"><td>'+esc(t.tenant)+'</td><td class=\"w\">'+t.weight+'</td><td>'+(100*t.share).toFixed(1)+'%</td><td>'+t.queued+'</td><td>'+t.in_flight+'</td></tr>';}\
         h+='</tbody></table></div>';}document.getElementById('live').innerHTML=h;}catch(e){}}\
         function esc(s){return String(s).replace(/[&<>\"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','\"':'&quot;',\"'\":'&#39;'}[c]));}\
         refresh();setInterval(refresh,2000);</script>",
    );
    Ok(Html(page("Operator: fair share", Some(&s.viewer()), &body)))
}

/// The live view as server-rendered HTML (the script replaces it with fresh data).
fn live_table(st: &AppState) -> String {
    let mut out = String::new();
    for pool in &st.upstreams.pools {
        let state = pool.fair.state();
        out.push_str(&format!(
            "<h3>{} <span class=\"muted\">{}/{} in flight, {} queued</span></h3>",
            esc(&state.name),
            state.in_flight,
            state.max_in_flight,
            state.queued
        ));
        let mut tenants = state.tenants;
        tenants.sort_by(|a, b| a.view.name.cmp(&b.view.name));
        let rows: Vec<Vec<String>> = tenants
            .iter()
            .map(|t| {
                vec![
                    esc(&t.view.name),
                    t.view.weight.to_string(),
                    format!("{:.1}%", 100.0 * t.share_last_minute),
                    t.view.queued.to_string(),
                    t.view.in_flight.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["Tenant", "Weight", "Share (1 min)", "Queued", "In flight"],
            &rows,
        ));
    }
    out
}

async fn scheduler_json(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let s = signed_in(&st, &headers).await?;
    require(&s, Role::Operator)?;
    let models: Vec<serde_json::Value> = st
        .upstreams
        .pools
        .iter()
        .map(|p| {
            let state = p.fair.state();
            let mut tenants = state.tenants;
            tenants.sort_by(|a, b| a.view.name.cmp(&b.view.name));
            serde_json::json!({
                "model": state.name,
                "mode": match state.mode { fairgate_admission::fair::Mode::Fair => "fair", fairgate_admission::fair::Mode::Fifo => "fifo" },
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                "queued": state.queued,
                "tenants": tenants.iter().map(|t| serde_json::json!({
                    "tenant": &*t.view.name,
                    "weight": t.view.weight,
                    "share": t.share_last_minute,
                    "queued": t.view.queued,
                    "in_flight": t.view.in_flight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "models": models })).into_response())
}

#[derive(Deserialize)]
struct WeightForm {
    #[serde(default)]
    csrf: String,
    weight: String,
}

async fn set_weight(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<WeightForm>,
) -> Result<Response, Refusal> {
    let s = signed_in(&st, &headers).await?;
    require(&s, Role::Operator)?;
    check_post(&s, &headers, &f.csrf)?;
    let weight: u32 = match f.weight.trim().parse() {
        Ok(w) if (1..=crate::config::MAX_WEIGHT).contains(&w) => w,
        _ => {
            return Err(Refusal::BadRequest(format!(
                "weight must be a whole number from 1 to {}",
                crate::config::MAX_WEIGHT
            )))
        }
    };
    let Some(mut t) = st.store.get_tenant(&name).await? else {
        return Err(Refusal::BadRequest(format!("no tenant `{name}`")));
    };
    let before = serde_json::to_string(&t).ok();
    t.weight = weight;
    st.store.update_tenant(&t).await?;
    refresh_directory(&st).await?;
    record_audit(
        &st,
        &s.user.email,
        "tenant.update",
        format!("tenant:{name}"),
        before,
        serde_json::to_string(&t).ok(),
    )
    .await;
    Ok(redirect("/portal/operator"))
}

async fn audit_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, Refusal> {
    let s = signed_in(&st, &headers).await?;
    require(&s, Role::Operator)?;
    let entries = st.store.list_audit(200, None).await?;
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                fmt_time(e.ts),
                esc(&e.actor),
                esc(&e.action),
                esc(&e.target),
                format!("<code>{}</code>", esc(e.before.as_deref().unwrap_or(""))),
                format!("<code>{}</code>", esc(e.after.as_deref().unwrap_or(""))),
            ]
        })
        .collect();
    let body = table(&["When", "Who", "What", "Object", "Before", "After"], &rows);
    Ok(Html(page("Audit log", Some(&s.viewer()), &body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let p = form_urlencoded(b"a=1&models=x%2Fy&models=z&name=hello+world&bad=%zz&e=");
        assert_eq!(p[1], ("models".into(), "x/y".into()));
        assert_eq!(p[2], ("models".into(), "z".into()));
        assert_eq!(p[3], ("name".into(), "hello world".into()));
        assert_eq!(p[4], ("bad".into(), "%zz".into()));
        assert_eq!(p[5], ("e".into(), "".into()));
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://gw.example:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }
}
