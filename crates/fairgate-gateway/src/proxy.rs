//! The OpenAI-compatible request path: authenticate, parse, admit, relay, account.
//!
//! Hops, in order (ARCHITECTURE.md lists the same):
//! 1. [`Tracker::start`]: a ledger row is opened the moment a request arrives. Whatever happens
//!    next (error, upstream failure, client disconnect, panic unwinding) the tracker records
//!    exactly one row: explicitly via `finish`, or from `Drop` as `cancelled`.
//! 2. Identity: the key is checked against the in-memory directory (no database).
//! 3. The body is read under the size limit and parsed once ([`fairgate_relay::parse_request`]).
//! 4. Model lookup and key scope.
//! 5. Admission: a lease on a backend slot ([`crate::upstream::ModelPool::acquire`]).
//! 6. Upstream call; streams get `stream_options.include_usage` and `continuous_usage_stats`
//!    injected when the client did not ask, so usage is always known (even for a stream cut
//!    short), and the relay strips what the client did not ask for on the way back.
//! 7. Relay: non-streams are read whole (they are one JSON document); streams are forwarded
//!    event by event through [`fairgate_relay::StreamRelay`], which counts tokens as they pass.
//! 8. Settle: the row gets the real usage and goes to the batched ledger writer off-path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fairgate_relay::{Endpoint, StreamRelay};
use fairgate_types::{now_millis, LedgerRow, Outcome, Priority, RequestId, Usage, UsageSource};
use futures_util::stream;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::admission::{Admitted, Ask};
use crate::cache::{CacheKey, CachedResponse};
use crate::config::Config;
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::identity::Principal;
use crate::proxy_limits::{AnonymousReason, HeldBytes, ReadError, MAX_ENDPOINT_BYTES};
use crate::router::Strategy;
use crate::state::AppState;
use crate::upstream::{Route, Target};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const QUEUE_WAIT_HEADER: &str = "x-fairgate-queue-wait-ms";
/// Request header choosing the priority class (`interactive` or `batch`).
pub const PRIORITY_HEADER: &str = "x-fairgate-priority";
/// Request header `on`/`off` to opt into or out of the response cache; response header
/// `hit`/`miss` on cacheable requests.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-fairgate-cache");

/// Status recorded for a client that went away before any response status was sent
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// One request's ledger row in the making; records itself exactly once.
pub(crate) struct Tracker {
    st: Arc<AppState>,
    row: LedgerRow,
    start: Instant,
    /// When the upstream call started, to split gateway overhead from upstream time.
    upstream_sent: Option<Instant>,
    /// Gateway time before the upstream call (excluding queue wait).
    overhead_before: Duration,
    /// Prompt tokens as estimated from the request, used when the upstream reports no usage.
    prompt_estimate: u64,
    /// The admission (backend slot, limits, budget) this request holds; settled with the
    /// real usage when the row is recorded, which also frees the slot.
    admitted: Option<Admitted>,
    /// An anonymous failure over its address's row budget: metrics only, no ledger row of its
    /// own (it is counted into the next `anonymous:suppressed` summary row instead).
    suppressed: bool,
    done: bool,
}

impl Tracker {
    pub(crate) fn start(st: &Arc<AppState>, endpoint: &str) -> Tracker {
        Tracker {
            st: st.clone(),
            row: LedgerRow {
                status: CLIENT_CLOSED,
                // Paths are client input of any length: the row keeps a bounded prefix.
                ..LedgerRow::new(
                    RequestId::new(),
                    now_millis(),
                    crate::proxy_limits::truncate_at_char(endpoint, MAX_ENDPOINT_BYTES).to_owned(),
                )
            },
            start: Instant::now(),
            upstream_sent: None,
            overhead_before: Duration::ZERO,
            prompt_estimate: 0,
            admitted: None,
            suppressed: false,
            done: false,
        }
    }

    pub(crate) fn attribute(&mut self, p: &Principal) {
        self.row.tenant = Some(p.tenant().to_owned());
        self.row.user = p.user().map(str::to_owned);
        self.row.key_id = Some(p.key_id().clone());
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn mark_first_token(&mut self) {
        if self.row.ttft_ms.is_none() {
            let t = self.start.elapsed();
            self.row.ttft_ms = Some(t.as_millis() as u64);
            if let Some(m) = &self.row.model {
                self.st
                    .metrics
                    .ttft
                    .with_label_values(&[m])
                    .observe(t.as_secs_f64());
            }
        }
    }

    /// The backend was sent the request but reported no usage (the client left first): the
    /// prompt is charged as estimated, so GPU time spent is neither free nor refunded to fair
    /// share (settling with the estimate keeps the prompt charge admission made).
    fn charge_unreported_work(&mut self) {
        if self.upstream_sent.is_some()
            && self.row.usage_source == UsageSource::None
            && self.prompt_estimate > 0
        {
            self.row.prompt_tokens = self.row.prompt_tokens.max(self.prompt_estimate);
            self.row.usage_source = UsageSource::Estimated;
        }
    }

    fn set_usage(&mut self, usage: Usage, source: UsageSource) {
        self.row.prompt_tokens = usage.prompt_tokens;
        self.row.completion_tokens = usage.completion_tokens;
        self.row.cached_tokens = usage.cached_tokens;
        self.row.usage_source = source;
    }

    /// Ends the request with an error response; records the row.
    pub(crate) fn fail(&mut self, err: ApiError) -> Response {
        self.row.status = err.status().as_u16();
        self.row.outcome = err.outcome();
        self.row.error_class = Some(err.class().to_owned());
        if err.outcome() == Outcome::UpstreamError {
            tracing::warn!(request_id = %self.row.id, error = %err, "upstream failure");
        }
        let mut resp = err.into_response();
        // Headers first: `record` moves the row out.
        self.decorate(resp.headers_mut());
        self.record();
        resp
    }

    fn decorate(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(self.row.id.as_str()) {
            h.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
        }
        h.insert(
            HeaderName::from_static(QUEUE_WAIT_HEADER),
            HeaderValue::from(self.row.queue_ms),
        );
    }

    /// Sends the row to the ledger (off-path) and updates metrics. Idempotent.
    pub(crate) fn record(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(a) = self.admitted.take() {
            let usage = Usage {
                prompt_tokens: self.row.prompt_tokens,
                completion_tokens: self.row.completion_tokens,
                cached_tokens: self.row.cached_tokens,
            };
            self.row.cost = a.settle(&usage);
        }
        self.row.duration_ms = self.elapsed_ms();
        let m = &self.st.metrics;
        let tenant = self.row.tenant.as_deref().unwrap_or("");
        let model = self.row.model.as_deref().unwrap_or("");
        let status = StatusCode::from_u16(self.row.status)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| self.row.status.to_string());
        m.requests
            .with_label_values(&[tenant, model, &status])
            .inc();
        if self.row.prompt_tokens > 0 {
            m.prompt_tokens
                .with_label_values(&[tenant, model])
                .inc_by(self.row.prompt_tokens);
        }
        if self.row.completion_tokens > 0 {
            m.completion_tokens
                .with_label_values(&[tenant, model])
                .inc_by(self.row.completion_tokens);
        }
        if self.row.model.is_some() {
            m.e2e
                .with_label_values(&[model])
                .observe(self.start.elapsed().as_secs_f64());
        }
        if self.upstream_sent.is_some() {
            m.overhead
                .with_label_values(&[model])
                .observe(self.overhead_before.as_secs_f64());
        }
        if self.suppressed {
            return;
        }
        let row = std::mem::replace(&mut self.row, placeholder_row());
        // Never waits: onto the ledger's bounded queue (in order, so a later admin read that
        // flushes sees the row), or, when it is full or the database is down, into the spill
        // file that is replayed later. The response is never held up by the ledger.
        self.st.ledger.record(row);
    }
}

fn placeholder_row() -> LedgerRow {
    LedgerRow::new(RequestId(String::new()), 0, String::new())
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            // The handler future was dropped: the client disconnected before an answer.
            self.row.outcome = Outcome::Cancelled;
            self.row.error_class = Some("client_closed".to_owned());
            self.charge_unreported_work();
            self.record();
        }
    }
}

/// What the typed endpoints and the generic relay share once a request is understood.
struct Plan {
    model: String,
    /// The client did not ask for the final usage chunk (the gateway did).
    strip_usage_chunk: bool,
    /// The client did not ask for usage on every chunk (the gateway did).
    strip_chunk_usage: bool,
    reservation: u64,
    prompt_estimate: u64,
    /// A parsed, non-streamed request whose answer may be cached.
    cache_candidate: bool,
    /// The parsed endpoint (`None` for relayed paths): where prompt prefix hashing can look.
    endpoint: Option<Endpoint>,
    /// The parsed body (typed endpoints): the reservation is recomputed from it once the
    /// model's context length is known.
    parsed: Option<fairgate_relay::ParsedRequest>,
    /// The backend will not see the model name in the body (a relayed request whose model
    /// came from the query or from the only model): it then runs its base model, so the name
    /// must not be one of the pool's adapters.
    model_not_in_body: bool,
    /// Body to send upstream.
    body: Bytes,
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    typed(st, Endpoint::ChatCompletions, addr, req).await
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    typed(st, Endpoint::Completions, addr, req).await
}

pub async fn embeddings(
    State(st): State<Arc<AppState>>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    typed(st, Endpoint::Embeddings, addr, req).await
}

/// Any other model-server path (`/v1/audio/...`, `/v1/rerank`, `/tokenize`, ...): relayed
/// as-is to the model's backend when the path is on `relay.allowed_paths` (an authenticated
/// tenant) or `relay.operator_paths` (the admin token only, see [`operator`]); anything else is
/// a 404 `unknown_url`. Logged in the ledger either way.
pub async fn generic(State(st): State<Arc<AppState>>, addr: ClientAddr, req: Request) -> Response {
    let live = st.live.load_full();
    let path = req.uri().path();
    if live.relay.is_operator(path) {
        return operator(st, addr, req).await;
    }
    if !live.relay.allows(path) {
        return unknown_route(&st, addr, &req);
    }
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers(), addr) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_body_checked(&parts.headers, body, st.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return close_after(t.fail(e)),
    };
    let read = match read_model_of(&parts, &bytes) {
        Ok(r) => r,
        Err(e) => return t.fail(ApiError::BadRequest(e)),
    };
    let (model, in_body) = match read.model.clone() {
        Some(m) => (m, read.source == fairgate_relay::ModelSource::Body),
        None => match st.upstreams.pools.as_slice() {
            // One model: the backend runs it whatever the body says.
            [only] => (only.name.clone(), false),
            _ => {
                return t.fail(ApiError::MissingModel(
                    "cannot tell which model this request is for: put `model` in the JSON body, the multipart form or the `model` query parameter".into(),
                ))
            }
        },
    };
    // A JSON body gets the model the query named, so the backend runs the model checked.
    let (body, in_body) = if read.needs_model_in_body() {
        match fairgate_relay::with_model_set(&bytes, &model) {
            Ok(b) => (b, true),
            Err(e) => return t.fail(ApiError::BadRequest(e)),
        }
    } else {
        (bytes, in_body)
    };
    // A JSON body is roughly its prompt (bytes / 4, as for typed bodies' text); other bodies
    // (audio, forms) have no token estimate. It is reserved, and charged if the client leaves
    // before the backend reports usage.
    let prompt_estimate = match read.body {
        fairgate_relay::BodyKind::Json => {
            fairgate_relay::estimate_text_tokens(std::str::from_utf8(&body).unwrap_or_default())
        }
        _ => 0,
    };
    let plan = Plan {
        model,
        strip_usage_chunk: false,
        strip_chunk_usage: false,
        reservation: prompt_estimate,
        prompt_estimate,
        cache_candidate: false,
        endpoint: None,
        parsed: None,
        model_not_in_body: !in_body,
        body,
    };
    forward(st, t, principal, parts, plan).await
}

/// The model of a request as its backend will read it ([`fairgate_relay::read_model`]).
fn read_model_of(
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<fairgate_relay::ModelRead, fairgate_relay::RequestError> {
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("application/octet-stream"))
        .unwrap_or("");
    fairgate_relay::read_model(ctype, parts.uri.query(), body)
}

async fn typed(st: Arc<AppState>, ep: Endpoint, addr: ClientAddr, req: Request) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers(), addr) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_body_checked(&parts.headers, body, st.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return close_after(t.fail(e)),
    };
    let parsed = match fairgate_relay::parse_request(ep, &bytes) {
        Ok(p) => p,
        Err(e) => return t.fail(ApiError::BadRequest(e)),
    };
    // The backend reads the body only; a query `model` that says otherwise is a request whose
    // meaning depends on who reads it.
    match fairgate_relay::query_model(parts.uri.query().unwrap_or("")) {
        Err(e) => return t.fail(ApiError::BadRequest(e)),
        Ok(Some(q)) if q != parsed.model => {
            return t.fail(ApiError::BadRequest(fairgate_relay::RequestError {
                message: format!(
                    "the `model` query parameter ({q:?}) and the body's `model` ({:?}) disagree; send one",
                    parsed.model
                ),
                param: Some("model".into()),
                code: "ambiguous_model",
            }))
        }
        Ok(_) => {}
    }
    t.row.stream = parsed.stream;
    let reservation = fairgate_relay::reservation_tokens(&parsed, st.config.default_max_tokens);
    // Streams always ask the backend for usage, cumulatively on every chunk where the backend
    // supports it (vLLM), so even a stream that ends early is charged exactly.
    let continuous = st.config.upstream.continuous_usage;
    let wants_continuous = parsed.client_wants_usage && parsed.client_wants_continuous_usage;
    let body = match (parsed.stream, continuous) {
        (false, _) => Ok(bytes),
        (true, true) if parsed.client_wants_usage && wants_continuous => Ok(bytes),
        (true, true) => fairgate_relay::with_stream_usage(&bytes),
        (true, false) if parsed.client_wants_usage => Ok(bytes),
        (true, false) => fairgate_relay::with_include_usage(&bytes),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return t.fail(ApiError::BadRequest(e)),
    };
    let plan = Plan {
        model: parsed.model.clone(),
        strip_usage_chunk: !parsed.client_wants_usage,
        strip_chunk_usage: continuous && !wants_continuous,
        reservation,
        prompt_estimate: parsed.prompt_tokens_estimate,
        cache_candidate: !parsed.stream,
        endpoint: Some(ep),
        parsed: Some(parsed),
        model_not_in_body: false,
        body,
    };
    forward(st, t, principal, parts, plan).await
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the finished response, returned once per failed request"
)]
fn authenticate(
    st: &AppState,
    t: &mut Tracker,
    headers: &HeaderMap,
    addr: ClientAddr,
) -> Result<Principal, Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match st.identity.authenticate(auth) {
        Ok(p) => {
            t.attribute(&p);
            Ok(p)
        }
        Err(f) => {
            match &f.known {
                Some(k) => t.attribute(k),
                // Nobody to bill: rows at a bounded rate per address.
                None => gate_anonymous(st, t, addr, AnonymousReason::Unauthenticated),
            }
            Err(t.fail(f.error))
        }
    }
}

/// Decides whether an anonymous failure gets its own ledger row (see `proxy_limits`).
fn gate_anonymous(st: &AppState, t: &mut Tracker, addr: ClientAddr, reason: AnonymousReason) {
    let per_minute = st.live.load().relay.anonymous_rows_per_minute;
    if !st.proxy_limits.anonymous.admit(addr.0, reason, per_minute) {
        t.suppressed = true;
    }
}

/// Whether the request carries the gateway's admin token (compared in constant time).
fn is_admin(st: &AppState, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    let Some(expected) = st.config.admin_token.as_deref() else {
        return false;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Reads the body under `limit`, refusing at once when `Content-Length` already says too much.
async fn read_body_checked(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    read_body(body, limit).await
}

/// The connection cannot be reused after an unread body, so say so: otherwise a client
/// sends its next request into a socket the server is closing.
fn close_after(mut resp: Response) -> Response {
    if matches!(
        resp.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ApiError::BodyTooLarge(limit))
            } else if crate::limits::is_body_timeout(&*e) {
                // The server's read deadline (`limits.body_read_timeout_ms`) passed.
                Err(ApiError::RequestTimeout)
            } else {
                Err(ApiError::BodyRead(e.to_string()))
            }
        }
    }
}

/// Hop-by-hop headers and those the gateway sets itself: never copied in either direction.
fn hop_or_framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept-encoding"
            | "content-encoding"
    )
}

/// Client credentials and gateway controls: meant for the gateway, never for a backend. A
/// backend (or anyone who can read its logs or traffic) must not learn a tenant's key, the
/// portal session cookie, or anything else that would let it act as the client.
fn client_only(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "cookie2"
            | "x-api-key"
            | "api-key"
            | "x-auth-token"
            | "x-amz-security-token"
    ) || n.starts_with("x-fairgate-")
}

/// Backend answers must not set state in the client's browser under the gateway's origin
/// (the portal's session cookie lives there).
fn backend_only(name: &HeaderName) -> bool {
    matches!(name.as_str(), "set-cookie" | "set-cookie2")
}

/// The one place the headers of an upstream request are built: the client's headers minus
/// hop-by-hop ones and every client credential, plus the request id. A backend credential of
/// the gateway's own (`Authorization: Bearer <backend key>`) is added here, after filtering.
fn upstream_headers(client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(client.len() + 1);
    for (k, v) in client.iter() {
        if !hop_or_framing(k) && !client_only(k) {
            h.append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    h
}

/// The pool a requested model name leads to: the model itself (or the model an adapter
/// belongs to), an alias's first model with a usable backend, or, when the model has none, its
/// first fallback (the tenant's list, else the model's) that has one. When nothing usable is
/// found the first candidate is returned, and admission answers 503 for it.
fn resolve(
    st: &AppState,
    live: &Config,
    policy: &fairgate_types::TenantPolicy,
    requested: &str,
) -> Option<Target> {
    let chain: Vec<&str> = match st.upstreams.target(requested) {
        Some(t) if t.adapter.is_some() => return Some(t),
        Some(_) => {
            let fallbacks = policy
                .fallbacks
                .get(requested)
                .or_else(|| live.model(requested).map(|m| &m.fallbacks));
            std::iter::once(requested)
                .chain(fallbacks.into_iter().flatten().map(String::as_str))
                .collect()
        }
        None => live
            .alias(requested)?
            .models
            .iter()
            .map(String::as_str)
            .collect(),
    };
    let mut first = None;
    for name in chain {
        let Some(t) = st.upstreams.target(name) else {
            continue;
        };
        if t.pool.has_usable(t.adapter.as_deref()) {
            return Some(t);
        }
        first.get_or_insert(t);
    }
    first
}

async fn forward(
    st: Arc<AppState>,
    mut t: Tracker,
    principal: Principal,
    parts: http::request::Parts,
    mut plan: Plan,
) -> Response {
    t.row.model = Some(plan.model.clone());
    t.row.reserved_tokens = plan.reservation;
    t.prompt_estimate = plan.prompt_estimate;

    // Owned snapshots: they are held across the admission wait, which may be long, and
    // arc-swap's borrowed guards are meant for short reads.
    let live = st.live.load_full();
    let dir = st.identity.snapshot_arc();
    let Some(tenant) = dir.tenant(principal.tenant()) else {
        // Authentication checked the tenant a moment ago; it was deleted in between.
        return t.fail(ApiError::KeyDisabled);
    };
    let Some(target) = resolve(&st, &live, &tenant.policy, &plan.model) else {
        return t.fail(ApiError::ModelNotFound(plan.model));
    };
    if !principal.may_use(&plan.model) {
        return t.fail(ApiError::ModelNotAllowed(plan.model));
    }
    let pool = target.pool.clone();
    if plan.model_not_in_body && target.adapter.is_some() {
        // The backend would run its base model, not the adapter the key was checked for.
        return t.fail(ApiError::BadRequest(fairgate_relay::RequestError {
            message: format!(
                "`{}` is an adapter, and this request's body cannot carry the model name: send `model` in a JSON body or a form field",
                plan.model
            ),
            param: Some("model".into()),
            code: "ambiguous_model",
        }));
    }
    // The backend cannot produce more than fits in the model's context: reserve no more.
    if let Some(parsed) = &plan.parsed {
        if let Some(ctx) = st.context_length(&pool.name) {
            plan.reservation = fairgate_relay::reservation_tokens_within(
                parsed,
                st.config.default_max_tokens,
                Some(ctx),
            );
            t.row.reserved_tokens = plan.reservation;
        }
    }
    // The name the backend serves: the adapter's own, or the model an alias or fallback chose.
    let served = target.adapter.clone().unwrap_or_else(|| pool.name.clone());
    if plan.model_not_in_body {
        // Nothing to rewrite: the backend runs the model of the pool it is sent to.
        t.row.model = Some(served.clone());
    } else if served != plan.model {
        plan.body = match fairgate_relay::with_model(&plan.body, &served) {
            Ok(b) => b,
            Err(e) => return t.fail(ApiError::BadRequest(e)),
        };
        t.row.model = Some(served.clone());
    }
    let priority = match parts.headers.get(PRIORITY_HEADER) {
        None => principal.policy().priority.unwrap_or_default(),
        Some(v) => match v.to_str().ok().and_then(Priority::parse) {
            Some(p) => p,
            None => {
                return t.fail(ApiError::InvalidHeader {
                    message: format!("header `{PRIORITY_HEADER}` must be `interactive` or `batch`"),
                    header: PRIORITY_HEADER,
                })
            }
        },
    };
    t.row.priority = priority;
    let model_cfg = live.model(&pool.name);
    let price = model_cfg.map(|m| m.price).unwrap_or_default();

    // Response cache: before admission, so hits touch neither fair share nor a backend.
    let cache_key = match cache_wanted(&parts.headers, model_cfg.is_some_and(|m| m.cache)) {
        Ok(false) => None,
        Ok(true) if !plan.cache_candidate => None,
        Ok(true) => match crate::cache::uncacheable_reason(&plan.body) {
            Some(_) => None,
            None => Some(crate::cache::cache_key(
                &served,
                parts.uri.path(),
                &plan.body,
            )),
        },
        Err(e) => return t.fail(e),
    };
    if let Some(key) = &cache_key {
        if let Some(hit) = st.admission.cache.get(key, std::time::Instant::now()) {
            return cache_hit(&st, t, hit);
        }
    }

    let policy = &tenant.policy;
    let wait = policy
        .max_wait_ms
        .unwrap_or(live.admission.queue_timeout_ms);
    let queued_at = Instant::now();
    let ask = Ask {
        principal: &principal,
        tenant,
        group_weight: tenant
            .group
            .as_deref()
            .map_or(tenant.weight, |g| dir.group_weight(g)),
        price,
        priority,
        reservation: plan.reservation,
        prompt_estimate: plan.prompt_estimate,
        deadline: tokio::time::Instant::now() + Duration::from_millis(wait),
        on_limit: policy.on_limit.unwrap_or(live.admission.on_limit),
        max_queue: policy
            .max_queue
            .map_or(live.admission.max_queue_per_tenant, |q| q as usize),
    };
    // Hashing the prompt is a second pass over it: only when the prefix-aware router has a
    // choice to make.
    let blocks = match plan.endpoint {
        Some(ep) if live.routing.strategy == Strategy::PrefixAware && pool.backends().len() > 1 => {
            fairgate_relay::prefix::prompt_blocks(
                ep,
                &plan.body,
                fairgate_relay::prefix::MAX_BLOCKS,
            )
        }
        _ => Vec::new(),
    };
    let route = Route::new(&live.routing, &blocks, target.adapter.as_deref());
    let admitted = st.admission.admit(&pool, ask, &route).await;
    let waited = queued_at.elapsed();
    t.row.queue_ms = waited.as_millis() as u64;
    let tenant_name = tenant.name.clone();
    drop(dir);
    let admitted = match admitted {
        Ok(a) => a,
        Err(e) => {
            st.metrics
                .admissions
                .with_label_values(&[&pool.name, &tenant_name, "rejected", e.class()])
                .inc();
            return t.fail(e);
        }
    };
    st.metrics
        .admissions
        .with_label_values(&[&pool.name, &tenant_name, "admitted", ""])
        .inc();
    st.metrics
        .queue_wait
        .with_label_values(&[&pool.name, &tenant_name])
        .observe(waited.as_secs_f64());
    t.admitted = Some(admitted);

    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    t.overhead_before = t.start.elapsed().saturating_sub(waited);
    t.upstream_sent = Some(Instant::now());
    let timeout_ms = st.config.upstream.first_byte_timeout_ms;
    let max_attempts = live.routing.max_attempts.max(1);

    // Failover: an attempt that fails before the response head (connection refused, no head
    // in time, 5xx) is sent to another backend, up to `max_attempts` backends. Nothing has
    // reached the client yet, so it cannot tell; once a head is relayed there is no retry.
    let resp = loop {
        let Some(lease) = t.admitted.as_ref().map(|a| &a.lease) else {
            return t.fail(ApiError::Internal("admission lost its lease".into()));
        };
        let backend = lease.backend.clone();
        t.row.backend = Some(backend.name.clone());
        t.row.attempts = lease.attempts();
        let mut builder = http::Request::builder()
            .method(parts.method.clone())
            .uri(format!("{}{}", backend.url, path_q));
        if let Some(h) = builder.headers_mut() {
            *h = upstream_headers(&parts.headers, t.row.id.as_str());
            backend.authorize(h);
        }
        let body = Full::new(plan.body.clone()).map_err(|never| match never {});
        let up_req = match builder.body(body.boxed()) {
            Ok(r) => r,
            Err(e) => return t.fail(ApiError::Internal(e.to_string())),
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            backend.client(&st.client).request(up_req),
        )
        .await;
        let (err, why) = match sent {
            // A 401 from a backend refuses the gateway's own credential (clients never
            // authenticate there): a backend fault, retried elsewhere, never relayed as if the
            // client's key were wrong.
            Ok(Ok(r))
                if !r.status().is_server_error() && r.status() != StatusCode::UNAUTHORIZED =>
            {
                lease.succeeded();
                break r;
            }
            Ok(Ok(r)) => {
                let status = r.status();
                let (_, body) = r.into_parts();
                let detail = read_upstream_body(&st, body)
                    .await
                    .ok()
                    .and_then(|b| upstream_error_message(&b.bytes))
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                let err = if status == StatusCode::SERVICE_UNAVAILABLE {
                    ApiError::UpstreamUnavailable {
                        model: served.clone(),
                        detail,
                    }
                } else {
                    ApiError::UpstreamStatus {
                        model: served.clone(),
                        status: status.as_u16(),
                        detail,
                    }
                };
                (err, format!("answered HTTP {}", status.as_u16()))
            }
            Ok(Err(e)) => {
                // The client learns only that it failed; where and why goes to the log.
                let detail = if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                }
                .to_owned();
                let why = crate::upstream::error_chain(&e);
                (
                    ApiError::UpstreamConnect {
                        model: served.clone(),
                        detail,
                    },
                    why,
                )
            }
            Err(_) => (
                ApiError::UpstreamTimeout {
                    model: served.clone(),
                    timeout_ms,
                },
                format!("no response head within {timeout_ms} ms"),
            ),
        };
        tracing::warn!(request_id = %t.row.id, backend = %backend.name, url = %backend.url, reason = %why, "upstream attempt failed");
        let Some(lease) = t.admitted.as_mut().map(|a| &mut a.lease) else {
            return t.fail(err);
        };
        lease.failed(why);
        if lease.attempts() >= max_attempts || !lease.move_on(&route) {
            return t.fail(err);
        }
    };

    let status = resp.status();
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status.is_success() && is_sse {
        // Relayed paths learn only here that the answer streams.
        t.row.stream = true;
        let relay = StreamRelay::with_options(plan.strip_usage_chunk, plan.strip_chunk_usage);
        return relay_stream(st, t, resp, relay);
    }
    relay_whole(st, t, resp, cache_key).await
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from.iter() {
        if !hop_or_framing(k) && !backend_only(k) && k != header::AUTHORIZATION {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Reads a backend body whole, within the per-request limit and the shared memory budget.
async fn read_upstream_body(st: &AppState, body: Incoming) -> Result<HeldBytes, ReadError> {
    st.proxy_limits
        .response_memory
        .read(
            body,
            Duration::from_millis(st.config.upstream.idle_timeout_ms),
            st.config.upstream.max_response_bytes,
        )
        .await
}

fn upstream_error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .or_else(|| v.get("message"))?;
    Some(match m {
        serde_json::Value::String(s) => s.chars().take(300).collect(),
        other => other.to_string().chars().take(300).collect(),
    })
}

/// Whether this request uses the response cache: the header `x-fairgate-cache: on|off`
/// overrides the model's setting.
fn cache_wanted(headers: &HeaderMap, model_default: bool) -> Result<bool, ApiError> {
    match headers.get(&CACHE_HEADER) {
        None => Ok(model_default),
        Some(v) => match v.to_str().unwrap_or("") {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(ApiError::InvalidHeader {
                message: "header `x-fairgate-cache` must be `on` or `off`".into(),
                header: "x-fairgate-cache",
            }),
        },
    }
}

/// Answers from the cache: no backend, no fair-share charge, no tokens billed.
fn cache_hit(st: &AppState, mut t: Tracker, hit: CachedResponse) -> Response {
    t.row.cache_hit = true;
    t.row.status = hit.status;
    t.row.outcome = Outcome::Ok;
    t.mark_first_token();
    let model = t.row.model.clone().unwrap_or_default();
    let tenant = t.row.tenant.clone().unwrap_or_default();
    st.metrics
        .admissions
        .with_label_values(&[&model, &tenant, "cache_hit", ""])
        .inc();
    let mut out = Response::new(Body::from(hit.body));
    *out.status_mut() = StatusCode::from_u16(hit.status).unwrap_or(StatusCode::OK);
    if let Some(ct) = hit.content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    t.decorate(out.headers_mut());
    t.record();
    out
}

/// Non-stream answer: read whole, take usage, pass the bytes through unchanged.
async fn relay_whole(
    st: Arc<AppState>,
    mut t: Tracker,
    resp: http::Response<Incoming>,
    cache_key: Option<CacheKey>,
) -> Response {
    let (parts, body) = resp.into_parts();
    let HeldBytes { bytes, permit } = match read_upstream_body(&st, body).await {
        Ok(b) => b,
        Err(e) => {
            let model = t.row.model.clone().unwrap_or_default();
            return t.fail(match e {
                ReadError::TooLarge(limit) => ApiError::UpstreamResponseTooLarge { model, limit },
                ReadError::NoMemory => ApiError::UpstreamMemoryExhausted { model },
                ReadError::Broken(detail) => ApiError::UpstreamStatus {
                    model,
                    status: parts.status.as_u16(),
                    detail: format!(": broken response body ({detail})"),
                },
            });
        }
    };
    let after = Instant::now();
    t.mark_first_token();
    let usage = fairgate_relay::usage_from_body(&bytes);
    if let Some(u) = usage {
        t.set_usage(u, UsageSource::Upstream);
    }
    if let (Some(key), true) = (cache_key, parts.status == StatusCode::OK) {
        st.admission.cache.insert(
            key,
            CachedResponse {
                status: 200,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                body: bytes.clone(),
                usage,
            },
            std::time::Instant::now(),
        );
    }
    t.row.status = parts.status.as_u16();
    if parts.status.is_success() {
        t.row.outcome = Outcome::Ok;
    } else {
        t.row.outcome = Outcome::UpstreamRejected;
        t.row.error_class = Some(format!("upstream_{}", parts.status.as_u16()));
    }
    // The answer's share of the memory budget is held until its bytes are handed on.
    let mut out = Response::new(HeldBytes { bytes, permit }.into_body());
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    t.decorate(out.headers_mut());
    if cache_key.is_some() {
        out.headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    }
    t.overhead_before += after.elapsed();
    t.record();
    out
}

/// State of a relayed stream; its `Drop` settles the ledger if the client went away.
struct Relay {
    upstream: Incoming,
    relay: StreamRelay,
    tracker: Tracker,
    idle: Duration,
    /// Completion tokens reported to admission so far.
    completion_seen: u64,
    last_token: Option<Instant>,
    finished: bool,
}

impl Relay {
    fn settle(&mut self, outcome: Outcome, error_class: Option<&str>) {
        let (usage, source) = match self.relay.usage() {
            Some(u) => (u, UsageSource::Upstream),
            None => (
                Usage {
                    prompt_tokens: 0,
                    completion_tokens: self.relay.completion_tokens_counted(),
                    cached_tokens: 0,
                },
                if self.relay.completion_tokens_counted() > 0 {
                    UsageSource::Counted
                } else {
                    UsageSource::None
                },
            ),
        };
        // Without upstream usage the prompt is known only as the gateway's estimate.
        let mut usage = usage;
        let mut source = source;
        if source == UsageSource::Counted {
            usage.prompt_tokens = self.tracker.prompt_estimate;
        } else if source == UsageSource::None && self.tracker.prompt_estimate > 0 {
            // The backend took the prompt (the stream had started) but reported nothing.
            usage.prompt_tokens = self.tracker.prompt_estimate;
            source = UsageSource::Estimated;
        }
        self.tracker.set_usage(usage, source);
        self.tracker.row.outcome = outcome;
        self.tracker.row.error_class = error_class.map(str::to_owned);
        // Recording settles the admission, so the backend slot is busy exactly as long as
        // the backend is working for us.
        self.tracker.record();
    }

    /// Charges new tokens to fair share; `Err` when a hard budget says to stop here.
    fn charge(&mut self) -> Result<(), String> {
        let usage = self.relay.usage();
        let completion = usage
            .map(|u| u.completion_tokens)
            .unwrap_or(0)
            .max(self.relay.completion_tokens_counted());
        if completion == self.completion_seen {
            return Ok(());
        }
        self.completion_seen = completion;
        match self.tracker.admitted.as_mut() {
            Some(a) => a.progress(usage.map(|u| u.prompt_tokens), completion),
            None => Ok(()),
        }
    }

    fn on_push(&mut self, p: &fairgate_relay::Pushed) {
        if p.new_tokens > 0 {
            let now = Instant::now();
            if p.first_token {
                self.tracker.mark_first_token();
            } else if let (Some(prev), Some(m)) = (self.last_token, &self.tracker.row.model) {
                self.tracker
                    .st
                    .metrics
                    .inter_token
                    .with_label_values(&[m])
                    .observe(now.duration_since(prev).as_secs_f64() / p.new_tokens as f64);
            }
            self.last_token = Some(now);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.finished {
            // The client disconnected mid-stream. Dropping `upstream` closes the backend
            // connection, which aborts the generation there; charge what was produced.
            self.settle(Outcome::Cancelled, Some("client_closed"));
        }
    }
}

fn sse_error_event(err: &ApiError) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&err.body());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn relay_stream(
    st: Arc<AppState>,
    mut t: Tracker,
    resp: http::Response<Incoming>,
    relay: StreamRelay,
) -> Response {
    let (parts, body) = resp.into_parts();
    t.row.status = parts.status.as_u16();
    let mut out_headers = HeaderMap::new();
    copy_response_headers(&parts.headers, &mut out_headers);
    t.decorate(&mut out_headers);
    let state = Relay {
        upstream: body,
        relay,
        tracker: t,
        idle: Duration::from_millis(st.config.upstream.idle_timeout_ms),
        completion_seen: 0,
        last_token: None,
        finished: false,
    };
    let s = stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        loop {
            match tokio::time::timeout(s.idle, s.upstream.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let p = s.relay.push(&data);
                    s.on_push(&p);
                    if let Err(why) = s.charge() {
                        // A hard budget ran out: end the answer cleanly here. Dropping the
                        // upstream body closes the backend connection, which stops generation.
                        s.finished = true;
                        let mut out = bytes::BytesMut::from(&p.forward[..]);
                        out.extend_from_slice(&s.relay.finish());
                        let err =
                            ApiError::BudgetExceeded(format!("the answer was cut off: {why}"));
                        out.extend_from_slice(&sse_error_event(&err));
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        s.settle(Outcome::CutOff, Some("budget_exceeded"));
                        return Some((Ok(out.freeze()), s));
                    }
                    if !p.forward.is_empty() {
                        return Some((Ok::<Bytes, std::convert::Infallible>(p.forward), s));
                    }
                }
                Ok(None) => {
                    s.finished = true;
                    let rest = s.relay.finish();
                    if s.relay.saw_done() && !s.relay.error_event() {
                        s.settle(Outcome::Ok, None);
                    } else if s.relay.error_event() {
                        s.settle(Outcome::UpstreamError, Some("upstream_stream_error"));
                    } else {
                        s.settle(Outcome::UpstreamError, Some("upstream_truncated"));
                    }
                    return (!rest.is_empty()).then_some((Ok(rest), s));
                }
                Ok(Some(Err(e))) => {
                    s.finished = true;
                    let mut out = bytes::BytesMut::from(&s.relay.finish()[..]);
                    let model = s.tracker.row.model.clone().unwrap_or_default();
                    let err = ApiError::UpstreamStatus {
                        model,
                        status: 200,
                        detail: format!(": the stream broke after it started ({e})"),
                    };
                    out.extend_from_slice(&sse_error_event(&err));
                    s.settle(Outcome::UpstreamError, Some("upstream_stream_broken"));
                    return Some((Ok(out.freeze()), s));
                }
                Err(_) => {
                    s.finished = true;
                    let mut out = bytes::BytesMut::from(&s.relay.finish()[..]);
                    let model = s.tracker.row.model.clone().unwrap_or_default();
                    let err = ApiError::UpstreamTimeout {
                        model,
                        timeout_ms: s.idle.as_millis() as u64,
                    };
                    out.extend_from_slice(&sse_error_event(&err));
                    s.settle(Outcome::UpstreamError, Some("upstream_idle_timeout"));
                    return Some((Ok(out.freeze()), s));
                }
            }
        }
    });
    let mut out = Response::new(Body::from_stream(s));
    *out.status_mut() = parts.status;
    *out.headers_mut() = out_headers;
    out
}

/// `GET /v1/models`: the models this key may use.
pub async fn list_models(
    State(st): State<Arc<AppState>>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers(), addr) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    #[derive(serde::Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: i64,
        owned_by: &'static str,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    let live = st.live.load();
    let data = st
        .upstreams
        .names()
        .chain(live.aliases.iter().map(|a| a.name.as_str()))
        .filter(|name| principal.may_use(name))
        .map(|id| Model {
            id,
            object: "model",
            created: st.started_at,
            owned_by: "fairgate",
        })
        .collect();
    let body = serde_json::to_vec(&List {
        object: "list",
        data,
    })
    .unwrap_or_default();
    t.row.status = 200;
    t.row.outcome = Outcome::Ok;
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    t.decorate(resp.headers_mut());
    t.record();
    resp
}

/// Anything else: an OpenAI-shaped 404, recorded like every request. Paths on
/// `relay.allowed_paths` or `relay.operator_paths` that have no route of their own (root
/// paths such as `/reset_prefix_cache` or `/v2/rerank`) are relayed from here.
pub async fn not_found(
    State(st): State<Arc<AppState>>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    let relayed = {
        let relay = &st.live.load().relay;
        relay.allows(req.uri().path()) || relay.is_operator(req.uri().path())
    };
    if relayed {
        return generic(State(st), addr, req).await;
    }
    unknown_route(&st, addr, &req)
}

/// The 404 `unknown_url`, attributed to the key when it is a valid one, else anonymous (rows
/// at a bounded rate per client address).
fn unknown_route(st: &Arc<AppState>, addr: ClientAddr, req: &Request) -> Response {
    let mut t = Tracker::start(st, req.uri().path());
    // A browser's stray GET (`/favicon.ico`) is not worth a key lookup.
    let known = (req.method() != Method::GET || req.uri().path().starts_with("/v1/"))
        .then(|| {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            st.identity.authenticate(auth).ok()
        })
        .flatten();
    match known {
        Some(p) => t.attribute(&p),
        None => gate_anonymous(st, &mut t, addr, AnonymousReason::UnknownRoute),
    }
    let path = crate::proxy_limits::truncate_at_char(req.uri().path(), MAX_ENDPOINT_BYTES);
    t.fail(ApiError::RouteNotFound(format!(
        "{} {}",
        req.method(),
        path
    )))
}

/// vLLM's operator endpoints (`relay.operator_paths`: LoRA adapters, caches, sleep, profiling,
/// ...). Only the gateway's admin token may call them (a tenant key gets 403 `admin_only`);
/// the admin token itself is not passed on. The call goes to EVERY backend of the model named
/// by the body's or the query's `model` (or the only model): an adapter loaded on one replica
/// only would fail on the others, and a cache reset or sleep is meant for the model, not for
/// whichever replica a balancer picks. Backends are called one after another; the answer is
/// the first failing backend's (status and body) or, when all succeeded, the first one's,
/// with `x-fairgate-backends: <succeeded>/<called>`. No fair-share slot is taken: these calls
/// do no inference.
async fn operator(st: Arc<AppState>, addr: ClientAddr, req: Request) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    if !is_admin(&st, req.headers()) {
        if let Err(resp) = authenticate(&st, &mut t, req.headers(), addr) {
            return resp;
        }
        let path = crate::proxy_limits::truncate_at_char(req.uri().path(), MAX_ENDPOINT_BYTES);
        return t.fail(ApiError::AdminOnly(path.to_owned()));
    }
    let (parts, body) = req.into_parts();
    let bytes = match read_body_checked(&parts.headers, body, st.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return close_after(t.fail(e)),
    };
    let model = match read_model_of(&parts, &bytes) {
        Err(e) => return t.fail(ApiError::BadRequest(e)),
        Ok(r) => match (r.model, st.upstreams.pools.as_slice()) {
            (Some(m), _) => m,
            (None, [only]) => only.name.clone(),
            (None, _) => {
                return t.fail(ApiError::MissingModel(
                    "say which model's backends this is for: the `model` query parameter".into(),
                ))
            }
        },
    };
    let Some(target) = st.upstreams.target(&model) else {
        return t.fail(ApiError::ModelNotFound(model));
    };
    let pool = target.pool;
    t.row.model = Some(pool.name.clone());
    let backends = pool.backends();
    let Some(first_backend) = backends.first() else {
        return t.fail(crate::admission::no_backend(
            &pool.name,
            Duration::from_secs(1),
        ));
    };
    t.row.backend = Some(first_backend.name.clone());
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let timeout = Duration::from_millis(st.config.upstream.first_byte_timeout_ms);
    t.upstream_sent = Some(Instant::now());
    let mut answer: Option<(http::response::Parts, HeldBytes)> = None;
    let mut ok = 0usize;
    for b in backends.iter() {
        t.row.attempts = t.row.attempts.saturating_add(1);
        let mut builder = http::Request::builder()
            .method(parts.method.clone())
            .uri(format!("{}{}", b.url, path_q));
        if let Some(h) = builder.headers_mut() {
            *h = upstream_headers(&parts.headers, t.row.id.as_str());
            b.authorize(h);
        }
        let up_req = match builder.body(
            Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed(),
        ) {
            Ok(r) => r,
            Err(e) => return t.fail(ApiError::Internal(e.to_string())),
        };
        let resp = match tokio::time::timeout(timeout, b.client(&st.client).request(up_req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let detail = if e.is_connect() {
                    "connection failed".to_owned()
                } else {
                    format!("request failed: {e}")
                };
                return t.fail(ApiError::UpstreamConnect {
                    model: pool.name.clone(),
                    detail,
                });
            }
            Err(_) => {
                return t.fail(ApiError::UpstreamTimeout {
                    model: pool.name.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        };
        let (head, body) = resp.into_parts();
        let held = match read_upstream_body(&st, body).await {
            Ok(h) => h,
            Err(e) => {
                let model = pool.name.clone();
                return t.fail(match e {
                    ReadError::TooLarge(limit) => {
                        ApiError::UpstreamResponseTooLarge { model, limit }
                    }
                    ReadError::NoMemory => ApiError::UpstreamMemoryExhausted { model },
                    ReadError::Broken(detail) => ApiError::UpstreamStatus {
                        model,
                        status: head.status.as_u16(),
                        detail: format!(": broken response body ({detail})"),
                    },
                });
            }
        };
        let success = head.status.is_success();
        if success {
            ok += 1;
        }
        if answer.is_none() || !success {
            let keep_going = success;
            answer = Some((head, held));
            if !keep_going {
                t.row.backend = Some(b.url.clone());
                break;
            }
        }
    }
    let Some((head, held)) = answer else {
        return t.fail(ApiError::Internal("no backend answered".into()));
    };
    t.row.status = head.status.as_u16();
    if head.status.is_success() {
        t.row.outcome = Outcome::Ok;
    } else {
        t.row.outcome = Outcome::UpstreamRejected;
        t.row.error_class = Some(format!("upstream_{}", head.status.as_u16()));
    }
    let mut out = Response::new(held.into_body());
    *out.status_mut() = head.status;
    copy_response_headers(&head.headers, out.headers_mut());
    if let Ok(v) = HeaderValue::from_str(&format!("{ok}/{}", t.row.attempts)) {
        out.headers_mut()
            .insert(HeaderName::from_static("x-fairgate-backends"), v);
    }
    t.decorate(out.headers_mut());
    t.record();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn client_credentials_are_not_sent_upstream() {
        let client = headers(&[
            ("authorization", "Bearer fg-key"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "fg_session=s"),
            ("x-api-key", "k"),
            ("api-key", "k"),
            ("x-fairgate-priority", "batch"),
            ("x-fairgate-cache", "on"),
            ("host", "gw"),
            ("content-type", "application/json"),
            ("x-trace", "1"),
        ]);
        let up = upstream_headers(&client, "req-1");
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "x-trace", "x-request-id"]);
    }

    #[test]
    fn backend_cookies_are_not_relayed() {
        let backend = headers(&[
            ("set-cookie", "fg_session=evil; Path=/"),
            ("set-cookie2", "x=1"),
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
            ("x-backend", "1"),
        ]);
        let mut out = HeaderMap::new();
        copy_response_headers(&backend, &mut out);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "x-backend"]);
    }
}
