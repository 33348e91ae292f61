//! The OpenAI-compatible request path: authenticate, parse, resolve, cache, admit, send,
//! relay, settle. Each phase is one module, and [`forward`] calls them in order:
//! 1. [`settle`]: `Tracker::start` opens the request's ledger row the moment it arrives.
//!    Whatever happens next (error, upstream failure, client disconnect, panic unwinding) the
//!    tracker records exactly one row: explicitly via `finish`/`fail`, or from `Drop` as
//!    `cancelled`, settling the admission with the real usage.
//! 2. [`edge`]: the key is checked against the in-memory directory (no database); the body is
//!    read under the size limit; the handlers here parse it once
//!    ([`fairgate_relay::parse_request`]) into a `Plan`.
//! 3. [`resolve`]: model, adapter, alias or fallback; the key's scope; the body rewritten for
//!    the serving model.
//! 4. [`guard`]: PII and prompt-injection guardrails block, redact or count, per the key's,
//!    tenant's, model's or gateway's modes. [`cache`]: an exact-match hit is answered before
//!    admission.
//! 5. [`admit`]: budgets, rate limits, then a fair-share slot ([`crate::admission`]); the
//!    backend is chosen only when the slot is granted.
//! 6. [`send`]: the upstream call with failover; each failure carries whether another backend
//!    may take the request. Streams get `stream_options.include_usage` and
//!    `continuous_usage_stats` injected when the client did not ask, so usage is always known.
//! 7. [`relay`]: non-streams are read whole (bounded); streams are forwarded event by event
//!    through [`fairgate_relay::StreamRelay`], which counts tokens as they pass and strips
//!    what the client did not ask for.
//! 8. Settle: the row gets the real usage and goes to the batched ledger writer off-path.
//!
//! [`headers`] builds upstream headers (credentials never pass); [`models`] serves
//! `/v1/models`; [`operator`] relays vLLM's operator endpoints for the admin token.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use fairgate_relay::Endpoint;

use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::identity::Principal;
use crate::state::AppState;
use crate::upstream::Route;

mod admit;
mod cache;
pub(crate) mod edge;
mod guard;
mod headers;
mod models;
mod operator;
mod plan;
mod relay;
mod resolve;
mod send;
pub(crate) mod settle;
mod spool;

use edge::{authenticate, close_after, read_body_checked, read_model_of, unknown_route};
use operator::operator;
use plan::Plan;
use settle::Tracker;

pub use models::{list_models, retrieve_model};
pub use plan::{
    CACHE_HEADER, CLIENT_CLOSED, PRIORITY_HEADER, QUEUE_WAIT_HEADER, REQUEST_ID_HEADER,
};

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
    let boundary = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(fairgate_relay::form_boundary);
    // A large form goes to disk; what is read from it is read from its skeleton.
    let (bytes, spooled) = match boundary {
        Some(b) => match edge::read_upload_checked(&st, &parts, body, &b).await {
            Ok(spool::Upload::Memory(bytes)) => (bytes, None),
            Ok(spool::Upload::Spooled { skeleton, file }) => (skeleton, Some(file)),
            Err(e) => return close_after(t.fail(e)),
        },
        None => match read_body_checked(&parts.headers, body, st.config.max_body_bytes).await {
            Ok(b) => (b, None),
            Err(e) => return close_after(t.fail(e)),
        },
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
    let unit = fairgate_relay::unit_of_path(parts.uri.path());
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let units_estimate = fairgate_relay::request_units(unit, content_type, &body);
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
        unit,
        units_estimate,
        // A spooled form is sent from its file; the skeleton was only for reading.
        body: if spooled.is_some() {
            bytes::Bytes::new()
        } else {
            body
        },
        spooled,
    };
    forward(st, t, principal, parts, plan).await
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
        unit: fairgate_types::Unit::Tokens,
        units_estimate: None,
        body,
        spooled: None,
    };
    forward(st, t, principal, parts, plan).await
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

/// The request path after the body is understood, as its named phases: resolve → cache →
/// admit → send (with failover) → relay; the tracker settles the row at the end of whichever
/// phase ends the request.
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
    t.row.unit = plan.unit;
    t.units_estimate = plan.units_estimate;

    // Owned snapshots: they are held across the admission wait, which may be long, and
    // arc-swap's borrowed guards are meant for short reads.
    let live = st.live.load_full();
    let dir = st.identity.snapshot_arc();
    let Some(tenant) = dir.tenant(principal.tenant()) else {
        // Authentication checked the tenant a moment ago; it was deleted in between.
        return t.fail(ApiError::KeyDisabled);
    };
    let resolved = match resolve::resolve(&st, &mut t, &live, tenant, &principal, &parts, &mut plan)
    {
        Ok(r) => r,
        Err(e) => return t.fail(e),
    };
    let modes = guard::modes(&live, tenant, &principal, &plan.model);
    if let Err(e) = guard::check(&st, &mut t, modes, &mut plan) {
        return t.fail(e);
    }
    if let Err(e) = guard::external(&st, &mut t, &live, modes.external, &plan).await {
        return t.fail(e);
    }
    let cache_key = match cache::lookup(&st, &live, &parts, &plan, &resolved) {
        Ok(cache::Lookup::Hit(hit)) => {
            if let Err(e) = guard::check_cached(&st, &t, modes.output, &plan, &hit.body) {
                return t.fail(e);
            }
            return cache::answer(&st, t, hit);
        }
        Ok(cache::Lookup::Miss(key)) => key,
        Err(e) => return t.fail(e),
    };
    let blocks = admit::prompt_blocks(&live, &plan, &resolved);
    let route = Route::new(&live.routing, &blocks, resolved.target.adapter.as_deref());
    let waited = match admit::admit(
        &st, &mut t, &live, &dir, tenant, &principal, &plan, &resolved, &route,
    )
    .await
    {
        Ok(w) => w,
        Err(e) => return t.fail(e),
    };
    drop(dir);
    let rank = t.admitted.as_ref().map_or(0, |a| a.lease.permit.rank());
    let engine =
        send::EnginePriority::new(&plan, &resolved, principal.policy().engine_priority, rank);
    t.overhead_before = t.start.elapsed().saturating_sub(waited);
    t.upstream_sent = Some(Instant::now());
    let resp = match send::send(
        &st, &mut t, &live, &parts, &plan, &resolved, &route, &engine,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return t.fail(e),
    };
    relay::relay(st, t, resp, &plan, cache_key, modes.output).await
}
