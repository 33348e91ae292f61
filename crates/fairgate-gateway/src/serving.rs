//! The HTTP server: accepts TCP connections and serves the router over HTTP/1.1 and h2c, with
//! the bounds a public endpoint needs and a bounded graceful shutdown.
//!
//! Our own accept loop (instead of `axum::serve`) because the bounds live in hyper's
//! connection builder: the time a request head may take to arrive, the size of a head (more
//! gets 431 from hyper), and because shutdown must end: after `shutdown_grace_ms` the
//! connections still open are dropped, which drops their handlers, and each handler's ledger
//! tracker then records its request as cancelled with what it had relayed.
//!
//! Per request, before the router: the URL length (414) and a read deadline on the body
//! ([`crate::limits::DeadlineBody`]), and the peer address as `ConnectInfo<SocketAddr>` for
//! [`crate::extract::ClientAddr`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::{Either, Ready};
use http::{header, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ApiError;
use crate::state::AppState;

/// How long connections get to wind down after the grace period's hard close; in practice
/// they end at their next poll.
const HARD_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves; then marks the replica not ready,
/// stops accepting, lets open requests finish for up to `shutdown_grace_ms`, and closes what
/// is left. Returns once every connection is gone.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    st: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = st.config.limits.clone();
    let conns = TaskTracker::new();
    let hard = CancellationToken::new();
    let mut builder = auto::Builder::new(TrackedExecutor(conns.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Finds peers that vanished without closing (HTTP/1 has the header timeout for that).
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_INTERVAL);
    let builder = Arc::new(builder);
    let edge = Edge {
        app,
        peer: None,
        first_request: Arc::new(AtomicBool::new(false)),
        max_uri_bytes: limits.max_uri_bytes,
        body_timeout: Duration::from_millis(limits.body_read_timeout_ms),
    };
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Streams are many small writes; without TCP_NODELAY, Nagle's algorithm meets the
        // peer's delayed ACK and each stream stalls ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let first_request = Arc::new(AtomicBool::new(false));
        let svc = TowerToHyperService::new(Edge {
            peer: Some(peer),
            first_request: first_request.clone(),
            ..edge.clone()
        });
        let builder = builder.clone();
        let stopping = st.stopping.clone();
        let hard = hard.clone();
        conns.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            // hyper's header timeout starts once it knows the protocol; a client that sends
            // nothing, or an HTTP/2 preface byte by byte, is bounded here instead.
            let first_deadline = tokio::time::sleep(header_timeout);
            let mut first_deadline = std::pin::pin!(first_deadline);
            let mut waiting_first = true;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        return;
                    }
                    () = stopping.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        break;
                    }
                    () = first_deadline.as_mut(), if waiting_first => {
                        if !first_request.load(Ordering::Relaxed) {
                            tracing::debug!(%peer, "no request head in time; closing");
                            return;
                        }
                        waiting_first = false;
                    }
                }
            }
            tokio::select! {
                _ = conn.as_mut() => {}
                // Dropping the connection drops its in-flight handlers.
                () = hard.cancelled() => {}
            }
        });
    }
    drop(listener);
    st.stopping.cancel();
    conns.close();
    let grace = Duration::from_millis(st.config.shutdown_grace_ms);
    tracing::info!(
        open = conns.len(),
        grace_ms = st.config.shutdown_grace_ms,
        "stopped accepting; letting open requests finish"
    );
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "shutdown grace period over: closing the remaining connections (their requests are recorded as cancelled)"
        );
        hard.cancel();
        if tokio::time::timeout(HARD_CLOSE_WAIT, conns.wait())
            .await
            .is_err()
        {
            tracing::warn!(open = conns.len(), "some connections did not close in time");
        }
    }
    Ok(())
}

/// Accept errors are mostly per-connection (reset before accept) and harmless; running out of
/// file descriptors is not, and retrying at once would spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; pausing accepts for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Runs hyper's per-stream tasks (HTTP/2) in the connection tracker, so shutdown waits for
/// them too.
#[derive(Clone)]
struct TrackedExecutor(TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The per-connection service in front of the router.
#[derive(Clone)]
struct Edge {
    app: Router,
    peer: Option<SocketAddr>,
    /// Set once the connection's first request head has arrived.
    first_request: Arc<AtomicBool>,
    max_uri_bytes: usize,
    body_timeout: Duration,
}

type EdgeFuture = Either<
    Ready<Result<Response, Infallible>>,
    <Router as tower_service::Service<http::Request<Body>>>::Future,
>;

impl tower_service::Service<http::Request<Incoming>> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        self.first_request.store(true, Ordering::Relaxed);
        if uri_len(req.uri()) > self.max_uri_bytes {
            let mut resp = ApiError::UriTooLong(self.max_uri_bytes).into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Either::Left(futures_util::future::ready(Ok(resp)));
        }
        let timeout = self.body_timeout;
        let mut req = req.map(|b| {
            if http_body::Body::is_end_stream(&b) {
                Body::new(b)
            } else {
                Body::new(crate::limits::DeadlineBody::new(b, timeout))
            }
        });
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        Either::Right(tower_service::Service::call(&mut self.app, req))
    }
}

/// The length of a request target as the client sent it (origin or absolute form).
fn uri_len(uri: &http::Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    pq + authority + scheme
}

#[cfg(test)]
mod tests {
    #[test]
    fn uri_length_counts_what_was_sent() {
        let u: http::Uri = "/v1/models?x=1".parse().unwrap();
        assert_eq!(super::uri_len(&u), 14);
        let u: http::Uri = "http://h:1/a".parse().unwrap();
        assert_eq!(super::uri_len(&u), "http://h:1/a".len());
    }
}
