//! Server-sent-events framing at the byte level: where events end, which lines are `data`, and
//! the `"usage":null` removal the relay applies to data lines.
//!
//! Line endings follow the SSE spec: CRLF, LF or a lone CR, mixed freely; an event ends at an
//! empty line (`\n\n`, `\r\n\r\n`, `\r\r`, `\n\r\n`, ...). The [`Framer`] is incremental: its
//! state is three booleans, so bytes may be split anywhere (mid-line, mid-UTF-8 character,
//! between the CR and LF of a CRLF) and the boundaries found are the same.
//!
//! A lone CR is ambiguous until the next byte arrives: `\r` then `\n` is one CRLF. When an
//! event's blank line ends in CR, the framer reports the event complete at once (so the relay
//! never waits for a byte that may not come) and remembers that a following LF, if it is the
//! very next byte, still belongs to that event ([`Framer::take_owed_lf`]).

use bytes::BytesMut;
use memchr::{memchr2, memmem};

/// Incremental finder of event boundaries.
#[derive(Clone, Debug)]
pub(crate) struct Framer {
    /// No byte other than line terminators since the last line ending (or event start).
    line_empty: bool,
    /// The last byte was a CR that ended a non-empty line; an LF now completes that CRLF.
    after_cr: bool,
    /// The last event ended with a CR blank line; an LF now is that CRLF's second half.
    lf_owed: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Self {
            line_empty: true,
            after_cr: false,
            lf_owed: false,
        }
    }
}

impl Framer {
    /// If the previous event ended in a CR and `input` starts with the LF completing it,
    /// returns `true`: the caller must treat that one byte as the previous event's. Any
    /// non-empty `input` settles the question.
    pub(crate) fn take_owed_lf(&mut self, input: &[u8]) -> bool {
        if !self.lf_owed {
            return false;
        }
        match input.first() {
            None => false,
            Some(&b) => {
                self.lf_owed = false;
                b == b'\n'
            }
        }
    }

    /// Scans `input` for the end of the current event. `Some(n)`: the event ends after
    /// `input[..n]` (`1 <= n <= input.len()`) and the framer is reset for the next one; call
    /// again (after [`Framer::take_owed_lf`]) with `input[n..]`. `None`: all of `input`
    /// belongs to the still-open event.
    pub(crate) fn find_event_end(&mut self, input: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while let Some(off) = input
            .get(pos..)
            .and_then(|rest| memchr2(b'\n', b'\r', rest))
        {
            if off > 0 {
                self.line_empty = false;
                self.after_cr = false;
            }
            let at = pos + off;
            pos = at + 1;
            if input.get(at) == Some(&b'\r') {
                if self.line_empty {
                    self.reset();
                    self.lf_owed = true;
                    return Some(pos);
                }
                self.line_empty = true;
                self.after_cr = true;
            } else if self.after_cr {
                // Second half of a CRLF whose CR already ended the line.
                self.after_cr = false;
            } else if self.line_empty {
                self.reset();
                return Some(pos);
            } else {
                self.line_empty = true;
            }
        }
        if pos < input.len() {
            self.line_empty = false;
            self.after_cr = false;
        }
        None
    }

    /// Forgets any partial state (end of stream).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// One line of an event: its content and its terminator (empty for a final unterminated line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub content: &'a [u8],
    pub terminator: &'a [u8],
}

/// The lines of one complete (or final, unterminated) event.
pub(crate) fn lines(event: &[u8]) -> Lines<'_> {
    Lines { rest: event }
}

pub(crate) struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        let (content_len, term_len) = match memchr2(b'\n', b'\r', rest) {
            None => (rest.len(), 0),
            Some(at) => match (rest.get(at), rest.get(at + 1)) {
                (Some(b'\r'), Some(b'\n')) => (at, 2),
                _ => (at, 1),
            },
        };
        let (content, tail) = rest.split_at_checked(content_len)?;
        let (terminator, after) = tail.split_at_checked(term_len)?;
        self.rest = after;
        Some(Line {
            content,
            terminator,
        })
    }
}

/// The value of a `data` field line (`data:x`, `data: x` or a bare `data`), else `None`.
/// Per the SSE spec one space after the colon is not part of the value.
pub(crate) fn data_value(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    match rest.split_first() {
        None => Some(rest),
        Some((b':', value)) => Some(value.strip_prefix(b" ").unwrap_or(value)),
        Some(_) => None,
    }
}

/// The compact `"usage":null` member text.
pub(crate) const USAGE_NULL: &[u8] = br#""usage":null"#;

/// Appends `line` to `out` with every compact `"usage":null` member removed, together with
/// its separating comma, so the JSON stays valid:
/// `,"usage":null` goes; `{"usage":null,` becomes `{`; `{"usage":null}` becomes `{}`.
///
/// Only call this for data lines of an event whose payload parsed as valid JSON. Then the
/// match is always structural, never text inside a string: an unescaped `"` cannot occur
/// inside a JSON string, so if the `,` or `{` before the match were inside a string, the
/// match's first `"` would close that string and `usage"` would follow a string value, which
/// is invalid JSON. So the `"usage"` is an object key and `null` its whole value. Spacing
/// variants (`"usage": null`) are left alone; vLLM and OpenAI emit compact JSON.
///
/// Returns whether anything was removed.
pub(crate) fn write_without_null_usage(line: &[u8], out: &mut BytesMut) -> bool {
    let mut rest = line;
    let mut removed = false;
    while let Some(at) = memmem::find(rest, USAGE_NULL) {
        let (Some(before), Some(after)) = (rest.get(..at), rest.get(at + USAGE_NULL.len()..))
        else {
            break;
        };
        match (before.split_last(), after.first()) {
            (Some((b',', keep)), _) => {
                out.extend_from_slice(keep);
                rest = after;
                removed = true;
            }
            (Some((b'{', _)), Some(b',')) => {
                out.extend_from_slice(before);
                rest = after.get(1..).unwrap_or(&[]);
                removed = true;
            }
            (Some((b'{', _)), Some(b'}')) => {
                out.extend_from_slice(before);
                rest = after;
                removed = true;
            }
            _ => {
                // Not a compact member we can drop without breaking the JSON: keep it.
                out.extend_from_slice(before);
                out.extend_from_slice(USAGE_NULL);
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Event boundaries (exclusive end offsets) when `input` is fed in the given pieces,
    /// consuming owed LFs the way the relay does.
    fn boundaries(pieces: &[&[u8]]) -> Vec<usize> {
        let mut f = Framer::default();
        let mut ends = vec![];
        let mut offset = 0;
        for piece in pieces {
            let mut rest = *piece;
            while !rest.is_empty() {
                if f.take_owed_lf(rest) {
                    // The owed LF extends the previous event.
                    *ends.last_mut().unwrap() += 1;
                    rest = &rest[1..];
                    offset += 1;
                    continue;
                }
                match f.find_event_end(rest) {
                    Some(n) => {
                        offset += n;
                        ends.push(offset);
                        rest = &rest[n..];
                    }
                    None => {
                        offset += rest.len();
                        rest = &[];
                    }
                }
            }
        }
        ends
    }

    #[test]
    fn all_line_ending_styles() {
        assert_eq!(boundaries(&[b"data: a\n\ndata: b\n\n"]), vec![9, 18]);
        assert_eq!(
            boundaries(&[b"data: a\r\n\r\ndata: b\r\n\r\n"]),
            vec![11, 22]
        );
        assert_eq!(boundaries(&[b"data: a\r\rdata: b\r\r"]), vec![9, 18]);
        assert_eq!(boundaries(&[b"a\r\nb\n\r\nc\r\n\n"]), vec![7, 11]);
        assert_eq!(boundaries(&[b"a\nb\nc"]), Vec::<usize>::new());
        assert_eq!(boundaries(&[b"\n\n"]), vec![1, 2]);
    }

    #[test]
    fn boundaries_do_not_depend_on_splits() {
        let input: &[u8] =
            b": ping\r\n\r\nevent: x\rdata: a\r\rdata: b\n\r\ndata: c\r\n\ndata: [DONE]\r\n\r\n";
        let whole = boundaries(&[input]);
        assert_eq!(whole.len(), 5);
        for i in 0..=input.len() {
            assert_eq!(
                boundaries(&[&input[..i], &input[i..]]),
                whole,
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(boundaries(&bytes), whole);
    }

    #[test]
    fn lines_keep_their_terminators() {
        let got: Vec<_> = lines(b"a\r\nb\rc\n\nd")
            .map(|l| (l.content, l.terminator))
            .collect();
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"\r\n"),
            (b"b", b"\r"),
            (b"c", b"\n"),
            (b"", b"\n"),
            (b"d", b""),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn data_values() {
        assert_eq!(data_value(b"data: {}"), Some(&b"{}"[..]));
        assert_eq!(data_value(b"data:{}"), Some(&b"{}"[..]));
        assert_eq!(data_value(b"data:  x"), Some(&b" x"[..]));
        assert_eq!(data_value(b"data"), Some(&b""[..]));
        assert_eq!(data_value(b"datax: y"), None);
        assert_eq!(data_value(b": data: y"), None);
        assert_eq!(data_value(b"event: data"), None);
    }

    fn strip(line: &str) -> String {
        let mut out = BytesMut::new();
        write_without_null_usage(line.as_bytes(), &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn usage_null_removal() {
        assert_eq!(strip(r#"data: {"a":1,"usage":null}"#), r#"data: {"a":1}"#);
        assert_eq!(strip(r#"{"usage":null,"a":1}"#), r#"{"a":1}"#);
        assert_eq!(strip(r#"{"usage":null}"#), r#"{}"#);
        assert_eq!(
            strip(r#"{"a":{"usage":null},"b":[{"usage":null,"c":2}],"usage":null}"#),
            r#"{"a":{},"b":[{"c":2}]}"#
        );
        // Escaped quotes inside strings never match.
        assert_eq!(
            strip(r#"{"text":"x,\"usage\":null","usage":null}"#),
            r#"{"text":"x,\"usage\":null"}"#
        );
        // Non-compact forms are kept verbatim.
        assert_eq!(
            strip(r#"{"a":1, "usage":null}"#),
            r#"{"a":1, "usage":null}"#
        );
        assert_eq!(
            strip(r#"{"usage":null ,"a":1}"#),
            r#"{"usage":null ,"a":1}"#
        );
        assert_eq!(strip(r#"{"usage":nullx"#), r#"{"usage":nullx"#);
    }
}
