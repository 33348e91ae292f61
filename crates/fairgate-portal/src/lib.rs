//! The browser portal at `/portal`: people sign in and manage their own keys, usage and
//! history and see the models they may use; operators watch fair share live, manage tenants,
//! groups, limits and budgets, and watch and change models' backends ([`operator`]). Server-rendered HTML from the same binary; the little script there is (copy
//! button, playground, live views) is one static file, `/portal/static/app.js`.
//!
//! Security rules, enforced here for every route:
//! - every answer carries a Content-Security-Policy without inline script or style,
//!   `X-Frame-Options: DENY`, `nosniff` and `Referrer-Policy: same-origin` ([`security_headers`]);
//! - sign-in is throttled per client address and per account before any hashing
//!   ([`throttle`]), and hashing runs on a bounded blocking pool ([`hashing`]);
//! - a session is a random cookie value (HttpOnly, SameSite=Lax, Secure unless served over
//!   plain loopback: [`cookies_secure`]); only its
//!   SHA-256 is stored, and signing in always mints a new one (no session fixation);
//! - every POST carries the session's CSRF token and, when the browser sends `Origin`, it must
//!   be this host;
//! - roles are checked on the server ([`require`]): a page or action a role may not use
//!   answers 403;
//! - a key's secret is rendered exactly once, on the page that created it, and never logged.

pub mod auth;
pub mod hashing;
pub mod html;
pub mod limits;
pub mod oidc;
pub mod operator;
pub mod reports;
pub mod throttle;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use fairgate_types::{now_millis, KeyId, KeyRecord, Role, Session, User};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use fairgate_control::audit::record_audit;
use fairgate_gateway::identity::mint_key;
use fairgate_gateway::state::refresh_directory;
use fairgate_gateway::state::AppState;
use html::{esc, form, page, table, Viewer};

/// Portal state that is not in the database.
pub struct Portal {
    /// Sign-in throttle (per replica today; the trait lets a shared store take over).
    pub throttle: Box<dyn throttle::SignInThrottle>,
    /// Where password hashes run: bounded, off the async workers.
    pub hashing: hashing::HashPool,
    pub oidc: oidc::OidcState,
}

impl Portal {
    pub fn new(cfg: &fairgate_gateway::config::PortalConfig) -> Portal {
        Portal {
            throttle: Box::new(throttle::MemoryThrottle::default()),
            hashing: hashing::HashPool::new(cfg.password_hash_workers),
            oidc: oidc::OidcState::default(),
        }
    }
}

impl Default for Portal {
    fn default() -> Self {
        Portal::new(&fairgate_gateway::config::PortalConfig::default())
    }
}

/// The portal's router state: the gateway's shared state, plus what only the portal keeps.
/// Dereferences to the gateway's [`AppState`], so handlers read `st.store`, `st.identity`, ...
/// directly and `st.portal` for the portal's own parts.
pub struct PortalState {
    pub gateway: Arc<AppState>,
    pub portal: Portal,
}

impl PortalState {
    pub fn new(gateway: Arc<AppState>) -> PortalState {
        let portal = Portal::new(&gateway.config.portal);
        PortalState { gateway, portal }
    }
}

impl std::ops::Deref for PortalState {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.gateway
    }
}

/// The portal's Content-Security-Policy: scripts and styles only from the portal's own static
/// files (no inline script, no inline style, no `eval`), requests only to this origin, forms
/// only posting here, never framed, no `<base>` rewriting.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every portal answer, errors and redirects included.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The portal's routes with their state, to be nested under `/portal`. Forms are read (under
/// the portal's small limit) before any extractor runs; the security headers are outermost, so
/// the body limit's refusals carry them too.
pub fn router(state: Arc<PortalState>) -> Router {
    routes()
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::portal_body,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn not_found() -> Response {
    Refusal::NotFound("There is no such portal page.".into()).into_response()
}

/// `GET /portal/static/app.js`.
async fn app_js() -> Response {
    static_asset("text/javascript; charset=utf-8", html::APP_JS)
}

/// `GET /portal/static/app.css`.
async fn app_css() -> Response {
    static_asset("text/css; charset=utf-8", html::APP_CSS)
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Pages name the files with a content digest (`?v=`), so a day is safe.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

fn routes() -> Router<Arc<PortalState>> {
    Router::new()
        .route("/", get(keys_page))
        .route("/static/app.js", get(app_js))
        .route("/static/app.css", get(app_css))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/oidc/start", get(oidc::start))
        .route("/oidc/callback", get(oidc::callback))
        .route("/keys", post(create_key))
        .route("/keys/{id}/revoke", post(revoke_key))
        .route("/keys/{id}/rotate", post(rotate_key))
        .route("/usage", get(usage_page))
        .route("/history", get(history_page))
        .route("/operator", get(operator::operator_page))
        .route(
            "/operator/tenants",
            get(operator::tenants_page).post(operator::create_tenant),
        )
        .route("/operator/tenants/{name}", get(operator::tenant_page))
        .route(
            "/operator/tenants/{name}/weight",
            post(operator::set_weight),
        )
        .route(
            "/operator/tenants/{name}/group",
            post(operator::set_tenant_group),
        )
        .route(
            "/operator/tenants/{name}/policy",
            post(operator::set_tenant_policy),
        )
        .route(
            "/operator/tenants/{name}/budgets",
            post(operator::set_tenant_budget),
        )
        .route(
            "/operator/tenants/{name}/budgets/{period}/remove",
            post(operator::remove_tenant_budget),
        )
        .route("/operator/groups", post(operator::create_group))
        .route(
            "/operator/groups/{name}/weight",
            post(operator::set_group_weight),
        )
        .route("/operator/backends", get(operator::backends::backends_page))
        .route(
            "/operator/models/{model}/backends",
            post(operator::backends::add),
        )
        .route(
            "/operator/models/{model}/backends/drain",
            post(operator::backends::drain),
        )
        .route(
            "/operator/models/{model}/backends/resume",
            post(operator::backends::resume),
        )
        .route(
            "/operator/models/{model}/backends/remove",
            post(operator::backends::remove),
        )
        .route("/operator/users/{id}/disable", post(disable_user))
        .route("/operator/users/{id}/enable", post(enable_user))
        .route("/api/scheduler", get(operator::scheduler_json))
        .route("/api/backends", get(operator::backends::backends_json))
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
    NotFound(String),
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, title, msg) = match self {
            Refusal::SignIn => return Redirect::to("/portal/login").into_response(),
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, "Forbidden", why.to_owned()),
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            Refusal::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
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

async fn signed_in(st: &PortalState, headers: &HeaderMap) -> Result<Signed, Refusal> {
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

async fn login_page(State(st): State<Arc<PortalState>>) -> Html<String> {
    Html(login_form(None, st.config.portal.oidc.is_some()))
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
}

/// Who is asking: the client's address (per `trusted_proxies`, for throttling) and the TCP
/// peer (for deciding whether a proxy's `X-Forwarded-Proto` may be believed).
pub struct Client {
    pub ip: IpAddr,
    pub peer: Option<SocketAddr>,
}

impl FromRequestParts<Arc<PortalState>> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        st: &Arc<PortalState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let ip = fairgate_gateway::client_addr::client_addr(
            &parts.headers,
            peer,
            &st.live.load().trusted_proxies,
        );
        Ok(Client { ip, peer })
    }
}

/// Whether cookies get `Secure` (and links https) for this request: `portal.secure_cookies`
/// decides, and `"auto"` means yes unless the gateway listens on loopback and the request
/// did not come through a trusted proxy that says the client used https. (A browser never
/// stores a `Secure` cookie from plain `http://` on a network address, so `"auto"` assumes a
/// network-facing portal is behind TLS; set `false` for a plain-HTTP lab.)
pub fn cookies_secure(st: &PortalState, headers: &HeaderMap, client: &Client) -> bool {
    use fairgate_gateway::config::SecureCookies;
    match st.config.portal.secure_cookies {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => {
            let loopback = st.config.listen_addr().is_ok_and(|a| a.ip().is_loopback());
            !loopback || via_tls_proxy(st, headers, client)
        }
    }
}

/// The request came from a configured trusted proxy that says the client spoke https.
fn via_tls_proxy(st: &PortalState, headers: &HeaderMap, client: &Client) -> bool {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    forwarded_https
        && client
            .peer
            .is_some_and(|p| st.live.load().trusted_proxies.contains(p.ip()))
}

/// The sign-in page again, with a message and a status.
fn login_refused(st: &PortalState, status: StatusCode, msg: &str) -> Response {
    (
        status,
        Html(login_form(Some(msg), st.config.portal.oidc.is_some())),
    )
        .into_response()
}

/// A 429 page with `Retry-After`.
fn throttled_page(st: &PortalState, t: throttle::Throttled) -> Response {
    let secs = t.retry_after.as_secs().max(1);
    let when = if secs < 120 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    };
    let msg = match t.reason {
        throttle::ThrottleReason::Address => {
            format!("Too many failed sign-ins from your network address; try again in {when}.")
        }
        throttle::ThrottleReason::AccountFromAddress => {
            format!("Too many failed sign-ins for this account from your network address; try again in {when}.")
        }
        throttle::ThrottleReason::AccountSlowed => format!(
            "This account is getting many failed sign-ins, so attempts are slowed down; try again in {when}."
        ),
    };
    let mut resp = login_refused(st, StatusCode::TOO_MANY_REQUESTS, &msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Cheap checks first: origin, then the throttle, then the database, and only then the
/// password hash, on the bounded pool (which answers 503 at once when saturated).
async fn login(
    State(st): State<Arc<PortalState>>,
    client: Client,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return Refusal::Forbidden("cross-origin sign-in refused").into_response();
    }
    // A body that is not the sign-in form gets the sign-in page, not axum's plain text.
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            let status = e.status();
            return login_refused(
                &st,
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                "That was not the sign-in form; please use the form below.",
            );
        }
    };
    let email = f.email.trim().to_lowercase();
    let throttle = &st.portal.throttle;
    if let Err(t) = throttle.check(&email, client.ip).await {
        tracing::info!(client = %client.ip, "portal sign-in throttled");
        return throttled_page(&st, t);
    }
    let user = match st.store.get_user_by_email(&email).await {
        Ok(u) => u,
        Err(e) => return Refusal::from(e).into_response(),
    };
    // Unknown, disabled and password-less accounts verify against a dummy hash: the same
    // work, so timing does not tell which e-mails exist.
    let phc = user
        .as_ref()
        .filter(|u| !u.disabled)
        .and_then(|u| u.password_hash.clone());
    let ok = match st.portal.hashing.verify(f.password, phc).await {
        Ok(ok) => ok,
        Err(hashing::HashPoolError::Busy) => {
            tracing::warn!("portal sign-in refused: password hashing saturated");
            let mut resp = login_refused(
                &st,
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway is busy signing people in; try again in a moment.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return resp;
        }
        Err(e) => return Refusal::Internal(e.to_string()).into_response(),
    };
    let Some(user) = user.filter(|_| ok) else {
        throttle.record_failure(&email, client.ip).await;
        tracing::info!(email = %email, client = %client.ip, "portal sign-in failed");
        return login_refused(&st, StatusCode::UNAUTHORIZED, "Wrong email or password.");
    };
    throttle.record_success(&email, client.ip).await;
    // Whatever session cookie came with the request is dropped, never promoted.
    if let Some(old) = auth::session_from_headers(&headers) {
        let _ = st.store.delete_session(&auth::hash_session_id(&old)).await;
    }
    let secure = cookies_secure(&st, &headers, &client);
    match start_session(&st, &user, secure).await {
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
async fn start_session(
    st: &PortalState,
    user: &User,
    secure: bool,
) -> Result<HeaderValue, Refusal> {
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
    Ok(auth::session_cookie(&value, ttl, secure))
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(st): State<Arc<PortalState>>,
    client: Client,
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
        auth::clear_session_cookie(cookies_secure(&st, &headers, &client)),
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
    State(st): State<Arc<PortalState>>,
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
                let rotate = form(
                    &format!("/portal/keys/{}/rotate", k.id),
                    &s.session.csrf,
                    "",
                    "Rotate",
                    false,
                );
                let revoke = form(
                    &format!("/portal/keys/{}/revoke", k.id),
                    &s.session.csrf,
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
        esc(&s.session.csrf)
    ));
    Ok(Html(page("Your API keys", Some(&s.viewer()), &body)))
}

async fn create_key(
    State(st): State<Arc<PortalState>>,
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

/// Whether the usage snippet should say https: like [`cookies_secure`], except that any
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
    State(st): State<Arc<PortalState>>,
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

/// `POST /portal/keys/{id}/rotate`: a new secret for the same key id (history stays joined),
/// shown once; the old secret stops working with the directory refresh, before the reply.
async fn rotate_key(
    State(st): State<Arc<PortalState>>,
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
        return Err(Refusal::Forbidden("this key is not yours to rotate"));
    }
    if k.revoked_at.is_some() {
        return Err(Refusal::BadRequest(
            "this key is revoked and cannot be rotated; create a new key instead".into(),
        ));
    }
    let minted = fairgate_control::keys::rotate_key_secret(&st, &s.user.email, &mut k).await?;
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

// ---- off-boarding -------------------------------------------------------------------

async fn disable_user(
    State(st): State<Arc<PortalState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Refusal> {
    set_user_disabled(&st, &id, &headers, &f.csrf, true).await
}

async fn enable_user(
    State(st): State<Arc<PortalState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Refusal> {
    set_user_disabled(&st, &id, &headers, &f.csrf, false).await
}

/// `POST /portal/operator/users/{id}/disable|enable` (operators): off-boarding. Disabling ends
/// the person's sessions and stops their API keys at once on this replica (the directory is
/// refreshed before the answer; other replicas follow at their next refresh). The keys
/// themselves are not changed, so enabling the person again restores exactly what was there.
async fn set_user_disabled(
    st: &PortalState,
    id: &str,
    headers: &HeaderMap,
    csrf: &str,
    disabled: bool,
) -> Result<Response, Refusal> {
    let s = signed_in(st, headers).await?;
    require(&s, Role::Operator)?;
    check_post(&s, headers, csrf)?;
    let Some(mut u) = st.store.get_user(id).await? else {
        return Err(Refusal::NotFound("There is no such user.".into()));
    };
    if u.id == s.user.id && disabled {
        return Err(Refusal::BadRequest(
            "you cannot disable your own account".into(),
        ));
    }
    let before = serde_json::to_string(&u).ok();
    u.disabled = disabled;
    if !st.store.update_user(&u).await? {
        return Err(Refusal::NotFound("There is no such user.".into()));
    }
    if disabled {
        st.store.delete_user_sessions(&u.id).await?;
    }
    refresh_directory(st).await?;
    record_audit(
        st,
        &s.user.email,
        if disabled {
            "user.disable"
        } else {
            "user.enable"
        },
        format!("user:{}", u.email),
        before,
        serde_json::to_string(&u).ok(),
    )
    .await;
    tracing::info!(email = %u.email, disabled, by = %s.user.email, "portal user state changed");
    let back = match &u.tenant {
        Some(t) => format!("/portal/tenant?tenant={}", reports::urlencode(t)),
        None => "/portal/tenant".to_owned(),
    };
    Ok(redirect(&back))
}

// ---- usage and history --------------------------------------------------------------

/// The signed-in person's ledger rows (their keys' requests), newest first.
async fn my_rows(
    st: &PortalState,
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
    State(st): State<Arc<PortalState>>,
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
    State(st): State<Arc<PortalState>>,
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
    State(st): State<Arc<PortalState>>,
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
         <label>Message <textarea id=\"prompt\" class=\"full\" rows=\"3\" required>Hello!</textarea></label>\
         <button class=\"primary\" type=\"submit\">Send</button></form>\
         <h2>Reply</h2><pre id=\"reply\" class=\"wrap\" aria-live=\"polite\"></pre><p id=\"meta\" class=\"muted\"></p>"
    );
    Ok(Html(page("Playground", Some(&s.viewer()), &body)))
}

// ---- audit log --------------------------------------------------------------------

async fn audit_page(
    State(st): State<Arc<PortalState>>,
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
