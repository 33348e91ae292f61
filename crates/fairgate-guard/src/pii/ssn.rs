//! US social security numbers, `AAA-GG-SSSS` (or with single spaces), outside the ranges the
//! SSA never issues: area 000, 666 and 900-999, group 00, serial 0000. Nine undelimited digits
//! are not reported: without the dashes they are indistinguishable from any other number.

use regex::Regex;

use super::bounds::{each_candidate, glued_left, glued_right, Step};
use super::checks::ssn_ranges_ok;

pub(super) fn regex() -> Regex {
    Regex::new(r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}").expect("builtin SSN regex")
}

pub(super) fn find(re: &Regex, text: &str, from: usize, found: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    each_candidate(re, text, from, |s, e| check(b, s, e), found);
}

fn check(b: &[u8], s: usize, e: usize) -> Step {
    let skip = Step::Skip(s + 1);
    let joiners: &[u8] = if b[s + 3] == b' ' { b"-./_ " } else { b"-./_" };
    if glued_left(b, s, joiners) || glued_right(b, e, joiners) {
        return skip;
    }
    // A letter-dash prefix or suffix makes it a product code: "ABC-123-45-6789".
    if s >= 2 && matches!(b[s - 1], b'-' | b'_' | b'/') && b[s - 2].is_ascii_alphanumeric() {
        return skip;
    }
    if matches!(b.get(e), Some(b'-' | b'_' | b'/'))
        && b.get(e + 1).is_some_and(u8::is_ascii_alphanumeric)
    {
        return skip;
    }
    let num = |a: usize, z: usize| {
        b[a..z]
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
    };
    if ssn_ranges_ok(num(s, s + 3), num(s + 4, s + 6), num(s + 7, s + 11)) {
        Step::Accept(s, e)
    } else {
        skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssns(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        find(&regex(), text, 0, |s, e| v.push(&text[s..e]));
        v
    }

    #[test]
    fn valid_ranges_only() {
        assert_eq!(ssns("SSN 123-45-6789."), vec!["123-45-6789"]);
        assert_eq!(ssns("ssn: 536 22 8741"), vec!["536 22 8741"]);
        assert_eq!(
            ssns("123-45-6789 and 234-56-7890"),
            vec!["123-45-6789", "234-56-7890"]
        );
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "987-65-4321",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(ssns(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn parts_of_longer_tokens_are_not_ssns() {
        for t in [
            "9123-45-6789",
            "123-45-67890",
            "978-123-45-6789",
            "ABC-123-45-6789",
            "123-45-6789-X",
            "123456789",
            "1 123 45 6789",
        ] {
            assert!(ssns(t).is_empty(), "{t}");
        }
    }
}
