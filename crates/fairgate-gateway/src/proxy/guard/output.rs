//! Guardrails on completions: PII in the answer, `log` or `block` (text already on its way to
//! the client cannot be redacted).
//!
//! - A whole answer ([`scan_whole`]): the choices' `message.content` (a string or text parts),
//!   `message.reasoning_content` and `text` are scanned before a byte is sent.
//! - A stream ([`OutputScan`]): the bytes [`fairgate_relay::StreamRelay`] would forward are
//!   split into SSE events here, each event's delta text (`delta.content`,
//!   `delta.reasoning_content`, `delta.reasoning`, `text`) goes through one
//!   [`fairgate_guard::StreamScan`] per choice, and:
//!   - `log` forwards every event at once and counts the first finding;
//!   - `block` holds events back until their text is settled clean
//!     ([`fairgate_guard::StreamScan::clean_until`]: a bounded window, the longest value plus
//!     a few bytes of look-ahead), so a value split across chunks is caught before any of it
//!     is sent. At a finding, the events wholly before the value are sent and the rest never
//!     is; the caller ends the stream with an error event and `[DONE]`.
//!
//! Nothing here exists when the output mode is `off`. Detected values are never logged: only
//! kinds.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use fairgate_guard::{Guard, StreamScan};
use fairgate_relay::RequestError;
use fairgate_types::GuardMode;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// The metric label of completion findings.
pub(in crate::proxy) const GUARDRAIL: &str = "pii_output";
/// `code` of the error a blocked completion ends with, and the ledger's `error_class`.
pub(in crate::proxy) const CODE: &str = "guardrail_pii_output";

/// Choices with their own scanner; a larger index shares the last one.
const MAX_CHOICES: usize = 128;
/// An event longer than this is not parsed (the relay forwards such events unparsed too): its
/// text is not checked, in either mode. Backends send a token or a few per event.
const MAX_EVENT: usize = fairgate_relay::MAX_EVENT_BYTES;

/// The error a blocked completion gets, naming the kinds, never the values.
pub(in crate::proxy) fn blocked_error(kinds: &BTreeSet<String>) -> ApiError {
    let list = kinds.iter().cloned().collect::<Vec<_>>().join(", ");
    ApiError::BadRequest(RequestError {
        message: format!(
            "the answer contained personal data ({list}), and this tenant's guardrail policy blocks it; the tokens it took are charged"
        ),
        param: None,
        code: CODE,
    })
}

/// The PII kinds in a whole (non-stream) answer's text; empty when clean or not JSON.
pub(in crate::proxy) fn scan_whole(guard: &Guard, body: &[u8]) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return kinds;
    };
    let mut scan = |s: &str| {
        for f in guard.scan_pii(s) {
            kinds.insert(f.kind.as_str().to_owned());
        }
    };
    let Some(Value::Array(choices)) = v.get("choices") else {
        return kinds;
    };
    for c in choices {
        if let Some(Value::String(s)) = c.get("text") {
            scan(s);
        }
        let Some(m) = c.get("message") else { continue };
        match m.get("content") {
            Some(Value::String(s)) => scan(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(s)) = p.get("text") {
                        scan(s);
                    }
                }
            }
            _ => {}
        }
        for k in ["reasoning_content", "reasoning"] {
            if let Some(Value::String(s)) = m.get(k) {
                scan(s);
            }
        }
    }
    kinds
}

/// What [`OutputScan::feed`] and [`OutputScan::finish`] decided.
#[derive(Debug)]
pub(in crate::proxy) enum Verdict {
    /// Send these bytes (may be empty) and go on.
    Pass(Bytes),
    /// Send these bytes (the clean text before the value), then end the stream.
    Block(Bytes, BTreeSet<String>),
}

/// One held event and where its text ends in each choice's scanner.
struct Held {
    bytes: Bytes,
    ends: Vec<(usize, usize)>,
}

/// The completion guard of one stream; see the module docs.
pub(in crate::proxy) struct OutputScan {
    block: bool,
    guard: Guard,
    scans: Vec<StreamScan>,
    /// Bytes of the event being received.
    pending: BytesMut,
    /// Framing state: the next byte starts a line; the last byte was a CR.
    line_start: bool,
    prev_cr: bool,
    /// The event ended with a CR that was the last byte so far.
    cr_end: bool,
    /// The scanners were finished (`[DONE]` or the end of the stream).
    finished: bool,
    /// `pending` outgrew [`MAX_EVENT`]: its bytes pass through until the event ends.
    oversize: bool,
    /// Events not yet released (`block`).
    held: VecDeque<Held>,
    /// Joined data lines of an event with several.
    scratch: Vec<u8>,
    ends: Vec<(usize, usize)>,
    /// The first finding was counted (`log`), or the stream was blocked.
    flagged: bool,
    kinds: BTreeSet<String>,
}

impl std::fmt::Debug for OutputScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputScan")
            .field("block", &self.block)
            .field("held", &self.held.len())
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: usize,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
}

impl OutputScan {
    /// `None` when the mode does not scan completions.
    pub(in crate::proxy) fn new(guard: &Guard, mode: GuardMode) -> Option<OutputScan> {
        mode.scans_completions().then(|| OutputScan {
            block: mode == GuardMode::Block,
            guard: guard.clone(),
            scans: Vec::new(),
            pending: BytesMut::new(),
            line_start: true,
            prev_cr: false,
            cr_end: false,
            finished: false,
            oversize: false,
            held: VecDeque::new(),
            scratch: Vec::new(),
            ends: Vec::new(),
            flagged: false,
            kinds: BTreeSet::new(),
        })
    }

    /// Whether a finding was seen (and, in `log` mode, counted).
    pub(in crate::proxy) fn flagged(&self) -> bool {
        self.flagged
    }

    pub(in crate::proxy) fn blocks(&self) -> bool {
        self.block
    }

    /// The kinds seen so far.
    pub(in crate::proxy) fn kinds(&self) -> &BTreeSet<String> {
        &self.kinds
    }

    /// Takes the bytes the relay would send now. `log` holds nothing back: they are returned
    /// as they came, and a copy of each event is parsed.
    pub(in crate::proxy) fn feed(&mut self, bytes: Bytes) -> Verdict {
        let mut out = BytesMut::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let end = self.event_end(rest);
            let (now, after) = rest.split_at(end.unwrap_or(rest.len()));
            rest = after;
            if self.oversize {
                // An oversize event's bytes pass unparsed up to its end.
                if self.block {
                    self.hold_unchecked(Bytes::copy_from_slice(now));
                }
                self.oversize = end.is_none();
                continue;
            }
            self.pending.extend_from_slice(now);
            if end.is_some() {
                let event = self.pending.split().freeze();
                if let Some(v) = self.event(event, &mut out) {
                    return v;
                }
            } else if self.pending.len() > MAX_EVENT {
                let held = self.pending.split().freeze();
                self.oversize = true;
                self.hold_unchecked(held);
            }
        }
        if !self.block {
            return Verdict::Pass(bytes);
        }
        self.release(&mut out);
        Verdict::Pass(out.freeze())
    }

    /// The end of the stream (or of what will be sent of it): an incomplete last event counts
    /// as complete, every scanner finishes, and whatever is clean is released.
    pub(in crate::proxy) fn finish(&mut self) -> Verdict {
        let mut out = BytesMut::new();
        if !self.pending.is_empty() {
            let event = self.pending.split().freeze();
            if let Some(v) = self.event(event, &mut out) {
                return v;
            }
        }
        if !self.finished {
            self.finished = true;
            for i in 0..self.scans.len() {
                let mut next = self.scans[i].finish();
                while let Some(f) = next {
                    if let Some(v) = self.found(i, f.kind.as_str().to_owned(), f.start, &mut out) {
                        return v;
                    }
                    next = self.scans[i].next_finding();
                }
            }
        }
        // Everything is settled now.
        for h in self.held.drain(..) {
            out.extend_from_slice(&h.bytes);
        }
        Verdict::Pass(out.freeze())
    }

    /// Where the current event ends in `bytes` (exclusive), carrying the line state over from
    /// earlier bytes. A blank line ends an event; lines end with LF, CRLF or CR (a blank
    /// line's CR at the end of `bytes` waits for the next byte, to take its LF along).
    fn event_end(&mut self, bytes: &[u8]) -> Option<usize> {
        if std::mem::take(&mut self.cr_end) {
            return Some(usize::from(bytes.first() == Some(&b'\n')));
        }
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\r' => {
                    if self.line_start {
                        // A blank line's CR ends the event, with its LF if one follows.
                        return match bytes.get(i + 1) {
                            Some(b'\n') => Some(i + 2),
                            Some(_) => Some(i + 1),
                            None => {
                                // Decided by the next byte.
                                self.cr_end = true;
                                None
                            }
                        };
                    }
                    self.prev_cr = true;
                    self.line_start = true;
                }
                b'\n' if self.prev_cr => self.prev_cr = false,
                b'\n' => {
                    if self.line_start {
                        return Some(i + 1);
                    }
                    self.line_start = true;
                }
                _ => {
                    self.line_start = false;
                    self.prev_cr = false;
                }
            }
        }
        None
    }

    /// One complete event: its text goes to the scanners; `Some` ends the stream.
    fn event(&mut self, event: Bytes, out: &mut BytesMut) -> Option<Verdict> {
        self.ends.clear();
        let mut findings: Vec<(usize, String, usize)> = Vec::new();
        let mut done = false;
        if let Some(payload) = payload(&event, &mut self.scratch) {
            if payload.trim_ascii() == b"[DONE]" {
                done = true;
            } else if let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) {
                for c in &chunk.choices {
                    let i = c.index.min(MAX_CHOICES - 1);
                    let texts = [
                        c.delta
                            .as_ref()
                            .and_then(|d| d.reasoning_content.as_deref()),
                        c.delta.as_ref().and_then(|d| d.reasoning.as_deref()),
                        c.delta.as_ref().and_then(|d| d.content.as_deref()),
                        c.text.as_deref(),
                    ];
                    for t in texts.into_iter().flatten().filter(|t| !t.is_empty()) {
                        while self.scans.len() <= i {
                            self.scans.push(self.guard.stream());
                        }
                        let s = &mut self.scans[i];
                        let mut next = s.push(t);
                        while let Some(f) = next {
                            findings.push((i, f.kind.as_str().to_owned(), f.start));
                            next = s.next_finding();
                        }
                        let end = s.bytes_seen();
                        match self.ends.iter_mut().find(|(j, _)| *j == i) {
                            Some(e) => e.1 = end,
                            None => self.ends.push((i, end)),
                        }
                    }
                }
            }
        }
        if self.block {
            let ends = std::mem::take(&mut self.ends);
            self.held.push_back(Held { bytes: event, ends });
        }
        for (i, kind, start) in findings {
            if let Some(v) = self.found(i, kind, start, out) {
                return Some(v);
            }
        }
        if done {
            // `[DONE]`: the text is complete; settle every scanner now.
            return match self.finish() {
                Verdict::Pass(b) if b.is_empty() => None,
                Verdict::Pass(b) => {
                    out.extend_from_slice(&b);
                    None
                }
                v => Some(v),
            };
        }
        None
    }

    /// A value of `kind` starts at `start` in choice `i`'s text.
    fn found(
        &mut self,
        i: usize,
        kind: String,
        start: usize,
        out: &mut BytesMut,
    ) -> Option<Verdict> {
        self.flagged = true;
        self.kinds.insert(kind);
        if !self.block {
            return None;
        }
        // Send what lies wholly before the value, then nothing more.
        while let Some(h) = self.held.front() {
            let clean = h.ends.iter().all(|&(j, end)| {
                if j == i {
                    end <= start
                } else {
                    end <= self.scans[j].clean_until()
                }
            });
            if !clean {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                out.extend_from_slice(&h.bytes);
            }
        }
        self.held.clear();
        self.pending.clear();
        let out = std::mem::take(out).freeze();
        Some(Verdict::Block(out, self.kinds.clone()))
    }

    /// Releases held events whose text is settled clean.
    fn release(&mut self, out: &mut BytesMut) {
        while let Some(h) = self.held.front() {
            let clean = h
                .ends
                .iter()
                .all(|&(j, end)| end <= self.scans[j].clean_until());
            if !clean {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                out.extend_from_slice(&h.bytes);
            }
        }
    }

    /// An oversize event's bytes: no text is read from them; in `block` mode they wait behind
    /// the held events and then pass unchecked (`log` sent them already).
    fn hold_unchecked(&mut self, bytes: Bytes) {
        if self.block {
            self.held.push_back(Held {
                bytes,
                ends: Vec::new(),
            });
        }
    }
}

/// The event's data payload: its only `data` value, or all of them joined with `\n`.
fn payload<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut first: Option<&[u8]> = None;
    let mut joined = false;
    for line in event.split(|&b| b == b'\n' || b == b'\r') {
        let Some(v) = line.strip_prefix(b"data:") else {
            continue;
        };
        let v = v.strip_prefix(b" ").unwrap_or(v);
        match first {
            None => first = Some(v),
            Some(f) => {
                if !joined {
                    scratch.clear();
                    scratch.extend_from_slice(f);
                    joined = true;
                }
                scratch.push(b'\n');
                scratch.extend_from_slice(v);
            }
        }
    }
    if joined {
        Some(scratch.as_slice())
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairgate_guard::GuardConfig;

    fn event(text: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        )
    }

    /// Feeds `events` split into pieces of `n` bytes; returns what was sent and the verdict.
    fn run(mode: GuardMode, events: &[String], n: usize) -> (String, Option<BTreeSet<String>>) {
        let guard = Guard::new(&GuardConfig::default()).unwrap();
        let mut g = OutputScan::new(&guard, mode).unwrap();
        let all: String = events.concat();
        let mut sent = Vec::new();
        for piece in all.as_bytes().chunks(n) {
            match g.feed(Bytes::copy_from_slice(piece)) {
                Verdict::Pass(b) => sent.extend_from_slice(&b),
                Verdict::Block(b, kinds) => {
                    sent.extend_from_slice(&b);
                    return (String::from_utf8(sent).unwrap(), Some(kinds));
                }
            }
        }
        match g.finish() {
            Verdict::Pass(b) => sent.extend_from_slice(&b),
            Verdict::Block(b, kinds) => {
                sent.extend_from_slice(&b);
                return (String::from_utf8(sent).unwrap(), Some(kinds));
            }
        }
        (String::from_utf8(sent).unwrap(), None)
    }

    fn answer(words: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = words.iter().map(|w| event(w)).collect();
        v.push("data: [DONE]\n\n".into());
        v
    }

    #[test]
    fn block_stops_before_a_value_split_across_events() {
        let words = [
            "Sure", ", ", "write", " to", " ada", ".love", "lace", "@exam", "ple", ".org", " now",
        ];
        let events = answer(&words);
        for n in [1, 7, 64, 100_000] {
            let (sent, blocked) = run(GuardMode::Block, &events, n);
            assert_eq!(
                blocked.unwrap().into_iter().collect::<Vec<_>>(),
                vec!["email"]
            );
            // The events wholly before the address were sent; none of the address was.
            assert!(sent.starts_with(&events[..4].concat()), "{n}: {sent}");
            assert!(
                !sent.contains("love") && !sent.contains("exam"),
                "{n}: {sent}"
            );
            assert!(!sent.contains("[DONE]"));
        }
    }

    #[test]
    fn a_clean_stream_passes_whole_and_log_never_holds_back() {
        let words = ["The", " answer", " is", " 42", ".", " Thanks", "!"];
        let events = answer(&words);
        for n in [1, 5, 1000] {
            let (sent, blocked) = run(GuardMode::Block, &events, n);
            assert!(blocked.is_none());
            assert_eq!(sent, events.concat());
        }
        // `log`: everything passes at once, the finding is only recorded.
        let guard = Guard::new(&GuardConfig::default()).unwrap();
        let mut g = OutputScan::new(&guard, GuardMode::Log).unwrap();
        let events = answer(&["mail", " bob@example.com", " ok"]);
        let all = events.concat();
        for piece in all.as_bytes().chunks(5) {
            match g.feed(Bytes::copy_from_slice(piece)) {
                Verdict::Pass(b) => assert_eq!(&b[..], piece),
                v => panic!("{v:?}"),
            }
        }
        assert!(g.flagged());
        assert!(matches!(g.finish(), Verdict::Pass(b) if b.is_empty()));
        assert!(OutputScan::new(&guard, GuardMode::Off).is_none());
    }

    /// Random answers, random token sizes, random chunking: `block` sends a prefix of the
    /// stream made of whole events whose text ends before the value, never a byte of it; a
    /// clean answer passes byte for byte.
    #[test]
    fn block_never_sends_a_byte_of_the_value_whatever_the_chunking() {
        const VALUES: &[&str] = &[
            "ada.lovelace@example.org",
            "+44 20 7946 0958",
            "4111 1111 1111 1111",
            "DE89 3704 0044 0532 0130 00",
            "192.168.10.20",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            let value = VALUES[next(VALUES.len())];
            let before = "Sure, here is what I found in the notes for you. ".repeat(next(6));
            let text = if round % 5 == 0 {
                format!("{before}Nothing personal here, 12 items in 3 boxes.")
            } else {
                format!("{before}It is {value}, then more text follows here.")
            };
            let mut words = Vec::new();
            let mut i = 0;
            while i < text.len() {
                let j = (i + 1 + next(6)).min(text.len());
                words.push(&text[i..j]);
                i = j;
            }
            let events = answer(&words);
            let (sent, blocked) = run(GuardMode::Block, &events, 1 + next(300));
            if round % 5 == 0 {
                assert!(blocked.is_none(), "{text}");
                assert_eq!(sent, events.concat());
                continue;
            }
            assert!(blocked.is_some(), "{text}");
            let at = text.find(value).unwrap();
            // Whole events, in order, all of them before the value.
            let mut got = String::new();
            let mut n = 0;
            while got.len() < sent.len() {
                got.push_str(&events[n]);
                n += 1;
            }
            assert_eq!(got, sent);
            assert!(words[..n].concat().len() <= at, "{text}: sent {n} events");
        }
    }

    #[test]
    fn crlf_framing_comments_and_split_data_lines_are_read() {
        let crlf = |e: String| e.replace("\n\n", "\r\n\r\n");
        let mut events: Vec<String> = ["ok", " call", " +44 20", " 7946 0958", " now"]
            .iter()
            .map(|w| crlf(event(w)))
            .collect();
        events.insert(1, ": keep-alive\r\n\r\n".into());
        for n in [1, 2, 9, 1000] {
            let (sent, blocked) = run(GuardMode::Block, &events, n);
            assert_eq!(
                blocked.unwrap().into_iter().collect::<Vec<_>>(),
                vec!["phone"]
            );
            assert_eq!(sent, events[..3].concat(), "{n}");
        }
        // A payload over two `data` lines is joined before parsing.
        let two =
            "data: {\"choices\":[{\"index\":0,\ndata: \"text\":\"mail bob@example.com ok\"}]}\n\n";
        let (sent, blocked) = run(GuardMode::Block, &[two.to_string()], 4);
        assert!(blocked.is_some() && sent.is_empty(), "{sent}");
    }

    #[test]
    fn choices_are_scanned_apart_and_the_whole_answer_too() {
        // Two choices whose digits would make a card number only if joined.
        let mk = |i: usize, t: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": i, "text": t}]})
            )
        };
        let events = vec![
            mk(0, "4111 1111"),
            mk(1, " 1111 1111"),
            mk(0, " done"),
            "data: [DONE]\n\n".to_string(),
        ];
        let (sent, blocked) = run(GuardMode::Block, &events, 3);
        assert!(blocked.is_none(), "{blocked:?}");
        assert_eq!(sent, events.concat());

        let guard = Guard::new(&GuardConfig::default()).unwrap();
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"call +44 20 7946 0958"}}]}"#;
        assert_eq!(
            scan_whole(&guard, body).into_iter().collect::<Vec<_>>(),
            vec!["phone"]
        );
        assert!(scan_whole(&guard, br#"{"choices":[{"text":"fine"}]}"#).is_empty());
        assert!(scan_whole(&guard, b"not json").is_empty());
    }
}
