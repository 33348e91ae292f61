//! The HTTP client the gateway reaches backends with: connection pooling, timeouts, and
//! rustls with the system's roots plus any configured CA bundle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::config::{BackendConfig, Secret};

/// Request body type sent upstream.
pub type UpBody = BoxBody<Bytes, std::convert::Infallible>;
/// Speaks `http://` and `https://` (rustls); which one follows the backend's URL.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpBody>;

/// Connect timeout of the clients built for backends with their own CA (set with the shared
/// client, which comes first).
pub(crate) static CONNECT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(2_000);
/// `upstream.pool_idle_timeout_ms`, for the same clients.
static POOL_IDLE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(60_000);

/// The client for backends: plain HTTP, or TLS trusting the system roots plus
/// `upstream.ca_file`.
pub fn http_client(cfg: &crate::config::UpstreamConfig) -> HttpClient {
    CONNECT_TIMEOUT_MS.store(cfg.connect_timeout_ms, Ordering::Relaxed);
    POOL_IDLE_TIMEOUT_MS.store(cfg.pool_idle_timeout_ms.max(1), Ordering::Relaxed);
    tls_client(
        Duration::from_millis(cfg.connect_timeout_ms),
        roots(true, cfg.ca_file.as_deref()),
    )
}

/// A client trusting exactly `roots` for `https://`.
pub(crate) fn tls_client(connect_timeout: Duration, roots: rustls::RootCertStore) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(connect_timeout));
    conn.set_nodelay(true);
    conn.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            // Cannot happen with ring's defaults; fail closed (no roots) rather than panic.
            tracing::error!(error = %e, "TLS setup failed; https backends will not connect");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    // hyper-util expires idle connections only when the pool has a timer: without one, the
    // sockets (and their buffers) of a burst of streams stayed open for good.
    Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(
            POOL_IDLE_TIMEOUT_MS.load(Ordering::Relaxed),
        ))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// The key a backend config gives. Validation checked it; a variable unset since then sends
/// no key (the backend refuses, which shows in its health) rather than stopping the gateway.
pub(crate) fn key_of(cfg: &BackendConfig) -> Option<Secret> {
    cfg.resolve_api_key().unwrap_or_else(|e| {
        tracing::error!(backend = %cfg.display_name(), error = %e, "backend API key unavailable");
        None
    })
}

/// An error with its causes, for logs and operator views (never for clients).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Trust anchors: the system's (when `system`) plus those of `extra`. A CA file that became
/// unreadable since validation adds nothing: TLS then fails closed.
pub(crate) fn roots(system: bool, extra: Option<&std::path::Path>) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    if system {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = store.add(c);
        }
    }
    if let Some(f) = extra {
        match crate::tls::read_ca_file(f) {
            Ok(certs) => {
                for c in certs {
                    let _ = store.add(c);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "CA file unusable; its backends will not connect")
            }
        }
    }
    store
}
