//! Which headers cross the gateway: the one place an upstream request's headers are built
//! (client credentials never reach a backend) and a backend answer's are copied (it never sets
//! cookies under the gateway's origin).

use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::plan::*;

/// Hop-by-hop headers and those the gateway sets itself: never copied in either direction.
pub(super) fn hop_or_framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept-encoding"
            | "content-encoding"
    )
}

/// Client credentials and gateway controls: meant for the gateway, never for a backend. A
/// backend (or anyone who can read its logs or traffic) must not learn a tenant's key, the
/// portal session cookie, or anything else that would let it act as the client.
pub(super) fn client_only(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "cookie2"
            | "x-api-key"
            | "api-key"
            | "x-auth-token"
            | "x-amz-security-token"
    ) || n.starts_with("x-fairgate-")
}

/// Backend answers must not set state in the client's browser under the gateway's origin
/// (the portal's session cookie lives there).
pub(super) fn backend_only(name: &HeaderName) -> bool {
    matches!(name.as_str(), "set-cookie" | "set-cookie2")
}

/// The one place the headers of an upstream request are built: the client's headers minus
/// hop-by-hop ones and every client credential, plus the request id. A backend credential of
/// the gateway's own (`Authorization: Bearer <backend key>`) is added here, after filtering.
pub(super) fn upstream_headers(client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(client.len() + 1);
    for (k, v) in client.iter() {
        if !hop_or_framing(k) && !client_only(k) {
            h.append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    h
}

pub(super) fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from.iter() {
        if !hop_or_framing(k) && !backend_only(k) && k != header::AUTHORIZATION {
            to.append(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn client_credentials_are_not_sent_upstream() {
        let client = headers(&[
            ("authorization", "Bearer fg-key"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "fg_session=s"),
            ("x-api-key", "k"),
            ("api-key", "k"),
            ("x-fairgate-priority", "batch"),
            ("x-fairgate-cache", "on"),
            ("host", "gw"),
            ("content-type", "application/json"),
            ("x-trace", "1"),
        ]);
        let up = upstream_headers(&client, "req-1");
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "x-trace", "x-request-id"]);
    }

    #[test]
    fn backend_cookies_are_not_relayed() {
        let backend = headers(&[
            ("set-cookie", "fg_session=evil; Path=/"),
            ("set-cookie2", "x=1"),
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
            ("x-backend", "1"),
        ]);
        let mut out = HeaderMap::new();
        copy_response_headers(&backend, &mut out);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "x-backend"]);
    }
}
