//! `[guardrails]`: the gateway's default guardrail modes and what the detectors look for
//! (`crates/fairgate-guard`). Models (`[models.guardrails]`), tenants and keys (their
//! policies) override the modes; the detectors are the gateway's, and so is the external
//! hook (`[guardrails.external]`).

use std::collections::BTreeMap;

use fairgate_types::{GuardMode, GuardrailPolicy, Secret};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailsConfig {
    /// For every request unless a model, tenant or key says otherwise. All `off` by default.
    pub pii: GuardMode,
    pub injection: GuardMode,
    /// PII in completions: `off`, `log` or `block`.
    pub output: GuardMode,
    /// Which detectors run, custom patterns (e.g. a student id), the injection threshold.
    pub detect: fairgate_guard::GuardConfig,
    /// An external classifier asked about every prompt (where the `external` mode is on).
    pub external: Option<ExternalGuardConfig>,
}

/// `[guardrails.external]`: the gateway POSTs the prompt to `url` and reads a verdict.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalGuardConfig {
    /// `http://` or `https://` URL of the classifier.
    pub url: String,
    /// The gateway's default `external` mode while the hook is configured: `block` (the
    /// default), `log` or `off`; models, tenants and keys override it.
    #[serde(default = "default_external_mode")]
    pub mode: GuardMode,
    /// The whole call (connect, send, answer) must finish within this; else `on_error`.
    #[serde(default = "default_external_timeout_ms")]
    pub timeout_ms: u64,
    /// When the hook fails (timeout, refused, non-2xx, unreadable verdict): `open` lets the
    /// request through, `closed` refuses it with 503 `guardrail_unavailable`.
    #[serde(default)]
    pub on_error: OnHookError,
    /// Sent as `Authorization: Bearer <key>`; never logged or serialized.
    #[serde(default, skip_serializing)]
    pub api_key: Option<Secret>,
    /// ... or read from this environment variable at start.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra request headers (e.g. a tenant id for the classifier's own logs).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_external_mode() -> GuardMode {
    GuardMode::Block
}

fn default_external_timeout_ms() -> u64 {
    500
}

/// What a failed external hook call means for the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnHookError {
    /// Fail open: the request goes on as if the hook had allowed it.
    #[default]
    Open,
    /// Fail closed: the request is refused (503 `guardrail_unavailable`).
    Closed,
}

impl ExternalGuardConfig {
    /// The bearer key, from `api_key` or `api_key_env`.
    pub fn resolve_api_key(&self) -> Result<Option<Secret>, String> {
        super::sections::key_from(&self.api_key, &self.api_key_env)
    }

    /// Checks the hook's settings; `Err` is (field, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| ("url", format!("`{}` is not a URL: {e}", self.url)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err((
                "url",
                "must be an http:// or https:// URL with a host".into(),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(("timeout_ms", "must be between 1 and 60000".into()));
        }
        if self.mode == GuardMode::Redact {
            return Err((
                "mode",
                "`redact` does not apply to the external hook; use `log` or `block`".into(),
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(("headers", format!("`{name}` is not a valid header")));
            }
        }
        self.resolve_api_key()
            .map(|_| ())
            .map_err(|e| ("api_key", e))
    }
}

impl GuardrailsConfig {
    pub fn defaults(&self) -> GuardrailPolicy {
        GuardrailPolicy {
            pii: Some(self.pii),
            injection: Some(self.injection),
            output: Some(self.output),
            external: Some(self.external.as_ref().map_or(GuardMode::Off, |e| e.mode)),
        }
    }
}

/// A scope's modes make sense: injection findings cannot be redacted (there is nothing to cut
/// out), a completion cannot be redacted once sent, and the external hook only answers allow
/// or block, so `redact` is refused there. `Err` names the field.
pub fn validate_policy(p: &GuardrailPolicy) -> Result<(), (&'static str, String)> {
    if p.injection == Some(GuardMode::Redact) {
        return Err((
            "injection",
            "`redact` applies to PII only; use `log` or `block` for prompt injection".into(),
        ));
    }
    if p.output == Some(GuardMode::Redact) {
        return Err((
            "output",
            "`redact` applies to prompts only (a completion's text may already be on its way to the client); use `log` or `block` for completions".into(),
        ));
    }
    if p.external == Some(GuardMode::Redact) {
        return Err((
            "external",
            "`redact` does not apply to the external hook (it answers allow or block); use `log` or `block`".into(),
        ));
    }
    Ok(())
}
