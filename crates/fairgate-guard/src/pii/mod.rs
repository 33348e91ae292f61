//! PII detection: the kinds, the findings, and the engine that runs the enabled detectors and
//! resolves overlaps between them.
//!
//! Each builtin detector is a regex that finds candidates plus a validator that decides from
//! the candidate's structure (checksums, ranges, separators) and its neighbours (see
//! `bounds.rs`) whether it is a value. Builtin regexes are compiled once per process; custom
//! ones once per [`crate::Guard`].

mod bounds;
mod card;
mod checks;
mod email;
mod iban;
mod ip;
mod phone;
mod ssn;

use std::sync::{Arc, OnceLock};

use regex::Regex;

use crate::config::GuardConfig;
use crate::error::GuardError;

/// What kind of value a [`Finding`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
    /// A payment card number.
    CreditCard,
    /// An IBAN.
    Iban,
    /// A US social security number.
    Ssn,
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
    /// A match of the operator's pattern with this name.
    Custom(Arc<str>),
}

impl PiiKind {
    /// The kind's name: `email`, `phone`, `credit_card`, `iban`, `ssn`, `ipv4`, `ipv6`, or the
    /// custom pattern's name. Used in `[REDACTED:<kind>]`, metric labels and the ledger.
    pub fn as_str(&self) -> &str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Iban => "iban",
            PiiKind::Ssn => "ssn",
            PiiKind::Ipv4 => "ipv4",
            PiiKind::Ipv6 => "ipv6",
            PiiKind::Custom(name) => name,
        }
    }

    /// The builtin kinds' names, which custom patterns may not reuse.
    pub const BUILTIN_NAMES: [&'static str; 7] = [
        "email",
        "phone",
        "credit_card",
        "iban",
        "ssn",
        "ipv4",
        "ipv6",
    ];

    /// Which kind wins when two findings of the same length overlap: lower is stronger.
    /// Operator patterns first (they were configured on purpose), then checksummed kinds,
    /// then the looser ones.
    fn rank(&self) -> u8 {
        match self {
            PiiKind::Custom(_) => 0,
            PiiKind::CreditCard => 1,
            PiiKind::Iban => 2,
            PiiKind::Ssn => 3,
            PiiKind::Email => 4,
            PiiKind::Ipv6 => 5,
            PiiKind::Ipv4 => 6,
            PiiKind::Phone => 7,
        }
    }
}

impl std::fmt::Display for PiiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detected value: its kind and its byte span in the scanned text. The value itself is
/// not kept; slice the text with [`Finding::span`] if you need it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    /// What was found.
    pub kind: PiiKind,
    /// Byte offset of the first byte (a char boundary).
    pub start: usize,
    /// Byte offset one past the last byte (a char boundary).
    pub end: usize,
}

impl Finding {
    /// The byte range, for slicing the scanned text.
    pub fn span(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// The builtin detectors' regexes, compiled once per process.
struct Builtins {
    email: email::Regexes,
    phone: phone::Regexes,
    card: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
}

fn builtins() -> &'static Builtins {
    static BUILTINS: OnceLock<Builtins> = OnceLock::new();
    BUILTINS.get_or_init(|| Builtins {
        email: email::Regexes::new(),
        phone: phone::Regexes::new(),
        card: card::regex(),
        ssn: ssn::regex(),
        ipv4: ip::ipv4_regex(),
        ipv6: ip::ipv6_regex(),
    })
}

/// An operator pattern, compiled.
#[derive(Debug)]
struct Custom {
    kind: PiiKind,
    re: Regex,
}

/// The enabled detectors.
#[derive(Debug)]
pub(crate) struct PiiEngine {
    email: bool,
    phone: bool,
    card: bool,
    iban: bool,
    ssn: bool,
    ip: bool,
    custom: Vec<Custom>,
    /// The longest span any enabled detector reports (custom patterns without an upper bound
    /// count as [`UNBOUNDED_CUSTOM_SPAN`]); the streaming scanner keeps this much tail.
    max_span: usize,
}

/// The longest builtin value the streaming scanner is guaranteed to see whole. The longest
/// builtin formats (an IBAN with spaces, a full IPv6 address, a phone number with separators)
/// fit with room to spare; only e-mail addresses can be longer, and those are then reported
/// with a truncated start.
pub(crate) const BUILTIN_MAX_SPAN: usize = 128;

/// The span assumed for a custom pattern whose length has no upper bound (`\d+`).
pub(crate) const UNBOUNDED_CUSTOM_SPAN: usize = 256;

impl PiiEngine {
    pub(crate) fn new(config: &GuardConfig) -> Result<PiiEngine, GuardError> {
        let mut custom: Vec<Custom> = Vec::with_capacity(config.custom.len());
        let mut max_span = BUILTIN_MAX_SPAN;
        for c in &config.custom {
            let bad_name = |reason| GuardError::BadName {
                name: c.name.clone(),
                reason,
            };
            if c.name.is_empty()
                || c.name.len() > 40
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(bad_name("use 1 to 40 characters from [a-z0-9_]"));
            }
            if PiiKind::BUILTIN_NAMES.contains(&c.name.as_str()) {
                return Err(bad_name("taken by a builtin detector"));
            }
            if custom.iter().any(|k| k.kind.as_str() == c.name) {
                return Err(bad_name("given twice"));
            }
            let bad_pattern = |message: String| GuardError::BadPattern {
                name: c.name.clone(),
                message,
            };
            let hir = regex_syntax::Parser::new()
                .parse(&c.pattern)
                .map_err(|e| bad_pattern(e.to_string()))?;
            if hir.properties().minimum_len().unwrap_or(0) == 0 {
                return Err(bad_pattern("can match the empty string".into()));
            }
            let span = hir
                .properties()
                .maximum_len()
                .map_or(UNBOUNDED_CUSTOM_SPAN, |n| n.min(1024));
            max_span = max_span.max(span);
            let re = Regex::new(&c.pattern).map_err(|e| bad_pattern(e.to_string()))?;
            custom.push(Custom {
                kind: PiiKind::Custom(c.name.as_str().into()),
                re,
            });
        }
        if config.email
            || config.phone
            || config.credit_card
            || config.iban
            || config.ssn
            || config.ip
        {
            builtins(); // compile now, not on the first request
        }
        Ok(PiiEngine {
            email: config.email,
            phone: config.phone,
            card: config.credit_card,
            iban: config.iban,
            ssn: config.ssn,
            ip: config.ip,
            custom,
            max_span,
        })
    }

    pub(crate) fn max_span(&self) -> usize {
        self.max_span
    }

    pub(crate) fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }

    /// Finds values that start at or after `from` (bytes before it are context only) and
    /// replaces `out` with them: sorted by start, never overlapping.
    pub(crate) fn scan(&self, text: &str, from: usize, out: &mut Vec<Finding>) {
        out.clear();
        let b = builtins_if(self);
        let mut push = |kind: &PiiKind, s: usize, e: usize| {
            out.push(Finding {
                kind: kind.clone(),
                start: s,
                end: e,
            })
        };
        if let Some(b) = b {
            if self.email {
                b.email.find(text, from, |s, e| push(&PiiKind::Email, s, e));
            }
            if self.card {
                card::find(&b.card, text, from, |s, e| push(&PiiKind::CreditCard, s, e));
            }
            if self.iban {
                iban::find(text, from, |s, e| push(&PiiKind::Iban, s, e));
            }
            if self.ssn {
                ssn::find(&b.ssn, text, from, |s, e| push(&PiiKind::Ssn, s, e));
            }
            if self.ip {
                ip::find_v4(&b.ipv4, text, from, |s, e| push(&PiiKind::Ipv4, s, e));
                ip::find_v6(&b.ipv6, text, from, |s, e| push(&PiiKind::Ipv6, s, e));
            }
            if self.phone {
                b.phone.find(text, from, |s, e| push(&PiiKind::Phone, s, e));
            }
        }
        for c in &self.custom {
            // `find_at`, not `find_iter` on a slice: the bytes before `from` are context for
            // the pattern's own boundary assertions.
            let mut pos = from;
            while let Some(m) = c.re.find_at(text, pos) {
                if m.start() < m.end() {
                    push(&c.kind, m.start(), m.end());
                    pos = m.end();
                } else {
                    pos = m.end() + text[m.end()..].chars().next().map_or(1, char::len_utf8);
                }
                if pos > text.len() {
                    break;
                }
            }
        }
        resolve_overlaps(out);
    }
}

fn builtins_if(engine: &PiiEngine) -> Option<&'static Builtins> {
    (engine.email || engine.phone || engine.card || engine.iban || engine.ssn || engine.ip)
        .then(builtins)
}

/// Keeps a non-overlapping subset: longer spans first (a value that contains another is the
/// better reading: an IBAN over the phone-shaped digits inside it, an address over the id in
/// its local part), then stronger kinds, then earlier ones; the result is sorted by start.
/// Findings are few, so quadratic is fine.
fn resolve_overlaps(found: &mut Vec<Finding>) {
    if found.len() < 2 {
        return;
    }
    found.sort_by(|a, b| {
        (b.end - b.start)
            .cmp(&(a.end - a.start))
            .then(a.kind.rank().cmp(&b.kind.rank()))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found.drain(..) {
        if kept.iter().all(|k| f.end <= k.start || k.end <= f.start) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|f| f.start);
    *found = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CustomPattern;

    fn engine(custom: &[(&str, &str)]) -> Result<PiiEngine, GuardError> {
        PiiEngine::new(&GuardConfig {
            custom: custom
                .iter()
                .map(|(n, p)| CustomPattern {
                    name: n.to_string(),
                    pattern: p.to_string(),
                })
                .collect(),
            ..GuardConfig::default()
        })
    }

    fn kinds(text: &str) -> Vec<(String, &str)> {
        let e = engine(&[("student_id", r"(?-u:\b)[sS][0-9]{7}(?-u:\b)")]).unwrap();
        let mut out = Vec::new();
        e.scan(text, 0, &mut out);
        out.iter()
            .map(|f| (f.kind.to_string(), &text[f.span()]))
            .collect()
    }

    #[test]
    fn custom_patterns_are_checked() {
        let err = engine(&[("student_id", "s[0-9")]).unwrap_err();
        assert!(
            err.to_string().starts_with("custom pattern `student_id`:"),
            "{err}"
        );
        let err = engine(&[("opt", "x*")]).unwrap_err();
        assert!(err.to_string().contains("empty string"), "{err}");
        assert!(matches!(
            engine(&[("email", "x+")]),
            Err(GuardError::BadName { .. })
        ));
        assert!(matches!(
            engine(&[("Student", "x+")]),
            Err(GuardError::BadName { .. })
        ));
        assert!(matches!(
            engine(&[("a", "x+"), ("a", "y+")]),
            Err(GuardError::BadName { .. })
        ));
        assert_eq!(
            engine(&[("a", "x{3,9}")]).unwrap().max_span(),
            BUILTIN_MAX_SPAN
        );
        assert_eq!(
            engine(&[("a", "x+")]).unwrap().max_span(),
            UNBOUNDED_CUSTOM_SPAN
        );
    }

    #[test]
    fn several_kinds_in_one_text_come_back_sorted() {
        let text = "Mail ana@example.org, card 4111-1111-1111-1111, \
                    IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789, \
                    host 10.0.0.7 or 2001:db8::7, call +44 20 7946 0958, id s1234567.";
        assert_eq!(
            kinds(text),
            vec![
                ("email".into(), "ana@example.org"),
                ("credit_card".into(), "4111-1111-1111-1111"),
                ("iban".into(), "DE89 3704 0044 0532 0130 00"),
                ("ssn".into(), "123-45-6789"),
                ("ipv4".into(), "10.0.0.7"),
                ("ipv6".into(), "2001:db8::7"),
                ("phone".into(), "+44 20 7946 0958"),
                ("student_id".into(), "s1234567"),
            ]
        );
    }

    #[test]
    fn overlaps_keep_the_stronger_kind() {
        // The IPv4 tail of a mapped IPv6 address is reported once, as IPv6.
        assert_eq!(
            kinds("peer ::ffff:192.0.2.128 connected"),
            vec![("ipv6".into(), "::ffff:192.0.2.128")]
        );
        // The national-format tail of an IBAN is not also a phone number.
        assert_eq!(
            kinds("IBAN DE89 3704 0044 0532 0130 00"),
            vec![("iban".into(), "DE89 3704 0044 0532 0130 00")]
        );
        // The longer reading wins, whichever detector found it.
        let e = engine(&[("ticket", r"T-[0-9]{3}-[0-9]{2}-[0-9]{4}")]).unwrap();
        let text = "ref T-123-45-6789";
        let mut out = Vec::new();
        e.scan(text, 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind.as_str(), "ticket");
    }

    #[test]
    fn an_address_beats_the_id_in_its_local_part() {
        assert_eq!(
            kinds("mail s4567890@student.example.edu"),
            vec![("email".into(), "s4567890@student.example.edu")]
        );
        // Same length: the operator's pattern wins over the builtin one.
        let e = engine(&[("badge", r"[0-9]{3}-[0-9]{2}-[0-9]{4}")]).unwrap();
        let mut out = Vec::new();
        e.scan("badge 123-45-6789", 0, &mut out);
        assert_eq!(out[0].kind.as_str(), "badge");
    }

    #[test]
    fn spans_are_byte_offsets_in_unicode_text() {
        let text = "Größe: 42 — écrivez à zoë@exemple.fr ou 电话 +33 1 23 45 67 89 谢谢";
        let found = kinds(text);
        assert_eq!(
            found,
            vec![
                ("email".into(), "zoë@exemple.fr"),
                ("phone".into(), "+33 1 23 45 67 89"),
            ]
        );
    }

    #[test]
    fn scanning_from_an_offset_uses_the_bytes_before_as_context() {
        let e = engine(&[]).unwrap();
        let text = "1234 4111 1111 1111 1111";
        let mut out = Vec::new();
        e.scan(text, 2, &mut out);
        // "34 4111 ..." starts inside a digit run, so no candidate starts at 2 or 3.
        assert!(out.iter().all(|f| f.start >= 5), "{out:?}");
    }
}
