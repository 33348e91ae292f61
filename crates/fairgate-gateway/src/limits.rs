//! Request bounds every route shares: a deadline on reading a body, and the body limits of
//! the portal and the admin API, enforced while reading (a declared `Content-Length` over the
//! limit is refused before a byte of the body is read).
//!
//! The `/v1` handlers read their own bodies (`proxy::read_body_checked`) because their
//! refusals also need a ledger row; they get the same deadline through the request body
//! itself ([`DeadlineBody`], installed by the HTTP server for every request).

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::state::AppState;

/// The error a body yields once its read deadline has passed.
#[derive(Debug)]
pub struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl StdError for BodyTimeout {}

/// Whether `err` (or anything it wraps: axum and `Limited` box the body's own error) is a
/// [`BodyTimeout`].
pub fn is_body_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A request body that fails with [`BodyTimeout`] when it is still being read at `deadline`:
/// a client trickling its body cannot hold a handler (and its buffer) open for ever.
pub struct DeadlineBody<B = Body> {
    inner: B,
    deadline: Instant,
    /// Made on the first read that has to wait, so bodies read at once cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, timeout: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            inner,
            deadline: Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Over the limit: declared so, or found so while reading.
    TooLarge,
    /// Not received within the read deadline.
    Timeout,
    /// The client broke off or sent a malformed body.
    Read(String),
}

/// The `Content-Length` the client declared, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads `body` whole, but never more than `limit` bytes of it.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyRefusal> {
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(BodyRefusal::TooLarge);
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRefusal::TooLarge),
        Err(e) if is_body_timeout(&*e) => Err(BodyRefusal::Timeout),
        Err(e) => Err(BodyRefusal::Read(e.to_string())),
    }
}

/// Buffers a request's body under `limit` so the handler's extractors see it whole.
pub async fn buffered(req: Request, limit: usize) -> Result<Request, BodyRefusal> {
    if http_body::Body::is_end_stream(req.body()) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = read_limited(&parts.headers, body, limit).await?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The body was not read to its end, so the connection cannot carry another request.
pub fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Middleware for `/admin/v1` (after the token check): JSON bodies up to
/// `limits.admin_body_bytes`, OpenAI-shaped refusals.
pub async fn admin_body(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = st.config.limits.admin_body_bytes;
    match buffered(req, limit).await {
        Ok(req) => next.run(req).await,
        Err(r) => closing(
            match r {
                BodyRefusal::TooLarge => ApiError::BodyTooLarge(limit),
                BodyRefusal::Timeout => ApiError::RequestTimeout,
                BodyRefusal::Read(e) => ApiError::BodyRead(e),
            }
            .into_response(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn headers(cl: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(n) = cl {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        h
    }

    #[tokio::test]
    async fn declared_length_over_limit_is_refused_unread() {
        // A body that would fail if it were read at all.
        let body = Body::from_stream(stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("must not be read"))
        }));
        let r = read_limited(&headers(Some(1 << 40)), body, 1024).await;
        assert_eq!(r, Err(BodyRefusal::TooLarge));
    }

    #[tokio::test]
    async fn undeclared_body_over_limit_stops_at_the_limit() {
        // An endless body: reading it whole would never finish.
        let chunks = stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 4096])));
        let r = read_limited(&headers(None), Body::from_stream(chunks), 64 * 1024).await;
        assert_eq!(r, Err(BodyRefusal::TooLarge));
        let ok = read_limited(&headers(Some(3)), Body::from("abc"), 3).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"abc"));
    }

    #[tokio::test(start_paused = true)]
    async fn trickled_body_times_out() {
        let chunks = stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let body = Body::new(DeadlineBody::new(
            Body::from_stream(chunks),
            Duration::from_millis(3500),
        ));
        let r = read_limited(&headers(None), body, 1024).await;
        assert_eq!(r, Err(BodyRefusal::Timeout));
        // A body that arrives in time is untouched.
        let body = Body::new(DeadlineBody::new(
            Body::from("hello"),
            Duration::from_millis(1),
        ));
        let r = read_limited(&headers(None), body, 1024).await;
        assert_eq!(r.unwrap(), Bytes::from_static(b"hello"));
    }

    #[test]
    fn finds_timeout_in_wrapped_errors() {
        let boxed: axum::BoxError = Box::new(axum::Error::new(BodyTimeout));
        assert!(is_body_timeout(&*boxed));
        let other: axum::BoxError = Box::new(std::io::Error::other("x"));
        assert!(!is_body_timeout(&*other));
    }
}
