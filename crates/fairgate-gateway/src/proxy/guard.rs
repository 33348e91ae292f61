//! Guardrails (issue 16). On prompts: between resolving the model and the cache, so a blocked
//! request never takes a slot and never reaches a backend, and a redacted one is cached and
//! sent redacted; then the external hook ([`external`]), still before the cache and admission.
//! On completions ([`output`]): while the answer is relayed.
//!
//! The modes come from the key's policy, else the tenant's, else the model's
//! (`[models.guardrails]`), else `[guardrails]`. PII is looked for in every message (and a
//! completion's `prompt`, an embedding's `input`); prompt injection in the user's messages
//! only, since system prompts are the application's own. Detected values are never logged
//! or stored: findings are kinds and spans.

mod external;
mod output;

use std::collections::BTreeSet;

use fairgate_relay::{Endpoint, RequestError};
use fairgate_types::{GuardMode, Tenant};
use serde_json::Value;

use super::plan::Plan;
use super::settle::Tracker;
use crate::config::Config;
use crate::error::ApiError;
use crate::identity::Principal;
use crate::state::AppState;

pub(super) use external::external;
pub(super) use output::{
    blocked_error as output_blocked, scan_whole, OutputScan, Verdict as OutputVerdict,
    CODE as OUTPUT_CODE, GUARDRAIL as OUTPUT_GUARDRAIL,
};

/// The guardrail modes that apply to one request, resolved over the scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Modes {
    pub(super) pii: GuardMode,
    pub(super) injection: GuardMode,
    /// PII in the completion: `off`, `log` or `block` (validation refuses `redact`).
    pub(super) output: GuardMode,
    /// The external hook: `off`, `log` or `block` (`off` whenever no hook is configured).
    pub(super) external: GuardMode,
}

/// The modes that apply to this request.
pub(super) fn modes(live: &Config, tenant: &Tenant, principal: &Principal, model: &str) -> Modes {
    let m = principal
        .policy()
        .guardrails
        .over(tenant.policy.guardrails)
        .over(live.model(model).map(|m| m.guardrails).unwrap_or_default())
        .over(live.guardrails.defaults());
    let output = match m.output.unwrap_or_default() {
        // Never configured (validation refuses it); nothing sent can be redacted.
        GuardMode::Redact => GuardMode::Block,
        o => o,
    };
    let external = match (&live.guardrails.external, m.external.unwrap_or_default()) {
        (None, _) => GuardMode::Off,
        (Some(_), GuardMode::Redact) => GuardMode::Block,
        (Some(_), e) => e,
    };
    Modes {
        pii: m.pii.unwrap_or_default(),
        injection: m.injection.unwrap_or_default(),
        output,
        external,
    }
}

/// A cached answer about to be served: it may have been stored for a request whose policy
/// did not scan completions, so it is scanned like a backend's whole answer. `Err` blocks it
/// (nothing is charged: a hit bills no tokens).
pub(super) fn check_cached(
    st: &AppState,
    t: &Tracker,
    output: GuardMode,
    plan: &Plan,
    body: &[u8],
) -> Result<(), ApiError> {
    if !output.scans_completions()
        || !matches!(
            plan.endpoint,
            Some(Endpoint::ChatCompletions | Endpoint::Completions)
        )
    {
        return Ok(());
    }
    let kinds = scan_whole(&st.guard, body);
    if kinds.is_empty() {
        return Ok(());
    }
    let block = output == GuardMode::Block;
    let action = if block { "blocked" } else { "logged" };
    let tenant = t.row.tenant.as_deref().unwrap_or("");
    count(st, OUTPUT_GUARDRAIL, tenant, action);
    let list = kinds.iter().cloned().collect::<Vec<_>>().join(", ");
    tracing::info!(request_id = %t.row.id, tenant = %tenant, kinds = %list, action, "guardrail: personal data in a cached completion");
    if block {
        return Err(output_blocked(&kinds));
    }
    Ok(())
}

/// Counts one flagged request in `fairgate_guardrail_findings_total`.
fn count(st: &AppState, guardrail: &str, tenant: &str, action: &str) {
    st.metrics
        .guardrail_findings
        .with_label_values(&[guardrail, tenant, action])
        .inc();
}

/// Scans the prompt; blocks, redacts (rewriting `plan.body`) or only counts, as the modes say.
pub(super) fn check(
    st: &AppState,
    t: &mut Tracker,
    modes: Modes,
    plan: &mut Plan,
) -> Result<(), ApiError> {
    let (pii, injection) = (modes.pii, modes.injection);
    if pii == GuardMode::Off && injection == GuardMode::Off {
        return Ok(());
    }
    // Relayed paths are read too when their body is JSON (`/v1/responses`, speech, images,
    // rerank, score): a policy cannot be side-stepped by calling another surface. Forms
    // (audio uploads) carry no prompt text to read.
    let Ok(mut body) = serde_json::from_slice::<Value>(&plan.body) else {
        return Ok(());
    };
    let mut kinds: BTreeSet<String> = BTreeSet::new();
    let mut flagged = false;
    let mut redacted = false;
    let param = plan.endpoint.map_or("input", param_of);
    let mut visit = |text: &mut String, from_user: bool| {
        let f = st.guard.scan(text);
        if pii != GuardMode::Off && !f.pii.is_empty() {
            kinds.extend(f.kinds().into_iter().map(|k| k.as_str().to_owned()));
            if pii == GuardMode::Redact {
                *text = st.guard.redact(text, &f);
                redacted = true;
            }
        }
        if from_user && injection != GuardMode::Off && f.injection.flagged {
            flagged = true;
        }
    };
    match plan.endpoint {
        Some(ep) => texts(ep, &mut body, &mut visit),
        None => relayed_texts(&mut body, true, &mut visit),
    }
    let tenant = t.row.tenant.clone().unwrap_or_default();
    let count = |guardrail: &str, action: &str| count(st, guardrail, &tenant, action);
    if flagged {
        let action = if injection == GuardMode::Block {
            "blocked"
        } else {
            "logged"
        };
        count("injection", action);
        tracing::info!(request_id = %t.row.id, tenant = %tenant, action, "guardrail: prompt injection");
        if injection == GuardMode::Block {
            return Err(ApiError::BadRequest(RequestError {
                message: "the prompt looks like a prompt-injection attempt, and this tenant's guardrail policy blocks those".into(),
                param: Some("messages".into()),
                code: "guardrail_injection",
            }));
        }
    }
    if !kinds.is_empty() {
        let list = kinds.iter().cloned().collect::<Vec<_>>().join(", ");
        let action = match pii {
            GuardMode::Block => "blocked",
            GuardMode::Redact => "redacted",
            _ => "logged",
        };
        count("pii", action);
        tracing::info!(request_id = %t.row.id, tenant = %tenant, kinds = %list, action, "guardrail: personal data");
        if pii == GuardMode::Block {
            return Err(ApiError::BadRequest(RequestError {
                message: format!(
                    "the prompt contains personal data ({list}), and this tenant's guardrail policy blocks it"
                ),
                param: Some(param.into()),
                code: "guardrail_pii",
            }));
        }
    }
    if redacted {
        plan.body = serde_json::to_vec(&body)
            .map_err(|e| ApiError::Internal(format!("re-serializing a redacted body: {e}")))?
            .into();
    }
    Ok(())
}

fn param_of(ep: Endpoint) -> &'static str {
    match ep {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
    }
}

/// Calls `f` on every string of a relayed JSON body but its `model` (which routes it), with
/// whether it is the user's: all are, except what sits under `instructions` or `system` (the
/// operator's words, for the injection heuristics).
fn relayed_texts(v: &mut Value, user: bool, f: &mut dyn FnMut(&mut String, bool)) {
    match v {
        Value::String(s) => f(s, user),
        Value::Array(items) => {
            for it in items {
                relayed_texts(it, user, f);
            }
        }
        Value::Object(map) => {
            for (k, it) in map.iter_mut() {
                if k == "model" {
                    continue;
                }
                let user = user && k != "instructions" && k != "system";
                relayed_texts(it, user, f);
            }
        }
        _ => {}
    }
}

/// Calls `f` on every prompt string of the body: chat messages' `content` (a string, or the
/// `text` of its text parts), with whether the message is the user's; a completion's `prompt`
/// and an embedding's `input` (a string or a list of strings: the user's).
fn texts(ep: Endpoint, body: &mut Value, f: &mut dyn FnMut(&mut String, bool)) {
    let strings = |v: &mut Value, user: bool, f: &mut dyn FnMut(&mut String, bool)| match v {
        Value::String(s) => f(s, user),
        Value::Array(items) => {
            for it in items {
                match it {
                    Value::String(s) => f(s, user),
                    Value::Object(part) => {
                        if let Some(Value::String(s)) = part.get_mut("text") {
                            f(s, user);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    };
    match ep {
        Endpoint::ChatCompletions => {
            if let Some(Value::Array(msgs)) = body.get_mut("messages") {
                for m in msgs {
                    let user = m.get("role").and_then(Value::as_str) == Some("user");
                    if let Some(c) = m.get_mut("content") {
                        strings(c, user, f);
                    }
                }
            }
        }
        Endpoint::Completions => {
            if let Some(p) = body.get_mut("prompt") {
                strings(p, true, f);
            }
        }
        Endpoint::Embeddings => {
            if let Some(i) = body.get_mut("input") {
                strings(i, true, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_bodies_are_read_whole_but_their_model() {
        let mut resp = serde_json::json!({
            "model": "jane@example.com",
            "instructions": "be brief",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "max_output_tokens": 5
        });
        let mut seen = Vec::new();
        relayed_texts(&mut resp, true, &mut |s, user| seen.push((s.clone(), user)));
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("be brief".to_owned(), false),
                ("hi".to_owned(), true),
                ("input_text".to_owned(), true),
                ("user".to_owned(), true),
            ]
        );
    }

    #[test]
    fn every_prompt_string_is_visited_with_its_role() {
        let mut chat = serde_json::json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "user", "content": "plain"}
        ]});
        let mut seen = Vec::new();
        texts(Endpoint::ChatCompletions, &mut chat, &mut |s, user| {
            seen.push((s.clone(), user));
            s.push('!');
        });
        assert_eq!(
            seen,
            vec![
                ("sys".into(), false),
                ("part".into(), true),
                ("plain".into(), true)
            ]
        );
        assert_eq!(chat["messages"][1]["content"][0]["text"], "part!");
        let mut emb = serde_json::json!({"input": ["a", "b"]});
        let mut n = 0;
        texts(Endpoint::Embeddings, &mut emb, &mut |_, _| n += 1);
        assert_eq!(n, 2);
    }
}
