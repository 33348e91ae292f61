//! vLLM's operator endpoints, relayed to every backend of a model for the admin token only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use fairgate_types::Outcome;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};

use super::edge::*;
use super::headers::*;
use super::relay::*;
use super::settle::Tracker;
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::proxy_limits::{HeldBytes, ReadError, MAX_ENDPOINT_BYTES};
use crate::state::AppState;

/// vLLM's operator endpoints (`relay.operator_paths`: LoRA adapters, caches, sleep, profiling,
/// ...). Only the gateway's admin token may call them (a tenant key gets 403 `admin_only`);
/// the admin token itself is not passed on. The call goes to EVERY backend of the model named
/// by the body's or the query's `model` (or the only model): an adapter loaded on one replica
/// only would fail on the others, and a cache reset or sleep is meant for the model, not for
/// whichever replica a balancer picks. Backends are called one after another; the answer is
/// the first failing backend's (status and body) or, when all succeeded, the first one's,
/// with `x-fairgate-backends: <succeeded>/<called>`. No fair-share slot is taken: these calls
/// do no inference.
pub(super) async fn operator(st: Arc<AppState>, addr: ClientAddr, req: Request) -> Response {
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
