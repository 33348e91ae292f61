//! Scores the detectors on the labelled sets in `data/` and prints a precision/recall table:
//! `cargo test -p fairgate-guard --test eval -- --nocapture`.
//!
//! `data/pii.jsonl` holds one `{"text": ..., "labels": [{"kind": ..., "value": ...}]}` per line;
//! a detected span counts as a true positive when its kind and exact text match a label not
//! matched yet. `data/injection.jsonl` holds `{"text": ..., "injection": true|false}`, scored
//! at the default threshold. Both sets were written for this crate (synthetic values: test card
//! numbers, documentation IBANs and address ranges, fictional phone numbers) and include hard
//! negatives (order numbers, ISBNs, versions, timestamps, code, base64 images, other scripts)
//! and hard positives (obfuscated spellings, separators, other languages). Misses are printed
//! too, so a regression shows what broke.

use std::collections::BTreeMap;

use fairgate_guard::{CustomPattern, Guard, GuardConfig};
use serde_json::Value;

/// Floors per PII kind and for injection. Lower one only with a reason in the commit.
const PII_PRECISION: f64 = 0.9;
const PII_RECALL: f64 = 0.85;
const INJECTION_PRECISION: f64 = 0.8;
const INJECTION_RECALL: f64 = 0.8;

#[derive(Default)]
struct Tally {
    labels: usize,
    found: usize,
    tp: usize,
}

impl Tally {
    fn precision(&self) -> f64 {
        if self.found == 0 {
            1.0
        } else {
            self.tp as f64 / self.found as f64
        }
    }

    fn recall(&self) -> f64 {
        if self.labels == 0 {
            1.0
        } else {
            self.tp as f64 / self.labels as f64
        }
    }

    fn row(&self, name: &str) -> String {
        format!(
            "{name:<14} {:>6} {:>6} {:>5} {:>5} {:>5} {:>10.3} {:>7.3}",
            self.labels,
            self.found,
            self.tp,
            self.found - self.tp,
            self.labels - self.tp,
            self.precision(),
            self.recall()
        )
    }
}

const HEADER: &str = "detector       labels  found    tp    fp    fn  precision  recall";

fn guard() -> Guard {
    Guard::new(&GuardConfig {
        custom: vec![CustomPattern {
            name: "student_id".into(),
            pattern: r"(?-u:\b)[sS][0-9]{7}(?-u:\b)".into(),
        }],
        ..GuardConfig::default()
    })
    .unwrap()
}

fn lines(file: &str) -> Vec<Value> {
    let path = format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1)))
        .collect()
}

#[test]
fn pii_precision_and_recall() {
    let guard = guard();
    let rows = lines("pii.jsonl");
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    let mut negatives = 0;
    for row in &rows {
        let text = row["text"].as_str().unwrap();
        let labels = row["labels"].as_array().unwrap();
        if labels.is_empty() {
            negatives += 1;
        }
        let mut open: Vec<(String, String)> = labels
            .iter()
            .map(|l| {
                let kind = l["kind"].as_str().unwrap().to_string();
                let value = l["value"].as_str().unwrap().to_string();
                assert!(text.contains(&value), "label {value:?} not in {text:?}");
                tally.entry(kind.clone()).or_default().labels += 1;
                (kind, value)
            })
            .collect();
        for f in guard.scan(text).pii {
            let kind = f.kind.to_string();
            let value = &text[f.span()];
            let t = tally.entry(kind.clone()).or_default();
            t.found += 1;
            if let Some(i) = open.iter().position(|(k, v)| *k == kind && v == value) {
                open.swap_remove(i);
                t.tp += 1;
            } else {
                misses.push(format!("  fp {kind:<12} {value:?} in {text:?}"));
            }
        }
        for (kind, value) in open {
            misses.push(format!("  fn {kind:<12} {value:?} in {text:?}"));
        }
    }
    // One print, so the two tests' tables do not interleave.
    let mut report = format!(
        "\nPII: {} lines ({negatives} without PII)\n{HEADER}\n",
        rows.len()
    );
    let mut all = Tally::default();
    for (kind, t) in &tally {
        report += &t.row(kind);
        report.push('\n');
        all.labels += t.labels;
        all.found += t.found;
        all.tp += t.tp;
    }
    report += &all.row("all");
    if !misses.is_empty() {
        report += &format!("\nmisses:\n{}", misses.join("\n"));
    }
    println!("{report}");

    assert!(rows.len() >= 150, "only {} PII lines", rows.len());
    assert!(negatives >= 30, "only {negatives} lines without PII");
    for kind in [
        "email",
        "phone",
        "credit_card",
        "iban",
        "ssn",
        "ipv4",
        "ipv6",
        "student_id",
    ] {
        let t = tally
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} in the set"));
        assert!(t.labels > 0 && t.found > 0, "{kind} not scored");
        assert!(
            t.precision() >= PII_PRECISION,
            "{kind} precision {:.3}",
            t.precision()
        );
        assert!(t.recall() >= PII_RECALL, "{kind} recall {:.3}", t.recall());
    }
}

#[test]
fn injection_precision_and_recall() {
    let guard = guard();
    let rows = lines("injection.jsonl");
    let (mut tp, mut fp, mut fneg, mut positives) = (0usize, 0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    let mut fired: BTreeMap<&'static str, usize> = BTreeMap::new();
    for row in &rows {
        let text = row["text"].as_str().unwrap();
        let expected = row["injection"].as_bool().unwrap();
        let report = guard.scan(text).injection;
        for h in &report.signals {
            *fired.entry(h.signal.as_str()).or_default() += 1;
        }
        positives += usize::from(expected);
        match (expected, report.flagged) {
            (true, true) => tp += 1,
            (false, true) => {
                fp += 1;
                misses.push(format!("  fp score {:.2} {text:?}", report.score));
            }
            (true, false) => {
                fneg += 1;
                misses.push(format!("  fn score {:.2} {text:?}", report.score));
            }
            (false, false) => {}
        }
    }
    let t = Tally {
        labels: positives,
        found: tp + fp,
        tp,
    };
    let mut report = format!(
        "\nInjection: {} lines ({positives} attacks), threshold 0.5\n{HEADER}\n{}\nsignals fired: {}",
        rows.len(),
        t.row("injection"),
        fired
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !misses.is_empty() {
        report += &format!("\nmisses:\n{}", misses.join("\n"));
    }
    println!("{report}");
    assert_eq!(fneg, positives - tp);
    assert!(rows.len() >= 100, "only {} injection lines", rows.len());
    assert!(
        positives > 0 && positives < rows.len(),
        "set needs both classes"
    );
    assert!(
        t.precision() >= INJECTION_PRECISION,
        "injection precision {:.3}",
        t.precision()
    );
    assert!(
        t.recall() >= INJECTION_RECALL,
        "injection recall {:.3}",
        t.recall()
    );
}
