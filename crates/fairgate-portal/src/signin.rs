//! Signing in with a password and signing out. Sign-in is public, so its checks are its own
//! (origin, throttle, then the hash on the bounded pool); signing out is a form like any other.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::html::{esc, page};
use crate::session::{same_origin, CsrfForm, CsrfOnly, SignedIn};
use crate::{
    auth, cookies_secure, hashing, redirect, start_session, throttle, Client, PortalState, Refusal,
};

fn login_form(error: Option<&str>, sso: bool) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "{err}<form method=\"post\" action=\"/portal/login\">\
         <label>Email <input type=\"email\" name=\"email\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button class=\"primary\" type=\"submit\">Sign in</button></form>"
    );
    let body = if sso {
        format!("{body}<p><a href=\"/portal/oidc/start\">Sign in with SSO</a></p>")
    } else {
        body
    };
    page("Sign in", None, &body)
}

/// `GET /portal/login`.
pub(crate) async fn login_page(State(st): State<Arc<PortalState>>) -> Html<String> {
    Html(login_form(None, st.config.portal.oidc.is_some()))
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    email: String,
    password: String,
}

/// The sign-in page again, with a message and a status.
fn login_refused(st: &PortalState, status: StatusCode, msg: &str) -> Response {
    (
        status,
        Html(login_form(Some(msg), st.config.portal.oidc.is_some())),
    )
        .into_response()
}

/// A 429 page with `Retry-After`.
fn throttled_page(st: &PortalState, t: throttle::Throttled) -> Response {
    let secs = t.retry_after.as_secs().max(1);
    let when = if secs < 120 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    };
    let msg = match t.reason {
        throttle::ThrottleReason::Address => {
            format!("Too many failed sign-ins from your network address; try again in {when}.")
        }
        throttle::ThrottleReason::AccountFromAddress => {
            format!("Too many failed sign-ins for this account from your network address; try again in {when}.")
        }
        throttle::ThrottleReason::AccountSlowed => format!(
            "This account is getting many failed sign-ins, so attempts are slowed down; try again in {when}."
        ),
    };
    let mut resp = login_refused(st, StatusCode::TOO_MANY_REQUESTS, &msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Cheap checks first: origin, then the throttle, then the database, and only then the
/// password hash, on the bounded pool (which answers 503 at once when saturated).
pub(crate) async fn login(
    State(st): State<Arc<PortalState>>,
    client: Client,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return Refusal::Forbidden("cross-origin sign-in refused").into_response();
    }
    // A body that is not the sign-in form gets the sign-in page, not axum's plain text.
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            let status = e.status();
            return login_refused(
                &st,
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                "That was not the sign-in form; please use the form below.",
            );
        }
    };
    let email = f.email.trim().to_lowercase();
    let throttle = &st.portal.throttle;
    if let Err(t) = throttle.check(&email, client.ip).await {
        tracing::info!(client = %client.ip, "portal sign-in throttled");
        return throttled_page(&st, t);
    }
    let user = match st.store.get_user_by_email(&email).await {
        Ok(u) => u,
        Err(e) => return Refusal::from(e).into_response(),
    };
    // Unknown, disabled and password-less accounts verify against a dummy hash: the same
    // work, so timing does not tell which e-mails exist.
    let phc = user
        .as_ref()
        .filter(|u| !u.disabled)
        .and_then(|u| u.password_hash.clone());
    let ok = match st.portal.hashing.verify(f.password, phc).await {
        Ok(ok) => ok,
        Err(hashing::HashPoolError::Busy) => {
            tracing::warn!("portal sign-in refused: password hashing saturated");
            let mut resp = login_refused(
                &st,
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway is busy signing people in; try again in a moment.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return resp;
        }
        Err(e) => return Refusal::Internal(e.to_string()).into_response(),
    };
    let Some(user) = user.filter(|_| ok) else {
        throttle.record_failure(&email, client.ip).await;
        tracing::info!(email = %email, client = %client.ip, "portal sign-in failed");
        return login_refused(&st, StatusCode::UNAUTHORIZED, "Wrong email or password.");
    };
    throttle.record_success(&email, client.ip).await;
    // Whatever session cookie came with the request is dropped, never promoted.
    if let Some(old) = auth::session_from_headers(&headers) {
        let _ = st.store.delete_session(&auth::hash_session_id(&old)).await;
    }
    let secure = cookies_secure(&st, &headers, &client);
    match start_session(&st, &user, secure).await {
        Ok(cookie) => {
            tracing::info!(email = %user.email, role = user.role.as_str(), "portal sign-in");
            let mut resp = redirect("/portal");
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
            resp
        }
        Err(r) => r.into_response(),
    }
}

/// `POST /portal/logout`: ends this session (the CSRF token keeps other sites from signing
/// people out).
pub(crate) async fn logout(
    State(st): State<Arc<PortalState>>,
    client: Client,
    headers: HeaderMap,
    who: SignedIn,
    CsrfForm(CsrfOnly): CsrfForm<CsrfOnly>,
) -> Response {
    let _ = st.store.delete_session(&who.session().id_hash).await;
    let mut resp = redirect("/portal/login");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        auth::clear_session_cookie(cookies_secure(&st, &headers, &client)),
    );
    resp
}
