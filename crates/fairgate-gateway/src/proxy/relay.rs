//! Relay: the backend's answer back to the client. A whole answer is read (bounded) and passed
//! through; a stream is forwarded event by event while its tokens are counted and charged.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use fairgate_relay::{Endpoint, StreamRelay};
use fairgate_types::{GuardMode, Outcome, Usage, UsageSource};
use futures_util::stream;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::guard::{self, OutputScan};
use super::headers::copy_response_headers;
use super::plan::*;
use super::settle::Tracker;
use crate::cache::{CacheKey, CachedResponse};
use crate::error::ApiError;
use crate::proxy_limits::{HeldBytes, ReadError};
use crate::state::AppState;

/// Reads a backend body whole, within the per-request limit and the shared memory budget.
pub(super) async fn read_upstream_body(
    st: &AppState,
    body: Incoming,
) -> Result<HeldBytes, ReadError> {
    st.proxy_limits
        .response_memory
        .read(
            body,
            Duration::from_millis(st.config.upstream.idle_timeout_ms),
            st.config.upstream.max_response_bytes,
        )
        .await
}

pub(super) fn upstream_error_message(body: &[u8]) -> Option<String> {
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

/// Non-stream answer: read whole, take usage, pass the bytes through unchanged (unless the
/// completion guardrail blocks it: then an error, with the tokens still charged).
pub(super) async fn relay_whole(
    st: Arc<AppState>,
    mut t: Tracker,
    resp: http::Response<Incoming>,
    cache_key: Option<CacheKey>,
    output: GuardMode,
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
    if parts.status.is_success() {
        t.set_answer_units(&bytes);
    }
    if output.scans_completions() && parts.status.is_success() {
        let kinds = guard::scan_whole(&st.guard, &bytes);
        if !kinds.is_empty() {
            let block = output == GuardMode::Block;
            let action = if block { "blocked" } else { "logged" };
            let tenant = t.row.tenant.clone().unwrap_or_default();
            st.metrics
                .guardrail_findings
                .with_label_values(&[guard::OUTPUT_GUARDRAIL, &tenant, action])
                .inc();
            let list = kinds.iter().cloned().collect::<Vec<_>>().join(", ");
            tracing::info!(request_id = %t.row.id, tenant = %tenant, kinds = %list, action, "guardrail: personal data in a completion");
            if block {
                // Neither sent nor cached; the usage set above is charged.
                t.overhead_before += after.elapsed();
                return t.fail(guard::output_blocked(&kinds));
            }
        }
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
    let bytes = if parts.status.is_success() {
        t.row.outcome = Outcome::Ok;
        bytes
    } else {
        t.row.outcome = Outcome::UpstreamRejected;
        t.row.error_class = Some(format!("upstream_{}", parts.status.as_u16()));
        openai_error_body(parts.status, &bytes).unwrap_or(bytes)
    };
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

/// A backend's error body in OpenAI's shape, when it is not already: vLLM answers
/// `{"error": {"type": "BadRequestError", "code": 400, ...}}`, and the SDKs read `type` as one
/// of OpenAI's words and `code` as a string or null. The message is kept; `None` when the body
/// is not a JSON error object or needs no change.
pub(super) fn openai_error_body(status: StatusCode, bytes: &[u8]) -> Option<Bytes> {
    const TYPES: &[&str] = &[
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "server_error",
        "api_error",
        "insufficient_quota",
    ];
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let e = v.get_mut("error")?.as_object_mut()?;
    let mut changed = false;
    if !e
        .get("type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| TYPES.contains(&t))
    {
        let t = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        e.insert("type".into(), t.into());
        changed = true;
    }
    if !matches!(
        e.get("code"),
        Some(serde_json::Value::String(_) | serde_json::Value::Null)
    ) {
        e.insert("code".into(), serde_json::Value::Null);
        changed = true;
    }
    if !e.contains_key("param") {
        e.insert("param".into(), serde_json::Value::Null);
        changed = true;
    }
    if !e.get("message").is_some_and(|m| m.is_string()) {
        return None;
    }
    changed
        .then(|| serde_json::to_vec(&v).ok().map(Bytes::from))
        .flatten()
}

/// An upstream frame, the end of the body (`Ok(None)`), or no frame for the idle timeout.
type NextFrame = Result<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>, ()>;

/// State of a relayed stream; its `Drop` settles the ledger if the client went away.
pub(super) struct Relay {
    upstream: Incoming,
    relay: StreamRelay,
    tracker: Tracker,
    idle: Duration,
    /// Completion tokens reported to admission so far.
    completion_seen: u64,
    last_token: Option<Instant>,
    finished: bool,
    /// The row was settled as `ok` at the answer's `[DONE]`.
    settled_at_done: bool,
    /// The completion guardrail, when this answer's output mode scans it.
    output: Option<OutputScan>,
    /// When the last upstream frame arrived, and the timer that fires `idle` after it. The
    /// timer is re-armed only when it fires early (a frame came in between), not per frame,
    /// so a chunk costs no timer-wheel insert and removal.
    last_frame: Instant,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    /// This model's inter-token histogram, looked up once per stream rather than per token.
    inter_token: Option<prometheus::Histogram>,
}

impl Relay {
    /// The next upstream frame; `Err` when none came for `idle`.
    async fn next_frame(&mut self) -> NextFrame {
        loop {
            tokio::select! {
                biased;
                f = self.upstream.frame() => {
                    self.last_frame = Instant::now();
                    return Ok(f);
                }
                () = self.idle_timer.as_mut() => {
                    let due = self.last_frame + self.idle;
                    if Instant::now() >= due {
                        return Err(());
                    }
                    self.idle_timer.as_mut().reset(due.into());
                }
            }
        }
    }

    /// One step of the relay: what the client gets for this upstream frame (or the end of
    /// the upstream, or an idle timeout). Sets `finished` when the answer ends here.
    fn on_frame(&mut self, frame: NextFrame) -> Bytes {
        match frame {
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    return Bytes::new();
                };
                let mut p = self.relay.push(&data);
                self.on_push(&p);
                if self.output.is_some() {
                    // Before `[DONE]` settles the row: a block decides the outcome.
                    match self.guard_output(std::mem::take(&mut p.forward), false) {
                        Ok(b) => p.forward = b,
                        Err(last) => return last,
                    }
                }
                if let Err(why) = self.charge() {
                    // A hard budget ran out: end the answer cleanly here. Dropping the
                    // upstream body closes the backend connection, which stops generation.
                    self.finished = true;
                    let mut out = bytes::BytesMut::from(&p.forward[..]);
                    out.extend_from_slice(&self.tail());
                    let err = ApiError::BudgetExceeded(format!("the answer was cut off: {why}"));
                    out.extend_from_slice(&sse_error_event(&err));
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    self.settle(Outcome::CutOff, Some("budget_exceeded"));
                    return out.freeze();
                }
                if !self.settled_at_done && self.relay.saw_done() && !self.relay.error_event() {
                    // The answer is complete at `[DONE]`. SDKs close the connection as soon
                    // as they read it, maybe before the backend's end of stream reaches us,
                    // so the row is settled now rather than on a poll that may not come.
                    self.settled_at_done = true;
                    self.settle(Outcome::Ok, None);
                }
                p.forward
            }
            Ok(None) => {
                let mut rest = self.relay.finish();
                if self.output.is_some() {
                    match self.guard_output(rest, true) {
                        Ok(b) => rest = b,
                        Err(last) => return last,
                    }
                }
                self.finished = true;
                if self.settled_at_done {
                    // Recorded at `[DONE]` already.
                } else if self.relay.saw_done() && !self.relay.error_event() {
                    self.settle(Outcome::Ok, None);
                } else if self.relay.error_event() {
                    self.settle(Outcome::UpstreamError, Some("upstream_stream_error"));
                } else {
                    self.settle(Outcome::UpstreamError, Some("upstream_truncated"));
                }
                rest
            }
            Ok(Some(Err(e))) => {
                self.finished = true;
                let mut out = bytes::BytesMut::from(&self.tail()[..]);
                let model = self.tracker.row.model.clone().unwrap_or_default();
                let err = ApiError::UpstreamStatus {
                    model,
                    status: 200,
                    detail: format!(": the stream broke after it started ({e})"),
                };
                out.extend_from_slice(&sse_error_event(&err));
                self.settle(Outcome::UpstreamError, Some("upstream_stream_broken"));
                out.freeze()
            }
            Err(()) => {
                self.finished = true;
                let mut out = bytes::BytesMut::from(&self.tail()[..]);
                let model = self.tracker.row.model.clone().unwrap_or_default();
                let err = ApiError::UpstreamTimeout {
                    model,
                    timeout_ms: self.idle.as_millis() as u64,
                };
                out.extend_from_slice(&sse_error_event(&err));
                self.settle(Outcome::UpstreamError, Some("upstream_idle_timeout"));
                out.freeze()
            }
        }
    }

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

    /// The relay's held-back tail at an early end. A blocking completion guardrail has not
    /// checked it, so it is dropped then rather than sent unchecked.
    fn tail(&mut self) -> Bytes {
        let rest = self.relay.finish();
        if self.output.as_ref().is_some_and(|g| g.blocks()) {
            return Bytes::new();
        }
        rest
    }

    /// Counts and logs a completion finding (once per answer).
    fn count_output(&self, blocked: bool) {
        let Some(g) = &self.output else { return };
        let action = if blocked { "blocked" } else { "logged" };
        let tenant = self.tracker.row.tenant.as_deref().unwrap_or("");
        self.tracker
            .st
            .metrics
            .guardrail_findings
            .with_label_values(&[guard::OUTPUT_GUARDRAIL, tenant, action])
            .inc();
        let list = g.kinds().iter().cloned().collect::<Vec<_>>().join(", ");
        tracing::info!(request_id = %self.tracker.row.id, tenant = %tenant, kinds = %list, action, "guardrail: personal data in a completion");
    }

    /// Passes bytes bound for the client through the completion guardrail. `Err` carries
    /// the last bytes to send when it blocked: the clean text before the value, the error
    /// event and `[DONE]`; the row is settled then.
    fn guard_output(&mut self, forward: Bytes, end: bool) -> Result<Bytes, Bytes> {
        let Some(g) = self.output.as_mut() else {
            return Ok(forward);
        };
        let was_flagged = g.flagged();
        let mut verdict = g.feed(forward);
        if end {
            if let guard::OutputVerdict::Pass(before) = verdict {
                verdict = match g.finish() {
                    guard::OutputVerdict::Pass(rest) if before.is_empty() => {
                        guard::OutputVerdict::Pass(rest)
                    }
                    guard::OutputVerdict::Pass(rest) => {
                        let mut b = bytes::BytesMut::from(&before[..]);
                        b.extend_from_slice(&rest);
                        guard::OutputVerdict::Pass(b.freeze())
                    }
                    guard::OutputVerdict::Block(rest, kinds) => {
                        let mut b = bytes::BytesMut::from(&before[..]);
                        b.extend_from_slice(&rest);
                        guard::OutputVerdict::Block(b.freeze(), kinds)
                    }
                };
            }
        }
        let flagged = self.output.as_ref().is_some_and(|g| g.flagged());
        match verdict {
            guard::OutputVerdict::Pass(b) => {
                if flagged && !was_flagged {
                    self.count_output(false);
                }
                Ok(b)
            }
            guard::OutputVerdict::Block(b, kinds) => {
                self.count_output(true);
                self.finished = true;
                let mut out = bytes::BytesMut::from(&b[..]);
                out.extend_from_slice(&sse_error_event(&guard::output_blocked(&kinds)));
                out.extend_from_slice(b"data: [DONE]\n\n");
                // Dropping the upstream body (when the stream is dropped) closes the backend
                // connection, which stops generation; the tokens produced are charged.
                self.settle(Outcome::CutOff, Some(guard::OUTPUT_CODE));
                Err(out.freeze())
            }
        }
    }

    fn on_push(&mut self, p: &fairgate_relay::Pushed) {
        if p.new_tokens > 0 {
            let now = Instant::now();
            if p.first_token {
                self.tracker.mark_first_token();
            } else if let Some(prev) = self.last_token {
                let h = self.inter_token.get_or_insert_with(|| {
                    let m = self.tracker.row.model.as_deref().unwrap_or_default();
                    self.tracker.st.metrics.inter_token.with_label_values(&[m])
                });
                h.observe(now.duration_since(prev).as_secs_f64() / p.new_tokens as f64);
            }
            self.last_token = Some(now);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.finished && !self.settled_at_done {
            // The client disconnected mid-stream. Dropping `upstream` closes the backend
            // connection, which aborts the generation there; charge what was produced.
            self.settle(Outcome::Cancelled, Some("client_closed"));
        }
    }
}

pub(super) fn sse_error_event(err: &ApiError) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&err.body());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(super) fn relay_stream(
    st: Arc<AppState>,
    mut t: Tracker,
    resp: http::Response<Incoming>,
    relay: StreamRelay,
    output: GuardMode,
) -> Response {
    let (parts, body) = resp.into_parts();
    t.row.status = parts.status.as_u16();
    let mut out_headers = HeaderMap::new();
    copy_response_headers(&parts.headers, &mut out_headers);
    t.decorate(&mut out_headers);
    let idle = Duration::from_millis(st.config.upstream.idle_timeout_ms);
    let state = Relay {
        upstream: body,
        relay,
        tracker: t,
        idle,
        completion_seen: 0,
        last_token: None,
        finished: false,
        settled_at_done: false,
        output: OutputScan::new(&st.guard, output),
        last_frame: Instant::now(),
        idle_timer: Box::pin(tokio::time::sleep(idle)),
        inter_token: None,
    };
    // Boxed, so each step of the stream moves a pointer rather than the whole state.
    let s = stream::unfold(Box::new(state), |mut s| async move {
        loop {
            if s.finished {
                return None;
            }
            let frame = s.next_frame().await;
            let out = s.on_frame(frame);
            if !out.is_empty() {
                return Some((Ok::<Bytes, std::convert::Infallible>(out), s));
            }
        }
    });
    let mut out = Response::new(Body::from_stream(s));
    *out.status_mut() = parts.status;
    *out.headers_mut() = out_headers;
    out
}

/// Phase 5, relay: a stream event by event, anything else whole.
pub(super) async fn relay(
    st: Arc<AppState>,
    mut t: Tracker,
    resp: http::Response<Incoming>,
    plan: &Plan,
    cache_key: Option<CacheKey>,
    output: GuardMode,
) -> Response {
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    // Completions of the typed endpoints only: relayed paths carry other shapes.
    let output = match plan.endpoint {
        Some(Endpoint::ChatCompletions | Endpoint::Completions) => output,
        _ => GuardMode::Off,
    };
    if resp.status().is_success() && is_sse {
        // Relayed paths learn only here that the answer streams.
        t.row.stream = true;
        let relay = StreamRelay::with_options(plan.strip_usage_chunk, plan.strip_chunk_usage);
        return relay_stream(st, t, resp, relay, output);
    }
    relay_whole(st, t, resp, cache_key, output).await
}

#[cfg(test)]
mod error_body_tests {
    use super::*;

    #[test]
    fn backend_errors_take_openais_shape() {
        let vllm = br#"{"error":{"message":"max_tokens must be at least 1, got 0.","type":"BadRequestError","param":null,"code":400}}"#;
        let out = openai_error_body(StatusCode::BAD_REQUEST, vllm).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], serde_json::Value::Null);
        assert_eq!(
            v["error"]["message"],
            "max_tokens must be at least 1, got 0."
        );
        // Already OpenAI-shaped, or not an error object: left alone.
        let ok =
            br#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"x"}}"#;
        assert!(openai_error_body(StatusCode::BAD_REQUEST, ok).is_none());
        assert!(openai_error_body(StatusCode::BAD_REQUEST, b"not json").is_none());
        assert!(openai_error_body(StatusCode::BAD_REQUEST, br#"{"detail":"x"}"#).is_none());
        let nf = openai_error_body(StatusCode::NOT_FOUND, br#"{"error":{"message":"m"}}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&nf).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
    }
}
