//! The external guardrail hook (`[guardrails.external]`): after the local guardrails, before
//! the cache and admission, the gateway POSTs the prompt to the configured classifier and
//! reads its verdict.
//!
//! Request (JSON): `{"request_id", "model", "tenant", "user", "endpoint", "messages":
//! [{"role", "content"}]}`, where `content` is the message's text (text parts joined by a
//! newline); a completion's `prompt` and an embedding's `input` come as `user` messages.
//! Answer: any 2xx with `{"action": "allow" | "block", "reason": "..."}` (`reason` optional,
//! shown to the client, at most 200 characters). Anything else (timeout, refused, non-2xx,
//! another body) is a hook failure: `on_error = "open"` lets the request through, `"closed"`
//! refuses it (503 `guardrail_unavailable`). In `log` mode a `block` verdict is only counted.

use std::time::Duration;

use bytes::Bytes;
use fairgate_relay::{Endpoint, RequestError};
use fairgate_types::GuardMode;
use http::{header, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::plan::Plan;
use super::super::settle::Tracker;
use crate::config::{Config, ExternalGuardConfig, OnHookError};
use crate::error::ApiError;
use crate::state::AppState;

/// The metric label of the hook's verdicts and failures.
const GUARDRAIL: &str = "external";
/// Longest verdict body read.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Serialize)]
struct HookRequest<'a> {
    request_id: &'a str,
    model: &'a str,
    tenant: &'a str,
    user: Option<&'a str>,
    endpoint: &'static str,
    messages: Vec<HookMessage<'a>>,
}

#[derive(Serialize)]
struct HookMessage<'a> {
    role: &'a str,
    content: String,
}

#[derive(Deserialize)]
struct Verdict {
    action: Action,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Action {
    Allow,
    Block,
}

/// Asks the hook about the prompt when the `external` mode is on; `Err` refuses the request.
pub(in crate::proxy) async fn external(
    st: &AppState,
    t: &mut Tracker,
    live: &Config,
    mode: GuardMode,
    plan: &Plan,
) -> Result<(), ApiError> {
    if mode == GuardMode::Off {
        return Ok(());
    }
    let (Some(cfg), Some(ep)) = (&live.guardrails.external, plan.endpoint) else {
        return Ok(());
    };
    let Ok(body) = serde_json::from_slice::<Value>(&plan.body) else {
        return Ok(());
    };
    let tenant = t.row.tenant.clone().unwrap_or_default();
    let req = HookRequest {
        request_id: t.row.id.as_str(),
        model: &plan.model,
        tenant: &tenant,
        user: t.row.user.as_deref(),
        endpoint: match ep {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        },
        messages: messages(ep, &body),
    };
    let payload = serde_json::to_vec(&req)
        .map_err(|e| ApiError::Internal(format!("serializing a guardrail hook request: {e}")))?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let answer = tokio::time::timeout(timeout, call(st, cfg, payload)).await;
    let failure = match answer {
        Ok(Ok(v)) if v.action == Action::Allow => return Ok(()),
        Ok(Ok(v)) => {
            let action = if mode == GuardMode::Block {
                "blocked"
            } else {
                "logged"
            };
            super::count(st, GUARDRAIL, &tenant, action);
            tracing::info!(request_id = %t.row.id, tenant = %tenant, action, "guardrail: external hook said block");
            if mode != GuardMode::Block {
                return Ok(());
            }
            let reason = v
                .reason
                .map(|r| r.chars().take(200).collect::<String>())
                .filter(|r| !r.trim().is_empty());
            return Err(ApiError::BadRequest(RequestError {
                message: match reason {
                    Some(r) => format!("the guardrail service refused this request: {r}"),
                    None => "the guardrail service refused this request".into(),
                },
                param: None,
                code: "guardrail_external",
            }));
        }
        Ok(Err(e)) => e,
        Err(_) => format!("no answer within {} ms", cfg.timeout_ms),
    };
    // A failed hook only refuses when it was asked to block and fails closed.
    let closed = mode == GuardMode::Block && cfg.on_error == OnHookError::Closed;
    let action = if closed {
        "failed_closed"
    } else {
        "failed_open"
    };
    super::count(st, GUARDRAIL, &tenant, action);
    tracing::warn!(request_id = %t.row.id, tenant = %tenant, error = %failure, action, "guardrail: external hook failed");
    if closed {
        return Err(ApiError::GuardrailUnavailable(failure));
    }
    Ok(())
}

/// One POST to the hook; `Err` says why there is no verdict (for logs and the 503).
async fn call(
    st: &AppState,
    cfg: &ExternalGuardConfig,
    payload: Vec<u8>,
) -> Result<Verdict, String> {
    let mut req = http::Request::post(cfg.url.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(payload)).boxed())
        .map_err(|e| format!("bad hook request: {e}"))?;
    let h = req.headers_mut();
    for (name, value) in &cfg.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    match cfg.resolve_api_key() {
        Ok(Some(key)) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .map_err(|_| "the hook's API key is not a valid header value".to_owned())?;
            v.set_sensitive(true);
            h.insert(header::AUTHORIZATION, v);
        }
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    let resp = st
        .client
        .request(req)
        .await
        .map_err(|e| format!("hook unreachable: {}", crate::upstream::error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("hook answered HTTP {}", status.as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the hook's answer: {e}"))?
        .to_bytes();
    serde_json::from_slice::<Verdict>(&body)
        .map_err(|_| "the hook's answer is not {\"action\": \"allow\" | \"block\"}".to_owned())
}

/// The prompt as role-tagged texts.
fn messages(ep: Endpoint, body: &Value) -> Vec<HookMessage<'_>> {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Value::String(s) => Some(s.as_str()),
                        Value::Object(o) => o.get("text").and_then(Value::as_str),
                        _ => None,
                    })
                    .collect();
                (!texts.is_empty()).then(|| texts.join("\n"))
            }
            _ => None,
        }
    }
    let user_texts = |v: Option<&Value>| -> Vec<HookMessage<'static>> {
        match v {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str())
                .map(|s| HookMessage {
                    role: "user",
                    content: s.to_owned(),
                })
                .collect(),
            Some(Value::String(s)) => vec![HookMessage {
                role: "user",
                content: s.clone(),
            }],
            _ => Vec::new(),
        }
    };
    match ep {
        Endpoint::ChatCompletions => body
            .get("messages")
            .and_then(Value::as_array)
            .map(|msgs| {
                msgs.iter()
                    .filter_map(|m| {
                        let content = text(m.get("content")?)?;
                        Some(HookMessage {
                            role: m.get("role").and_then(Value::as_str).unwrap_or("user"),
                            content,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Endpoint::Completions => user_texts(body.get("prompt")),
        Endpoint::Embeddings => user_texts(body.get("input")),
    }
}
