//! [`StreamRelay`]: relays an upstream OpenAI/vLLM SSE stream to the client while counting
//! tokens and capturing usage, optionally hiding the usage the gateway asked for.
//!
//! The gateway asks the upstream for `include_usage` and vLLM's `continuous_usage_stats`
//! (cumulative usage on every chunk, see [`crate::with_stream_usage`]) and gives the client
//! only what it asked for. Two independent options, chosen per request with
//! [`StreamRelay::with_options`]:
//! - `strip_usage_chunk` (the client did not ask `include_usage`): a usage-only event
//!   (`"choices":[]` and a non-null `usage` object) is dropped whole, after its usage is
//!   recorded.
//! - `strip_chunk_usage` (the client did not ask `continuous_usage_stats`): in every other data
//!   event, top-level `usage` members whose value is an object are cut out with their
//!   separating comma (`,"usage":{...}`, or `"usage":{...},` as the first member). The spans
//!   come from a borrowed parse of the payload (`&RawValue` offsets), never from matching
//!   braces in the text; when they cannot be established with certainty (unexpected bytes, a
//!   member spread over several `data` lines) the event is forwarded without that cut.
//!
//! With either option set, other data events also lose their compact `"usage":null` members
//! (see `write_without_null_usage` in `sse.rs` for why that byte-level edit is safe): OpenAI
//! sends them once usage is requested, while vLLM omits the member, and a client that asked
//! for neither flag gets neither. Only complete events are forwarded then, so a partial tail
//! is held back; every byte not removed as above is forwarded unchanged. With neither option
//! set (pass-through) every input byte is forwarded unchanged at once and events are parsed
//! on the side: only a partial trailing event is copied (to parse it once complete); events
//! wholly inside a chunk are parsed where they lie.
//!
//! Accounting, identical in all modes: a content-bearing chunk is a data event whose JSON has
//! a choice with non-empty `delta.content`, `delta.reasoning_content`, `delta.reasoning`
//! (newer vLLM), a non-empty `delta.tool_calls` array, or non-empty `text` (completions). Each
//! counts as ONE token, however many choices in it carry content: vLLM emits one token per
//! chunk (and one chunk per choice) by default, so this is close there, and an undercount when
//! several tokens share a chunk (speculative decoding, SGLang's `--stream-interval`, other
//! servers that batch). It is only the fallback for streams without usage. The last non-null
//! top-level `usage` object seen in any chunk wins, stripped or not: with continuous usage
//! stats that is the upstream's cumulative count so far, so a stream cut short still bills
//! its prompt and the completion tokens produced. A chunk whose top-level `error` is present
//! and non-null marks a mid-stream upstream error.
//!
//! Chunks are read with the single-pass visitors of `json.rs`: choices and deltas are
//! inspected in place and nothing is allocated per chunk. Cutting usage objects takes a second
//! pass over the chunks that have one, into reused buffers.
//!
//! Memory is bounded: an event longer than [`MAX_EVENT_BYTES`] (counted through its blank
//! line, except the LF of a final CRLF) is forwarded as-is, without stripping or accounting,
//! and its bytes are not held. The rule depends only on the event's length, never on how it
//! was split, so output stays independent of chunking.

use crate::json::{skip_seq, Handler, KeySeed, Seed, Shape, ShapeOf};
use crate::response::UsageH;
use crate::sse::{data_value, lines, write_without_null_usage, Framer, USAGE_NULL};
use bytes::{Bytes, BytesMut};
use fairgate_types::Usage;
use memchr::memmem;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use serde_json::value::RawValue;

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
    strip_usage_chunk: bool,
    strip_chunk_usage: bool,
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
    /// Payload spans of the usage members being cut from the current event.
    cuts: Vec<(usize, usize)>,
    /// One data line with its cuts applied, before the `"usage":null` pass.
    line: Vec<u8>,
    usage: Option<Usage>,
    tokens: u64,
    done: bool,
    error: bool,
}

impl StreamRelay {
    /// `strip_usage`: the gateway injected `include_usage` and the client had not asked. Same
    /// as [`with_options(strip_usage, false)`](Self::with_options).
    pub fn new(strip_usage: bool) -> Self {
        Self::with_options(strip_usage, false)
    }

    /// `strip_usage_chunk`: the client did not ask for `include_usage`, so the usage-only
    /// event is dropped. `strip_chunk_usage`: the client did not ask for
    /// `continuous_usage_stats` (or asked for it without `include_usage`, which vLLM ignores),
    /// so usage objects are cut from every other event. Both `false` is the zero-rewrite
    /// pass-through. See the module docs.
    pub fn with_options(strip_usage_chunk: bool, strip_chunk_usage: bool) -> Self {
        Self::with_max_event_bytes(strip_usage_chunk, strip_chunk_usage, MAX_EVENT_BYTES)
    }

    pub(crate) fn with_max_event_bytes(
        strip_usage_chunk: bool,
        strip_chunk_usage: bool,
        max_event: usize,
    ) -> Self {
        Self {
            strip_usage_chunk,
            strip_chunk_usage,
            max_event,
            framer: Framer::default(),
            pending: Vec::new(),
            oversize: false,
            prev_forwarded: true,
            scratch: Vec::new(),
            cuts: Vec::new(),
            line: Vec::new(),
            usage: None,
            tokens: 0,
            done: false,
            error: false,
        }
    }

    /// Whether the client gets an edited copy of the stream rather than the input bytes.
    fn rewrites(&self) -> bool {
        self.strip_usage_chunk || self.strip_chunk_usage
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
        acc.forward = if self.rewrites() {
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
            let chunk = analyze(&event, &mut self.scratch, false);
            self.account(&chunk, &mut Pushed::default());
            self.emit(&mut out, &event);
            self.pending = recycle(event);
            self.release_large_buffers();
        }
        self.pending.clear();
        self.oversize = false;
        self.prev_forwarded = true;
        self.framer.reset();
        out.freeze()
    }

    /// Usage from the upstream's last usage-carrying chunk, if any was seen: the final usage
    /// chunk's after a complete stream, the cumulative count so far when continuous usage
    /// stats were on and the stream ended early.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Content-bearing chunks seen (one token each); the fallback when there is no usage.
    pub fn completion_tokens_counted(&self) -> u64 {
        self.tokens
    }

    /// `data: [DONE]` was seen, or the Responses API's `response.completed` (or
    /// `response.incomplete`) event, which ends its streams instead.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// An event carrying a JSON object with a non-null top-level `error` was seen.
    pub fn error_event(&self) -> bool {
        self.error
    }

    /// Appends to the client output; a no-op in pass-through mode, which forwards the input.
    fn emit(&self, out: &mut BytesMut, bytes: &[u8]) {
        if self.rewrites() {
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

    /// Accounts one complete event and, when rewriting, writes what the client gets of it.
    /// Returns whether it was forwarded.
    fn process(&mut self, event: &[u8], out: &mut BytesMut, acc: &mut Pushed) -> bool {
        let chunk = analyze(event, &mut self.scratch, self.strip_chunk_usage);
        self.account(&chunk, acc);
        let forwarded = self.rewrite(&chunk, event, out);
        self.release_large_buffers();
        forwarded
    }

    fn rewrite(&mut self, chunk: &Event, event: &[u8], out: &mut BytesMut) -> bool {
        if !self.rewrites() {
            return true;
        }
        let Event::Chunk(c) = chunk else {
            out.extend_from_slice(event);
            return true;
        };
        if c.choices_empty && c.usage.is_some() {
            // The usage-only chunk: the client asked for it whole or not at all.
            if self.strip_usage_chunk {
                return false;
            }
            out.extend_from_slice(event);
            return true;
        }
        if self.strip_chunk_usage && c.usage_object && c.usage_members == 1 {
            if let Some(from) = c.usage_span.and_then(|(at, _)| fast_usage_cut(event, at)) {
                let to = c.usage_span.map_or(from, |(_, end)| end);
                let (Some(head), Some(rest)) = (event.get(..from), event.get(to..)) else {
                    return true;
                };
                self.line.clear();
                self.line.extend_from_slice(head);
                self.line.extend_from_slice(rest);
                write_event_without_null_usage(&self.line, out);
                return true;
            }
        }
        if self.strip_chunk_usage
            && c.usage_object
            && write_without_usage_objects(
                event,
                &mut self.scratch,
                &mut self.cuts,
                &mut self.line,
                out,
            )
        {
            return true;
        }
        write_event_without_null_usage(event, out);
        true
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
                self.done |= c.terminal;
            }
            Event::Other => {}
        }
    }

    fn release_large_buffers(&mut self) {
        for buf in [&mut self.scratch, &mut self.line] {
            if buf.capacity() > KEEP_CAPACITY {
                *buf = Vec::new();
            }
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
    /// The last top-level `usage`, when it is an object.
    usage: Option<Usage>,
    /// Some top-level `usage` member (not necessarily the last) is an object.
    usage_object: bool,
    /// Top-level `usage` members (a well-formed chunk has at most one).
    usage_members: u32,
    /// Where the last `usage` value lies in the event, when the payload was read where it
    /// lies (one data line): what [`fast_usage_cut`] needs to cut it without a second parse.
    usage_span: Option<(usize, usize)>,
    error: bool,
    /// A Responses API event that ends the stream (`response.completed`, ...).
    terminal: bool,
}

/// The event's data payload: its only data value where it lies, or all of them joined with
/// `\n` (per the SSE spec) in `scratch`. `None` for an event without data lines.
fn payload<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
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
    if joined {
        Some(scratch.as_slice())
    } else {
        first
    }
}

/// Writes `event` with compact `"usage":null` members removed from its data lines.
fn write_event_without_null_usage(event: &[u8], out: &mut BytesMut) {
    if memmem::find(event, USAGE_NULL).is_none() {
        out.extend_from_slice(event);
        return;
    }
    for line in lines(event) {
        if data_value(line.content).is_some() {
            write_without_null_usage(line.content, out);
        } else {
            out.extend_from_slice(line.content);
        }
        out.extend_from_slice(line.terminator);
    }
}

/// The common shape of a chunk with cumulative usage, `...,"usage":{...}}`, cut without a
/// second parse: given where the (only) top-level `usage` value starts in `event`, returns
/// where its cut starts, the comma before its key. `None` (take the general path) unless the
/// bytes before the value are exactly `,"usage":`, give or take whitespace around the colon.
///
/// Why this is safe: the parser says a top-level key that decodes to `usage` ends just before
/// the colon. Its raw text ends in `usage"`; if the byte before that is a `"` preceded by a
/// `,`, that quote is not inside a string (there it would be escaped, preceded by `\`), so it
/// opens the key (whose text, decoding to `usage`, holds no unescaped quote), and the comma
/// before it separates the key from an earlier member, outside any string.
fn fast_usage_cut(event: &[u8], value_at: usize) -> Option<usize> {
    let before = event.get(..value_at)?.trim_ascii_end();
    let before = before.strip_suffix(b":")?.trim_ascii_end();
    let before = before.strip_suffix(br#","usage""#)?;
    Some(before.len())
}

/// Reads one event's payload and classifies it.
fn analyze(event: &[u8], scratch: &mut Vec<u8>, place_usage: bool) -> Event {
    let Some(payload) = payload(event, scratch) else {
        return Event::Other;
    };
    let trimmed = payload.trim_ascii();
    if trimmed == b"[DONE]" {
        return Event::Done;
    }
    if trimmed.first() != Some(&b'{') {
        return Event::Other;
    }
    let mut de = serde_json::Deserializer::from_slice(trimmed);
    match Seed(ChunkH { event, place_usage })
        .deserialize(&mut de)
        .and_then(|c| de.end().map(|()| c))
    {
        Ok(chunk) => Event::Chunk(chunk),
        Err(_) => Event::Other,
    }
}

/// A stream chunk object; `event` is the whole event, to place borrowed values in it.
struct ChunkH<'e> {
    event: &'e [u8],
    /// Find where `usage` lies (only when it is to be cut: reading the value's raw text
    /// first costs a second pass over it).
    place_usage: bool,
}

#[derive(Clone, Copy)]
enum ChunkKey {
    Choices,
    Usage,
    Error,
    /// The Responses API's events: `response` carries the response so far, whose `usage` is
    /// set on `response.completed` (and `response.incomplete` / `response.failed`).
    Response,
    /// The Responses API's text events (`response.output_text.delta`) carry a top-level
    /// `delta` string: a content-bearing chunk.
    Delta,
    /// The Responses API's event type: `response.completed` / `response.incomplete` end the
    /// stream as `[DONE]` does for chat (that API sends no `[DONE]`); `response.failed` and
    /// `error` are mid-stream errors.
    Type,
    Other,
}

/// `choices`: how many, and whether any carries content.
#[derive(Clone, Copy)]
struct Choices {
    count: usize,
    bearing: bool,
}

impl<'de> Handler<'de> for ChunkH<'_> {
    type Out = Chunk;

    fn scalar(self, _: Shape) -> Chunk {
        Chunk::default()
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chunk, A::Error> {
        let mut choices = None;
        let mut usage = None;
        let mut usage_object = false;
        let mut usage_members = 0u32;
        let mut usage_span = None;
        let mut error = false;
        let mut delta_text = false;
        let mut terminal = false;
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "choices" => ChunkKey::Choices,
            "usage" => ChunkKey::Usage,
            "error" => ChunkKey::Error,
            "response" => ChunkKey::Response,
            "delta" => ChunkKey::Delta,
            "type" => ChunkKey::Type,
            _ => ChunkKey::Other,
        }))? {
            match key {
                ChunkKey::Choices => choices = map.next_value_seed(Seed(ChoicesH))?,
                ChunkKey::Response => {
                    if let Some(u) = map.next_value_seed(Seed(crate::response::BodyH))? {
                        usage = Some(u);
                    }
                }
                ChunkKey::Delta => {
                    delta_text |= map.next_value_seed(Seed(ShapeOf))?.is_non_empty_str();
                }
                ChunkKey::Type => match map.next_value_seed(Seed(EventTypeH))? {
                    EventType::End => terminal = true,
                    EventType::Failed => error = true,
                    EventType::Other => {}
                },
                ChunkKey::Usage if !self.place_usage => {
                    usage = map.next_value_seed(Seed(UsageH))?;
                    usage_object |= usage.is_some();
                    usage_members = usage_members.saturating_add(1);
                }
                ChunkKey::Usage => {
                    // Borrowed raw text: where it lies, then its numbers from that text.
                    let raw: &'de RawValue = map.next_value()?;
                    let text = raw.get();
                    usage = if text.starts_with('{') {
                        let mut de = serde_json::Deserializer::from_str(text);
                        Seed(UsageH)
                            .deserialize(&mut de)
                            .map_err(serde::de::Error::custom)?
                    } else {
                        None
                    };
                    usage_object |= usage.is_some();
                    usage_members = usage_members.saturating_add(1);
                    usage_span = span_in(self.event, text.as_bytes());
                }
                ChunkKey::Error => error = map.next_value_seed(Seed(ShapeOf))? != Shape::Null,
                ChunkKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Chunk {
            bearing: choices.is_some_and(|c: Choices| c.bearing) || delta_text,
            choices_empty: choices.is_some_and(|c| c.count == 0),
            usage,
            usage_object,
            usage_members,
            usage_span,
            error,
            terminal,
        })
    }
}

#[derive(Clone, Copy)]
enum EventType {
    End,
    Failed,
    Other,
}

/// A Responses API event's `type`.
struct EventTypeH;

impl Handler<'_> for EventTypeH {
    type Out = EventType;

    fn scalar(self, _: Shape) -> EventType {
        EventType::Other
    }

    fn string(self, s: &str) -> EventType {
        match s {
            "response.completed" | "response.incomplete" => EventType::End,
            "response.failed" | "error" => EventType::Failed,
            _ => EventType::Other,
        }
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

/// Writes `event` to `out` with the top-level `usage` members whose value is an object cut
/// out of its data payload (see [`usage_object_cuts`]) and compact `"usage":null` members
/// removed from its data lines, every other byte unchanged. Returns `false`, having written
/// nothing, when there is nothing to cut or the cuts cannot be made with certainty: the payload
/// is not what [`usage_object_cuts`] expects, or a cut would span two `data` lines (a JSON
/// string cannot, but the members between them can; no server splits a chunk that way).
fn write_without_usage_objects(
    event: &[u8],
    scratch: &mut Vec<u8>,
    cuts: &mut Vec<(usize, usize)>,
    line_buf: &mut Vec<u8>,
    out: &mut BytesMut,
) -> bool {
    let Some(payload) = payload(event, scratch) else {
        return false;
    };
    // Cut offsets are into the trimmed payload, as parsed; `lead` maps them to the payload.
    let lead = payload.len() - payload.trim_ascii_start().len();
    cuts.clear();
    if !usage_object_cuts(payload.trim_ascii(), cuts) || cuts.is_empty() {
        return false;
    }
    let mark = out.len();
    let mut pending = cuts
        .iter()
        .map(|&(from, to)| (from + lead, to + lead))
        .peekable();
    // Offset of the current data line's value within the payload.
    let mut value_at = 0;
    for line in lines(event) {
        let Some(value) = data_value(line.content) else {
            out.extend_from_slice(line.content);
            out.extend_from_slice(line.terminator);
            continue;
        };
        // `value` is a suffix of the line: payload offset `p` within this value is line byte
        // `p - value_at + in_line`.
        let in_line = line.content.len() - value.len();
        let value_end = value_at + value.len();
        line_buf.clear();
        let mut copied = 0;
        while let Some(&(from, to)) = pending.peek() {
            if from > value_end {
                break;
            }
            // A cut starting in this value must end in it too.
            let kept = (from >= value_at && to <= value_end)
                .then(|| line.content.get(copied..from - value_at + in_line))
                .flatten();
            let Some(kept) = kept else {
                out.truncate(mark);
                return false;
            };
            line_buf.extend_from_slice(kept);
            copied = to - value_at + in_line;
            pending.next();
        }
        line_buf.extend_from_slice(line.content.get(copied..).unwrap_or_default());
        write_without_null_usage(line_buf, out);
        out.extend_from_slice(line.terminator);
        value_at = value_end + 1;
    }
    if pending.next().is_some() {
        out.truncate(mark);
        return false;
    }
    true
}

/// Collects into `cuts` the byte ranges of `json` (a whole JSON object text, no surrounding
/// whitespace) that remove every top-level `usage` member whose value is an object, keeping
/// the object valid: `[end of previous value, end of usage value)` (the comma before and the
/// member) when an earlier member is kept, otherwise `[usage key, next kept key)` (the member
/// and the comma after it), or up to the last removed value when no member after it is kept.
/// Ranges are sorted and disjoint. Returns `false` if `json` is not such an object or a value
/// is not where its span says (which a borrowed parse rules out; checked, not assumed).
fn usage_object_cuts(json: &[u8], cuts: &mut Vec<(usize, usize)>) -> bool {
    let mut de = serde_json::Deserializer::from_slice(json);
    let found = Seed(UsageCutsH { json, cuts })
        .deserialize(&mut de)
        .and_then(|ok| de.end().map(|()| ok));
    matches!(found, Ok(true))
}

struct UsageCutsH<'j, 'c> {
    json: &'j [u8],
    cuts: &'c mut Vec<(usize, usize)>,
}

impl<'de> Handler<'de> for UsageCutsH<'_, '_> {
    type Out = bool;

    fn scalar(self, _: Shape) -> bool {
        false
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Self { json, cuts } = self;
        if json.first() != Some(&b'{') {
            return Ok(false);
        }
        // End of the previous member's value, or just past the `{`.
        let mut boundary = 1;
        let mut first = true;
        let mut kept_before = false;
        // Start of a run of removed members that no kept member precedes.
        let mut open_run = None;
        while let Some(is_usage) = map.next_key_seed(KeySeed(|k: &str| k == "usage"))? {
            let value: &'de RawValue = map.next_value()?;
            let (Some(key_at), Some((value_at, value_end))) = (
                member_start(json, boundary, first),
                span_in(json, value.get().as_bytes()),
            ) else {
                return Ok(false);
            };
            if key_at >= value_at {
                return Ok(false);
            }
            if is_usage && value.get().starts_with('{') {
                if kept_before {
                    push_cut(cuts, boundary, value_end);
                } else if open_run.is_none() {
                    open_run = Some(key_at);
                }
            } else {
                if let Some(from) = open_run.take() {
                    push_cut(cuts, from, key_at);
                }
                kept_before = true;
            }
            boundary = value_end;
            first = false;
        }
        if let Some(from) = open_run {
            push_cut(cuts, from, boundary);
        }
        Ok(true)
    }
}

/// Where the member after `boundary` starts (its key's `"`): JSON allows only whitespace and,
/// after the first member, one comma in between.
fn member_start(json: &[u8], boundary: usize, first: bool) -> Option<usize> {
    let mut at = skip_ws(json, boundary);
    if !first {
        (json.get(at) == Some(&b',')).then_some(())?;
        at = skip_ws(json, at + 1);
    }
    (json.get(at) == Some(&b'"')).then_some(at)
}

fn skip_ws(json: &[u8], from: usize) -> usize {
    let rest = json.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(rest.len())
}

/// `(start, end)` of `inner` within `outer`, if it is a sub-slice of it.
fn span_in(outer: &[u8], inner: &[u8]) -> Option<(usize, usize)> {
    let at = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = at.checked_add(inner.len())?;
    // Identity check: a value serde_json copied rather than borrowed cannot mislead us.
    let same = outer.get(at..end)?.as_ptr() == inner.as_ptr();
    same.then_some((at, end))
}

/// Appends `[from, to)`, merged with the previous range when they touch.
fn push_cut(cuts: &mut Vec<(usize, usize)>, from: usize, to: usize) {
    match cuts.last_mut() {
        Some(last) if last.1 == from => last.1 = to,
        _ => cuts.push((from, to)),
    }
}

#[cfg(test)]
mod tests;
