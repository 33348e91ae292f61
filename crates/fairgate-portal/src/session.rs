//! Who is asking, by type: a handler gets a signed-in person only from one of the extractors
//! here ([`SignedIn`], [`TenantAdmin`], [`Operator`]), and a state-changing form only through
//! [`CsrfForm`], so a route cannot forget the sign-in, role or CSRF check.
//!
//! The checks run in one order everywhere: the session (missing, expired or for a disabled
//! account: back to the sign-in page), then the role (403), then for a form the origin and
//! the session's CSRF token (403). The resolved session is kept in the request's extensions,
//! so a second extractor on the same request does not read the database again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use fairgate_types::{now_millis, Role, Session, User};
use http::request::Parts;
use http::{header, HeaderMap};

use crate::html::Viewer;
use crate::{auth, form_urlencoded, PortalState, Refusal};

/// A signed-in request: the person and their session. Fields are private and there is no
/// constructor outside this file: the extractors below are the only way to get one.
#[derive(Clone)]
pub(crate) struct Signed {
    user: User,
    session: Session,
}

impl Signed {
    pub fn user(&self) -> &User {
        &self.user
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session's CSRF token, for the forms a page renders.
    pub fn csrf(&self) -> &str {
        &self.session.csrf
    }

    pub fn viewer(&self) -> Viewer<'_> {
        Viewer {
            email: &self.user.email,
            role: self.user.role,
            csrf: &self.session.csrf,
        }
    }
}

/// The session cookie's person, resolved once per request and then read from the extensions.
async fn resolve(parts: &mut Parts, st: &PortalState) -> Result<Signed, Refusal> {
    if let Some(s) = parts.extensions.get::<Signed>() {
        return Ok(s.clone());
    }
    let s = look_up(st, &parts.headers).await?;
    parts.extensions.insert(s.clone());
    Ok(s)
}

async fn look_up(st: &PortalState, headers: &HeaderMap) -> Result<Signed, Refusal> {
    let Some(cookie) = auth::session_from_headers(headers) else {
        return Err(Refusal::SignIn);
    };
    let id_hash = auth::hash_session_id(&cookie);
    let Some(session) = st.store.get_session(&id_hash).await? else {
        return Err(Refusal::SignIn);
    };
    if session.expires_at <= now_millis() {
        let _ = st.store.delete_session(&id_hash).await;
        return Err(Refusal::SignIn);
    }
    match st.store.get_user(&session.user_id).await? {
        Some(user) if !user.disabled => Ok(Signed { user, session }),
        _ => Err(Refusal::SignIn),
    }
}

/// Signed in with at least `role`.
async fn with_role(parts: &mut Parts, st: &PortalState, role: Role) -> Result<Signed, Refusal> {
    let s = resolve(parts, st).await?;
    if s.user.role >= role {
        Ok(s)
    } else {
        Err(Refusal::Forbidden("your role may not use this page"))
    }
}

/// One extractor per role; each derefs to [`Signed`].
macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        pub(crate) struct $name(Signed);

        impl std::ops::Deref for $name {
            type Target = Signed;
            fn deref(&self) -> &Signed {
                &self.0
            }
        }

        impl FromRequestParts<Arc<PortalState>> for $name {
            type Rejection = Refusal;

            async fn from_request_parts(
                parts: &mut Parts,
                st: &Arc<PortalState>,
            ) -> Result<Self, Refusal> {
                with_role(parts, st, $role).await.map($name)
            }
        }
    };
}

role_extractor!(
    /// Anyone signed in with an enabled account.
    SignedIn,
    Role::User
);
role_extractor!(
    /// A tenant admin or an operator.
    TenantAdmin,
    Role::TenantAdmin
);
role_extractor!(
    /// An operator.
    Operator,
    Role::Operator
);

/// A form type [`CsrfForm`] can decode: built from the decoded pairs, in order, repeats kept.
pub(crate) trait FormData: Sized {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self;
}

/// The raw pairs, for forms with repeated fields (serde's form decoding has no lists).
impl FormData for Vec<(String, String)> {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        pairs
    }
}

/// A form that carries nothing but the CSRF token (sign-out, revoke, rotate, ...).
pub(crate) struct CsrfOnly;

impl FormData for CsrfOnly {
    fn from_pairs(_: Vec<(String, String)>) -> Self {
        CsrfOnly
    }
}

/// A state-changing form from a signed-in session: same origin, the session's CSRF token in
/// its `csrf` field, then decoded into `T`. Put it after the role extractor so the role is
/// checked first.
pub(crate) struct CsrfForm<T>(pub T);

impl<T: FormData> FromRequest<Arc<PortalState>> for CsrfForm<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, st: &Arc<PortalState>) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let s = resolve(&mut parts, st).await?;
        if !same_origin(&parts.headers) {
            return Err(Refusal::Forbidden("cross-origin form submission refused"));
        }
        // The portal's body limit has buffered the body already; reading it cannot stall.
        let req = Request::from_parts(parts, body);
        let bytes = Bytes::from_request(req, st)
            .await
            .map_err(|e| Refusal::BadRequest(e.body_text()))?;
        let pairs = form_urlencoded(&bytes);
        let csrf = pairs
            .iter()
            .find(|(n, _)| n == "csrf")
            .map_or("", |(_, v)| v.as_str());
        if !auth::csrf_ok(csrf, &s.session.csrf) {
            return Err(Refusal::Forbidden(
                "the form's security token is missing or stale; reload the page and try again",
            ));
        }
        Ok(CsrfForm(T::from_pairs(pairs)))
    }
}

/// Browsers send `Origin` on POSTs; when present it must name this host.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && bare == host
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://gw.example:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }
}
