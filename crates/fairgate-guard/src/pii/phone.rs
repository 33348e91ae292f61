//! Phone numbers in three shapes, each with its own regex:
//!
//! - international: `+CC` (or `00CC` followed by a separator) and 8 to 15 digits in groups,
//!   with an optional `(0)` trunk digit: `+44 (0)20 7946 0958`, `+1-202-555-0173`;
//! - North American: `(AAA) EEE-NNNN`, `AAA-EEE-NNNN`, `AAA.EEE.NNNN`, optionally after `1-`,
//!   with an area code starting 2-9 (the exchange is not checked: placeholders such as
//!   `555-123-4567` are written like real numbers);
//! - European national: a trunk `0`, 9 to 12 digits in at least two groups, one separator
//!   character after the area code (`030/123 456 78`, `06 12 34 56 78`, `(020) 7946 0958`).
//!
//! Precision over recall: digits without any separator (`02079460958`, `5551234567`) are not
//! reported, since they look like every order number and timestamp; neither are numbers glued
//! to a longer digit run, dates (`01.02.2024 10:30`) or US ZIP+4 codes (`02134-1234`).

use regex::Regex;

use super::bounds::{each_candidate, first_group_end, glued_left, glued_right, word_before, Step};

pub(super) struct Regexes {
    intl: Regex,
    nanp: Regex,
    national: Regex,
}

impl Regexes {
    pub(super) fn new() -> Regexes {
        let group = r"(?:\([0-9]{1,4}\)|[0-9]{1,5})";
        Regexes {
            intl: Regex::new(&format!(
                r"(?:\+[1-9][0-9]{{0,2}}|00[1-9][0-9]{{0,2}}[ .\-])(?:[ .\-]?{group}){{1,8}}"
            ))
            .expect("builtin phone regex"),
            nanp: Regex::new(
                r"(?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])[0-9]{3}[ .\-][0-9]{4}",
            )
            .expect("builtin phone regex"),
            national: Regex::new(
                r"\(0[1-9][0-9]{0,3}\) ?[0-9]{2,8}(?:[ .\-/][0-9]{2,8}){0,4}|0[1-9][0-9]{0,3}(?:[ .\-/][0-9]{2,8}){1,5}",
            )
            .expect("builtin phone regex"),
        }
    }

    pub(super) fn find(&self, text: &str, from: usize, mut found: impl FnMut(usize, usize)) {
        let b = text.as_bytes();
        if !b[from..].iter().any(u8::is_ascii_digit) {
            return;
        }
        // End of the last reported number, so a blank-separated list of numbers is not read
        // as one number glued to the next.
        let last_end = std::cell::Cell::new(usize::MAX);
        let mut report = |s: usize, e: usize| {
            last_end.set(e);
            found(s, e)
        };
        each_candidate(
            &self.intl,
            text,
            from,
            |s, e| check_intl(b, s, e, last_end.get()),
            &mut report,
        );
        each_candidate(
            &self.nanp,
            text,
            from,
            |s, e| check_nanp(b, s, e, last_end.get()),
            &mut report,
        );
        each_candidate(
            &self.national,
            text,
            from,
            |s, e| check_national(b, s, e, last_end.get()),
            &mut report,
        );
    }
}

/// Labels after which a grouped number is an identifier, not a phone number.
const NOT_A_PHONE_AFTER: [&str; 26] = [
    "order",
    "invoice",
    "serial",
    "sn",
    "id",
    "no",
    "nr",
    "number",
    "ref",
    "reference",
    "sku",
    "isbn",
    "issn",
    "ean",
    "account",
    "acct",
    "ticket",
    "case",
    "tracking",
    "batch",
    "lot",
    "part",
    "model",
    "version",
    "build",
    "zip",
];

fn labelled_as_identifier(b: &[u8], s: usize) -> bool {
    word_before(b, s).is_some_and(|w| NOT_A_PHONE_AFTER.contains(&w.as_str()))
}

/// Separators that join a phone number to a neighbouring digit run.
const JOINERS: &[u8] = b"-./_";

/// Whether the left side is glued to another number; a blank counts as glue too ("12 555
/// 123 4567"), unless the previous phone number ended right there (a list of numbers).
fn glued_before(b: &[u8], s: usize, last_end: usize) -> bool {
    if glued_left(b, s, JOINERS) {
        return true;
    }
    s >= 2 && b[s - 1] == b' ' && b[s - 2].is_ascii_digit() && last_end != s - 1
}

/// Ends of the digit runs inside `[s, e)`, ascending: the places a number may end.
fn group_ends(b: &[u8], s: usize, e: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(8);
    for i in s..e {
        if b[i].is_ascii_digit() && (i + 1 == e || !b[i + 1].is_ascii_digit()) {
            ends.push(i + 1);
        }
    }
    ends
}

fn ends_cleanly(b: &[u8], end: usize) -> bool {
    !glued_right(b, end, JOINERS) && b.get(end).is_none_or(|&c| c != b'_')
}

fn check_intl(b: &[u8], s: usize, e: usize, last_end: usize) -> Step {
    let skip = Step::Skip(first_group_end(b, s));
    if (s > 0 && b[s - 1] == b'+') || glued_before(b, s, last_end) {
        return skip;
    }
    let body = if b[s] == b'+' { s + 1 } else { s + 2 }; // after "+" or "00"
    for end in group_ends(b, s, e).into_iter().rev() {
        if !ends_cleanly(b, end) {
            continue;
        }
        let trunk = b[body..end].windows(3).filter(|w| w == b"(0)").count();
        let digits = b[body..end].iter().filter(|c| c.is_ascii_digit()).count() - trunk;
        if (8..=15).contains(&digits) {
            return Step::Accept(s, end);
        }
    }
    skip
}

fn check_nanp(b: &[u8], s: usize, e: usize, last_end: usize) -> Step {
    let skip = Step::Skip(first_group_end(b, s));
    if labelled_as_identifier(b, s) {
        return skip;
    }
    if b[s] == b'+' {
        if s > 0 && b[s - 1].is_ascii_alphanumeric() {
            return skip;
        }
    } else if glued_before(b, s, last_end) {
        return skip;
    }
    if !ends_cleanly(b, e) {
        return skip;
    }
    Step::Accept(s, e)
}

fn check_national(b: &[u8], s: usize, e: usize, last_end: usize) -> Step {
    let skip = Step::Skip(first_group_end(b, s));
    if glued_before(b, s, last_end) || labelled_as_identifier(b, s) {
        return skip;
    }
    let ends = group_ends(b, s, e);
    for (n, &end) in ends.iter().enumerate().rev() {
        let groups = n + 1;
        if groups < 2 || !ends_cleanly(b, end) {
            continue;
        }
        let digits = b[s..end].iter().filter(|c| c.is_ascii_digit()).count();
        if !(9..=12).contains(&digits) {
            continue;
        }
        // Separators after the area code must all be the same character.
        let seps: Vec<u8> = ends[..n].iter().skip(1).map(|&g| b[g]).collect();
        if seps.windows(2).any(|w| w[0] != w[1]) {
            continue;
        }
        // Nor may the same separator go on to more digits, unless they start the next number
        // with its own trunk 0: otherwise it is a longer run of numbers.
        let sep = seps.last().copied().unwrap_or(b[ends[0]]);
        if b.get(end) == Some(&sep)
            && b.get(end + 1)
                .is_some_and(|&c| c.is_ascii_digit() && c != b'0')
        {
            continue;
        }
        // Pairs of digits are the French format, exactly five of them; six pairs are more
        // likely lottery numbers or a date and time.
        if groups != 5
            && b[s..end]
                .split(|c| !c.is_ascii_digit())
                .all(|g| g.len() == 2 || g.is_empty())
        {
            continue;
        }
        // A US ZIP+4 code with a leading zero: "02134-1234".
        if groups == 2 && ends[0] - s == 5 && b[ends[0]] == b'-' && end - ends[0] == 5 {
            continue;
        }
        return Step::Accept(s, end);
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phones(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        Regexes::new().find(text, 0, |s, e| v.push(&text[s..e]));
        v.sort_by_key(|p| text.find(p));
        v.dedup();
        v
    }

    #[test]
    fn international() {
        for p in [
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "+49 (0) 30 1234 5678",
            "+1-202-555-0173",
            "+33 1 23 45 67 89",
            "+91 98765 43210",
            "+81 3-1234-5678",
            "+7 (495) 123-45-67",
            "+12025550173",
            "0044 20 7946 0958",
        ] {
            let text = format!("call {p} now");
            assert_eq!(phones(&text), vec![p], "{p}");
        }
    }

    #[test]
    fn north_american_and_national() {
        for p in [
            "(555) 123-4567",
            "555-123-4567",
            "555.123.4567",
            "1-800-555-0199",
            "020 7946 0958",
            "(020) 7946 0958",
            "07700 900123",
            "030/123 456 78",
            "06 12 34 56 78",
            "06.12.34.56.78",
            "06-12345678",
            "0171 1234567",
            "044 668 18 00",
        ] {
            let text = format!("Tel.: {p}, danke");
            assert_eq!(phones(&text), vec![p], "{p}");
        }
        assert_eq!(
            phones("020 7946 0958 020 7946 0959"),
            vec!["020 7946 0958", "020 7946 0959"]
        );
    }

    #[test]
    fn numbers_that_are_not_phones() {
        for t in [
            "order 4029384756 shipped",
            "5551234567",
            "ts 1710498151",
            "2024-03-15 10:22:31",
            "15.03.2024 14:30",
            "01.02.2024 10:30",
            "ISBN 978-0-306-40615-7",
            "ISBN 0-306-40615-2",
            "ZIP 02134-1234",
            "123-456-7890",
            "room 0123",
            "between 0800 and 1700",
            "v2024.01.15",
            "1,234,567.89",
            "x+12025550173",
            "id 9-555-123-4567",
            "555-123-4567-89",
            "Serial: 0123-4567-89",
            "Order no. 0301 2345 678",
            "lottery 04 12 19 27 33 41",
            "DE88 3704 0044 0532 0130 00",
        ] {
            assert!(phones(t).is_empty(), "{t}: {:?}", phones(t));
        }
    }
}
