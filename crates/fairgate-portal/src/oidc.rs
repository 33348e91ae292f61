//! OpenID Connect sign-in for the portal: the authorization-code flow with PKCE (S256),
//! `state` and `nonce`.
//!
//! - `GET /portal/oidc/start` reads the provider's discovery document (cached), mints
//!   `state`, `nonce` and a PKCE verifier, keeps them server-side in a bounded, short-lived
//!   map keyed by `state`, binds the browser to that `state` with a short-lived HttpOnly
//!   cookie, and redirects (303) to the authorization endpoint.
//! - `GET /portal/oidc/callback` requires the cookie to equal the `state` parameter and the
//!   pending entry to exist (it is consumed: one use), exchanges the code (with the verifier)
//!   at the token endpoint, verifies the ID token (RS256/384/512 or ES256/384 against the
//!   provider's JWKS by `kid`; `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`), maps its claims to
//!   a portal user (by subject, else by verified email, else a new user) and starts a session
//!   exactly like a password sign-in.
//!
//! Every failure answers a 4xx page (5xx only for the gateway's own faults) and is logged
//! without codes, tokens, verifiers or secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fairgate_types::{now_millis, Role, User};
use http::{header, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{auth, cookies_secure, redirect, start_session, Client, Refusal};
use crate::PortalState;

pub use fairgate_gateway::config::OidcConfig;

/// Name of the cookie that binds a pending sign-in to the browser that started it.
pub const STATE_COOKIE: &str = "fg_oidc_state";
/// How long a started sign-in may take at the provider.
const PENDING_TTL: Duration = Duration::from_secs(10 * 60);
/// Pending sign-ins kept at once; the oldest are dropped beyond this.
const MAX_PENDING: usize = 10_000;
/// How long discovery documents and key sets are trusted.
const META_TTL: Duration = Duration::from_secs(60 * 60);
/// A key set is re-read for an unknown `kid` at most this often.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_S: i64 = 60;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

struct Pending {
    nonce: String,
    verifier: String,
    at: Instant,
}

#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Clone, Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// In-memory OIDC state: pending sign-ins and the provider's cached metadata.
pub struct OidcState {
    pending: Mutex<HashMap<String, Pending>>,
    discovery: Mutex<Option<(Instant, Arc<Discovery>)>>,
    jwks: Mutex<Option<(Instant, Arc<Jwks>)>>,
    http: reqwest::Client,
}

impl Default for OidcState {
    fn default() -> Self {
        OidcState {
            pending: Mutex::new(HashMap::new()),
            discovery: Mutex::new(None),
            jwks: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

impl OidcState {
    fn insert_pending(&self, state: String, p: Pending) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let now = p.at;
        map.retain(|_, v| now.duration_since(v.at) < PENDING_TTL);
        while map.len() >= MAX_PENDING {
            let Some(oldest) = map.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| k.clone()) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(state, p);
    }

    /// Removes and returns the pending sign-in for `state` if it has not expired.
    fn take_pending(&self, state: &str) -> Option<Pending> {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(state).filter(|p| p.at.elapsed() < PENDING_TTL)
    }

    /// Pending sign-ins held now.
    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn discovery(&self, cfg: &OidcConfig) -> Result<Arc<Discovery>, String> {
        if let Some((at, d)) = &*self.discovery.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < META_TTL {
                return Ok(d.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let d: Discovery = self.get_json(&url).await?;
        if !same_issuer(&d.issuer, &cfg.issuer) {
            return Err(format!(
                "discovery document names issuer `{}`, configured `{}`",
                d.issuer, cfg.issuer
            ));
        }
        let d = Arc::new(d);
        *self.discovery.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), d.clone()));
        Ok(d)
    }

    async fn jwks(&self, d: &Discovery, refresh_for_kid: bool) -> Result<Arc<Jwks>, String> {
        if let Some((at, k)) = &*self.jwks.lock().unwrap_or_else(|e| e.into_inner()) {
            let age = at.elapsed();
            if age < META_TTL && !(refresh_for_kid && age >= JWKS_MIN_REFRESH) {
                return Ok(k.clone());
            }
        }
        let k: Arc<Jwks> = Arc::new(self.get_json(&d.jwks_uri).await?);
        *self.jwks.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), k.clone()));
        Ok(k)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        resp.json::<T>()
            .await
            .map_err(|e| format!("GET {url}: bad JSON: {e}"))
    }
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn config(st: &PortalState) -> Result<&OidcConfig, Refusal> {
    st.config.portal.oidc.as_ref().ok_or(Refusal::BadRequest(
        "single sign-on is not configured".into(),
    ))
}

fn state_cookie(value: &str, secure: bool) -> HeaderValue {
    let s = format!(
        "{STATE_COOKIE}={value}; Max-Age={}; HttpOnly; SameSite=Lax; Path=/portal/oidc{}",
        PENDING_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| clear_state_cookie(secure))
}

fn clear_state_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "fg_oidc_state=; Max-Age=0; HttpOnly; SameSite=Lax; Path=/portal/oidc; Secure",
        )
    } else {
        HeaderValue::from_static(
            "fg_oidc_state=; Max-Age=0; HttpOnly; SameSite=Lax; Path=/portal/oidc",
        )
    }
}

fn state_from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| name.trim() == STATE_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .find(|value| !value.is_empty())
        .map(str::to_owned)
}

/// Percent-encodes a query component (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /portal/oidc/start`.
pub async fn start(
    State(st): State<Arc<PortalState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let secure = cookies_secure(&st, &headers, &client);
    match start_inner(&st, secure).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    }
}

async fn start_inner(st: &PortalState, secure: bool) -> Result<Response, Refusal> {
    let cfg = config(st)?;
    let d = st.portal.oidc.discovery(cfg).await.map_err(provider_down)?;
    let state = auth::random_token();
    let nonce = auth::random_token();
    let (verifier, challenge) = auth::pkce_pair();
    let mut scopes = cfg.scopes.clone();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let sep = if d.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}\
         &code_challenge={}&code_challenge_method=S256",
        d.authorization_endpoint,
        enc(&cfg.client_id),
        enc(&cfg.redirect_url),
        enc(&scopes.join(" ")),
        enc(&state),
        enc(&nonce),
        enc(&challenge),
    );
    st.portal.oidc.insert_pending(
        state.clone(),
        Pending {
            nonce,
            verifier,
            at: Instant::now(),
        },
    );
    let mut resp = redirect(&url);
    resp.headers_mut()
        .insert(header::SET_COOKIE, state_cookie(&state, secure));
    Ok(resp)
}

fn provider_down(e: String) -> Refusal {
    Refusal::Internal(format!("OIDC provider unavailable: {e}"))
}

fn refuse(why: &str) -> Refusal {
    tracing::info!(reason = why, "OIDC sign-in refused");
    Refusal::BadRequest(format!("Single sign-on failed: {why}."))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// RFC 9207 issuer identification, checked when present.
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /portal/oidc/callback`.
pub async fn callback(
    State(st): State<Arc<PortalState>>,
    client: Client,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let secure = cookies_secure(&st, &headers, &client);
    let mut resp = match callback_inner(&st, &headers, q, secure).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    };
    // The state cookie is single-use whatever happened.
    resp.headers_mut()
        .append(header::SET_COOKIE, clear_state_cookie(secure));
    resp
}

async fn callback_inner(
    st: &PortalState,
    headers: &HeaderMap,
    q: CallbackQuery,
    secure: bool,
) -> Result<Response, Refusal> {
    let cfg = config(st)?;
    let Some(state) = q.state.filter(|s| !s.is_empty()) else {
        return Err(refuse("the response carries no state"));
    };
    let cookie = state_from_headers(headers);
    if !cookie.as_deref().is_some_and(|c| auth::csrf_ok(c, &state)) {
        return Err(refuse(
            "this sign-in was not started from this browser (state mismatch); start again",
        ));
    }
    let Some(pending) = st.portal.oidc.take_pending(&state) else {
        return Err(refuse(
            "this sign-in expired or was already used; start again",
        ));
    };
    if let Some(err) = q.error {
        tracing::info!(error = %err, description = ?q.error_description, "OIDC provider returned an error");
        return Err(Refusal::BadRequest(format!(
            "Single sign-on failed: the provider answered `{}`.",
            err.chars().take(64).collect::<String>()
        )));
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return Err(refuse("the response carries no authorization code"));
    };
    let d = st.portal.oidc.discovery(cfg).await.map_err(provider_down)?;
    if q.iss.as_deref().is_some_and(|i| i != d.issuer) {
        return Err(refuse("the response comes from another issuer"));
    }
    let tokens = exchange(st, cfg, &d, &code, &pending.verifier).await?;
    let id_token = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("the token response has no ID token"))?;
    let mut claims = verify_id_token(st, cfg, &d, id_token, &pending.nonce).await?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse("the ID token has no subject"))?
        .to_owned();
    // Providers may keep profile claims (the e-mail, or whether it is verified) out of the
    // ID token; ask the userinfo endpoint.
    if !claims.contains_key(&cfg.user_claim) || !claims.contains_key("email_verified") {
        if let (Some(ui), Some(at)) = (
            d.userinfo_endpoint.as_deref(),
            tokens.get("access_token").and_then(Value::as_str),
        ) {
            let extra = userinfo(st, ui, at).await?;
            if extra.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
                return Err(refuse("userinfo is for another subject"));
            }
            merge_userinfo(&mut claims, extra);
        }
    }
    let user = map_user(st, cfg, &d.issuer, &sub, &claims).await?;
    if let Some(old) = auth::session_from_headers(headers) {
        let _ = st.store.delete_session(&auth::hash_session_id(&old)).await;
    }
    let cookie = start_session(st, &user, secure).await?;
    tracing::info!(email = %user.email, role = user.role.as_str(), "portal SSO sign-in");
    let mut resp = redirect("/portal");
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

async fn exchange(
    st: &PortalState,
    cfg: &OidcConfig,
    d: &Discovery,
    code: &str,
    verifier: &str,
) -> Result<Map<String, Value>, Refusal> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &cfg.redirect_url),
        ("code_verifier", verifier),
    ];
    let mut req = st.portal.oidc.http.post(&d.token_endpoint);
    match cfg.client_secret.as_deref().filter(|s| !s.is_empty()) {
        Some(secret) => {
            let methods = d.token_endpoint_auth_methods_supported.as_deref();
            // client_secret_basic is the default when the provider does not say (RFC 8414).
            let basic = methods.is_none_or(|m| m.iter().any(|x| x == "client_secret_basic"));
            if basic {
                // RFC 6749 §2.3.1: each part form-urlencoded before Basic encoding.
                let creds = format!("{}:{}", enc(&cfg.client_id), enc(secret));
                req = req.header(
                    header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(creds)
                    ),
                );
            } else {
                form.push(("client_id", &cfg.client_id));
                form.push(("client_secret", secret));
            }
        }
        None => form.push(("client_id", &cfg.client_id)),
    }
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let resp = req
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| provider_down(format!("token endpoint: {e}")))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        // The error code only: descriptions may echo request data.
        let err = v.get("error").and_then(Value::as_str).unwrap_or("unknown");
        tracing::info!(%status, error = err, "OIDC code exchange refused");
        return Err(Refusal::BadRequest(
            "Single sign-on failed: the provider refused the authorization code; start again."
                .into(),
        ));
    }
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(refuse("the token response is not JSON")),
    }
}

async fn userinfo(st: &PortalState, url: &str, token: &str) -> Result<Map<String, Value>, Refusal> {
    let resp = st
        .portal
        .oidc
        .http
        .get(url)
        .bearer_auth(token)
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| provider_down(format!("userinfo: {e}")))?;
    if !resp.status().is_success() {
        return Err(refuse("the userinfo endpoint refused the access token"));
    }
    match resp.json::<Value>().await {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(refuse("userinfo is not a JSON object")),
    }
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Verifies signature and claims of `jwt`; returns its claims.
async fn verify_id_token(
    st: &PortalState,
    cfg: &OidcConfig,
    d: &Discovery,
    jwt: &str,
    nonce: &str,
) -> Result<Map<String, Value>, Refusal> {
    let mut parts = jwt.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse("the ID token is not a signed JWT"));
    };
    let header: Value = b64url_decode(h64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refuse("the ID token header is malformed"))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let kid = header.get("kid").and_then(Value::as_str);
    let sig = b64url_decode(s64).ok_or_else(|| refuse("the ID token signature is malformed"))?;
    let signed = &jwt.as_bytes()[..h64.len() + 1 + p64.len()];

    let mut verified = false;
    for refresh in [false, true] {
        let jwks = st
            .portal
            .oidc
            .jwks(d, refresh)
            .await
            .map_err(provider_down)?;
        let candidates: Vec<&Jwk> = jwks
            .keys
            .iter()
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .collect();
        if candidates.is_empty() && !refresh && kid.is_some() {
            continue; // unknown kid: the provider may have rotated keys
        }
        verified = candidates
            .iter()
            .any(|k| verify_sig(alg, k, signed, &sig).unwrap_or(false));
        break;
    }
    if !verified {
        return Err(refuse("the ID token signature does not verify"));
    }
    let claims: Map<String, Value> = b64url_decode(p64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refuse("the ID token payload is malformed"))?;
    check_claims(
        &claims,
        &d.issuer,
        &cfg.client_id,
        nonce,
        now_millis() / 1000,
    )
    .map_err(refuse)?;
    Ok(claims)
}

/// Signature check for the algorithms providers use; `None` for an unsupported pair.
fn verify_sig(alg: &str, k: &Jwk, msg: &[u8], sig: &[u8]) -> Option<bool> {
    use ring::signature as rs;
    match (alg, k.kty.as_str()) {
        ("RS256" | "RS384" | "RS512", "RSA") => {
            let n = b64url_decode(k.n.as_deref()?)?;
            let e = b64url_decode(k.e.as_deref()?)?;
            let params: &rs::RsaParameters = match alg {
                "RS256" => &rs::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &rs::RSA_PKCS1_2048_8192_SHA384,
                _ => &rs::RSA_PKCS1_2048_8192_SHA512,
            };
            Some(
                rs::RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(params, msg, sig)
                    .is_ok(),
            )
        }
        ("ES256" | "ES384", "EC") => {
            let (crv, params): (&str, &'static dyn rs::VerificationAlgorithm) = match alg {
                "ES256" => ("P-256", &rs::ECDSA_P256_SHA256_FIXED),
                _ => ("P-384", &rs::ECDSA_P384_SHA384_FIXED),
            };
            if k.crv.as_deref() != Some(crv) {
                return Some(false);
            }
            let mut point = vec![4u8];
            point.extend(b64url_decode(k.x.as_deref()?)?);
            point.extend(b64url_decode(k.y.as_deref()?)?);
            Some(
                rs::UnparsedPublicKey::new(params, point)
                    .verify(msg, sig)
                    .is_ok(),
            )
        }
        _ => None,
    }
}

/// OIDC Core §3.1.3.7 checks on a verified ID token's claims.
fn check_claims(
    c: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now_s: i64,
) -> Result<(), &'static str> {
    if c.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err("the ID token is from another issuer");
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err("the ID token is for another client");
    }
    if let Some(Value::Array(v)) = c.get("aud") {
        if v.len() > 1 && c.get("azp").and_then(Value::as_str) != Some(client_id) {
            return Err("the ID token is for another authorized party");
        }
    }
    let exp = c
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("the ID token has no expiry")?;
    if exp + LEEWAY_S < now_s {
        return Err("the ID token has expired");
    }
    let iat = c
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("the ID token has no issue time")?;
    if iat - LEEWAY_S > now_s {
        return Err("the ID token was issued in the future");
    }
    let n = c.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !auth::csrf_ok(n, nonce) {
        return Err("the ID token's nonce does not match this sign-in");
    }
    Ok(())
}

/// The claim's values: a string, or the strings of a list.
fn claim_values(c: &Map<String, Value>, name: &str) -> Vec<String> {
    match c.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(v)) => v
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

/// Adds userinfo claims the ID token lacks. `email_verified` from userinfo is about userinfo's
/// `email`: it is taken only when that is the e-mail the merged claims end up with.
fn merge_userinfo(claims: &mut Map<String, Value>, mut extra: Map<String, Value>) {
    let verified = extra.remove("email_verified");
    let extra_email = extra.get("email").cloned();
    for (k, v) in extra {
        claims.entry(k).or_insert(v);
    }
    if let Some(v) = verified {
        if !claims.contains_key("email_verified") && claims.get("email") == extra_email.as_ref() {
            claims.insert("email_verified".into(), v);
        }
    }
}

/// Whether the provider vouches for `email` (the address the account would be found or made
/// by): the `email` claim is that address and `email_verified` is `true` (boolean, or the
/// string `"true"` some providers send). A missing claim is NOT verified: an IdP that omits
/// it lets anyone type any address, and linking by such an address hands over the account.
pub(crate) fn email_is_verified(c: &Map<String, Value>, email: &str) -> bool {
    let claimed = c
        .get("email")
        .and_then(Value::as_str)
        .map(|e| e.trim().to_lowercase());
    let verified = match c.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    verified && claimed.as_deref() == Some(email)
}

/// Finds, links or creates the portal user for a verified identity.
///
/// A known subject signs in as its user. A new subject needs a verified e-mail (see
/// [`email_is_verified`]): then it is linked to the account with that e-mail, or an account
/// is created (`create_users`). With an unverified or missing e-mail it is refused with a
/// page saying why: never linked (that would let a stranger claim an operator's account) and
/// never created either (the address would be squatted before its owner arrives).
async fn map_user(
    st: &PortalState,
    cfg: &OidcConfig,
    issuer: &str,
    sub: &str,
    c: &Map<String, Value>,
) -> Result<User, Refusal> {
    let subject = format!("{issuer}|{sub}");
    let email = c
        .get(&cfg.user_claim)
        .and_then(Value::as_str)
        .map(|e| e.trim().to_lowercase())
        .filter(|e| e.contains('@'));

    let mut groups = cfg
        .tenant_claim
        .as_deref()
        .map(|t| claim_values(c, t))
        .unwrap_or_default();
    let roles = cfg
        .roles_claim
        .as_deref()
        .map(|r| claim_values(c, r))
        .unwrap_or_default();
    let operator = !cfg.operator_values.is_empty()
        && groups
            .iter()
            .chain(&roles)
            .any(|v| cfg.operator_values.contains(v));
    let mut tenant = None;
    for g in groups.drain(..) {
        if st.store.get_tenant(&g).await?.is_some() {
            tenant = Some(g);
            break;
        }
    }

    let (mut user, mut changed) = match st.store.get_user_by_subject(&subject).await? {
        Some(u) => (u, false),
        None => {
            let Some(email) = email.clone() else {
                return Err(refuse("the provider did not supply an email address"));
            };
            if !email_is_verified(c, &email) {
                tracing::info!(email = %email, "SSO sign-in refused: the provider does not vouch for the email");
                return Err(refuse(
                    "the identity provider does not confirm that this email address is verified \
                     (no `email_verified: true`), so it cannot be used to find or create a portal \
                     account; ask an operator to link your account",
                ));
            }
            match st.store.get_user_by_email(&email).await? {
                Some(mut u) => {
                    if u.oidc_subject.is_some() {
                        return Err(refuse(
                            "this email's portal account is linked to another identity",
                        ));
                    }
                    u.oidc_subject = Some(subject.clone());
                    tracing::info!(email = %u.email, "linking portal account to SSO identity");
                    (u, true)
                }
                None if cfg.create_users => {
                    let u = User {
                        id: uuid::Uuid::now_v7().to_string(),
                        email,
                        name: c.get("name").and_then(Value::as_str).map(str::to_owned),
                        password_hash: None,
                        role: if operator { Role::Operator } else { Role::User },
                        tenant: tenant.clone(),
                        oidc_subject: Some(subject.clone()),
                        disabled: false,
                        created_at: now_millis(),
                    };
                    st.store.create_user(&u).await?;
                    tracing::info!(email = %u.email, role = u.role.as_str(), "created portal user from SSO");
                    return Ok(u);
                }
                None => {
                    return Err(refuse("there is no portal account for this identity"));
                }
            }
        }
    };
    if user.disabled {
        return Err(Refusal::Forbidden("this portal account is disabled"));
    }
    if tenant.is_some() && user.tenant != tenant {
        user.tenant = tenant;
        changed = true;
    }
    if !cfg.operator_values.is_empty() {
        if operator && user.role != Role::Operator {
            user.role = Role::Operator;
            changed = true;
        } else if !operator && user.role == Role::Operator && user.password_hash.is_none() {
            // SSO-only operators lose the role with the group; password operators keep it.
            user.role = Role::User;
            changed = true;
        }
    }
    if changed && !st.store.update_user(&user).await? {
        return Err(Refusal::Internal("the user vanished during sign-in".into()));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn id_token_claim_checks() {
        let good = json!({"iss": "https://idp", "aud": "c", "exp": 1000, "iat": 900, "nonce": "n"});
        assert_eq!(
            check_claims(&claims(good.clone()), "https://idp", "c", "n", 950),
            Ok(())
        );
        let mut bad = good.clone();
        bad["iss"] = json!("https://evil");
        assert!(check_claims(&claims(bad), "https://idp", "c", "n", 950).is_err());
        let mut bad = good.clone();
        bad["aud"] = json!(["x", "c"]);
        assert!(check_claims(&claims(bad.clone()), "https://idp", "c", "n", 950).is_err());
        bad["azp"] = json!("c");
        assert!(check_claims(&claims(bad), "https://idp", "c", "n", 950).is_ok());
        assert!(check_claims(
            &claims(good.clone()),
            "https://idp",
            "c",
            "n",
            1000 + LEEWAY_S + 1
        )
        .is_err());
        assert!(check_claims(
            &claims(good.clone()),
            "https://idp",
            "c",
            "n",
            900 - LEEWAY_S - 1
        )
        .is_err());
        assert!(check_claims(&claims(good), "https://idp", "c", "other", 950).is_err());
    }

    #[test]
    fn email_verified_must_be_explicitly_true() {
        let e = "op@x.org";
        assert!(email_is_verified(
            &claims(json!({"email": "Op@X.org", "email_verified": true})),
            e
        ));
        assert!(email_is_verified(
            &claims(json!({"email": e, "email_verified": "true"})),
            e
        ));
        for c in [
            json!({"email": e}),
            json!({"email": e, "email_verified": false}),
            json!({"email": e, "email_verified": "false"}),
            json!({"email": e, "email_verified": null}),
            json!({"email": e, "email_verified": 1}),
            json!({"email_verified": true}),
            // Verified, but another address than the one the account is looked up by.
            json!({"email": "other@x.org", "email_verified": true}),
        ] {
            assert!(!email_is_verified(&claims(c.clone()), e), "{c}");
        }
    }

    #[test]
    fn userinfo_verification_only_counts_for_its_own_email() {
        let mut c = claims(json!({"sub": "s", "email": "a@x"}));
        merge_userinfo(
            &mut c,
            claims(json!({"sub": "s", "email": "b@x", "email_verified": true})),
        );
        assert!(!email_is_verified(&c, "a@x"));
        let mut c = claims(json!({"sub": "s"}));
        merge_userinfo(
            &mut c,
            claims(json!({"sub": "s", "email": "b@x", "email_verified": true})),
        );
        assert!(email_is_verified(&c, "b@x"));
        // The ID token's own answer wins.
        let mut c = claims(json!({"sub": "s", "email": "a@x", "email_verified": false}));
        merge_userinfo(
            &mut c,
            claims(json!({"sub": "s", "email": "a@x", "email_verified": true})),
        );
        assert!(!email_is_verified(&c, "a@x"));
    }

    #[test]
    fn pending_is_one_time_and_bounded() {
        let s = OidcState::default();
        for i in 0..MAX_PENDING + 5 {
            s.insert_pending(
                format!("s{i}"),
                Pending {
                    nonce: String::new(),
                    verifier: String::new(),
                    at: Instant::now(),
                },
            );
        }
        assert_eq!(s.pending_len(), MAX_PENDING);
        let last = format!("s{}", MAX_PENDING + 4);
        assert!(s.take_pending(&last).is_some());
        assert!(s.take_pending(&last).is_none());
    }

    #[test]
    fn secret_is_not_debug_printed() {
        let c: OidcConfig = toml::from_str(
            "issuer = \"https://idp\"\nclient_id = \"c\"\nclient_secret = \"hunter2\"\nredirect_url = \"https://gw/portal/oidc/callback\"",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.scopes, ["openid", "email", "profile"]);
        assert!(c.create_users);
    }

    /// Real identity providers are https: the client must speak TLS (a client built without
    /// it refuses the URL before connecting, which would show up as a builder error).
    #[tokio::test]
    async fn the_provider_client_speaks_tls() {
        let state = OidcState::default();
        let err = state
            .http
            .get("https://127.0.0.1:9/.well-known/openid-configuration")
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_builder(), "{err:?}");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
    }
}
