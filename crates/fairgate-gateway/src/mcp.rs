//! MCP through the gateway (issue 16): tenants reach the MCP tool servers an operator
//! registered (`[[mcp.servers]]`, streamable HTTP transport) at `/mcp/{server}` with their
//! fairgate key.
//!
//! One HTTP request, one ledger row, as on `/v1` (the same [`Tracker`]): endpoint
//! `/mcp/{server}`, model `mcp:{server}`, unit `calls`, units the `tools/call` messages the
//! server took. In order:
//! 1. the key is checked like any other ([`authenticate`]);
//! 2. the server must be registered (404 `mcp_server_not_found`) and in the tenant's
//!    `policy.mcp` (403 `mcp_server_not_allowed`);
//! 3. a POST body is parsed as JSON-RPC (one message or a batch): a `tools/call` of a tool the
//!    tenant may not call is answered here with a JSON-RPC error and never reaches the server
//!    (the row: 403 `mcp_tool_not_allowed`); a POST with allowed calls takes the tenant's and
//!    key's request-rate limits (RPM, concurrency; 429 with `Retry-After`), held until the
//!    answer ends;
//! 4. the request goes upstream with only the MCP headers (`Mcp-Session-Id`,
//!    `MCP-Protocol-Version`, `Accept`, `Content-Type`, `Last-Event-ID`) and the server's own
//!    `api_key`, never the client's credentials;
//! 5. the answer (JSON or SSE) streams back; `tools/list` results are filtered to the tools the
//!    tenant may call (answers to this POST's `tools/list` requests, and any on the GET stream,
//!    where a resumed answer may arrive).
//!
//! Arguments and results of tool calls are never stored or logged.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use fairgate_admission::budget::{BudgetScope, Spend};
use fairgate_admission::limits::{LimitGuard, LimitRequest, LimitScope};
use fairgate_types::{BudgetPeriod, Outcome, Tenant, Unit};
use futures_util::stream;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::config::{Config, McpServerConfig};
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::identity::Principal;
use crate::proxy::edge::{authenticate, close_after, read_body_checked};
use crate::proxy::settle::Tracker;
use crate::proxy_limits::{truncate_at_char, HeldBytes};
use crate::quota::{local_part, FleetHold, QuotaAsk, QuotaError};
use crate::state::AppState;

/// Request headers the server gets from the client; nothing else passes (no credentials, no
/// cookies, no `Host`).
const FORWARDED: [&str; 5] = [
    "mcp-session-id",
    "mcp-protocol-version",
    "accept",
    "content-type",
    "last-event-id",
];

/// Answer headers the client gets from the server.
const RETURNED: [&str; 4] = [
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "cache-control",
];

/// JSON-RPC's "invalid params", what MCP answers for a tool the server does not offer.
const TOOL_REFUSED: i64 = -32602;

/// The tools of one server a key may call: what every list it is subject to allows (the
/// tenant's, and the key's own when it narrows it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolAllow {
    /// Per list: whether it says `"*"`, and its tool names.
    lists: Vec<(bool, Vec<String>)>,
    /// Every list says `"*"`: nothing to filter.
    all: bool,
}

impl ToolAllow {
    /// From a tenant's `policy.mcp` entry: tool names, `"*"` for all.
    pub fn new(list: &[String]) -> ToolAllow {
        let all = list.iter().any(|t| t == "*");
        ToolAllow {
            lists: vec![(all, list.to_vec())],
            all,
        }
    }

    /// Also subject to `list` (a key's own `policy.mcp` entry).
    pub fn narrowed(mut self, list: &[String]) -> ToolAllow {
        let all = list.iter().any(|t| t == "*");
        self.all &= all;
        self.lists.push((all, list.to_vec()));
        self
    }

    pub fn allows(&self, tool: &str) -> bool {
        self.lists
            .iter()
            .all(|(all, tools)| *all || tools.iter().any(|t| t == tool))
    }
}

/// What a POST body asks the server to do, as far as the gateway cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Messages {
    pub batch: bool,
    /// Every `tools/call`: its id (`None` for a notification) and the tool's name (empty when
    /// the message names none).
    pub calls: Vec<(Option<Value>, String)>,
    /// Ids of the `tools/list` requests.
    pub lists: Vec<Value>,
    /// Ids of every request (messages with a method and an id).
    pub ids: Vec<Value>,
}

/// Reads the JSON-RPC messages of a POST body (one message or a batch).
pub fn inspect(v: &Value) -> Messages {
    let mut out = Messages::default();
    let items: Vec<&Value> = match v {
        Value::Array(a) => {
            out.batch = true;
            a.iter().collect()
        }
        one => vec![one],
    };
    for m in items {
        // Responses to the server's own requests carry no method.
        let Some(method) = m.get("method").and_then(Value::as_str) else {
            continue;
        };
        let id = m.get("id").filter(|i| !i.is_null()).cloned();
        if let Some(id) = &id {
            out.ids.push(id.clone());
        }
        match method {
            "tools/call" => {
                let tool = m
                    .get("params")
                    .and_then(|p| p.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                out.calls.push((id, tool.to_owned()));
            }
            "tools/list" => out.lists.extend(id),
            _ => {}
        }
    }
    out
}

/// Drops the tools the tenant may not call from `tools/list` results in `v` (one message or a
/// batch): results answering one of `ids`, or any result with a `tools` list when `any`.
/// Returns whether anything was dropped.
pub fn filter_lists(v: &mut Value, ids: &[Value], any: bool, allow: &ToolAllow) -> bool {
    if allow.all {
        return false;
    }
    match v {
        Value::Array(a) => {
            // Every message, not up to the first change.
            let mut changed = false;
            for m in a.iter_mut() {
                changed |= filter_one(m, ids, any, allow);
            }
            changed
        }
        m => filter_one(m, ids, any, allow),
    }
}

fn filter_one(m: &mut Value, ids: &[Value], any: bool, allow: &ToolAllow) -> bool {
    if !(any || m.get("id").is_some_and(|id| ids.contains(id))) {
        return false;
    }
    let Some(tools) = m
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = tools.len();
    tools.retain(|t| {
        t.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| allow.allows(n))
    });
    tools.len() != before
}

/// The JSON-RPC answer to a POST refused for its tool calls: an error for each denied call; in
/// a batch, every other request is answered as not sent either (the batch went nowhere).
pub fn refusal(msgs: &Messages, allow: &ToolAllow, server: &str) -> Value {
    let error = |id: Option<&Value>, message: String| {
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": {"code": TOOL_REFUSED, "message": message},
        })
    };
    let denied_message = |tool: &str| {
        ApiError::McpToolNotAllowed {
            server: server.to_owned(),
            tool: truncate_at_char(tool, 128).to_owned(),
        }
        .to_string()
    };
    if !msgs.batch {
        let (id, tool) = msgs
            .calls
            .iter()
            .find(|(_, t)| !allow.allows(t))
            .cloned()
            .unwrap_or_default();
        return error(id.as_ref(), denied_message(&tool));
    }
    let answers = msgs
        .ids
        .iter()
        .map(|id| {
            match msgs
                .calls
                .iter()
                .find(|(cid, t)| cid.as_ref() == Some(id) && !allow.allows(t))
            {
                Some((_, tool)) => error(Some(id), denied_message(tool)),
                None => error(
                    Some(id),
                    "not sent: this batch holds a tool call this API key may not make".to_owned(),
                ),
            }
        })
        .collect();
    Value::Array(answers)
}

/// `/mcp/{server}`: POST (client messages), GET (the server's stream), DELETE (end the
/// session).
pub async fn handle(
    State(st): State<Arc<AppState>>,
    Path(server): Path<String>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    t.row.unit = Unit::Calls;
    let principal = match authenticate(&st, &mut t, req.headers(), addr) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if !matches!(req.method(), &Method::POST | &Method::GET | &Method::DELETE) {
        let path = truncate_at_char(req.uri().path(), 256);
        return t.fail(ApiError::RouteNotFound(format!("{} {path}", req.method())));
    }
    let live = st.live.load_full();
    let Some(cfg) = live.mcp.server(&server) else {
        return t.fail(ApiError::McpServerNotFound(
            truncate_at_char(&server, 64).to_owned(),
        ));
    };
    t.row.model = Some(format!("mcp:{}", cfg.name));
    let dir = st.identity.snapshot_arc();
    let Some(tenant) = dir.tenant(principal.tenant()) else {
        // Authentication checked the tenant a moment ago; it was deleted in between.
        return t.fail(ApiError::KeyDisabled);
    };
    let Some(list) = tenant.policy.mcp.get(&cfg.name) else {
        return t.fail(ApiError::McpServerNotAllowed(cfg.name.clone()));
    };
    let mut allow = ToolAllow::new(list);
    if let Some(own) = &principal.policy().mcp {
        // The key narrows its tenant's allowlist.
        let Some(list) = own.get(&cfg.name) else {
            return t.fail(ApiError::McpServerNotAllowed(cfg.name.clone()));
        };
        allow = allow.narrowed(list);
    }
    let (parts, body) = req.into_parts();

    let mut hold = None;
    let mut lists = Vec::new();
    let mut pending = Vec::new();
    let mut calls = 0;
    let body = if parts.method == Method::POST {
        let bytes = match read_body_checked(&parts.headers, body, st.config.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => return close_after(t.fail(e)),
        };
        // What cannot be read cannot be checked: refused, not passed on.
        let v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return t.fail(ApiError::BadRequest(fairgate_relay::RequestError {
                    message: format!("the body is not JSON-RPC: {e}"),
                    param: None,
                    code: "invalid_json",
                }))
            }
        };
        let msgs = inspect(&v);
        let denied = msgs.calls.iter().filter(|(_, t)| !allow.allows(t)).count();
        if denied > 0 {
            return refuse(&st, t, &cfg.name, tenant, &msgs, &allow, denied);
        }
        if !msgs.calls.is_empty() {
            match limit(&st, &live, tenant, &principal).await {
                Ok(h) => hold = Some(h),
                Err(e) => {
                    count(
                        &st,
                        &cfg.name,
                        &tenant.name,
                        "rate_limited",
                        msgs.calls.len(),
                    );
                    return t.fail(e);
                }
            }
            calls = msgs.calls.len();
        }
        lists = msgs.lists;
        pending = msgs.ids;
        // The bytes parsed are the bytes sent: the server reads what was checked.
        bytes
    } else {
        Bytes::new()
    };
    let tenant_name = tenant.name.clone();
    drop(dir);

    let resp = match send(cfg, &st, &parts, body).await {
        Ok(r) => r,
        Err(e) => {
            count(&st, &cfg.name, &tenant_name, "upstream_error", calls);
            return t.fail(e);
        }
    };
    let status = resp.status();
    count(
        &st,
        &cfg.name,
        &tenant_name,
        if status.is_success() {
            "ok"
        } else {
            "upstream_error"
        },
        calls,
    );
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // The server refused the gateway's own credentials: the operator's problem, and the
        // client must not be asked to sign in to the server.
        return t.fail(ApiError::McpUpstream {
            server: cfg.name.clone(),
            detail: format!(
                "it refused the gateway's credentials (HTTP {})",
                status.as_u16()
            ),
        });
    }
    t.row.status = status.as_u16();
    if status.is_success() {
        // The server took the calls (a 4xx or 5xx answer ran none).
        t.row.units = calls as u64;
    }
    let outcome = if status.is_success() {
        Outcome::Ok
    } else if status.is_client_error() {
        Outcome::UpstreamRejected
    } else {
        Outcome::UpstreamError
    };
    let (up, up_body) = resp.into_parts();
    let mut headers = HeaderMap::new();
    for name in RETURNED {
        for v in up.headers.get_all(name) {
            headers.append(HeaderName::from_static(name), v.clone());
        }
    }
    t.decorate(&mut headers);
    let ctype = up
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_get = parts.method == Method::GET;
    let filtering = status.is_success() && !allow.all && (is_get || !lists.is_empty());
    let sse = ctype.starts_with("text/event-stream");
    t.row.stream = sse;

    if filtering && !sse && ctype.starts_with("application/json") {
        // A whole JSON answer to a `tools/list`: read (bounded), filter, send.
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let read = st
            .proxy_limits
            .response_memory
            .read(up_body, idle, st.config.upstream.max_response_bytes)
            .await;
        let HeldBytes { bytes, permit } = match read {
            Ok(b) => b,
            Err(e) => {
                return t.fail(ApiError::McpUpstream {
                    server: cfg.name.clone(),
                    detail: format!("its answer could not be read ({e:?})"),
                })
            }
        };
        let bytes = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut v) => {
                if filter_lists(&mut v, &lists, is_get, &allow) {
                    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
                } else {
                    bytes
                }
            }
            Err(_) => bytes,
        };
        drop(permit);
        t.row.outcome = outcome;
        t.record();
        drop(hold);
        let mut out = Response::new(Body::from(bytes));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        return out;
    }

    // SSE answers are read event by event when they may hold a listing to filter, or answers
    // to this POST's requests: the row is settled when the last one has passed, as clients
    // close the stream once they have their answers, maybe before the server's end arrives.
    let events = (sse && (filtering || !pending.is_empty())).then(|| SseFilter {
        buf: BytesMut::new(),
        line_start: 0,
        filter: filtering,
        ids: lists,
        any: is_get,
        allow,
        max: st.config.upstream.max_response_bytes,
    });
    let state = Relay {
        upstream: up_body,
        t,
        hold,
        events,
        pending,
        idle: Duration::from_millis(cfg.idle_timeout_ms),
        outcome,
        is_get,
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
                    let out = match s.events.as_mut() {
                        None => data,
                        Some(f) => match f.push(&data) {
                            Some((b, answered)) => {
                                s.answered(&answered);
                                b
                            }
                            None => {
                                // An event too large to check is not passed on unchecked.
                                s.end(Outcome::UpstreamError, Some("mcp_event_too_large"));
                                return None;
                            }
                        },
                    };
                    if !out.is_empty() {
                        return Some((Ok::<Bytes, std::convert::Infallible>(out), s));
                    }
                }
                Ok(None) => {
                    let rest = s.events.as_mut().map(|f| f.finish().0).unwrap_or_default();
                    let outcome = s.outcome;
                    s.end(outcome, None);
                    return (!rest.is_empty()).then_some((Ok(rest), s));
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(request_id = %s.t.row.id, error = %e, "MCP server's answer broke off");
                    s.end(Outcome::UpstreamError, Some("mcp_stream_broken"));
                    return None;
                }
                Err(_) if s.is_get => {
                    // A quiet server-to-client stream is normal; the client reconnects.
                    let outcome = s.outcome;
                    s.end(outcome, Some("mcp_idle_closed"));
                    return None;
                }
                Err(_) => {
                    s.end(Outcome::UpstreamError, Some("mcp_idle_timeout"));
                    return None;
                }
            }
        }
    });
    let mut out = Body::from_stream(s).into_response();
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// A POST whose tool calls are not all allowed: answered here with JSON-RPC errors (HTTP 200,
/// as JSON-RPC errors are sent), recorded with the refusal's status and class.
fn refuse(
    st: &AppState,
    mut t: Tracker,
    server: &str,
    tenant: &Tenant,
    msgs: &Messages,
    allow: &ToolAllow,
    denied: usize,
) -> Response {
    let tool = msgs
        .calls
        .iter()
        .find(|(_, t)| !allow.allows(t))
        .map_or("", |(_, t)| t.as_str());
    let err = ApiError::McpToolNotAllowed {
        server: server.to_owned(),
        tool: truncate_at_char(tool, 128).to_owned(),
    };
    tracing::info!(request_id = %t.row.id, tenant = %tenant.name, server, tool = %truncate_at_char(tool, 128), "MCP tool call refused");
    count(st, server, &tenant.name, "denied", denied);
    t.row.status = err.status().as_u16();
    t.row.outcome = err.outcome();
    t.row.error_class = Some(err.class().to_owned());
    let body = serde_json::to_vec(&refusal(msgs, allow, server)).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    t.decorate(resp.headers_mut());
    t.record();
    resp
}

/// `fairgate_mcp_calls_total`: `n` tool calls with this outcome.
fn count(st: &AppState, server: &str, tenant: &str, outcome: &str, n: usize) {
    if n > 0 {
        st.metrics
            .mcp_calls
            .with_label_values(&[server, tenant, outcome])
            .inc_by(n as u64);
    }
}

/// Rate limits a POST with tool calls holds until its answer ends: a concurrency slot, and the
/// RPM token (kept: a call sent is a request made).
#[derive(Default)]
struct CallHold {
    _local: Option<LimitGuard>,
    fleet: Option<FleetHold>,
}

impl Drop for CallHold {
    fn drop(&mut self) {
        if let Some(f) = self.fleet.take() {
            f.settle(Spend::ZERO);
        }
    }
}

/// The tenant's and key's RPM and concurrency limits, as for a model call
/// ([`crate::admission::Admission::admit`]): across the fleet with `[cluster]`, else in
/// process; wait within the tenant's wait budget or refuse at once with `on_limit = "reject"`.
/// No tokens (TPM takes nothing), no budget, no fair-share slot.
async fn limit(
    st: &AppState,
    live: &Config,
    tenant: &Tenant,
    principal: &Principal,
) -> Result<CallHold, ApiError> {
    let policy = &tenant.policy;
    let key_policy = principal.policy();
    let mut scopes = Vec::new();
    if !policy.limits.is_empty() {
        scopes.push((LimitScope::Tenant(tenant.name.clone()), policy.limits));
    }
    if !key_policy.limits.is_empty() {
        scopes.push((
            LimitScope::Key(principal.key_id().0.clone()),
            key_policy.limits,
        ));
    }
    if scopes.is_empty() {
        return Ok(CallHold::default());
    }
    let wait = policy
        .max_wait_ms
        .unwrap_or(live.admission.queue_timeout_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
    let on_limit = policy.on_limit.unwrap_or(live.admission.on_limit);
    if let Some(q) = st.admission.fleet.as_ref() {
        let known = |_: &BudgetScope, _: BudgetPeriod| Spend::ZERO;
        let ask = QuotaAsk {
            budgets: &[],
            known: &known,
            min: Spend::ZERO,
            est: Spend::ZERO,
            limits: &scopes,
            tokens: 0,
            deadline,
            on_limit,
        };
        match q.acquire(ask).await {
            Ok(hold) => {
                return Ok(CallHold {
                    _local: None,
                    fleet: Some(hold),
                })
            }
            Err(QuotaError::Limit(e)) => return Err(crate::admission::rate_limited(e)),
            Err(QuotaError::Budget(e)) => return Err(ApiError::BudgetExceeded(e.to_string())),
            Err(QuotaError::Unavailable) => {
                let n = q.members();
                for (_, l) in scopes.iter_mut() {
                    *l = local_part(*l, n);
                }
            }
        }
    }
    let guard = st
        .admission
        .limits
        .acquire(LimitRequest { scopes, tokens: 0 }, deadline, on_limit)
        .await
        .map_err(crate::admission::rate_limited)?;
    Ok(CallHold {
        _local: Some(guard),
        fleet: None,
    })
}

/// The request to the server: its URL, the MCP headers, its own key.
async fn send(
    cfg: &McpServerConfig,
    st: &AppState,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<http::Response<Incoming>, ApiError> {
    let upstream = |detail: String| ApiError::McpUpstream {
        server: cfg.name.clone(),
        detail,
    };
    let mut headers = HeaderMap::new();
    for name in FORWARDED {
        for v in parts.headers.get_all(name) {
            headers.append(HeaderName::from_static(name), v.clone());
        }
    }
    match cfg.resolve_api_key() {
        Ok(Some(k)) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose()))
                .map_err(|_| upstream("its api_key is not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(server = %cfg.name, error = %e, "MCP server API key unavailable");
            return Err(upstream("the gateway has no key for it".into()));
        }
    }
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(&cfg.url)
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .map_err(|e| upstream(format!("the request could not be built ({e})")))?;
    *req.headers_mut() = headers;
    match tokio::time::timeout(
        Duration::from_millis(cfg.timeout_ms),
        st.client.request(req),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            // The address stays in the log; the client learns only that it failed.
            tracing::warn!(server = %cfg.name, error = %crate::upstream::error_chain(&e), "MCP server unreachable");
            Err(upstream("the gateway could not reach it".into()))
        }
        Err(_) => Err(ApiError::McpUpstreamTimeout {
            server: cfg.name.clone(),
            timeout_ms: cfg.timeout_ms,
        }),
    }
}

/// A streamed answer on its way to the client; dropping it (the client left) records the row
/// as cancelled (the tracker's `Drop`) and gives back the limits held.
struct Relay {
    upstream: Incoming,
    t: Tracker,
    hold: Option<CallHold>,
    events: Option<SseFilter>,
    /// Ids of the POST's requests not answered yet.
    pending: Vec<Value>,
    idle: Duration,
    /// How the row ends when the stream does (from the status).
    outcome: Outcome,
    is_get: bool,
    finished: bool,
}

impl Relay {
    /// Ends the stream and records the row (unless it was recorded already).
    fn end(&mut self, outcome: Outcome, class: Option<&str>) {
        self.finished = true;
        self.settle(outcome, class);
    }

    /// Records the row and gives back the limits held; later calls change nothing.
    fn settle(&mut self, outcome: Outcome, class: Option<&str>) {
        if self.t.done {
            return;
        }
        self.t.row.outcome = outcome;
        if let Some(c) = class {
            self.t.row.error_class = Some(c.to_owned());
        }
        self.hold.take();
        self.t.record();
    }

    /// These answers passed to the client: once every request of the POST has its answer, the
    /// exchange is complete and the row is settled.
    fn answered(&mut self, ids: &[Value]) {
        if self.pending.is_empty() || ids.is_empty() {
            return;
        }
        self.pending.retain(|p| !ids.contains(p));
        if self.pending.is_empty() {
            let outcome = self.outcome;
            self.settle(outcome, None);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.finished && self.is_get {
            // A client closing its listening stream is how that stream normally ends; any
            // other answer cut short is recorded as cancelled (the tracker's `Drop`).
            let outcome = self.outcome;
            self.end(outcome, Some("client_closed"));
        }
    }
}

/// An SSE answer read event by event: whole events are passed on, `tools/list` results
/// filtered (when `filter`), and the ids of the JSON-RPC answers seen are reported. Events end
/// at an empty line (LF or CRLF line endings).
struct SseFilter {
    buf: BytesMut,
    /// Where the line being scanned starts in `buf`.
    line_start: usize,
    filter: bool,
    ids: Vec<Value>,
    any: bool,
    allow: ToolAllow,
    /// The largest event held back for checking.
    max: usize,
}

impl SseFilter {
    /// The complete events so far, filtered, and the ids they answer; `None` when an event
    /// grows past `max`.
    fn push(&mut self, chunk: &[u8]) -> Option<(Bytes, Vec<Value>)> {
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        let mut answered = Vec::new();
        while let Some(off) = self.buf[self.line_start..].iter().position(|&b| b == b'\n') {
            let nl = self.line_start + off;
            let line = &self.buf[self.line_start..nl];
            if line.is_empty() || line == b"\r" {
                let event = self.buf.split_to(nl + 1);
                self.line_start = 0;
                let (bytes, ids) = self.rewrite(&event);
                out.extend_from_slice(&bytes);
                answered.extend(ids);
            } else {
                self.line_start = nl + 1;
            }
        }
        if self.buf.len() > self.max {
            return None;
        }
        Some((out.freeze(), answered))
    }

    /// What is left at the end of the stream (an event without its closing empty line).
    fn finish(&mut self) -> (Bytes, Vec<Value>) {
        let rest = self.buf.split();
        self.line_start = 0;
        if rest.is_empty() {
            return (Bytes::new(), Vec::new());
        }
        self.rewrite(&rest)
    }

    /// The event as it was, or with its `tools/list` result filtered; and the ids of the
    /// answers it holds.
    fn rewrite(&self, event: &[u8]) -> (Bytes, Vec<Value>) {
        let unchanged = || (Bytes::copy_from_slice(event), Vec::new());
        let Ok(text) = std::str::from_utf8(event) else {
            return unchanged();
        };
        let mut data: Option<String> = None;
        let mut other = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            match line.strip_prefix("data:") {
                Some(d) => {
                    let d = d.strip_prefix(' ').unwrap_or(d);
                    match data.as_mut() {
                        Some(s) => {
                            s.push('\n');
                            s.push_str(d);
                        }
                        None => data = Some(d.to_owned()),
                    }
                }
                None => other.push(line),
            }
        }
        let Some(data) = data else {
            return unchanged();
        };
        let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
            return unchanged();
        };
        let answered = answer_ids(&v);
        if !(self.filter && filter_lists(&mut v, &self.ids, self.any, &self.allow)) {
            return (Bytes::copy_from_slice(event), answered);
        }
        let mut out = String::with_capacity(event.len());
        for l in other {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
        (Bytes::from(out), answered)
    }
}

/// The ids of the JSON-RPC answers (results and errors) in one message or a batch.
fn answer_ids(v: &Value) -> Vec<Value> {
    let one = |m: &Value| {
        (m.get("result").is_some() || m.get("error").is_some())
            .then(|| m.get("id").filter(|i| !i.is_null()).cloned())
            .flatten()
    };
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(tools: &[&str]) -> ToolAllow {
        ToolAllow::new(&tools.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn allowlists_name_tools_or_all() {
        let a = allow(&["add", "echo"]);
        assert!(a.allows("add") && a.allows("echo"));
        assert!(!a.allows("secret") && !a.allows("") && !a.allows("Add"));
        assert!(allow(&["*"]).allows("anything"));
        assert!(!allow(&[]).allows("add"));
        // A key's own list narrows its tenant's, never widens it.
        let narrowed = allow(&["add", "echo"]).narrowed(&["echo".into(), "secret".into()]);
        assert!(narrowed.allows("echo"));
        assert!(!narrowed.allows("add") && !narrowed.allows("secret"));
        let star = allow(&["*"]).narrowed(&["echo".into()]);
        assert!(star.allows("echo") && !star.allows("add") && !star.all);
        assert!(allow(&["*"]).narrowed(&["*".into()]).all);
    }

    #[test]
    fn messages_are_read_one_or_batched() {
        let one = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}});
        let m = inspect(&one);
        assert!(!m.batch);
        assert_eq!(m.calls, vec![(Some(json!(3)), "add".to_owned())]);
        assert_eq!(m.ids, vec![json!(3)]);

        let batch = json!([
            {"jsonrpc":"2.0","id":"a","method":"tools/list"},
            {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"secret"}},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","method":"tools/call","params":{}},
            {"jsonrpc":"2.0","id":9,"result":{}},
            "junk"
        ]);
        let m = inspect(&batch);
        assert!(m.batch);
        assert_eq!(m.lists, vec![json!("a")]);
        assert_eq!(
            m.calls,
            vec![(Some(json!("b")), "secret".into()), (None, String::new())]
        );
        assert_eq!(m.ids, vec![json!("a"), json!("b")]);
    }

    #[test]
    fn refusals_are_json_rpc_errors() {
        let a = allow(&["add"]);
        let m = inspect(
            &json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"secret"}}),
        );
        let r = refusal(&m, &a, "files");
        assert_eq!(r["id"], json!(7));
        assert_eq!(r["error"]["code"], json!(TOOL_REFUSED));
        assert!(r["error"]["message"].as_str().unwrap().contains("`secret`"));

        let m = inspect(&json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"secret"}}
        ]));
        let r = refusal(&m, &a, "files");
        let r = r.as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not sent"));
        assert!(r[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`secret`"));
    }

    fn listing(id: Value) -> Value {
        json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
            {"name":"add","inputSchema":{}},{"name":"secret"},{"name":"echo"},{"noname":1}
        ]}})
    }

    fn names(v: &Value) -> Vec<&str> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn listings_keep_only_allowed_tools() {
        let a = allow(&["add", "echo"]);
        let mut v = listing(json!(4));
        assert!(filter_lists(&mut v, &[json!(4)], false, &a));
        assert_eq!(names(&v), ["add", "echo"]);
        // Another request's answer is left alone, unless any listing is filtered (GET).
        let mut v = listing(json!(5));
        assert!(!filter_lists(&mut v, &[json!(4)], false, &a));
        assert!(filter_lists(&mut v, &[], true, &a));
        assert_eq!(names(&v), ["add", "echo"]);
        // `*` filters nothing.
        let mut v = listing(json!(4));
        assert!(!filter_lists(&mut v, &[json!(4)], true, &allow(&["*"])));
        // Batches.
        let mut v = json!([listing(json!(1)), listing(json!(2))]);
        assert!(filter_lists(&mut v, &[json!(2)], false, &a));
        assert_eq!(v[0]["result"]["tools"].as_array().unwrap().len(), 4);
        assert_eq!(names(&v[1]), ["add", "echo"]);
    }

    #[test]
    fn sse_events_are_filtered_whatever_the_chunking() {
        let event = format!(
            "event: message\r\nid: e1\r\ndata: {}\r\n\r\n",
            listing(json!(1))
        );
        let other = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\r\n\r\n";
        let input = format!("{event}{other}: ping\n\n");
        for split in [1, 2, 7, 50, input.len()] {
            let mut f = SseFilter {
                buf: BytesMut::new(),
                line_start: 0,
                filter: true,
                ids: vec![json!(1)],
                any: false,
                allow: allow(&["add"]),
                max: 1 << 20,
            };
            let mut out = Vec::new();
            let mut answered = Vec::new();
            for chunk in input.as_bytes().chunks(split) {
                let (b, ids) = f.push(chunk).unwrap();
                out.extend_from_slice(&b);
                answered.extend(ids);
            }
            out.extend_from_slice(&f.finish().0);
            assert_eq!(answered, [json!(1), json!(2)]);
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("secret") && !out.contains("echo"), "{out}");
            assert!(out.starts_with("event: message\nid: e1\ndata: {"), "{out}");
            assert!(out.contains("\"add\""), "{out}");
            assert!(out.ends_with(&format!("{other}: ping\n\n")), "{out}");
        }
    }

    #[test]
    fn oversized_events_are_not_passed_unchecked() {
        let mut f = SseFilter {
            buf: BytesMut::new(),
            line_start: 0,
            filter: true,
            ids: vec![],
            any: true,
            allow: allow(&["add"]),
            max: 16,
        };
        assert!(f.push(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,").is_none());
    }
}
