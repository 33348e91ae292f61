//! [`StreamScan`]: PII detection over a completion that arrives in chunks.
//!
//! The scanner keeps only a bounded tail of the text: the longest span an enabled detector
//! reports (see [`crate::pii`]), a little context before it, and a little look-ahead after it.
//! A value split across chunks (`"call +44 20 79"`, `"46 0958"`) is found once the text after
//! it shows that it has ended; a value is never reported twice.
//!
//! Scanning is skipped for chunks that cannot change the outcome: every builtin value
//! contains a digit, `@`, `:`, `[` or `(`, so after a chunk without one of those, once the
//! last such byte is further back than the longest span, there is nothing to rescan. Custom
//! patterns have no such byte, so with custom patterns every chunk is scanned.
//!
//! Injection heuristics do not run here: they are meant for prompts, and a completion cannot
//! be redacted after it was sent.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::pii::{Finding, PiiEngine};

/// Bytes after a candidate that must have arrived before it is reported: enough to see that a
/// number or address did not go on (`"555-123-4567"` then `"-89"`).
const LOOK_AHEAD: usize = 8;

/// Bytes kept before the scan start so boundary rules can see what precedes a candidate.
const CONTEXT: usize = 16;

/// Scans one streamed completion. Create it with [`crate::Guard::stream`].
///
/// Its `Debug` output shows offsets and counts, never the retained text.
pub struct StreamScan {
    pii: Arc<PiiEngine>,
    /// The retained tail of the text; `buf[0]` is byte `base` of the whole stream.
    buf: String,
    base: usize,
    /// Absolute offset from which values may still start that were not yet settled.
    scan_from: usize,
    /// Absolute end of the last reported value; nothing before it is reported again.
    reported_end: usize,
    /// Absolute offset just past the last chunk that contained a trigger byte.
    last_trigger: Option<usize>,
    /// Findings detected but not yet handed out.
    queue: VecDeque<Finding>,
    scratch: Vec<Finding>,
    /// The longest span to retain (the engine's longest value).
    window: usize,
    /// [`StreamScan::finish`] was called.
    finished: bool,
}

impl std::fmt::Debug for StreamScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScan")
            .field("bytes_seen", &self.bytes_seen())
            .field("retained", &self.buf.len())
            .field("reported_end", &self.reported_end)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl StreamScan {
    pub(crate) fn new(pii: Arc<PiiEngine>) -> StreamScan {
        let window = pii.max_span();
        StreamScan {
            pii,
            buf: String::new(),
            base: 0,
            scan_from: 0,
            reported_end: 0,
            last_trigger: None,
            queue: VecDeque::new(),
            scratch: Vec::new(),
            window,
            finished: false,
        }
    }

    /// Feeds the next chunk and returns the next finding not handed out yet, if any.
    ///
    /// Spans are byte offsets in the whole stream (all chunks concatenated). A chunk can
    /// settle several values; the others come from [`StreamScan::next_finding`] or later calls.
    pub fn push(&mut self, chunk: &str) -> Option<Finding> {
        let start = self.base + self.buf.len();
        self.buf.push_str(chunk);
        let end = start + chunk.len();
        if self.pii.has_custom()
            || chunk
                .bytes()
                .any(|b| b.is_ascii_digit() || matches!(b, b'@' | b':' | b'[' | b'('))
        {
            self.last_trigger = Some(end);
        }
        let in_reach = self
            .last_trigger
            .is_some_and(|t| start < t + self.window + LOOK_AHEAD);
        if in_reach {
            self.scan(false);
        }
        // Values that end within reach of the tail may start up to `window` bytes back.
        self.scan_from = self
            .scan_from
            .max(self.reported_end)
            .max(end.saturating_sub(self.window + LOOK_AHEAD));
        self.trim();
        self.queue.pop_front()
    }

    /// Ends the stream: scans the tail without waiting for more text and returns the next
    /// finding not handed out yet. Call it once, after the last chunk.
    pub fn finish(&mut self) -> Option<Finding> {
        self.scan(true);
        self.finished = true;
        self.queue.pop_front()
    }

    /// The next detected finding not handed out yet.
    pub fn next_finding(&mut self) -> Option<Finding> {
        self.queue.pop_front()
    }

    /// Absolute offset before which no value can start that was not handed out yet: text
    /// before it is settled clean (or was reported), so a caller that holds completion text
    /// back until it is safe may release everything before this offset. It trails the text
    /// pushed by at most the longest value plus a small look-ahead; after [`finish`] it is
    /// the end of the text unless a finding is still queued.
    ///
    /// [`finish`]: StreamScan::finish
    pub fn clean_until(&self) -> usize {
        let settled = if self.finished {
            self.bytes_seen()
        } else {
            self.scan_from.max(self.base)
        };
        match self.queue.front() {
            Some(f) => settled.min(f.start),
            None => settled,
        }
    }

    /// Total bytes pushed so far.
    pub fn bytes_seen(&self) -> usize {
        self.base + self.buf.len()
    }

    /// Bytes currently retained (bounded by the longest value plus small margins).
    pub fn retained(&self) -> usize {
        self.buf.len()
    }

    fn scan(&mut self, last: bool) {
        let end = self.base + self.buf.len();
        let from = self.scan_from.max(self.base) - self.base;
        self.pii.scan(&self.buf, from, &mut self.scratch);
        for f in self.scratch.drain(..) {
            let (s, e) = (self.base + f.start, self.base + f.end);
            if s < self.reported_end {
                continue;
            }
            // Findings do not overlap, so later ones end later: stop at the first unsettled.
            if !last && e + LOOK_AHEAD > end {
                break;
            }
            self.reported_end = e;
            self.queue.push_back(Finding {
                kind: f.kind,
                start: s,
                end: e,
            });
        }
    }

    /// Drops text that can no longer be part of a value, keeping [`CONTEXT`] bytes before the
    /// scan start. Drains in steps of at least the window so the copy is amortized.
    fn trim(&mut self) {
        let keep_from = self.scan_from.saturating_sub(CONTEXT);
        if keep_from <= self.base + self.window {
            return;
        }
        let mut cut = keep_from - self.base;
        while !self.buf.is_char_boundary(cut) {
            cut -= 1;
        }
        self.buf.drain(..cut);
        self.base += cut;
    }
}

#[cfg(test)]
mod tests {
    use crate::{Guard, GuardConfig};

    /// Feeds `text` in chunks of `n` bytes (on char boundaries) and collects every finding as
    /// (kind, value).
    fn streamed(text: &str, n: usize) -> Vec<(String, String)> {
        let guard = Guard::new(&GuardConfig::default()).unwrap();
        let mut s = guard.stream();
        let mut out = Vec::new();
        let mut i = 0;
        let mut max_retained = 0;
        while i < text.len() {
            let mut j = (i + n).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            let mut next = s.push(&text[i..j]);
            while let Some(f) = next {
                out.push((f.kind.to_string(), text[f.span()].to_string()));
                next = s.next_finding();
            }
            max_retained = max_retained.max(s.retained());
            i = j;
        }
        let mut next = s.finish();
        while let Some(f) = next {
            out.push((f.kind.to_string(), text[f.span()].to_string()));
            next = s.next_finding();
        }
        assert_eq!(s.bytes_seen(), text.len());
        assert!(max_retained <= 2 * 128 + 64 + n, "retained {max_retained}");
        out
    }

    fn whole(text: &str) -> Vec<(String, String)> {
        let guard = Guard::new(&GuardConfig::default()).unwrap();
        let f = guard.scan(text);
        f.pii
            .iter()
            .map(|f| (f.kind.to_string(), text[f.span()].to_string()))
            .collect()
    }

    #[test]
    fn chunked_matches_equal_whole_text_matches() {
        let text = "Sure! Reach Ana at ana.lopez@example.org or +44 20 7946 0958. \
                    Her card 4111 1111 1111 1111 expires soon; the IBAN is \
                    DE89 3704 0044 0532 0130 00. Server 192.168.10.20, v6 2001:db8::42, \
                    SSN 123-45-6789. Grüße aus München! 你好 call (555) 123-4567";
        let expected = whole(text);
        assert_eq!(expected.len(), 8, "{expected:?}");
        for n in [1, 2, 3, 4, 5, 7, 16, 64, 1000] {
            assert_eq!(streamed(text, n), expected, "chunks of {n}");
        }
    }

    #[test]
    fn long_benign_stream_retains_a_bounded_tail() {
        let mut text = "The quick brown fox jumps over the lazy dog in 2024. ".repeat(400);
        text.push_str("Contact: bob@example.com");
        let found = streamed(&text, 4);
        assert_eq!(found, vec![("email".into(), "bob@example.com".into())]);
    }

    /// `clean_until` never passes the start of a value not handed out yet, trails the text by
    /// a bounded amount, and reaches the end after `finish`.
    #[test]
    fn clean_until_never_passes_an_unreported_value() {
        let text = "Sure! Reach Ana at ana.lopez@example.org or +44 20 7946 0958. \
                    The quick brown fox jumps over the lazy dog again and again and again. \
                    Card 4111 1111 1111 1111 expires soon, SSN 123-45-6789. Bye now.";
        let expected = whole(text);
        let guard = Guard::new(&GuardConfig::default()).unwrap();
        for n in [1, 3, 8, 64] {
            let mut s = guard.stream();
            let mut got = Vec::new();
            let mut i = 0;
            while i < text.len() {
                let j = (i + n).min(text.len());
                let mut next = s.push(&text[i..j]);
                while let Some(f) = next {
                    got.push(f);
                    next = s.next_finding();
                }
                let clean = s.clean_until();
                assert!(clean <= j);
                assert!(j - clean <= 2 * 128 + 64, "trails by {}", j - clean);
                // Every value not yet reported starts at or after `clean`.
                for (_, value) in expected.iter().skip(got.len()) {
                    let start = text.find(value.as_str()).unwrap();
                    assert!(start >= clean, "chunks of {n}: {start} < {clean}");
                }
                i = j;
            }
            while let Some(f) = s.finish().or_else(|| s.next_finding()) {
                got.push(f);
            }
            assert_eq!(got.len(), expected.len());
            assert_eq!(s.clean_until(), text.len());
        }
    }

    #[test]
    fn a_value_is_not_reported_before_it_has_ended() {
        let guard = Guard::new(&GuardConfig::default()).unwrap();
        let mut s = guard.stream();
        // "+44 20 7946" would already be a valid number; the rest must be waited for.
        assert_eq!(s.push("call +44 20 7946"), None);
        assert_eq!(s.push(" 0958"), None);
        let f = s.push(" tomorrow, please").expect("settled");
        assert_eq!((f.start, f.end), (5, 21));
        assert_eq!(s.finish(), None);
        assert!(!format!("{s:?}").contains("tomorrow"));
    }
}
