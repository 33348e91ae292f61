//! [`StreamRelay`]: relays an upstream OpenAI/vLLM SSE stream to the client while counting
//! tokens and capturing the usage chunk, optionally hiding the usage the gateway asked for.
//!
//! Two modes, chosen per request:
//! - pass-through (`strip_usage == false`): every input byte is forwarded unchanged at once;
//!   events are parsed on the side. Only a partial trailing event is copied (to parse it once
//!   complete); events wholly inside a chunk are parsed where they lie.
//! - strip (`strip_usage == true`, the gateway injected `include_usage` and the client had not
//!   asked): only complete events are forwarded, so a partial tail is held back. A usage-only
//!   event (`"choices":[]` and a non-null `usage` object) is dropped whole, after its usage is
//!   recorded; other events lose their compact `"usage":null` members (see
//!   `write_without_null_usage` in `sse.rs` for why that byte-level edit is safe). Every other
//!   byte is forwarded unchanged.
//!
//! Accounting, identical in both modes: a content-bearing chunk is a data event whose JSON has
//! a choice with non-empty `delta.content`, `delta.reasoning_content`, `delta.reasoning`
//! (newer vLLM), a non-empty `delta.tool_calls` array, or non-empty `text` (completions). Each
//! counts as ONE token, however many choices in it carry content: vLLM emits one token per
//! chunk (and one chunk per choice) by default, so this is close there, and an undercount when
//! several tokens share a chunk (speculative decoding, SGLang's `--stream-interval`, other
//! servers that batch). It is only the fallback for streams without usage. The last non-null
//! `usage` object seen wins. A chunk whose top-level `error` is present and non-null marks a
//! mid-stream upstream error.
//!
//! Chunks are read with the single-pass visitors of `json.rs`: choices and deltas are
//! inspected in place and nothing is allocated per chunk.
//!
//! Memory is bounded: an event longer than [`MAX_EVENT_BYTES`] (counted through its blank
//! line, except the LF of a final CRLF) is forwarded as-is, without stripping or accounting, and its bytes are not held. The
//! rule depends only on the event's length, never on how it was split, so output stays
//! independent of chunking.

use crate::json::{skip_seq, Handler, KeySeed, Seed, Shape, ShapeOf};
use crate::response::UsageH;
use crate::sse::{data_value, lines, write_without_null_usage, Framer};
use bytes::{Bytes, BytesMut};
use fairgate_types::Usage;
use memchr::memmem;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};

/// Longest event the relay holds back or parses; longer ones pass through unprocessed.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Buffers grown beyond this by an unusually large event are released afterwards, so one huge
/// event does not pin memory for the rest of a long stream.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What one [`StreamRelay::push`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes to send to the client now; may be empty.
    pub forward: Bytes,
    /// Content-bearing chunks completed in this push.
    pub new_tokens: u64,
    /// True on the push where the first content-bearing chunk of the stream completed.
    pub first_token: bool,
}

/// Incremental SSE relay with usage accounting; see the module docs. Pure: feed it upstream
/// bytes with [`push`](Self::push), send what it returns, call [`finish`](Self::finish) at
/// the end of the upstream body.
#[derive(Debug)]
pub struct StreamRelay {
    strip_usage: bool,
    max_event: usize,
    framer: Framer,
    /// Bytes of the current, incomplete event: held back in strip mode, a parse-only copy
    /// otherwise. Never longer than `max_event`.
    pending: Vec<u8>,
    /// The current event is longer than `max_event`: its bytes go straight through.
    oversize: bool,
    /// Whether the last completed event was forwarded, which decides the fate of an LF that
    /// completes its final CR (see [`Framer::take_owed_lf`]).
    prev_forwarded: bool,
    /// Joined payload of events with several `data` lines.
    scratch: Vec<u8>,
    usage: Option<Usage>,
    tokens: u64,
    done: bool,
    error: bool,
}

impl StreamRelay {
    /// `strip_usage`: the gateway injected `include_usage` and the client had not asked.
    pub fn new(strip_usage: bool) -> Self {
        Self::with_max_event_bytes(strip_usage, MAX_EVENT_BYTES)
    }

    pub(crate) fn with_max_event_bytes(strip_usage: bool, max_event: usize) -> Self {
        Self {
            strip_usage,
            max_event,
            framer: Framer::default(),
            pending: Vec::new(),
            oversize: false,
            prev_forwarded: true,
            scratch: Vec::new(),
            usage: None,
            tokens: 0,
            done: false,
            error: false,
        }
    }

    /// Feeds upstream bytes as they arrive; they may be split anywhere.
    pub fn push(&mut self, chunk: &[u8]) -> Pushed {
        let mut out = BytesMut::new();
        let mut acc = Pushed::default();
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.framer.take_owed_lf(rest) {
                if self.prev_forwarded {
                    self.emit(&mut out, b"\n");
                }
                rest = rest.get(1..).unwrap_or_default();
                continue;
            }
            match self.framer.find_event_end(rest) {
                Some(n) => {
                    let (tail, after) = rest.split_at_checked(n).unwrap_or((rest, &[]));
                    self.complete(tail, &mut out, &mut acc);
                    rest = after;
                }
                None => {
                    self.hold(rest, &mut out);
                    break;
                }
            }
        }
        acc.forward = if self.strip_usage {
            out.freeze()
        } else {
            Bytes::copy_from_slice(chunk)
        };
        acc
    }

    /// End of upstream: returns whatever is still held back, forwarded as-is (an incomplete
    /// last event; empty in pass-through mode). That tail is still accounted, as if the end
    /// of the stream had ended the event, since the client does receive its bytes.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if !self.oversize && !self.pending.is_empty() {
            let event = std::mem::take(&mut self.pending);
            let chunk = analyze(&event, &mut self.scratch);
            self.account(&chunk, &mut Pushed::default());
            self.emit(&mut out, &event);
            self.pending = recycle(event);
        }
        self.pending.clear();
        self.oversize = false;
        self.prev_forwarded = true;
        self.framer.reset();
        out.freeze()
    }

    /// Usage from the upstream's last usage-carrying chunk, if any was seen.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Content-bearing chunks seen (one token each); the fallback when there is no usage.
    pub fn completion_tokens_counted(&self) -> u64 {
        self.tokens
    }

    /// `data: [DONE]` was seen.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// An event carrying a JSON object with a non-null top-level `error` was seen.
    pub fn error_event(&self) -> bool {
        self.error
    }

    /// Appends to the client output; a no-op in pass-through mode, which forwards the input.
    fn emit(&self, out: &mut BytesMut, bytes: &[u8]) {
        if self.strip_usage {
            out.extend_from_slice(bytes);
        }
    }

    /// Keeps bytes of the still-open event.
    fn hold(&mut self, bytes: &[u8], out: &mut BytesMut) {
        if !self.oversize && self.pending.len().saturating_add(bytes.len()) > self.max_event {
            self.emit(out, &self.pending);
            self.pending = recycle(std::mem::take(&mut self.pending));
            self.oversize = true;
        }
        if self.oversize {
            self.emit(out, bytes);
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// The current event ends with `tail`.
    fn complete(&mut self, tail: &[u8], out: &mut BytesMut, acc: &mut Pushed) {
        self.prev_forwarded = true;
        if self.oversize || self.pending.len().saturating_add(tail.len()) > self.max_event {
            // Also when the event arrived whole: the rule must not depend on chunking.
            self.emit(out, &self.pending);
            self.emit(out, tail);
            self.pending = recycle(std::mem::take(&mut self.pending));
            self.oversize = false;
            return;
        }
        if self.pending.is_empty() {
            self.prev_forwarded = self.process(tail, out, acc);
        } else {
            let mut event = std::mem::take(&mut self.pending);
            event.extend_from_slice(tail);
            self.prev_forwarded = self.process(&event, out, acc);
            self.pending = recycle(event);
        }
    }

    /// Accounts one complete event and, in strip mode, writes what the client gets of it.
    /// Returns whether it was forwarded.
    fn process(&mut self, event: &[u8], out: &mut BytesMut, acc: &mut Pushed) -> bool {
        let chunk = analyze(event, &mut self.scratch);
        self.account(&chunk, acc);
        if !self.strip_usage {
            return true;
        }
        match chunk {
            Event::Chunk(c) if c.choices_empty && c.usage.is_some() => false,
            Event::Chunk(_) if memmem::find(event, br#""usage":null"#).is_some() => {
                for line in lines(event) {
                    if data_value(line.content).is_some() {
                        write_without_null_usage(line.content, out);
                    } else {
                        out.extend_from_slice(line.content);
                    }
                    out.extend_from_slice(line.terminator);
                }
                true
            }
            _ => {
                out.extend_from_slice(event);
                true
            }
        }
    }

    fn account(&mut self, event: &Event, acc: &mut Pushed) {
        match event {
            Event::Done => self.done = true,
            Event::Chunk(c) => {
                if c.bearing {
                    if self.tokens == 0 {
                        acc.first_token = true;
                    }
                    self.tokens = self.tokens.saturating_add(1);
                    acc.new_tokens = acc.new_tokens.saturating_add(1);
                }
                if c.usage.is_some() {
                    self.usage = c.usage;
                }
                self.error |= c.error;
            }
            Event::Other => {}
        }
        if self.scratch.capacity() > KEEP_CAPACITY {
            self.scratch = Vec::new();
        }
    }
}

/// Empties a buffer for reuse, releasing it if an oversized event grew it.
fn recycle(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.capacity() > KEEP_CAPACITY {
        return Vec::new();
    }
    buf.clear();
    buf
}

/// What an event means for accounting and stripping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// `data: [DONE]`.
    Done,
    /// A data payload that is a valid JSON object.
    Chunk(Chunk),
    /// Comments only, no data, or a payload that is not a JSON object.
    Other,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Chunk {
    bearing: bool,
    /// `choices` is present and an empty array.
    choices_empty: bool,
    usage: Option<Usage>,
    error: bool,
}

/// Reads one event: joins its data lines (with `\n`, per the SSE spec) and classifies them.
fn analyze(event: &[u8], scratch: &mut Vec<u8>) -> Event {
    let mut first = None;
    let mut joined = false;
    for line in lines(event) {
        let Some(value) = data_value(line.content) else {
            continue;
        };
        match first {
            None => first = Some(value),
            Some(first_value) => {
                if !joined {
                    scratch.clear();
                    scratch.extend_from_slice(first_value);
                    joined = true;
                }
                scratch.push(b'\n');
                scratch.extend_from_slice(value);
            }
        }
    }
    let payload = match (joined, first) {
        (true, _) => scratch.as_slice(),
        (false, Some(value)) => value,
        (false, None) => return Event::Other,
    };
    let trimmed = payload.trim_ascii();
    if trimmed == b"[DONE]" {
        return Event::Done;
    }
    if trimmed.first() != Some(&b'{') {
        return Event::Other;
    }
    let mut de = serde_json::Deserializer::from_slice(trimmed);
    match Seed(ChunkH)
        .deserialize(&mut de)
        .and_then(|c| de.end().map(|()| c))
    {
        Ok(chunk) => Event::Chunk(chunk),
        Err(_) => Event::Other,
    }
}

/// A stream chunk object.
struct ChunkH;

#[derive(Clone, Copy)]
enum ChunkKey {
    Choices,
    Usage,
    Error,
    Other,
}

/// `choices`: how many, and whether any carries content.
#[derive(Clone, Copy)]
struct Choices {
    count: usize,
    bearing: bool,
}

impl<'de> Handler<'de> for ChunkH {
    type Out = Chunk;

    fn scalar(self, _: Shape) -> Chunk {
        Chunk::default()
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chunk, A::Error> {
        let mut choices = None;
        let mut usage = None;
        let mut error = false;
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "choices" => ChunkKey::Choices,
            "usage" => ChunkKey::Usage,
            "error" => ChunkKey::Error,
            _ => ChunkKey::Other,
        }))? {
            match key {
                ChunkKey::Choices => choices = map.next_value_seed(Seed(ChoicesH))?,
                ChunkKey::Usage => usage = map.next_value_seed(Seed(UsageH))?,
                ChunkKey::Error => error = map.next_value_seed(Seed(ShapeOf))? != Shape::Null,
                ChunkKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Chunk {
            bearing: choices.is_some_and(|c: Choices| c.bearing),
            choices_empty: choices.is_some_and(|c| c.count == 0),
            usage,
            error,
        })
    }
}

struct ChoicesH;

impl<'de> Handler<'de> for ChoicesH {
    type Out = Option<Choices>;

    fn scalar(self, _: Shape) -> Option<Choices> {
        None
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Choices>, A::Error> {
        let mut c = Choices {
            count: 0,
            bearing: false,
        };
        while let Some(bearing) = seq.next_element_seed(Seed(ChoiceH))? {
            c.count += 1;
            c.bearing |= bearing;
        }
        Ok(Some(c))
    }
}

/// One choice: content-bearing or not.
struct ChoiceH;

#[derive(Clone, Copy)]
enum ChoiceKey {
    Delta,
    Text,
    Other,
}

impl<'de> Handler<'de> for ChoiceH {
    type Out = bool;

    fn scalar(self, _: Shape) -> bool {
        false
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        // Per key, last occurrence wins, so keep each separately and combine at the end.
        let (mut delta, mut text) = (false, false);
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "delta" => ChoiceKey::Delta,
            "text" => ChoiceKey::Text,
            _ => ChoiceKey::Other,
        }))? {
            match key {
                ChoiceKey::Delta => delta = map.next_value_seed(Seed(DeltaH))?,
                ChoiceKey::Text => text = map.next_value_seed(Seed(ShapeOf))?.is_non_empty_str(),
                ChoiceKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(delta || text)
    }
}

/// A chat delta: content-bearing or not.
struct DeltaH;

#[derive(Clone, Copy)]
enum DeltaKey {
    Content,
    ReasoningContent,
    Reasoning,
    ToolCalls,
    Other,
}

impl<'de> Handler<'de> for DeltaH {
    type Out = bool;

    fn scalar(self, _: Shape) -> bool {
        false
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = [false; 4];
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "content" => DeltaKey::Content,
            "reasoning_content" => DeltaKey::ReasoningContent,
            "reasoning" => DeltaKey::Reasoning,
            "tool_calls" => DeltaKey::ToolCalls,
            _ => DeltaKey::Other,
        }))? {
            let (slot, bearing) = match key {
                DeltaKey::Content => (0, map.next_value_seed(Seed(ShapeOf))?.is_non_empty_str()),
                DeltaKey::ReasoningContent => {
                    (1, map.next_value_seed(Seed(ShapeOf))?.is_non_empty_str())
                }
                DeltaKey::Reasoning => (2, map.next_value_seed(Seed(ShapeOf))?.is_non_empty_str()),
                DeltaKey::ToolCalls => (3, map.next_value_seed(Seed(NonEmptyArrayH))?),
                DeltaKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if let Some(s) = found.get_mut(slot) {
                *s = bearing;
            }
        }
        Ok(found.contains(&true))
    }
}

/// `true` for an array with at least one element.
struct NonEmptyArrayH;

impl<'de> Handler<'de> for NonEmptyArrayH {
    type Out = bool;

    fn scalar(self, _: Shape) -> bool {
        false
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let any = seq.next_element::<IgnoredAny>()?.is_some();
        skip_seq(&mut seq)?;
        Ok(any)
    }
}

#[cfg(test)]
mod tests;
