//! OpenID Connect sign-in for the portal: the authorization-code flow with PKCE (S256),
//! `state` and `nonce`, on the `openidconnect` crate (discovery, the authorization URL, the
//! code exchange, ID-token and userinfo verification); this module keeps the flow's state and
//! maps the verified claims to portal users.
//!
//! - `GET /portal/oidc/start` reads the provider's discovery document and key set (cached),
//!   mints `state`, `nonce` and a PKCE verifier, keeps them server-side in a bounded,
//!   short-lived map keyed by `state`, binds the browser to that `state` with a short-lived
//!   HttpOnly cookie, and redirects (303) to the authorization endpoint.
//! - `GET /portal/oidc/callback` requires the cookie to equal the `state` parameter and the
//!   pending entry to exist (it is consumed: one use), exchanges the code (with the verifier)
//!   at the token endpoint, verifies the ID token (RS256/384/512, PS256/384/512 or ES256/384
//!   against the provider's JWKS by `kid`, re-reading the key set once for an unknown `kid`;
//!   `iss`, `aud`, `azp`, `exp` and `iat` with 60 s of clock skew, `nonce`), maps its claims
//!   to a portal user (by subject, else by verified email, else a new user) and starts a
//!   session exactly like a password sign-in.
//!
//! Every failure answers a 4xx page (5xx only for the gateway's own faults) and is logged
//! without codes, tokens, verifiers or secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use fairgate_types::{now_millis, Role, User};
use http::{header, HeaderMap, HeaderValue};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim,
    CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreResponseType, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthType, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError,
    Client, ClientId, ClientSecret, CsrfToken, DiscoveryError, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenFields, IdTokenVerifier,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse, SubjectIdentifier, TokenResponse, UserInfoClaims, UserInfoError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{auth, cookies_secure, redirect, start_session, Client as Peer, Refusal};
use crate::PortalState;

pub use fairgate_gateway::config::OidcConfig;

/// Name of the cookie that binds a pending sign-in to the browser that started it.
pub const STATE_COOKIE: &str = "fg_oidc_state";
/// Path of that cookie: only the OIDC routes see it.
const STATE_COOKIE_PATH: &str = "/portal/oidc";
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
/// Random bytes in `state` and `nonce` (43 base64url characters).
const TOKEN_BYTES: u32 = 32;
/// ID-token signature algorithms accepted (never the client-secret HMACs, never `none`).
const ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// The claims beyond OpenID's standard ones (`groups`, roles, whatever the mappings name).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct OtherClaims {
    #[serde(flatten)]
    rest: Map<String, Value>,
}
impl AdditionalClaims for OtherClaims {}

type Tokens = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;
type OidcIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
/// A client made from discovery: authorization endpoint set, token and userinfo maybe.
type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Serialize, Deserialize)]
struct Pending {
    nonce: String,
    verifier: String,
    /// When it was made (local entries expire on it; shared ones carry a Redis TTL).
    #[serde(skip, default = "Instant::now")]
    at: Instant,
}

/// Where a pending sign-in is shared under `[cluster]`: keyed by a hash of the state, so the
/// store never holds the value the browser presents.
fn pending_key(state: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("oidc:{hex}")
}

/// Keeps a sign-in in progress where the callback will find it: in Redis under `[cluster]`
/// (the provider may send the browser back to any replica), else (or if Redis fails) here.
async fn remember_pending(st: &PortalState, state: String, p: Pending) {
    if let Some(c) = &st.gateway.cluster {
        if let Ok(json) = serde_json::to_string(&p) {
            match c.put(&pending_key(&state), &json, PENDING_TTL).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "sign-in state kept on this replica only (redis)")
                }
            }
        }
    }
    st.portal.oidc.insert_pending(state, p);
}

/// Takes the pending sign-in for `state` (once), from Redis or from this replica.
async fn recall_pending(st: &PortalState, state: &str) -> Option<Pending> {
    if let Some(c) = &st.gateway.cluster {
        match c.take(&pending_key(state)).await {
            Ok(Some(json)) => return serde_json::from_str(&json).ok(),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "sign-in state not read from redis"),
        }
    }
    st.portal.oidc.take_pending(state)
}

/// The provider's discovery document with its key set, and when each was read.
struct Provider {
    meta: CoreProviderMetadata,
    at: Instant,
    keys_at: Instant,
}

/// In-memory OIDC state: pending sign-ins and the provider's cached metadata.
pub struct OidcState {
    pending: Mutex<HashMap<String, Pending>>,
    provider: Mutex<Option<Arc<Provider>>>,
    /// Never follows redirects (a provider's answer is taken as it is).
    http: reqwest::Client,
}

impl Default for OidcState {
    fn default() -> Self {
        OidcState {
            pending: Mutex::new(HashMap::new()),
            provider: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error with its sources, for logs and 5xx pages (never holds tokens or secrets).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl OidcState {
    fn insert_pending(&self, state: String, p: Pending) {
        let mut map = lock(&self.pending);
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
        lock(&self.pending)
            .remove(state)
            .filter(|p| p.at.elapsed() < PENDING_TTL)
    }

    /// Pending sign-ins held now.
    pub fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// The provider's metadata and keys, read at most once per [`META_TTL`].
    async fn provider(&self, cfg: &OidcConfig) -> Result<Arc<Provider>, String> {
        if let Some(p) = &*lock(&self.provider) {
            if p.at.elapsed() < META_TTL {
                return Ok(p.clone());
            }
        }
        let meta = self.discover(&cfg.issuer).await?;
        let now = Instant::now();
        let p = Arc::new(Provider {
            meta,
            at: now,
            keys_at: now,
        });
        *lock(&self.provider) = Some(p.clone());
        Ok(p)
    }

    /// Discovery (and the key set) for `issuer`. A provider that spells its issuer with (or
    /// without) a trailing slash where the configuration does not is the same issuer; its own
    /// spelling is what ID tokens must then carry.
    async fn discover(&self, issuer: &str) -> Result<CoreProviderMetadata, String> {
        let url = |s: String| IssuerUrl::new(s).map_err(|e| format!("issuer `{issuer}`: {e}"));
        let found =
            match CoreProviderMetadata::discover_async(url(issuer.into())?, &self.http).await {
                Err(DiscoveryError::Validation(_)) => {
                    let other = match issuer.trim_end_matches('/') {
                        trimmed if trimmed.len() < issuer.len() => trimmed.to_owned(),
                        _ => format!("{issuer}/"),
                    };
                    CoreProviderMetadata::discover_async(url(other)?, &self.http).await
                }
                r => r,
            };
        found.map_err(|e| format!("discovery for `{issuer}`: {}", chain(&e)))
    }

    /// Re-reads the key set after a token named a key it lacks (the provider rotated keys);
    /// `None` if it was read too recently to try again.
    async fn refresh_keys(&self, p: &Provider) -> Result<Option<Arc<Provider>>, String> {
        if p.keys_at.elapsed() < JWKS_MIN_REFRESH {
            return Ok(None);
        }
        let keys = CoreJsonWebKeySet::fetch_async(p.meta.jwks_uri(), &self.http)
            .await
            .map_err(|e| format!("key set: {}", chain(&e)))?;
        let fresh = Arc::new(Provider {
            meta: p.meta.clone().set_jwks(keys),
            at: p.at,
            keys_at: Instant::now(),
        });
        *lock(&self.provider) = Some(fresh.clone());
        Ok(Some(fresh))
    }
}

fn config(st: &PortalState) -> Result<&OidcConfig, Refusal> {
    st.config.portal.oidc.as_ref().ok_or(Refusal::BadRequest(
        "single sign-on is not configured".into(),
    ))
}

/// The client for `meta`: `client_secret_basic` unless the provider lists only other methods
/// (it is the default when the provider does not say, RFC 8414), else the secret in the body.
fn client(cfg: &OidcConfig, meta: &CoreProviderMetadata) -> Result<OidcClient, Refusal> {
    let secret = cfg.client_secret.as_deref().filter(|s| !s.is_empty());
    let basic = meta
        .token_endpoint_auth_methods_supported()
        .is_none_or(|m| m.contains(&CoreClientAuthMethod::ClientSecretBasic));
    let redirect_url = RedirectUrl::new(cfg.redirect_url.clone())
        .map_err(|e| Refusal::Internal(format!("OIDC redirect_url: {e}")))?;
    Ok(OidcClient::from_provider_metadata(
        meta.clone(),
        ClientId::new(cfg.client_id.clone()),
        secret.map(|s| ClientSecret::new(s.to_owned())),
    )
    .set_redirect_uri(redirect_url)
    .set_auth_type(if basic {
        AuthType::BasicAuth
    } else {
        AuthType::RequestBody
    }))
}

/// The ID-token checks (OIDC Core §3.1.3.7) for tokens from `meta`'s issuer and keys, `now_s`
/// being the time: signature by one of [`ALGS`], `iss`, `aud`, `exp` and `iat` within
/// [`LEEWAY_S`]. Other audiences are let through to [`check_azp`].
fn id_token_verifier<'a>(
    client_id: &str,
    meta: &CoreProviderMetadata,
    now_s: i64,
) -> CoreIdTokenVerifier<'a> {
    let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap_or_default();
    IdTokenVerifier::new_public_client(
        ClientId::new(client_id.to_owned()),
        meta.issuer().clone(),
        meta.jwks().clone(),
    )
    .set_allowed_algs(ALGS)
    .set_other_audience_verifier_fn(|_| true)
    .set_time_fn(move || at(now_s - LEEWAY_S))
    .set_issue_time_verifier_fn(move |iat| {
        if iat > at(now_s + LEEWAY_S) {
            Err("the ID token was issued in the future".into())
        } else {
            Ok(())
        }
    })
}

/// A token for several audiences must name this client as its authorized party.
fn check_azp(c: &Map<String, Value>, client_id: &str) -> Result<(), &'static str> {
    if let Some(Value::Array(v)) = c.get("aud") {
        if v.len() > 1 && c.get("azp").and_then(Value::as_str) != Some(client_id) {
            return Err("the ID token is for another authorized party");
        }
    }
    Ok(())
}

/// Why a verified-looking ID token is refused, for the page (no token contents).
fn id_token_problem(e: &ClaimsVerificationError) -> &'static str {
    match e {
        ClaimsVerificationError::InvalidIssuer(_) => "the ID token is from another issuer",
        ClaimsVerificationError::InvalidAudience(_) => "the ID token is for another client",
        ClaimsVerificationError::Expired(_) => {
            "the ID token has expired or was issued in the future"
        }
        ClaimsVerificationError::InvalidNonce(_) => {
            "the ID token's nonce does not match this sign-in"
        }
        ClaimsVerificationError::SignatureVerification(_) => {
            "the ID token signature does not verify"
        }
        _ => "the ID token is not acceptable",
    }
}

fn state_cookie(value: &str, secure: bool) -> HeaderValue {
    auth::set_cookie(
        STATE_COOKIE,
        value,
        STATE_COOKIE_PATH,
        PENDING_TTL.as_secs(),
        secure,
    )
    .unwrap_or_else(|| clear_state_cookie(secure))
}

fn clear_state_cookie(secure: bool) -> HeaderValue {
    auth::set_cookie(STATE_COOKIE, "", STATE_COOKIE_PATH, 0, secure)
        .unwrap_or_else(|| HeaderValue::from_static("fg_oidc_state=; Path=/portal/oidc; Max-Age=0"))
}

/// `GET /portal/oidc/start`.
pub async fn start(
    State(st): State<Arc<PortalState>>,
    client: Peer,
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
    let p = st.portal.oidc.provider(cfg).await.map_err(provider_down)?;
    let (url, state, pending) = authorization(cfg, &p.meta)?;
    remember_pending(st, state.clone(), pending).await;
    let mut resp = redirect(url.as_str());
    resp.headers_mut()
        .insert(header::SET_COOKIE, state_cookie(&state, secure));
    Ok(resp)
}

/// A new sign-in: the authorization URL (code flow, the configured scopes after `openid`,
/// fresh `state` and `nonce`, PKCE S256), its `state`, and what the callback will need.
fn authorization(
    cfg: &OidcConfig,
    meta: &CoreProviderMetadata,
) -> Result<(openidconnect::url::Url, String, Pending), Refusal> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client(cfg, meta)?
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            || CsrfToken::new_random_len(TOKEN_BYTES),
            || Nonce::new_random_len(TOKEN_BYTES),
        )
        .add_scopes(
            cfg.scopes
                .iter()
                .filter(|s| *s != "openid")
                .map(|s| Scope::new(s.clone())),
        )
        .set_pkce_challenge(challenge)
        .url();
    let pending = Pending {
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        at: Instant::now(),
    };
    Ok((url, state.secret().clone(), pending))
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
    client: Peer,
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
    let cookie = auth::cookie_from_headers(headers, STATE_COOKIE);
    if !cookie.as_deref().is_some_and(|c| auth::csrf_ok(c, &state)) {
        return Err(refuse(
            "this sign-in was not started from this browser (state mismatch); start again",
        ));
    }
    let Some(pending) = recall_pending(st, &state).await else {
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
    let p = st.portal.oidc.provider(cfg).await.map_err(provider_down)?;
    if q.iss
        .as_deref()
        .is_some_and(|i| i != p.meta.issuer().as_str())
    {
        return Err(refuse("the response comes from another issuer"));
    }
    let client = client(cfg, &p.meta)?;
    let tokens = exchange(st, &client, code, pending.verifier).await?;
    let id_token = tokens
        .id_token()
        .ok_or_else(|| refuse("the token response has no ID token"))?;
    let mut claims = verify_id_token(st, cfg, p.clone(), id_token, &pending.nonce).await?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse("the ID token has no subject"))?
        .to_owned();
    // Providers may keep profile claims (the e-mail, or whether it is verified) out of the
    // ID token; ask the userinfo endpoint.
    if !claims.contains_key(&cfg.user_claim) || !claims.contains_key("email_verified") {
        if let Ok(req) = client.user_info(
            tokens.access_token().clone(),
            Some(SubjectIdentifier::new(sub.clone())),
        ) {
            let answer: Result<UserInfoClaims<OtherClaims, CoreGenderClaim>, _> =
                req.request_async(&st.portal.oidc.http).await;
            let extra = match answer {
                Ok(c) => to_map(&c),
                Err(UserInfoError::Request(e)) => {
                    return Err(provider_down(format!("userinfo: {}", chain(&e))))
                }
                Err(UserInfoError::ClaimsVerification(
                    ClaimsVerificationError::InvalidSubject(_),
                )) => return Err(refuse("userinfo is for another subject")),
                Err(UserInfoError::Response(..)) => {
                    return Err(refuse("the userinfo endpoint refused the access token"))
                }
                Err(_) => return Err(refuse("userinfo is not a JSON object")),
            };
            merge_userinfo(&mut claims, extra);
        }
    }
    let user = map_user(st, cfg, p.meta.issuer().as_str(), &sub, &claims).await?;
    if let Some(old) = auth::session_from_headers(headers) {
        let _ = st.store.delete_session(&auth::hash_session_id(&old)).await;
    }
    let cookie = start_session(st, &user, secure).await?;
    tracing::info!(email = %user.email, role = user.role.as_str(), "portal SSO sign-in");
    let mut resp = redirect("/portal");
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// The code for tokens at the token endpoint, with the PKCE verifier.
async fn exchange(
    st: &PortalState,
    client: &OidcClient,
    code: String,
    verifier: String,
) -> Result<Tokens, Refusal> {
    let req = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| provider_down(format!("no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier));
    match req.request_async(&st.portal.oidc.http).await {
        Ok(t) => Ok(t),
        Err(RequestTokenError::Request(e)) => {
            Err(provider_down(format!("token endpoint: {}", chain(&e))))
        }
        Err(RequestTokenError::Parse(e, _)) => {
            // Where it broke only: the body holds tokens.
            tracing::info!(at = %e.path(), "OIDC token response malformed");
            Err(refuse("the token response is malformed"))
        }
        Err(e) => {
            // The error code only: descriptions may echo request data.
            let err = match &e {
                RequestTokenError::ServerResponse(r) => r.error().to_string(),
                _ => "unknown".into(),
            };
            tracing::info!(error = err, "OIDC code exchange refused");
            Err(Refusal::BadRequest(
                "Single sign-on failed: the provider refused the authorization code; start again."
                    .into(),
            ))
        }
    }
}

/// Claims as a JSON object (standard and other claims alike), for the configurable mappings.
fn to_map(claims: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Verifies `token` (see [`id_token_verifier`]) and its `nonce`; returns its claims. A token
/// signed by a key the cached set lacks re-reads the set once (key rotation).
async fn verify_id_token(
    st: &PortalState,
    cfg: &OidcConfig,
    mut p: Arc<Provider>,
    token: &OidcIdToken,
    nonce: &str,
) -> Result<Map<String, Value>, Refusal> {
    let nonce = Nonce::new(nonce.to_owned());
    let mut refreshed = false;
    loop {
        let verifier = id_token_verifier(&cfg.client_id, &p.meta, now_millis() / 1000);
        match token.claims(&verifier, &nonce) {
            Ok(c) => {
                let claims = to_map(c);
                check_azp(&claims, &cfg.client_id).map_err(refuse)?;
                return Ok(claims);
            }
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if !refreshed => {
                refreshed = true;
                match st
                    .portal
                    .oidc
                    .refresh_keys(&p)
                    .await
                    .map_err(provider_down)?
                {
                    Some(fresh) => p = fresh,
                    None => return Err(refuse("the ID token signature does not verify")),
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "ID token refused");
                return Err(refuse(id_token_problem(&e)));
            }
        }
    }
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
    use openidconnect::core::CoreRsaPrivateSigningKey;
    use openidconnect::{IdTokenClaims, JsonWebKeyId, PrivateSigningKey};
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// A throwaway RSA key for signing test ID tokens (not used anywhere else).
    const TEST_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEArsTtnuFgGOreXL3mL4wXOpFj6+NM6fBD7S9Z71qiumotZBD1
8C1tiEq2QRRnK8LBH/W7kfWlyb9Q+YExlc0hwtuuKFRdang14GG47Haj8i/rEtpg
DG+L9Rsz+CfQvcfPafHvwspLRVXVz/YSLsm4aezFW/6cVkv86/Ftqvdh6RpBUQZf
D4z8+Asy4K3bbRxhjt2ZgD33G/Jdl42175m0TWoeSlWNax4ioKJQJIL3Cmxuyt7E
85cywGI/WO1k7cLKCVwAfcMhgjr4hdt34uJIpDLy66UebVNIOLDDEVl6KIAmQp/P
22WCldZpJOe/a4u2esQiL1tXHHvV6lE71Ufo3QIDAQABAoIBAC1PcwexCLgNFG9Y
8He9Szxs+0np2UQBfardjuSGTBAmfPQnjYuiS3Z9YDkJMCJhUK6Xh/S0ijH+/uBh
BVkAINOjHsjn7nwvBFDTJR1xONoOYFS39xTiSpfWYKfisrSxO+4Mwotu5Qrp0RAk
jNxCgiQ8NYK/RQr+kmkdY8BieKj1LoApbLzzXWEsm1OUPgwA3zzjqXEq+p7rwUiU
MX7OOrZuawReN2v3du7ty6fvSs34AbBYIL0QpQ52qlbv+v//WimA3VVixmYsYDBU
Z8/9ezRtaaRGKbwDbfC1QA380JxzPzIjl1WumsRmpmaJWNBIF4NiOt72hiaeEkW6
tVBn1kUCgYEA53erYpff/oTCbZzIr6YoBN0bu3Fb9+xQ53FQhvUCgqqYLPTsBMO+
0PP+O+Ou2b/99XwiJN8Rq3HP6LNVygoS9UO7zbsawKSq75oMw3embutpfawgvtuc
r0bb+6hbTHkboyecFop25WgHV8WHgrRZlEo6oXgvurvZMK8n87UdgF8CgYEAwUri
h1UgQ9reZDO8KjECzrk3hOFcEjtkaGNrB9m0NGnV4iojChcE3+JMQtBPfDzfz72S
KnNkNsnOo4YNdV+XRRUDKNPcxNWgNgz15DCTBie6xE7u8M98FCTQeTHdjMCtJ43I
FRV6unvZPa5j2RHDiAD9e7IC9Xr724zHRYRysEMCgYA3AGu8SOSUIU3mKAxUGMKH
rVbKqrw05HWxGW8OMqg/DnSMskJnO3BbTK9L4eWJnqKlM7MVWeBkAe5qmDq5gL1S
hJ7a2ywXPMnVl6CSzhrBXrU5hK5fS+YmjEr3uODBAkI7+cyQWqS4DIk6JRj3SQ3E
PANEnT+SOtL4S5bNxWrWNwKBgCkLGaba8Ir4ApkMUzwyRAJZWeyhXceRTPTNh4CX
PaiTgJMRl3chBCv2BXN6gCZFVtDp1AunjPQFThdy85Ckx54npBAbTJmPMwHHJr9Z
gR6heQsOJ7aCmDo+xvW1HPIyR5JKjN3NPc4zViG+0fzZxMcwTqLhXbd6cdhgwD+G
rEO5AoGAK7VtY9cYQymM6NgQjvmpgHam8gphw0EZC5eb18b//lIaZbN1IabtpcQo
nQiY9EtPkm6JJfLGDeecPVwEPHMZUlEC9TZcsHoM3fNUSsYMe2egfQ29Q9bpGQfj
2Z/pEFtWApGldeNu3TdeW4MZ5TeqTqgPJ8CtQLnFU2VCQt5mUyE=
-----END RSA PRIVATE KEY-----";

    const ISSUER: &str = "https://idp.example";

    fn signing_key(kid: &str) -> CoreRsaPrivateSigningKey {
        CoreRsaPrivateSigningKey::from_pem(TEST_KEY, Some(JsonWebKeyId::new(kid.into()))).unwrap()
    }

    /// Provider metadata for [`ISSUER`] whose key set holds the test key as `kid`.
    fn metadata(issuer: &str, kid: &str) -> CoreProviderMetadata {
        let url = |p: &str| format!("{}{p}", issuer.trim_end_matches('/'));
        CoreProviderMetadata::new(
            IssuerUrl::new(issuer.into()).unwrap(),
            openidconnect::AuthUrl::new(url("/auth")).unwrap(),
            openidconnect::JsonWebKeySetUrl::new(url("/jwks")).unwrap(),
            vec![openidconnect::ResponseTypes::new(vec![
                CoreResponseType::Code,
            ])],
            vec![openidconnect::core::CoreSubjectIdentifierType::Public],
            vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
            openidconnect::EmptyAdditionalProviderMetadata {},
        )
        .set_jwks(key_set(kid))
    }

    fn key_set(kid: &str) -> CoreJsonWebKeySet {
        CoreJsonWebKeySet::new(vec![signing_key(kid).as_verification_key()])
    }

    /// An RS256 ID token with these claims, signed by the test key as `kid`.
    fn id_token(claims: Value, kid: &str) -> OidcIdToken {
        let claims: IdTokenClaims<OtherClaims, CoreGenderClaim> =
            serde_json::from_value(claims).unwrap();
        OidcIdToken::new(
            claims,
            &signing_key(kid),
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            None,
            None,
        )
        .unwrap()
    }

    fn good_claims() -> Value {
        json!({
            "iss": ISSUER, "aud": "c", "exp": 1000, "iat": 900, "nonce": "n", "sub": "s",
            "email": "a@x.org", "email_verified": "true", "name": "A",
            "groups": ["staff", "lab"], "roles": "admin", "custom": {"deep": 1}
        })
    }

    /// Verifies `token` as the callback does (no key refresh), `now_s` being the time.
    fn verify(
        token: &OidcIdToken,
        meta: &CoreProviderMetadata,
        now_s: i64,
        nonce: &str,
    ) -> Result<Map<String, Value>, String> {
        let verifier = id_token_verifier("c", meta, now_s);
        let c = token
            .claims(&verifier, &Nonce::new(nonce.into()))
            .map_err(|e| id_token_problem(&e).to_owned())?;
        let c = to_map(c);
        check_azp(&c, "c").map_err(str::to_owned)?;
        Ok(c)
    }

    #[test]
    fn id_token_claim_checks() {
        let meta = metadata(ISSUER, "k1");
        let good = id_token(good_claims(), "k1");
        let c = verify(&good, &meta, 950, "n").unwrap();
        // Every claim reaches the mappings: standard ones and the provider's own.
        assert_eq!(c["sub"], "s");
        assert_eq!(c["email"], "a@x.org");
        assert!(email_is_verified(&c, "a@x.org"), "{c:?}");
        assert_eq!(c["name"], "A");
        assert_eq!(claim_values(&c, "groups"), ["staff", "lab"]);
        assert_eq!(claim_values(&c, "roles"), ["admin"]);
        assert_eq!(c["custom"], json!({"deep": 1}));

        let with = |k: &str, v: Value| {
            let mut c = good_claims();
            c[k] = v;
            id_token(c, "k1")
        };
        assert!(verify(&with("iss", json!("https://evil")), &meta, 950, "n").is_err());
        // The issuer is compared as the provider spells it.
        assert!(verify(&with("iss", json!(format!("{ISSUER}/"))), &meta, 950, "n").is_err());
        assert!(verify(&with("aud", json!("other")), &meta, 950, "n").is_err());
        let mut multi = good_claims();
        multi["aud"] = json!(["x", "c"]);
        assert!(verify(&id_token(multi.clone(), "k1"), &meta, 950, "n").is_err());
        multi["azp"] = json!("c");
        assert!(verify(&id_token(multi, "k1"), &meta, 950, "n").is_ok());
        // 60 s of clock skew either way, no more.
        assert!(verify(&good, &meta, 1000 + LEEWAY_S - 1, "n").is_ok());
        assert!(verify(&good, &meta, 1000 + LEEWAY_S + 1, "n").is_err());
        assert!(verify(&good, &meta, 900 - LEEWAY_S, "n").is_ok());
        assert!(verify(&good, &meta, 900 - LEEWAY_S - 1, "n").is_err());
        assert!(verify(&good, &meta, 950, "other").is_err());
        let mut no_nonce = good_claims();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert!(verify(&id_token(no_nonce, "k1"), &meta, 950, "n").is_err());
    }

    #[test]
    fn id_token_signature_checks() {
        let meta = metadata(ISSUER, "k1");
        // A key the set does not have: the error that makes the callback re-read the set.
        let rotated = id_token(good_claims(), "k2");
        let verifier = id_token_verifier("c", &meta, 950);
        assert!(matches!(
            rotated.claims(&verifier, &Nonce::new("n".into())),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey
            ))
        ));
        assert!(verify(&rotated, &metadata(ISSUER, "k2"), 950, "n").is_ok());

        // A payload changed after signing.
        let good = serde_json::to_value(id_token(good_claims(), "k1")).unwrap();
        let jwt = good.as_str().unwrap();
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let evil = serde_json::to_vec(&json!({
            "iss": ISSUER, "aud": "c", "exp": 1000, "iat": 900, "nonce": "n", "sub": "admin"
        }))
        .unwrap();
        parts[1] = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, evil);
        let forged: OidcIdToken = serde_json::from_value(json!(parts.join("."))).unwrap();
        assert_eq!(
            verify(&forged, &meta, 950, "n").unwrap_err(),
            "the ID token signature does not verify"
        );
        // Unsigned (`alg: none`) tokens are refused.
        let none = format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                br#"{"alg":"none"}"#
            ),
            parts[1]
        );
        let none: OidcIdToken = serde_json::from_value(json!(none)).unwrap();
        assert!(verify(&none, &meta, 950, "n").is_err());
    }

    /// A provider on loopback: discovery (its issuer spelled with a trailing slash) and a key
    /// set that holds `kid` the first time and `kid2` after.
    async fn serve_provider(kid: &'static str, kid2: &'static str) -> String {
        use axum::routing::get;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let meta = serde_json::to_value(metadata(&format!("{base}/"), kid)).unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(meta) }),
            )
            .route(
                "/jwks",
                get(move || async move {
                    let first = reads.fetch_add(1, Ordering::SeqCst) == 0;
                    axum::Json(key_set(if first { kid } else { kid2 }))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[tokio::test]
    async fn discovery_trailing_slash_and_key_rotation() {
        let base = serve_provider("k1", "k2").await;
        let state = OidcState::default();
        // Configured without the slash the provider uses: the same issuer, its spelling kept.
        let cfg: OidcConfig = toml::from_str(&format!(
            "issuer = \"{base}\"\nclient_id = \"c\"\nredirect_url = \"https://gw/portal/oidc/callback\""
        ))
        .unwrap();
        let p = state.provider(&cfg).await.unwrap();
        assert_eq!(p.meta.issuer().as_str(), format!("{base}/"));
        assert_eq!(p.meta.jwks().keys().len(), 1);
        // Cached: the same metadata the next time.
        assert!(Arc::ptr_eq(&p, &state.provider(&cfg).await.unwrap()));
        // Keys just read are not read again for an unknown kid...
        assert!(state.refresh_keys(&p).await.unwrap().is_none());
        // ...but later they are, and the new set is cached.
        let old = Arc::new(Provider {
            meta: p.meta.clone(),
            at: p.at,
            keys_at: Instant::now() - JWKS_MIN_REFRESH,
        });
        let fresh = state.refresh_keys(&old).await.unwrap().unwrap();
        let mut claims = good_claims();
        claims["iss"] = json!(format!("{base}/"));
        let rotated = id_token(claims, "k2");
        assert!(verify(&rotated, &p.meta, 950, "n").is_err());
        assert!(verify(&rotated, &fresh.meta, 950, "n").is_ok());
        assert!(Arc::ptr_eq(&fresh, &state.provider(&cfg).await.unwrap()));

        // Configured with a slash the provider does not use: the same issuer too.
        let plain = serve_provider("k1", "k1").await;
        let mut cfg = cfg;
        cfg.issuer = format!("{plain}/");
        let p = OidcState::default().provider(&cfg).await.unwrap();
        assert_eq!(p.meta.issuer().as_str(), format!("{plain}/"));
    }

    #[tokio::test]
    async fn authorization_url_carries_pkce_state_and_nonce() {
        let base = serve_provider("k1", "k1").await;
        let state = OidcState::default();
        let cfg: OidcConfig = toml::from_str(&format!(
            "issuer = \"{base}/\"\nclient_id = \"c d\"\nredirect_url = \"https://gw/portal/oidc/callback\"\nscopes = [\"email\", \"openid\", \"groups\"]"
        ))
        .unwrap();
        let p = state.provider(&cfg).await.unwrap();
        let Ok((url, st, pending)) = authorization(&cfg, &p.meta) else {
            panic!("no authorization URL");
        };
        assert_eq!(st.len(), 43);
        assert_eq!(pending.nonce.len(), 43);
        assert_eq!(pending.verifier.len(), 43);
        assert!(url.as_str().starts_with(&format!("{base}/auth?")), "{url}");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "c d");
        assert_eq!(q["redirect_uri"], "https://gw/portal/oidc/callback");
        assert_eq!(q["scope"], "openid email groups");
        assert_eq!(q["state"], st);
        assert_eq!(q["nonce"], pending.nonce);
        assert_eq!(q["code_challenge"], auth::pkce_challenge(&pending.verifier));
        assert_eq!(q["code_challenge_method"], "S256");
    }

    #[test]
    fn state_cookie_attributes() {
        assert_eq!(
            state_cookie("abc", false),
            "fg_oidc_state=abc; HttpOnly; SameSite=Lax; Path=/portal/oidc; Max-Age=600"
        );
        assert_eq!(
            state_cookie("abc", true),
            "fg_oidc_state=abc; HttpOnly; SameSite=Lax; Secure; Path=/portal/oidc; Max-Age=600"
        );
        assert_eq!(
            clear_state_cookie(true),
            "fg_oidc_state=; HttpOnly; SameSite=Lax; Secure; Path=/portal/oidc; Max-Age=0"
        );
        assert_eq!(state_cookie("a;b", false), clear_state_cookie(false));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("fg_session=x; fg_oidc_state = st ; y=1"),
        );
        assert_eq!(
            auth::cookie_from_headers(&h, STATE_COOKIE).as_deref(),
            Some("st")
        );
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
