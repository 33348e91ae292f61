//! The browser portal at `/portal`: people sign in and manage their own keys, usage and
//! history and see the models they may use; operators watch fair share and telemetry live
//! ([`telemetry`]), manage tenants,
//! groups, limits, budgets and guardrail modes, and watch and change models' backends
//! ([`operator`]).
//! Server-rendered HTML from the same binary; the little script there is (copy button,
//! playground, live views) is one static file, `/portal/static/app.js`.
//!
//! This file holds the state, the router (built from one table, [`route_table`]) and what
//! every page shares; each page lives in the module that owns it.
//!
//! Security rules, enforced here for every route:
//! - every answer carries a Content-Security-Policy without inline script or style,
//!   `X-Frame-Options: DENY`, `nosniff` and `Referrer-Policy: same-origin` ([`security_headers`]);
//! - sign-in is throttled per client address and per account before any hashing
//!   ([`throttle`]), and hashing runs on a bounded blocking pool ([`hashing`]);
//! - a session is a random cookie value (HttpOnly, SameSite=Lax, Secure unless served over
//!   plain loopback: [`cookies_secure`]); only its
//!   SHA-256 is stored, and signing in always mints a new one (no session fixation);
//! - sign-in, roles and CSRF are checked by type (`session`): a handler gets a signed-in
//!   person only from a role extractor (a role too low answers 403), and a state-changing form
//!   only through `CsrfForm`, which wants the session's CSRF token and, when the browser sends
//!   `Origin`, this host;
//! - a key's secret is rendered exactly once, on the page that created it, and never logged.

pub mod auth;
pub mod hashing;
pub mod html;
mod keys;
pub mod limits;
pub mod oidc;
pub mod operator;
pub mod reports;
mod session;
mod signin;
pub mod telemetry;
pub mod throttle;
mod usage;
mod users;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use fairgate_types::{now_millis, Session, User};
use http::{header, HeaderMap, HeaderValue, StatusCode};

use fairgate_gateway::state::AppState;
use html::{esc, page};

/// Portal state that is not in the database.
pub struct Portal {
    /// Sign-in throttle: per replica, or shared through Redis under `[cluster]`.
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
        let mut portal = Portal::new(&gateway.config.portal);
        if let Some(c) = &gateway.cluster {
            // Under `[cluster]` the counters are the fleet's, so spreading guesses over
            // replicas gains nothing.
            portal.throttle = Box::new(throttle::SharedThrottle::new(
                throttle::ThrottleRules::default(),
                c.clone(),
            ));
        }
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

/// Declares every portal route once: [`route_table`] lists them (method, path under
/// `/portal`) for tests that must cover each, and `routes` builds the router from the same
/// list, so the two cannot disagree.
macro_rules! portal_routes {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every portal route: (method, path pattern under `/portal`), as the router has them.
        pub fn route_table() -> &'static [(&'static str, &'static str)] {
            &[$((stringify!($method), $path)),*]
        }

        fn routes() -> Router<Arc<PortalState>> {
            Router::new()$(.route($path, portal_routes!(@method $method)($handler)))*
        }
    };
    (@method GET) => { get };
    (@method POST) => { post };
}

portal_routes! {
    GET "/" => keys::keys_page,
    GET "/static/app.js" => app_js,
    GET "/static/app.css" => app_css,
    GET "/login" => signin::login_page,
    POST "/login" => signin::login,
    POST "/logout" => signin::logout,
    GET "/oidc/start" => oidc::start,
    GET "/oidc/callback" => oidc::callback,
    POST "/keys" => keys::create_key,
    POST "/keys/{id}/revoke" => keys::revoke_key,
    POST "/keys/{id}/rotate" => keys::rotate_key,
    GET "/usage" => usage::usage_page,
    GET "/history" => usage::history_page,
    GET "/playground" => usage::playground_page,
    GET "/models" => reports::models_page,
    GET "/tenant" => reports::tenant_page,
    GET "/export.csv" => reports::export_csv,
    GET "/export-su.csv" => reports::export_su_csv,
    GET "/operator" => operator::fair_share::operator_page,
    GET "/api/scheduler" => operator::fair_share::scheduler_json,
    GET "/operator/telemetry" => telemetry::operator_page,
    GET "/operator/telemetry/live" => telemetry::operator_live,
    GET "/api/telemetry" => telemetry::operator_json,
    GET "/usage/live" => telemetry::my_live,
    GET "/api/telemetry/me" => telemetry::my_json,
    GET "/operator/tenants" => operator::tenants::tenants_page,
    POST "/operator/tenants" => operator::tenants::create_tenant,
    GET "/operator/tenants/{name}" => operator::tenants::tenant_page,
    POST "/operator/tenants/{name}/weight" => operator::tenants::set_weight,
    POST "/operator/tenants/{name}/group" => operator::tenants::set_tenant_group,
    POST "/operator/tenants/{name}/policy" => operator::tenants::set_tenant_policy,
    POST "/operator/tenants/{name}/budgets" => operator::tenants::set_tenant_budget,
    POST "/operator/tenants/{name}/budgets/{period}/remove" => operator::tenants::remove_tenant_budget,
    POST "/operator/tenants/{name}/guardrails" => operator::guardrails::set_tenant_guardrails,
    GET "/operator/keys/{id}" => operator::guardrails::key_page,
    POST "/operator/keys/{id}/guardrails" => operator::guardrails::set_key_guardrails,
    POST "/operator/groups" => operator::groups::create_group,
    POST "/operator/groups/{name}/weight" => operator::groups::set_group_weight,
    GET "/operator/backends" => operator::backends::backends_page,
    GET "/api/backends" => operator::backends::backends_json,
    POST "/operator/models/{model}/backends" => operator::backends::add,
    POST "/operator/models/{model}/backends/drain" => operator::backends::drain,
    POST "/operator/models/{model}/backends/resume" => operator::backends::resume,
    POST "/operator/models/{model}/backends/remove" => operator::backends::remove,
    POST "/operator/users/{id}/disable" => users::disable_user,
    POST "/operator/users/{id}/enable" => users::enable_user,
    GET "/audit" => operator::audit::audit_page,
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

/// The control plane's refusals, as a page: its words for people, internal errors logged.
impl From<fairgate_control::ControlError> for Refusal {
    fn from(e: fairgate_control::ControlError) -> Self {
        use fairgate_control::ControlError;
        match e {
            ControlError::Invalid(m) => Refusal::BadRequest(m),
            e @ ControlError::NotFound(_) => Refusal::NotFound(e.to_string()),
            e @ ControlError::Conflict(_) => Refusal::BadRequest(e.to_string()),
            e @ (ControlError::Store(_) | ControlError::Internal(_)) => {
                Refusal::Internal(e.to_string())
            }
        }
    }
}

fn redirect(to: &str) -> Response {
    Redirect::to(to).into_response()
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

/// A time as pages show it.
fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
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
    fn the_route_table_names_each_route_once() {
        let mut seen = std::collections::BTreeSet::new();
        for &(method, path) in route_table() {
            assert!(matches!(method, "GET" | "POST"), "{method} {path}");
            assert!(path.starts_with('/'), "{path}");
            assert!(seen.insert((method, path)), "{method} {path} twice");
        }
        // Building the router from the table does not panic (no overlapping routes).
        let _ = routes();
    }
}
