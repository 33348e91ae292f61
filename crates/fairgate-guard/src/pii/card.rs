//! Payment card numbers: 13 to 19 digits, contiguous or in the printed groupings (4-4-4-4,
//! 4-4-4-4-3, Amex 4-6-5, Diners 4-6-4) with one kind of separator, a known issuer prefix for
//! that length, and a valid Luhn check digit.
//!
//! A digit run longer than a card (a card followed by a CVV, two cards in a row) is tried at
//! every group boundary from the longest window down, so `4111 1111 1111 1111 123` reports the
//! 16 digits.

use regex::Regex;

use super::bounds::{each_candidate, first_group_end, glued_left, Step};
use super::checks::{known_card_prefix, luhn};

pub(super) fn regex() -> Regex {
    Regex::new(r"[0-9](?:[ \-]?[0-9]){12,22}").expect("builtin card regex")
}

pub(super) fn find(re: &Regex, text: &str, from: usize, found: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    each_candidate(re, text, from, |s, e| check(b, s, e), found);
}

fn check(b: &[u8], s: usize, e: usize) -> Step {
    let skip = Step::Skip(first_group_end(b, s));
    if glued_left(b, s, b"-.") {
        return skip;
    }
    // Digit groups of the candidate: (start, end) byte offsets, and the separator before each.
    let mut groups: Vec<(usize, usize)> = Vec::with_capacity(8);
    let mut i = s;
    while i < e {
        let g = i;
        while i < e && b[i].is_ascii_digit() {
            i += 1;
        }
        groups.push((g, i));
        i += 1; // one separator
    }
    let mut digits: Vec<u8> = Vec::with_capacity(23);
    for last in (0..groups.len()).rev() {
        let window = &groups[..=last];
        let end = window[last].1;
        let count: usize = window.iter().map(|(a, z)| z - a).sum();
        if !(13..=19).contains(&count) {
            continue;
        }
        // The regex stops after 23 digits; a window must not end inside a digit run.
        if b.get(end).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        // A window may end where a blank separates it from more digits (a CVV, another card),
        // but not inside a dashed or dotted run ("4111-1111-1111-1111-22").
        if b.get(end).is_some_and(|&c| c == b'-' || c == b'.')
            && b.get(end + 1).is_some_and(u8::is_ascii_digit)
        {
            continue;
        }
        if b.get(end).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        if !layout_ok(b, window) {
            continue;
        }
        digits.clear();
        for &(a, z) in window {
            digits.extend_from_slice(&b[a..z]);
        }
        if known_card_prefix(&digits) && luhn(&digits) {
            return Step::Accept(s, end);
        }
    }
    skip
}

/// Whether the groups look like a printed card number: one group, or one separator character
/// throughout with groups of four (the last one shorter), or the Amex/Diners 4-6-5 and 4-6-4.
fn layout_ok(b: &[u8], groups: &[(usize, usize)]) -> bool {
    if groups.len() == 1 {
        return true;
    }
    let sep = b[groups[0].1];
    if groups[1..].iter().any(|&(a, _)| b[a - 1] != sep) {
        return false;
    }
    let sizes: Vec<usize> = groups.iter().map(|(a, z)| z - a).collect();
    let n = sizes.len();
    let fours = sizes[..n - 1].iter().all(|&l| l == 4) && (1..=4).contains(&sizes[n - 1]);
    fours || sizes == [4, 6, 5] || sizes == [4, 6, 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cards(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        find(&regex(), text, 0, |s, e| v.push(&text[s..e]));
        v
    }

    #[test]
    fn printed_forms() {
        assert_eq!(cards("card 4111111111111111."), vec!["4111111111111111"]);
        assert_eq!(cards("4111 1111 1111 1111"), vec!["4111 1111 1111 1111"]);
        assert_eq!(cards("5555-5555-5555-4444"), vec!["5555-5555-5555-4444"]);
        assert_eq!(cards("Amex 3782 822463 10005"), vec!["3782 822463 10005"]);
        assert_eq!(cards("Diners 3056 930902 5904"), vec!["3056 930902 5904"]);
    }

    #[test]
    fn runs_longer_than_a_card() {
        assert_eq!(
            cards("4111 1111 1111 1111 123 exp 12/27"),
            vec!["4111 1111 1111 1111"]
        );
        assert_eq!(
            cards("4111 1111 1111 1111 5555 5555 5555 4444"),
            vec!["4111 1111 1111 1111", "5555 5555 5555 4444"]
        );
        assert!(cards("4111-1111-1111-1111-22").is_empty());
        assert!(cards("x4111111111111111").is_empty());
        assert!(cards("41111111111111111111111111").is_empty());
    }

    #[test]
    fn checksum_prefix_and_layout_are_required() {
        assert!(cards("4111 1111 1111 1112").is_empty()); // Luhn
        assert!(cards("1234 5678 9012 3452").is_empty()); // no issuer starts with 1
        assert!(cards("IMEI 490154203237518").is_empty()); // Luhn-valid, 15 digits, prefix 49
        assert!(cards("4111 1111-1111 1111").is_empty()); // mixed separators
        assert!(cards("41 11111111 111111").is_empty()); // not a printed grouping
        assert!(cards("order 2024 0000 1111 0003").is_empty());
    }
}
