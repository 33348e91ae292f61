//! Extractors the handlers of every surface share (data plane, admin API, portal): they read the
//! gateway's [`AppState`] from any router state that can lend it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use http::request::Parts;

use crate::client_addr::client_addr;
use crate::state::AppState;

/// Extractor: the request's client address per [`client_addr`], with the live config's
/// `trusted_proxies`. Never fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S> FromRequestParts<S> for ClientAddr
where
    S: Send + Sync,
    Arc<AppState>: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let st = Arc::<AppState>::from_ref(state);
        let live = st.live.load();
        Ok(ClientAddr(client_addr(
            &parts.headers,
            peer,
            &live.trusted_proxies,
        )))
    }
}
