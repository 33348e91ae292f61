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
use crate::identity::Principal;
use crate::router::Strategy;
use crate::server::AppState;
use crate::upstream::{Route, Target};

/// Largest upstream body the gateway reads whole (non-stream answers, error bodies).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

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
    done: bool,
}

impl Tracker {
    pub(crate) fn start(st: &Arc<AppState>, endpoint: &str) -> Tracker {
        Tracker {
            st: st.clone(),
            row: LedgerRow {
                status: CLIENT_CLOSED,
                ..LedgerRow::new(RequestId::new(), now_millis(), endpoint.to_owned())
            },
            start: Instant::now(),
            upstream_sent: None,
            overhead_before: Duration::ZERO,
            prompt_estimate: 0,
            admitted: None,
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
        let row = std::mem::replace(&mut self.row, placeholder_row());
        // Enqueue in order right now (so a later admin read that flushes sees the row); only
        // when the queue is full does recording wait, in a tracked task that shutdown awaits,
        // so the response is never held up by the ledger.
        let Err(row) = self.st.ledger.try_record(row) else {
            return;
        };
        let ledger = self.st.ledger.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.st.tasks.spawn(async move { ledger.record(row).await });
        } else {
            tracing::error!(request_id = %row.id, "no runtime to record ledger row; row lost");
        }
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
    /// Body to send upstream.
    body: Bytes,
}

pub async fn chat_completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    typed(st, Endpoint::ChatCompletions, req).await
}

pub async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    typed(st, Endpoint::Completions, req).await
}

pub async fn embeddings(State(st): State<Arc<AppState>>, req: Request) -> Response {
    typed(st, Endpoint::Embeddings, req).await
}

/// Any other model-server path (`/v1/audio/...`, `/v1/rerank`, `/tokenize`, ...): authenticated,
/// relayed as-is to the model's backend, logged in the ledger.
pub async fn generic(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers()) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_body_checked(&parts.headers, body, st.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return close_after(t.fail(e)),
    };
    let model = match find_model_generic(&st, &parts.headers, parts.uri.query(), &bytes) {
        Some(m) => m,
        None => {
            return t.fail(ApiError::MissingModel(
                "cannot tell which model this request is for: put `model` in the JSON body, the multipart form or the `model` query parameter".into(),
            ))
        }
    };
    let plan = Plan {
        model,
        strip_usage_chunk: false,
        strip_chunk_usage: false,
        reservation: 0,
        prompt_estimate: 0,
        cache_candidate: false,
        endpoint: None,
        body: bytes,
    };
    forward(st, t, principal, parts, plan).await
}

async fn typed(st: Arc<AppState>, ep: Endpoint, req: Request) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers()) {
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
        model: parsed.model,
        strip_usage_chunk: !parsed.client_wants_usage,
        strip_chunk_usage: continuous && !wants_continuous,
        reservation,
        prompt_estimate: parsed.prompt_tokens_estimate,
        cache_candidate: !parsed.stream,
        endpoint: Some(ep),
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
            if let Some(k) = &f.known {
                t.attribute(k);
            }
            Err(t.fail(f.error))
        }
    }
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

/// Finds the model of a request on a path the gateway does not parse.
fn find_model_generic(
    st: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Option<String> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/json") || body.first() == Some(&b'{') {
        #[derive(serde::Deserialize)]
        struct M {
            model: Option<String>,
        }
        if let Ok(M { model: Some(m) }) = serde_json::from_slice::<M>(body) {
            return Some(m);
        }
    }
    if ctype.starts_with("multipart/form-data") {
        // The form field `model` (OpenAI's audio endpoints put it there).
        let needle = b"name=\"model\"";
        if let Some(pos) = body.windows(needle.len()).position(|w| w == needle) {
            let rest = &body[pos + needle.len()..];
            if let Some(start) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let value = &rest[start + 4..];
                let end = value
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .unwrap_or(value.len());
                if let Ok(s) = std::str::from_utf8(&value[..end]) {
                    return Some(s.trim().to_owned());
                }
            }
        }
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("model=") {
                return Some(v.to_owned());
            }
        }
    }
    match st.upstreams.pools.as_slice() {
        [only] => Some(only.name.clone()),
        _ => None,
    }
}

/// Headers never forwarded in either direction (hop-by-hop, or owned by the gateway).
fn skip_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept-encoding"
            | "content-encoding"
    )
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
    // The name the backend serves: the adapter's own, or the model an alias or fallback chose.
    let served = target.adapter.clone().unwrap_or_else(|| pool.name.clone());
    if served != plan.model {
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
        t.row.backend = Some(backend.url.clone());
        t.row.attempts = lease.attempts();
        let mut builder = http::Request::builder()
            .method(parts.method.clone())
            .uri(format!("{}{}", backend.url, path_q));
        if let Some(h) = builder.headers_mut() {
            for (k, v) in parts.headers.iter() {
                if !skip_header(k) {
                    h.append(k.clone(), v.clone());
                }
            }
            if let Ok(v) = HeaderValue::from_str(t.row.id.as_str()) {
                h.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
            }
        }
        let body = Full::new(plan.body.clone()).map_err(|never| match never {});
        let up_req = match builder.body(body.boxed()) {
            Ok(r) => r,
            Err(e) => return t.fail(ApiError::Internal(e.to_string())),
        };
        let sent =
            tokio::time::timeout(Duration::from_millis(timeout_ms), st.client.request(up_req))
                .await;
        let (err, why) = match sent {
            Ok(Ok(r)) if !r.status().is_server_error() => {
                lease.succeeded();
                break r;
            }
            Ok(Ok(r)) => {
                let status = r.status();
                let (_, body) = r.into_parts();
                let detail = read_upstream_body(
                    body,
                    Duration::from_millis(st.config.upstream.idle_timeout_ms),
                )
                .await
                .ok()
                .and_then(|b| upstream_error_message(&b))
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
                let detail = if e.is_connect() {
                    format!("connection failed ({})", backend.url)
                } else {
                    format!("request failed: {e}")
                };
                let why = detail.clone();
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
        tracing::warn!(request_id = %t.row.id, backend = %backend.url, reason = %why, "upstream attempt failed");
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
        let relay = StreamRelay::with_options(plan.strip_usage_chunk, plan.strip_chunk_usage);
        return relay_stream(st, t, resp, relay);
    }
    relay_whole(st, t, resp, cache_key).await
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from.iter() {
        if !skip_header(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

async fn read_upstream_body(mut body: Incoming, idle: Duration) -> Result<Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > MAX_UPSTREAM_BODY {
                        return Err("upstream body too large".into());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Ok(buf.freeze()),
            Err(_) => return Err("upstream went idle".into()),
        }
    }
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
    let idle = Duration::from_millis(st.config.upstream.idle_timeout_ms);
    let bytes = match read_upstream_body(body, idle).await {
        Ok(b) => b,
        Err(detail) => {
            let model = t.row.model.clone().unwrap_or_default();
            return t.fail(ApiError::UpstreamStatus {
                model,
                status: parts.status.as_u16(),
                detail: format!(": broken response body ({detail})"),
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
    let mut out = Response::new(Body::from(bytes));
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
        if source == UsageSource::Counted {
            usage.prompt_tokens = self.tracker.prompt_estimate;
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
pub async fn list_models(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers()) {
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

/// Anything else: an OpenAI-shaped 404, recorded like every request.
pub async fn not_found(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    if req.method() != Method::GET || req.uri().path().starts_with("/v1/") {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Ok(p) = st.identity.authenticate(auth) {
            t.attribute(&p);
        }
    }
    let path = req.uri().path().to_owned();
    t.fail(ApiError::RouteNotFound(format!(
        "{} {}",
        req.method(),
        path
    )))
}
