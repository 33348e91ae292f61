//! Send: the request to the admitted backend, and failover. An attempt that fails before the
//! response head (connection refused, no head in time, 5xx, the backend refusing the gateway's
//! own key) may go to another backend, up to `routing.max_attempts`; nothing has reached the
//! client yet, so it cannot tell. Once a head is relayed there is no retry. Each failure says
//! itself whether it may be retried ([`SendError`]), so the loop decides nothing inline.

use std::time::Duration;

use bytes::Bytes;
use fairgate_types::Priority;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upstream::{Backend, Route};

use super::headers::upstream_headers;
use super::plan::Plan;
use super::relay::{read_upstream_body, upstream_error_message};
use super::resolve::Resolved;
use super::settle::Tracker;

/// Whether a failed attempt may be sent to another backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// The backend failed before answering: another one may take the request.
    OtherBackend,
    /// The connection was refused or reset before any answer (a backend's accept queue
    /// overflowing during a ramp, a restart): the backend never took the request, so when no
    /// other backend can, the same one may try again after a short pause.
    AnyBackend,
    /// The request itself cannot be sent: no backend would do better.
    No,
}

/// One failed attempt: the error the client gets if it is the last, the reason for the log
/// and the breaker (which may name the backend; the client's error never does), and whether
/// another backend may be tried.
pub(super) struct SendError {
    pub(super) error: ApiError,
    pub(super) why: String,
    pub(super) retry: Retry,
}

/// What vLLM's `priority` field says for this request, worked out once and applied per
/// backend: engines that run the priority policy get the request's fair-share position (or the
/// client's own value, when its key may set one); others never see the field.
pub(super) struct EnginePriority {
    value: i64,
    /// The body may carry a client `priority` to take out for engines without the policy.
    strip: bool,
}

/// Added to the position of `batch`-class requests, so an engine runs every interactive
/// request before any batch one (positions are 0..=9).
const BATCH_POSITION: i64 = 10;

impl EnginePriority {
    pub(super) fn new(plan: &Plan, r: &Resolved, key_may_set: bool, rank: u8) -> EnginePriority {
        let own = i64::from(rank)
            + if r.priority == Priority::Batch {
                BATCH_POSITION
            } else {
                0
            };
        let (client, strip) = match &plan.parsed {
            Some(p) => (p.priority, p.priority_member),
            // A relayed body was not parsed: one cheap look (a parse only if it may mention
            // the field). Not JSON, or not an integer: leave it to the per-backend rewrite.
            None => match fairgate_relay::client_priority(&plan.body) {
                Ok(member) => (member.flatten(), member.is_some()),
                Err(_) => (None, true),
            },
        };
        let value = match client {
            Some(v) if key_may_set => v,
            _ => own,
        };
        EnginePriority { value, strip }
    }

    /// The body for `backend`. A relayed body that is not JSON goes as it is (it has no
    /// `priority` member to take out, and an engine would not read one in it).
    fn body(&self, plan: &Plan, backend: &Backend) -> Bytes {
        let value = if backend.priority_policy() {
            Some(self.value)
        } else if self.strip {
            None
        } else {
            return plan.body.clone();
        };
        match fairgate_relay::with_priority(&plan.body, value) {
            Ok(b) => b,
            Err(_) => plan.body.clone(),
        }
    }
}

/// Phase 4, send: attempts on the leased backend, moving the lease to a backend not yet tried
/// after each retryable failure.
#[expect(
    clippy::too_many_arguments,
    reason = "one phase of one request; each is read once"
)]
pub(super) async fn send(
    st: &AppState,
    t: &mut Tracker,
    live: &Config,
    parts: &http::request::Parts,
    plan: &Plan,
    r: &Resolved,
    route: &Route<'_>,
    engine: &EnginePriority,
) -> Result<http::Response<Incoming>, ApiError> {
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let max_attempts = live.routing.max_attempts.max(1);
    let mut attempts = 0u32;
    let mut same_backend_retries = 0u32;
    loop {
        let Some(lease) = t.admitted.as_ref().map(|a| &a.lease) else {
            return Err(ApiError::Internal("admission lost its lease".into()));
        };
        let backend = lease.backend.clone();
        attempts += 1;
        t.row.backend = Some(backend.name.clone());
        t.row.attempts = attempts;
        let body = match &plan.spooled {
            Some(f) => match super::spool::file_body(f).await {
                Ok(b) => Outgoing::File(b, f.len),
                Err(e) => {
                    return Err(ApiError::Internal(format!(
                        "could not read the spooled upload: {e}"
                    )))
                }
            },
            None => Outgoing::Bytes(engine.body(plan, &backend)),
        };
        match attempt(
            st,
            &backend,
            parts,
            path_q,
            body,
            &r.served,
            t.row.id.as_str(),
        )
        .await
        {
            Ok(resp) => {
                lease.succeeded();
                return Ok(resp);
            }
            Err(e) => {
                tracing::warn!(request_id = %t.row.id, backend = %backend.name, url = %backend.url, reason = %e.why, "upstream attempt failed");
                if e.retry == Retry::No {
                    return Err(e.error);
                }
                let Some(lease) = t.admitted.as_mut().map(|a| &mut a.lease) else {
                    return Err(e.error);
                };
                lease.failed(e.why);
                if attempts >= max_attempts {
                    return Err(e.error);
                }
                if lease.move_on(route) {
                    continue;
                }
                if e.retry != Retry::AnyBackend {
                    return Err(e.error);
                }
                // The only backend left refused or reset the connection: it has not seen the
                // request. A short pause (25 ms, then 50 ms, ...) lets its accept queue drain.
                tokio::time::sleep(SAME_BACKEND_PAUSE * (1 << same_backend_retries.min(4))).await;
                same_backend_retries += 1;
            }
        }
    }
}

/// The first pause before the same backend is tried again (doubling after each retry).
const SAME_BACKEND_PAUSE: Duration = Duration::from_millis(25);

/// Whether a failed request never reached the backend's application: the connection was
/// refused, reset or closed before any answer. Anything else (a timeout, a broken answer) may
/// mean the backend is working on it.
fn never_answered(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        src = s.source();
    }
    false
}

/// What one attempt sends: bytes in memory, or a spooled upload streamed from its file with
/// its length.
enum Outgoing {
    Bytes(Bytes),
    File(crate::upstream::UpBody, u64),
}

/// One attempt on one backend, up to its response head.
async fn attempt(
    st: &AppState,
    backend: &Backend,
    parts: &http::request::Parts,
    path_q: &str,
    body: Outgoing,
    served: &str,
    request_id: &str,
) -> Result<http::Response<Incoming>, SendError> {
    let timeout_ms = st.config.upstream.first_byte_timeout_ms;
    let mut builder = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{}", backend.url, path_q));
    if let Some(h) = builder.headers_mut() {
        *h = upstream_headers(&parts.headers, request_id);
        backend.authorize(h);
        if let Outgoing::File(_, len) = &body {
            h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(*len));
        }
    }
    let body = match body {
        Outgoing::Bytes(b) => Full::new(b).map_err(|never| match never {}).boxed(),
        Outgoing::File(b, _) => b,
    };
    let up_req = builder.body(body).map_err(|e| SendError {
        error: ApiError::Internal(e.to_string()),
        why: e.to_string(),
        retry: Retry::No,
    })?;
    let sent = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        backend.client(&st.client).request(up_req),
    )
    .await;
    let (error, why) = match sent {
        // A 401 from a backend refuses the gateway's own credential (clients never
        // authenticate there): a backend fault, retried elsewhere, never relayed as if the
        // client's key were wrong.
        Ok(Ok(r)) if !r.status().is_server_error() && r.status() != StatusCode::UNAUTHORIZED => {
            return Ok(r)
        }
        Ok(Ok(r)) => {
            let status = r.status();
            let (_, body) = r.into_parts();
            let detail = read_upstream_body(st, body)
                .await
                .ok()
                .and_then(|b| upstream_error_message(&b.bytes))
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let err = if status == StatusCode::SERVICE_UNAVAILABLE {
                ApiError::UpstreamUnavailable {
                    model: served.to_owned(),
                    detail,
                }
            } else {
                ApiError::UpstreamStatus {
                    model: served.to_owned(),
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
            let retry = if e.is_connect() || never_answered(&e) {
                Retry::AnyBackend
            } else {
                Retry::OtherBackend
            };
            return Err(SendError {
                error: ApiError::UpstreamConnect {
                    model: served.to_owned(),
                    detail,
                },
                why: crate::upstream::error_chain(&e),
                retry,
            });
        }
        Err(_) => (
            ApiError::UpstreamTimeout {
                model: served.to_owned(),
                timeout_ms,
            },
            format!("no response head within {timeout_ms} ms"),
        ),
    };
    Err(SendError {
        error,
        why,
        retry: Retry::OtherBackend,
    })
}
