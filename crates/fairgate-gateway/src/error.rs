//! The one error type of the HTTP boundary and its single mapping to status codes and
//! OpenAI-shaped bodies (`{"error":{"message","type","param","code"}}`).
//!
//! Every refusal the gateway makes is a variant here, so the status, the OpenAI `type`/`code`,
//! the ledger outcome and the metric label are decided in one place. The official OpenAI SDKs
//! map statuses to exception classes (400 → BadRequestError, 401 → AuthenticationError,
//! 403 → PermissionDeniedError, 404 → NotFoundError, 413/422 → APIStatusError, 429 →
//! RateLimitError, 5xx → InternalServerError), so the statuses matter more than the text.

use axum::response::{IntoResponse, Response};
use fairgate_relay::RequestError;
use fairgate_types::Outcome;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing API key: send it as `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("this API key has been revoked")]
    KeyRevoked,
    #[error("this API key has expired")]
    KeyExpired,
    #[error("this API key is disabled")]
    KeyDisabled,
    #[error("this API key may not use model `{0}`")]
    ModelNotAllowed(String),
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("{}", .0.message)]
    BadRequest(RequestError),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    #[error("the request body was not received in time; send it faster")]
    RequestTimeout,
    #[error("the request URL is longer than the limit of {0} bytes")]
    UriTooLong(usize),
    #[error("{0}")]
    MissingModel(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("{}", queue_timeout_message(model, *waited_ms, *overloaded))]
    QueueTimeout {
        model: String,
        waited_ms: u64,
        /// The request was next in line: the whole model is short of capacity (503), rather
        /// than other tenants' shares holding this one back (429).
        overloaded: bool,
        retry_after_s: u64,
    },
    #[error("tenant `{tenant}` already has {limit} requests queued for model `{model}`; wait for some to finish")]
    TenantQueueFull {
        tenant: String,
        model: String,
        limit: usize,
        retry_after_s: u64,
    },
    #[error("model `{model}` is overloaded: {queued} requests are already queued; retry later")]
    PoolFull {
        model: String,
        queued: usize,
        retry_after_s: u64,
    },
    #[error("{message}")]
    RateLimited {
        message: String,
        /// `rpm`, `tpm` or `max_concurrent`.
        limit: &'static str,
        retry_after_s: u64,
    },
    #[error("{0}")]
    BudgetExceeded(String),
    #[error("{message}")]
    InvalidHeader {
        message: String,
        header: &'static str,
    },
    #[error("could not connect to the backend of model `{model}`: {detail}")]
    UpstreamConnect { model: String, detail: String },
    #[error("the backend of model `{model}` did not answer within {timeout_ms} ms")]
    UpstreamTimeout { model: String, timeout_ms: u64 },
    #[error("the backend of model `{model}` failed with HTTP {status}{detail}")]
    UpstreamStatus {
        model: String,
        status: u16,
        detail: String,
    },
    #[error("the backend of model `{model}` is unavailable (HTTP 503){detail}")]
    UpstreamUnavailable { model: String, detail: String },
    #[error("model `{model}` has no healthy backend right now{detail}")]
    NoHealthyBackend {
        model: String,
        detail: String,
        retry_after_s: u64,
    },
    #[error("admin API: {0}")]
    AdminUnauthorized(&'static str),
    #[error("{0}")]
    AdminBadRequest(String),
    #[error("{0} not found")]
    AdminNotFound(String),
    #[error("{0} already exists")]
    AdminConflict(String),
    #[error("internal error: {0}")]
    Internal(String),
    // --- request path hardening (helper proxypath) ---
    #[error(
        "`{0}` is an operator endpoint of the model server: it needs the gateway's admin token"
    )]
    AdminOnly(String),
    #[error("the answer of the backend of model `{model}` is larger than the gateway's limit of {limit} bytes")]
    UpstreamResponseTooLarge { model: String, limit: usize },
    #[error("the gateway is holding too many backend answers in memory right now; retry shortly")]
    UpstreamMemoryExhausted { model: String },
    /// The external guardrail hook failed and is configured to fail closed (issue 16).
    #[error("the guardrail service could not check this request ({0}); retry later")]
    GuardrailUnavailable(String),
    // --- end request path hardening ---
    // --- MCP through the gateway (issue 16, `crate::mcp`) ---
    #[error("no MCP server `{0}` is registered with this gateway")]
    McpServerNotFound(String),
    #[error("this API key may not use MCP server `{0}`")]
    McpServerNotAllowed(String),
    /// Answered as a JSON-RPC error (the HTTP status stays 200); the status is the ledger's.
    #[error("tool `{tool}` of MCP server `{server}` is not allowed for this API key")]
    McpToolNotAllowed { server: String, tool: String },
    #[error("MCP server `{server}` failed: {detail}")]
    McpUpstream { server: String, detail: String },
    #[error("MCP server `{server}` did not answer within {timeout_ms} ms")]
    McpUpstreamTimeout { server: String, timeout_ms: u64 },
}

/// The JSON body every error is sent with.
#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingKey | InvalidKey | KeyRevoked | KeyExpired | KeyDisabled => {
                StatusCode::UNAUTHORIZED
            }
            AdminUnauthorized(_) => StatusCode::UNAUTHORIZED,
            ModelNotAllowed(_) | AdminOnly(_) => StatusCode::FORBIDDEN,
            McpServerNotAllowed(_) | McpToolNotAllowed { .. } => StatusCode::FORBIDDEN,
            McpServerNotFound(_) => StatusCode::NOT_FOUND,
            McpUpstream { .. } => StatusCode::BAD_GATEWAY,
            McpUpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            UpstreamMemoryExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GuardrailUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ModelNotFound(_) | RouteNotFound(_) | AdminNotFound(_) => StatusCode::NOT_FOUND,
            BadRequest(_) | MissingModel(_) | BodyRead(_) | AdminBadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UriTooLong(_) => StatusCode::URI_TOO_LONG,
            AdminConflict(_) => StatusCode::CONFLICT,
            QueueTimeout {
                overloaded: true, ..
            }
            | PoolFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            QueueTimeout { .. } | TenantQueueFull { .. } | RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            BudgetExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            UpstreamConnect { .. } | UpstreamStatus { .. } => StatusCode::BAD_GATEWAY,
            UpstreamUnavailable { .. } | NoHealthyBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    fn kind(&self) -> &'static str {
        use ApiError::*;
        match self {
            MissingKey | InvalidKey | KeyRevoked | KeyExpired | KeyDisabled
            | AdminUnauthorized(_) => "authentication_error",
            ModelNotAllowed(_) | AdminOnly(_) => "permission_error",
            McpServerNotAllowed(_) | McpToolNotAllowed { .. } => "permission_error",
            McpUpstream { .. } | McpUpstreamTimeout { .. } => "server_error",
            UpstreamResponseTooLarge { .. } | UpstreamMemoryExhausted { .. } => "server_error",
            GuardrailUnavailable(_) => "server_error",
            QueueTimeout {
                overloaded: true, ..
            }
            | PoolFull { .. } => "server_error",
            QueueTimeout { .. } | TenantQueueFull { .. } | RateLimited { .. } => "rate_limit_error",
            // What OpenAI sends when an account is out of credit.
            BudgetExceeded(_) => "insufficient_quota",
            UpstreamConnect { .. }
            | UpstreamTimeout { .. }
            | UpstreamStatus { .. }
            | UpstreamUnavailable { .. }
            | NoHealthyBackend { .. }
            | Internal(_) => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// Low-cardinality class: OpenAI's `code` field, the ledger's `error_class` and a metric label.
    pub fn class(&self) -> &'static str {
        use ApiError::*;
        match self {
            MissingKey => "missing_api_key",
            InvalidKey => "invalid_api_key",
            KeyRevoked => "api_key_revoked",
            KeyExpired => "api_key_expired",
            KeyDisabled => "api_key_disabled",
            ModelNotAllowed(_) => "model_not_allowed",
            ModelNotFound(_) => "model_not_found",
            BadRequest(e) => e.code,
            BodyTooLarge(_) => "body_too_large",
            BodyRead(_) => "body_read_error",
            RequestTimeout => "request_timeout",
            UriTooLong(_) => "uri_too_long",
            MissingModel(_) => "missing_field",
            RouteNotFound(_) => "unknown_url",
            QueueTimeout {
                overloaded: true, ..
            } => "pool_overloaded",
            QueueTimeout { .. } => "queue_timeout",
            TenantQueueFull { .. } => "tenant_queue_full",
            PoolFull { .. } => "pool_queue_full",
            RateLimited { limit, .. } => match *limit {
                "rpm" => "rpm_limit_exceeded",
                "tpm" => "tpm_limit_exceeded",
                _ => "concurrency_limit_exceeded",
            },
            BudgetExceeded(_) => "budget_exceeded",
            InvalidHeader { .. } => "invalid_header",
            UpstreamConnect { .. } => "upstream_connect",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamStatus { .. } => "upstream_status",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            NoHealthyBackend { .. } => "no_healthy_backend",
            AdminUnauthorized(_) => "admin_unauthorized",
            AdminBadRequest(_) => "invalid_value",
            AdminNotFound(_) => "not_found",
            AdminConflict(_) => "conflict",
            Internal(_) => "internal_error",
            AdminOnly(_) => "admin_only",
            UpstreamResponseTooLarge { .. } => "upstream_response_too_large",
            UpstreamMemoryExhausted { .. } => "upstream_memory_exhausted",
            GuardrailUnavailable(_) => "guardrail_unavailable",
            McpServerNotFound(_) => "mcp_server_not_found",
            McpServerNotAllowed(_) => "mcp_server_not_allowed",
            McpToolNotAllowed { .. } => "mcp_tool_not_allowed",
            McpUpstream { .. } => "mcp_upstream_error",
            McpUpstreamTimeout { .. } => "mcp_upstream_timeout",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest(e) => e.param.as_deref(),
            ApiError::ModelNotAllowed(_)
            | ApiError::ModelNotFound(_)
            | ApiError::MissingModel(_) => Some("model"),
            ApiError::InvalidHeader { header, .. } => Some(header),
            _ => None,
        }
    }

    /// How the ledger records a request that ended with this error.
    pub fn outcome(&self) -> Outcome {
        use ApiError::*;
        match self {
            MissingKey | InvalidKey | KeyRevoked | KeyExpired | KeyDisabled => Outcome::AuthFailed,
            UpstreamConnect { .. }
            | UpstreamTimeout { .. }
            | UpstreamStatus { .. }
            | UpstreamUnavailable { .. }
            | NoHealthyBackend { .. }
            | UpstreamResponseTooLarge { .. }
            | UpstreamMemoryExhausted { .. }
            | McpUpstream { .. }
            | McpUpstreamTimeout { .. }
            | Internal(_) => Outcome::UpstreamError,
            _ => Outcome::Rejected,
        }
    }

    /// Seconds a client should wait before retrying, for capacity errors.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::QueueTimeout { retry_after_s, .. }
            | ApiError::TenantQueueFull { retry_after_s, .. }
            | ApiError::PoolFull { retry_after_s, .. }
            | ApiError::RateLimited { retry_after_s, .. }
            | ApiError::NoHealthyBackend { retry_after_s, .. } => Some((*retry_after_s).max(1)),
            ApiError::UpstreamUnavailable { .. } => Some(5),
            ApiError::UpstreamMemoryExhausted { .. } => Some(1),
            _ => None,
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            error: Detail {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: Some(self.class()),
            },
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#.to_vec())
    }
}

fn queue_timeout_message(model: &str, waited_ms: u64, overloaded: bool) -> String {
    if overloaded {
        format!("model `{model}` is overloaded: the request waited {waited_ms} ms at the front of the queue and no backend slot freed up; retry later")
    } else {
        format!("the request waited {waited_ms} ms for model `{model}` while other tenants with less service went first (fair share); retry later or lower your request rate")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.body()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self.status(), StatusCode::UNAUTHORIZED) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<fairgate_store::StoreError> for ApiError {
    fn from(e: fairgate_store::StoreError) -> Self {
        use fairgate_store::StoreError;
        match e {
            StoreError::Conflict(what) => ApiError::AdminConflict(what),
            StoreError::NotFound(what) => ApiError::AdminNotFound(what),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Rewrites a plain-text client-error answer (axum's own extractor rejections: a query, path or
/// JSON body of the wrong shape, a wrong content type, a method not allowed) into the OpenAI
/// error shape, keeping its status, so every `/admin` answer is JSON. Answers that are already
/// JSON pass through untouched.
pub async fn rejections_as_openai(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !resp.status().is_client_error() || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Rejection texts are short; a bound keeps a surprise from being buffered whole.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_owned()
    } else {
        text.trim().to_owned()
    };
    let body = Body {
        error: Detail {
            message,
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_request"),
        },
    };
    let mut out = (parts.status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = ApiError::ModelNotFound("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["message"], "the model `nope` does not exist");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn capacity_errors_carry_retry_after() {
        let r = ApiError::QueueTimeout {
            model: "m".into(),
            waited_ms: 10,
            overloaded: false,
            retry_after_s: 3,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let r = ApiError::QueueTimeout {
            model: "m".into(),
            waited_ms: 10,
            overloaded: true,
            retry_after_s: 0,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let e = ApiError::BudgetExceeded("budget exhausted".into());
        assert_eq!(e.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(e.outcome(), Outcome::Rejected);
    }

    #[test]
    fn auth_errors_are_401_and_auth_failed() {
        for e in [
            ApiError::MissingKey,
            ApiError::InvalidKey,
            ApiError::KeyRevoked,
            ApiError::KeyExpired,
            ApiError::KeyDisabled,
        ] {
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(e.outcome(), Outcome::AuthFailed);
        }
    }
}
