//! The portal's body limit: forms and sign-in are read whole, under
//! `limits.portal_body_bytes`, before any extractor runs, and refused with a page.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fairgate_gateway::limits::{buffered, closing, BodyRefusal};
use http::{header, StatusCode};

use crate::PortalState;

/// Middleware for `/portal`: forms and sign-in up to `limits.portal_body_bytes`, refused
/// with a page. It runs before any extractor, so an anonymous client cannot make the portal
/// buffer more than this.
pub async fn portal_body(State(st): State<Arc<PortalState>>, req: Request, next: Next) -> Response {
    let limit = st.config.limits.portal_body_bytes;
    match buffered(req, limit).await {
        Ok(req) => next.run(req).await,
        Err(r) => closing(portal_refusal(&r, limit)),
    }
}

/// The portal's page for a refused body.
pub fn portal_refusal(r: &BodyRefusal, limit: usize) -> Response {
    let (status, title, text) = match r {
        BodyRefusal::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            format!("The form sent more than {limit} bytes. Please go back and send less."),
        ),
        BodyRefusal::Timeout => (
            StatusCode::REQUEST_TIMEOUT,
            "Request timed out",
            "The form took too long to arrive. Please go back and try again.".to_owned(),
        ),
        BodyRefusal::Read(_) => (
            StatusCode::BAD_REQUEST,
            "Request not readable",
            "The form could not be read. Please go back and try again.".to_owned(),
        ),
    };
    let body = format!(
        "<h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/portal\">Back to the portal</a></p>",
        crate::html::esc(title),
        crate::html::esc(&text)
    );
    let html = crate::html::page(title, None, &body);
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}
