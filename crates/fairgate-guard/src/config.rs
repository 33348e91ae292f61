//! What a [`crate::Guard`] detects, and the policy modes the gateway applies to its findings.
//!
//! [`GuardConfig`] is plain serde data with defaults for every field (all builtin detectors on,
//! injection threshold 0.5), so the gateway can embed it in its TOML. It is checked once, by
//! [`crate::Guard::new`].

use serde::{Deserialize, Serialize};

/// Detection settings. Missing fields take their defaults; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// E-mail addresses, including the `name [at] example [dot] org` spelling.
    pub email: bool,
    /// Phone numbers: international (`+CC ...`), North American and European national formats.
    pub phone: bool,
    /// Payment card numbers (Luhn-checked, known issuer prefixes and lengths).
    pub credit_card: bool,
    /// IBANs (country length table and mod-97 checksum).
    pub iban: bool,
    /// US social security numbers, with the never-issued ranges excluded.
    pub ssn: bool,
    /// IPv4 and IPv6 addresses.
    pub ip: bool,
    /// Operator-defined patterns, e.g. a student id format.
    pub custom: Vec<CustomPattern>,
    /// Whether prompt-injection heuristics run at all.
    pub injection: bool,
    /// Score at or above which a text is flagged as an injection attempt, in `[0, 1]`.
    pub injection_threshold: f32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            email: true,
            phone: true,
            credit_card: true,
            iban: true,
            ssn: true,
            ip: true,
            custom: Vec::new(),
            injection: true,
            injection_threshold: 0.5,
        }
    }
}

/// A named regular expression reported as its own PII kind.
///
/// The name becomes the kind (`[REDACTED:<name>]`, metric labels), so it is restricted to
/// `[a-z0-9_]`. Patterns use the `regex` crate's syntax; prefer `(?-u:\b)` over `\b`, which on
/// non-ASCII text forces a slower matching engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// The kind this pattern reports, e.g. `student_id`.
    pub name: String,
    /// The regular expression.
    pub pattern: String,
}

/// What the gateway does with findings, per tenant, key and model.
///
/// The guard only detects; this enum is here so every crate spells the modes the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// No scanning.
    #[default]
    Off,
    /// Scan and record what was found (kinds and counts, never values); change nothing.
    Log,
    /// Replace PII in prompts before the backend sees them.
    Redact,
    /// Refuse a request (or stop a completion) that has findings.
    Block,
}

impl PolicyMode {
    /// The lowercase name used in config files, metrics and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Off => "off",
            PolicyMode::Log => "log",
            PolicyMode::Redact => "redact",
            PolicyMode::Block => "block",
        }
    }

    /// Whether prompts are scanned at all.
    pub fn scans_prompts(self) -> bool {
        self != PolicyMode::Off
    }

    /// Whether completions are scanned: only for `log` and `block`, since text already sent
    /// to the client cannot be redacted.
    pub fn scans_completions(self) -> bool {
        matches!(self, PolicyMode::Log | PolicyMode::Block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_lowercase_in_serde() {
        for mode in [
            PolicyMode::Off,
            PolicyMode::Log,
            PolicyMode::Redact,
            PolicyMode::Block,
        ] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            let back: PolicyMode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, mode);
        }
        assert!(serde_json::from_str::<PolicyMode>("\"Block\"").is_err());
        assert_eq!(PolicyMode::default(), PolicyMode::Off);
        assert!(!PolicyMode::Redact.scans_completions());
        assert!(PolicyMode::Block.scans_completions());
    }

    #[test]
    fn config_fields_default_and_unknown_ones_are_refused() {
        let c: GuardConfig = serde_json::from_str(
            r#"{"phone": false, "custom": [{"name": "student_id", "pattern": "s[0-9]{7}"}]}"#,
        )
        .unwrap();
        assert!(!c.phone);
        assert!(c.email && c.injection);
        assert_eq!(c.injection_threshold, 0.5);
        assert_eq!(c.custom[0].name, "student_id");
        assert!(serde_json::from_str::<GuardConfig>(r#"{"emial": true}"#).is_err());
    }
}
