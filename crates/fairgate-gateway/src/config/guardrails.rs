//! `[guardrails]`: the gateway's default guardrail modes and what the detectors look for
//! (`crates/fairgate-guard`). Models (`[models.guardrails]`), tenants and keys (their
//! policies) override the modes; the detectors are the gateway's.

use fairgate_types::{GuardMode, GuardrailPolicy};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailsConfig {
    /// For every request unless a model, tenant or key says otherwise. Both `off` by default.
    pub pii: GuardMode,
    pub injection: GuardMode,
    /// Which detectors run, custom patterns (e.g. a student id), the injection threshold.
    pub detect: fairgate_guard::GuardConfig,
}

impl GuardrailsConfig {
    pub fn defaults(&self) -> GuardrailPolicy {
        GuardrailPolicy {
            pii: Some(self.pii),
            injection: Some(self.injection),
        }
    }
}

/// A scope's modes make sense: injection findings cannot be redacted (there is nothing to cut
/// out), so `redact` is refused there. `Err` names the field.
pub fn validate_policy(p: &GuardrailPolicy) -> Result<(), (&'static str, String)> {
    if p.injection == Some(GuardMode::Redact) {
        return Err((
            "injection",
            "`redact` applies to PII only; use `log` or `block` for prompt injection".into(),
        ));
    }
    Ok(())
}
