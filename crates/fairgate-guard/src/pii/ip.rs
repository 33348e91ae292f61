//! IPv4 and IPv6 addresses.
//!
//! IPv4: four decimal octets of at most 255 without leading zeros, not part of a longer dotted
//! run (`1.2.3.4.5`, `10.0.19041.1`) and not right after a word that makes it a version or a
//! section number (`version 1.2.3.4`, `v1.2.3.4`, `§ 2.1.3.4`). A CIDR suffix or port
//! (`10.0.0.0/8`, `10.0.0.1:80`) is allowed after it and not part of the span.
//!
//! IPv6: whatever the standard library parses, with at least one decimal digit and not glued
//! to a word, so code paths (`std::io`, `Foo::bar`), clock times and MAC addresses are not
//! reported. An embedded IPv4 tail belongs to the IPv6 address.

use std::net::Ipv6Addr;

use regex::Regex;

use super::bounds::{each_candidate, glued_left, glued_right, word_before, Step};

pub(super) fn ipv4_regex() -> Regex {
    Regex::new(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}").expect("builtin IPv4 regex")
}

pub(super) fn ipv6_regex() -> Regex {
    Regex::new(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*").expect("builtin IPv6 regex")
}

/// Words after which a dotted quad is a version, release or section number.
const NOT_AN_ADDRESS_AFTER: [&str; 24] = [
    "v",
    "ver",
    "version",
    "versions",
    "release",
    "rel",
    "build",
    "rev",
    "revision",
    "firmware",
    "fw",
    "patch",
    "section",
    "sec",
    "chapter",
    "ch",
    "figure",
    "fig",
    "table",
    "step",
    "clause",
    "article",
    "paragraph",
    "para",
];

pub(super) fn find_v4(re: &Regex, text: &str, from: usize, found: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    each_candidate(re, text, from, |s, e| check_v4(b, s, e), found);
}

fn check_v4(b: &[u8], s: usize, e: usize) -> Step {
    let skip = Step::Skip(e);
    if glued_left(b, s, b".-_") || glued_right(b, e, b".-_") {
        return skip;
    }
    // A suffix makes it a version: "1.2.3.4-beta".
    if matches!(b.get(e), Some(b'-' | b'_')) && b.get(e + 1).is_some_and(u8::is_ascii_alphanumeric)
    {
        return skip;
    }
    for octet in b[s..e].split(|&c| c == b'.') {
        if octet.len() > 1 && octet[0] == b'0' {
            return skip;
        }
        let v = octet
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        if v > 255 {
            return skip;
        }
    }
    if after_versionish_word(b, s) {
        return skip;
    }
    Step::Accept(s, e)
}

/// Whether the word before `s` is one of [`NOT_AN_ADDRESS_AFTER`], or the character before
/// (blanks skipped) is '§'.
fn after_versionish_word(b: &[u8], s: usize) -> bool {
    let mut i = s;
    while i > 0 && matches!(b[i - 1], b' ' | b'\t') {
        i -= 1;
    }
    if i >= 2 && &b[i - 2..i] == "§".as_bytes() {
        return true;
    }
    word_before(b, s).is_some_and(|w| NOT_AN_ADDRESS_AFTER.contains(&w.as_str()))
}

pub(super) fn find_v6(re: &Regex, text: &str, from: usize, found: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    if !b[from..]
        .windows(2)
        .any(|w| w[0] == b':' && (w[1].is_ascii_hexdigit() || w[1] == b':'))
    {
        return;
    }
    each_candidate(re, text, from, |s, e| check_v6(text, s, e), found);
}

fn check_v6(text: &str, s: usize, e: usize) -> Step {
    let b = text.as_bytes();
    let skip = Step::Skip(e);
    if s > 0 && (b[s - 1].is_ascii_alphanumeric() || matches!(b[s - 1], b'_' | b':' | b'.')) {
        return skip;
    }
    let mut end = e;
    // Sentence punctuation and a port-less trailing colon are not part of the address; "::"
    // at the end is ("2001:db8::").
    while end > s && b[end - 1] == b'.' {
        end -= 1;
    }
    if end > s + 1 && b[end - 1] == b':' && b[end - 2] != b':' {
        end -= 1;
    }
    if b.get(end)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return skip;
    }
    let cand = &text[s..end];
    if !cand.bytes().any(|c| c.is_ascii_digit()) || cand.parse::<Ipv6Addr>().is_err() {
        return skip;
    }
    Step::Accept(s, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        find_v4(&ipv4_regex(), text, 0, |s, e| v.push(&text[s..e]));
        v
    }

    fn v6(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        find_v6(&ipv6_regex(), text, 0, |s, e| v.push(&text[s..e]));
        v
    }

    #[test]
    fn ipv4_addresses() {
        assert_eq!(v4("ping 192.168.1.10."), vec!["192.168.1.10"]);
        assert_eq!(
            v4("10.0.0.0/8 and 10.0.0.1:8080"),
            vec!["10.0.0.0", "10.0.0.1"]
        );
        assert_eq!(v4("hosts 10.0.0.1 10.0.0.2"), vec!["10.0.0.1", "10.0.0.2"]);
        assert_eq!(v4("DNS 8.8.8.8"), vec!["8.8.8.8"]);
    }

    #[test]
    fn ipv4_lookalikes() {
        for t in [
            "version 1.2.3.4",
            "Version: 2.0.1.5",
            "v1.2.3.4",
            "release 4.2.0.1 is out",
            "§ 2.1.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "10.0.19041.1",
            "256.1.1.1",
            "192.168.01.1",
            "OID 1.3.6.1.4.1.311",
            "Chrome/120.0.6099.109",
            "1.2.3.4-beta",
        ] {
            assert!(v4(t).is_empty(), "{t}: {:?}", v4(t));
        }
    }

    #[test]
    fn ipv6_addresses() {
        assert_eq!(v6("host 2001:db8::1."), vec!["2001:db8::1"]);
        assert_eq!(
            v6("2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
            vec!["2001:0db8:85a3:0000:0000:8a2e:0370:7334"]
        );
        assert_eq!(v6("[2001:db8::42]:443"), vec!["2001:db8::42"]);
        assert_eq!(v6("loopback ::1 and fe80::1%eth0"), vec!["::1", "fe80::1"]);
        assert_eq!(
            v6("prefix 2001:db8:abcd:12::/64"),
            vec!["2001:db8:abcd:12::"]
        );
        assert_eq!(v6("::ffff:192.0.2.128"), vec!["::ffff:192.0.2.128"]);
    }

    #[test]
    fn ipv6_lookalikes() {
        for t in [
            "std::io::Result",
            "Foo::bar::baz",
            "a::b",
            "i32::MAX",
            "at 12:30:45",
            "10:30:00.123",
            "MAC 00:1A:2B:3C:4D:5E",
            "ratio 3:2:1",
            "dead::beef",
        ] {
            assert!(v6(t).is_empty(), "{t}: {:?}", v6(t));
        }
    }
}
