//! The first hops of every request: the key (and what an anonymous failure may cost), the
//! body read under its limit, and the 404 for paths no route serves.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::settle::Tracker;
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::identity::Principal;
use crate::proxy_limits::{AnonymousReason, MAX_ENDPOINT_BYTES};
use crate::state::AppState;

#[expect(
    clippy::result_large_err,
    reason = "the error is the finished response, returned once per failed request"
)]
pub(crate) fn authenticate(
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
pub(super) fn gate_anonymous(
    st: &AppState,
    t: &mut Tracker,
    addr: ClientAddr,
    reason: AnonymousReason,
) {
    let per_minute = st.live.load().relay.anonymous_rows_per_minute;
    if !st.proxy_limits.anonymous.admit(addr.0, reason, per_minute) {
        t.suppressed = true;
    }
}

/// Whether the request carries the gateway's admin token (compared in constant time).
pub(super) fn is_admin(st: &AppState, headers: &HeaderMap) -> bool {
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
pub(crate) async fn read_body_checked(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let body = refuse_declared_over(headers, body, limit).await?;
    read_body(body, limit).await
}

/// A body whose `Content-Length` is over `limit` is refused before it is read (and drained,
/// so the connection stays usable); any other body is handed back.
async fn refuse_declared_over(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Body, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared.filter(|n| *n > limit as u64) {
        Some(n) => {
            drain(body, n).await;
            Err(ApiError::BodyTooLarge(limit))
        }
        None => Ok(body),
    }
}

/// A `multipart/form-data` body under `max_body_bytes`, spooled to a file in the data
/// directory once large ([`super::spool`]).
pub(super) async fn read_upload_checked(
    st: &AppState,
    parts: &http::request::Parts,
    body: Body,
    boundary: &str,
) -> Result<super::spool::Upload, ApiError> {
    let limit = st.config.max_body_bytes;
    let body = refuse_declared_over(&parts.headers, body, limit).await?;
    let dir = st.config.data_dir.join("uploads");
    let upload = super::spool::read_upload(body, limit, &dir, boundary, |e| {
        if crate::limits::is_body_timeout(&e) {
            ApiError::RequestTimeout
        } else {
            ApiError::BodyRead(e.to_string())
        }
    })
    .await?;
    if matches!(upload, super::spool::Upload::Spooled { .. }) {
        st.metrics
            .uploads_spooled
            .with_label_values(&[fairgate_relay::unit_of_path(parts.uri.path()).as_str()])
            .inc();
    }
    Ok(upload)
}

/// The most of a refused body read and dropped before answering 413, and for how long.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops a refused body (bounded in bytes and time) before the 413 goes out: a
/// client still sending when the server closes gets a broken pipe or a reset instead of the
/// answer (Node's fetch and Python's urllib both do), and its SDK then retries the whole
/// upload. Past the bound the connection closes anyway.
async fn drain(mut body: Body, declared: u64) {
    let want = declared.min(DRAIN_BYTES);
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen < want {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        seen += d.len() as u64;
                    }
                }
                _ => break,
            }
        }
    })
    .await;
}

/// The connection cannot be reused after an unread body, so say so: otherwise a client
/// sends its next request into a socket the server is closing.
pub(crate) fn close_after(mut resp: Response) -> Response {
    if matches!(
        resp.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The 404 `unknown_url`, attributed to the key when it is a valid one, else anonymous (rows
/// at a bounded rate per client address).
pub(super) fn unknown_route(st: &Arc<AppState>, addr: ClientAddr, req: &Request) -> Response {
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

pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
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

/// The model of a request as its backend will read it ([`fairgate_relay::read_model`]).
pub(super) fn read_model_of(
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
