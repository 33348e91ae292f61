//! Guardrail detection for the gateway: PII detectors, prompt-injection heuristics, redaction,
//! and a streaming scanner for completions.
//!
//! Everything here is a pure function of text: no IO, no clock, no logging. The gateway builds
//! one [`Guard`] from a [`GuardConfig`] at startup (regexes are compiled then, builtin ones once
//! per process), calls [`Guard::scan`] on a prompt, decides from the tenant's [`PolicyMode`]
//! what to do with the [`Findings`], and calls [`Guard::redact`] when the mode says so. For a
//! streamed completion it feeds each chunk to a [`StreamScan`], which keeps a bounded tail and
//! reports matches that cross chunk boundaries.
//!
//! **Invariant:** detected values are never stored. A [`Finding`] is a kind and a byte span into
//! the caller's text, and [`InjectionReport`] holds a score and signal names; nothing in this crate
//! copies a matched value out, so a finding can be logged or recorded safely.
//!
//! # Layout
//!
//! - [`config`][]: [`GuardConfig`] (which detectors are on, custom patterns, injection threshold)
//!   and [`PolicyMode`] (`off`, `log`, `redact`, `block`).
//! - [`error`][]: [`GuardError`], the one error a config can produce.
//! - [`pii`][]: the detectors, one file each (`email.rs`, `phone.rs`, `card.rs`, `iban.rs`,
//!   `ssn.rs`, `ip.rs`), the checksums they share (`checks.rs`), token-boundary rules
//!   (`bounds.rs`) and the engine that runs them and resolves overlaps.
//! - [`injection`][]: the heuristics: `fold.rs` normalizes text (case, spacing, leetspeak,
//!   homoglyphs, invisible characters), `phrases.rs` holds the weighted phrase patterns,
//!   `unicode.rs` looks for hidden characters and `base64.rs` decodes suspicious blocks.
//! - [`guard`][]: [`Guard`], [`Findings`] and redaction.
//! - [`stream`][]: [`StreamScan`].
//!
//! Quality is measured, not asserted: `tests/eval.rs` scores every detector on the labelled
//! sets in `data/` and prints a precision/recall table
//! (`cargo test -p fairgate-guard --test eval -- --nocapture`). Speed: `cargo bench -p fairgate-guard`.

pub mod config;
pub mod error;
pub mod guard;
pub mod injection;
pub mod pii;
pub mod stream;

pub use config::{CustomPattern, GuardConfig, PolicyMode};
pub use error::GuardError;
pub use guard::{Findings, Guard};
pub use injection::{InjectionReport, Signal, SignalHit};
pub use pii::{Finding, PiiKind};
pub use stream::StreamScan;
