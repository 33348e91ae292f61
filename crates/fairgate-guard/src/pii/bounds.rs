//! Token-boundary rules shared by the detectors, and the candidate loop they all run.
//!
//! A regex finds a candidate; whether it is a value of its own or a piece of a longer token
//! (an order number, a version string, a hash) is decided by looking at the bytes around it.
//! The rules look at ASCII only, so non-ASCII neighbours (CJK text, accented words) never glue
//! a value to a word: `电话020 7946 0958` is a phone number.

use regex::Regex;

/// What a detector's validator decided about one regex candidate.
pub(crate) enum Step {
    /// Report this span (a sub-span of the candidate) and continue after it.
    Accept(usize, usize),
    /// Not a value; search again from this byte offset (a char boundary past the candidate's start).
    Skip(usize),
}

/// Runs `re` over `text` from `from`, asking `check` about every candidate `(start, end)`;
/// each accepted span is passed to `found`.
///
/// Unlike `find_iter`, a rejected candidate can resume the search inside itself (a card number
/// may start at the second group of a longer digit run), and an accepted sub-span resumes right
/// after itself.
pub(crate) fn each_candidate(
    re: &Regex,
    text: &str,
    from: usize,
    mut check: impl FnMut(usize, usize) -> Step,
    mut found: impl FnMut(usize, usize),
) {
    let mut pos = from;
    while pos <= text.len() {
        let Some(m) = re.find_at(text, pos) else {
            return;
        };
        let next = match check(m.start(), m.end()) {
            Step::Accept(s, e) => {
                found(s, e);
                e
            }
            Step::Skip(resume) => resume,
        };
        // Always make progress, and only ever resume on a char boundary.
        let mut next = next.max(m.start() + 1);
        while next < text.len() && !text.is_char_boundary(next) {
            next += 1;
        }
        pos = next;
    }
}

/// Whether the candidate starting at `start` continues a token on its left: an ASCII letter or
/// digit right before it, or one of `joiners` with a digit before that (`12-`, `1.`).
pub(crate) fn glued_left(b: &[u8], start: usize, joiners: &[u8]) -> bool {
    if start == 0 {
        return false;
    }
    let p = b[start - 1];
    if p.is_ascii_alphanumeric() {
        return true;
    }
    joiners.contains(&p) && start >= 2 && b[start - 2].is_ascii_digit()
}

/// Whether the candidate ending at `end` continues into a token on its right: an ASCII letter
/// or digit right after it, or one of `joiners` followed by a digit (`-5`, `.4`).
pub(crate) fn glued_right(b: &[u8], end: usize, joiners: &[u8]) -> bool {
    let Some(&n) = b.get(end) else {
        return false;
    };
    if n.is_ascii_alphanumeric() {
        return true;
    }
    joiners.contains(&n) && b.get(end + 1).is_some_and(u8::is_ascii_digit)
}

/// The end of the first run of ASCII digits at or after `start` (where to resume after a
/// rejected numeric candidate).
pub(crate) fn first_group_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && !b[i].is_ascii_digit() {
        i += 1;
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// The ASCII word right before `s`, skipping blanks and the punctuation that separates a
/// label from its value (`Serial: `, `Order no. `, `#`), lower-cased; `None` when there is no
/// such word or it is glued to something non-ASCII.
pub(crate) fn word_before(b: &[u8], s: usize) -> Option<String> {
    let mut i = s;
    while i > 0 && matches!(b[i - 1], b' ' | b'\t' | b':' | b'#' | b'.' | b'=') {
        i -= 1;
    }
    let end = i;
    while i > 0 && b[i - 1].is_ascii_alphabetic() && end - i < 16 {
        i -= 1;
    }
    if i == end || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
        return None;
    }
    Some(String::from_utf8_lossy(&b[i..end]).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glue_looks_at_ascii_neighbours_only() {
        let t = "a12 3-45 电话67";
        let b = t.as_bytes();
        assert!(glued_left(b, 2, b"-")); // "1|2"
        assert!(glued_left(b, 6, b"-")); // "3-|45"
        assert!(!glued_left(b, 6, b".")); // '-' is not a joiner here
        let i = t.find("67").unwrap();
        assert!(!glued_left(b, i, b"-"));
        assert!(glued_right(b, 4, b"-")); // "3|-4"
        assert!(!glued_right(b, b.len(), b"-"));
        assert_eq!(first_group_end(b, 0), 3);
        let t = b"Order no. 12, x#5, 7";
        assert_eq!(word_before(t, 10).as_deref(), Some("no"));
        assert_eq!(word_before(t, 16).as_deref(), Some("x"));
        assert_eq!(word_before(t, 19), None);
    }
}
