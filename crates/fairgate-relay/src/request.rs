//! Client request bodies: validation, the fields the gateway needs, and token estimates.
//!
//! [`parse_request`] reads the body in one streaming serde pass (see `json.rs`): nothing
//! but the model name is allocated for a valid request, message texts are measured where they
//! lie (or in serde_json's scratch buffer when they contain escapes), and unknown fields are
//! syntax-checked and skipped. The body itself is never modified here; the gateway forwards
//! the client's bytes (or [`with_include_usage`]'s / [`with_stream_usage`]'s rewrite of them).
//!
//! Which fields are read depends on the endpoint; every other field is passed through
//! untouched and unvalidated, because the upstream owns its semantics:
//!
//! | field                                   | chat | completions | embeddings |
//! |-----------------------------------------|------|-------------|------------|
//! | `model`, `stream`                       | yes  | yes         | yes        |
//! | `stream_options`, `max_tokens`          | yes  | yes         | no         |
//! | `max_completion_tokens`                 | yes  | no          | no         |
//! | `messages` / `prompt` / `input`         | chat | completions | embeddings |
//!
//! Duplicate top-level `model` members are refused (`ambiguous_model`): which one a backend
//! runs would depend on its parser. Other duplicate keys: the last occurrence wins, at every
//! level, as in Python's `json` (so the
//! gateway bills and routes exactly the request the upstream will execute).
//!
//! Error precedence: syntax errors anywhere beat type errors (the whole body is checked first);
//! then fields are checked in the order `model`, `stream`, `stream_options` (itself, then
//! `include_usage`, then `continuous_usage_stats`), `max_tokens`,
//! `max_completion_tokens`, payload; within an array the lowest index is reported.

use crate::json::{skip_map, skip_seq, Handler, KeySeed, Seed, Shape, ShapeOf};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use std::fmt;

pub use crate::rewrite::{
    client_priority, with_include_usage, with_model, with_model_set, with_priority,
    with_stream_usage,
};

/// Which OpenAI-compatible endpoint a body was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

/// What the gateway needs from a valid request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage == true` in the client's body.
    pub client_wants_usage: bool,
    /// `stream_options.continuous_usage_stats == true` in the client's body, as written: vLLM
    /// only honours it together with `include_usage`, so the usage the client would get on
    /// every chunk is `client_wants_usage && client_wants_continuous_usage`.
    pub client_wants_continuous_usage: bool,
    /// `max_completion_tokens` (chat; wins over `max_tokens` when both are set) or `max_tokens`.
    /// Always `Some(0)` for embeddings, which produce no completion tokens: that is how
    /// [`reservation_tokens`] reserves only the prompt for them.
    pub max_tokens: Option<u64>,
    /// See [`estimate_text_tokens`] and the per-endpoint rules on [`parse_request`].
    pub prompt_tokens_estimate: u64,
    /// Sequences the backend generates per request: the larger of `n` and `best_of` (chat and
    /// completions), at least 1. The reservation multiplies `max_tokens` by it.
    pub choices: u64,
    /// vLLM's `priority` as the client sent it (an integer; lower runs first under vLLM's
    /// `--scheduling-policy priority`); `None` when absent or null.
    pub priority: Option<i64>,
    /// The body has a top-level `priority` member (null included): the gateway removes it
    /// before an engine that does not schedule by priority sees it.
    pub priority_member: bool,
}

/// Why a request body was refused; maps onto an OpenAI-style `invalid_request_error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// Human-readable, names the field: `'stream' must be a boolean, got string`.
    pub message: String,
    /// JSON path of the offending field (`messages[2].content`), `None` for whole-body errors.
    pub param: Option<String>,
    /// One of `invalid_json`, `invalid_utf8`, `missing_field`, `invalid_type`, `invalid_value`.
    pub code: &'static str,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    pub(crate) fn invalid_utf8(err: std::str::Utf8Error) -> Self {
        Self {
            message: format!(
                "request body is not valid UTF-8 (invalid byte at offset {})",
                err.valid_up_to()
            ),
            param: None,
            code: "invalid_utf8",
        }
    }

    pub(crate) fn invalid_json(err: &serde_json::Error) -> Self {
        Self {
            // serde_json's Display already ends in "at line L column C".
            message: format!("request body is not valid JSON: {err}"),
            param: None,
            code: "invalid_json",
        }
    }

    pub(crate) fn not_an_object(got: Shape) -> Self {
        Self {
            message: format!(
                "request body must be a JSON object, got {}",
                got.kind_name()
            ),
            param: None,
            code: "invalid_json",
        }
    }

    pub(crate) fn missing(param: String) -> Self {
        Self {
            message: format!("'{param}' is required"),
            param: Some(param),
            code: "missing_field",
        }
    }

    pub(crate) fn invalid_type(param: String, expected: &str, got: Shape) -> Self {
        Self {
            message: format!("'{param}' must be {expected}, got {}", got.kind_name()),
            param: Some(param),
            code: "invalid_type",
        }
    }

    fn invalid_value(param: String, message: String) -> Self {
        Self {
            message,
            param: Some(param),
            code: "invalid_value",
        }
    }
}

/// Tokens counted for each non-text content part (`image_url`, `input_audio`, `file`, ...).
/// 85 is OpenAI's base cost of a low-detail image; a flat guess, since the real cost depends
/// on the model's processor and the media's size, which the gateway does not fetch.
pub const NON_TEXT_PART_TOKENS: u64 = 85;

/// Per-message overhead (role/separator tokens of typical chat templates) and the reply
/// priming added once per conversation; the numbers OpenAI's cookbook uses.
const PER_MESSAGE_TOKENS: u64 = 3;
const REPLY_PRIMING_TOKENS: u64 = 3;

/// Heuristic token count of `text`: `ceil(utf8_bytes / 4)`, so at least 1 for non-empty text.
///
/// For ASCII this is the familiar "4 characters per token". Counting bytes rather than
/// characters makes non-Latin scripts, which tokenize at far fewer characters per token, cost
/// more (a CJK character is 3 bytes, so ~0.75 tokens; a 4-byte emoji 1 token) instead of being
/// underestimated up to 4x, and it is O(1).
pub fn estimate_text_tokens(text: &str) -> u64 {
    estimate_len(text.len())
}

fn estimate_len(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX).div_ceil(4)
}

/// Tokens to reserve at admission: the prompt estimate plus `choices` × `max_tokens` (or
/// `default_max_tokens` when the client set none). Embeddings reserve the prompt only (their
/// `max_tokens` is `Some(0)`). Saturating: any input gives a finite answer.
pub fn reservation_tokens(req: &ParsedRequest, default_max_tokens: u64) -> u64 {
    reservation_tokens_within(req, default_max_tokens, None)
}

/// [`reservation_tokens`] with each sequence's output clamped to what fits in the model's
/// context (`context_len` minus the prompt estimate, at least 1) when the context length is
/// known: the backend cannot produce more, however large the client's `max_tokens`.
pub fn reservation_tokens_within(
    req: &ParsedRequest,
    default_max_tokens: u64,
    context_len: Option<u64>,
) -> u64 {
    let mut out = req.max_tokens.unwrap_or(default_max_tokens);
    if let Some(ctx) = context_len {
        out = out.min(ctx.saturating_sub(req.prompt_tokens_estimate).max(1));
    }
    req.prompt_tokens_estimate
        .saturating_add(out.saturating_mul(req.choices.max(1)))
}

/// Validates a client body for `endpoint` and extracts what the gateway needs.
///
/// Estimates (`prompt_tokens_estimate`), with `est` = [`estimate_text_tokens`]:
/// - chat: `3 + Σ over messages (est(role) + est(content) + 3)`, where a content array counts
///   `est(text)` per text part and [`NON_TEXT_PART_TOKENS`] per other part; `tool_calls`,
///   `name` and other message fields are not counted.
/// - completions: `prompt` as a string: `est(prompt)`; array of strings: sum of `est`; array
///   of token ids: its length; array of token-id arrays: the sum of their lengths.
/// - embeddings: `input`, same rules as `prompt`.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = Seed(TopH { endpoint })
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| RequestError::invalid_json(&e))?;
    top.map_err(RequestError::not_an_object)?.finish(endpoint)
}

/// Top-level fields, each the last occurrence's per-field result.
#[derive(Default)]
struct TopFields {
    model: Option<Result<String, Shape>>,
    /// How many top-level `model` members there were: more than one is refused.
    model_count: usize,
    n: Option<u64>,
    best_of: Option<u64>,
    stream: Option<Shape>,
    stream_options: Option<Result<StreamOptions, Shape>>,
    max_tokens: Option<Shape>,
    max_completion_tokens: Option<Shape>,
    priority: Option<Shape>,
    payload: Option<Result<u64, RequestError>>,
}

#[derive(Clone, Copy)]
enum TopKey {
    Model,
    Stream,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    N,
    BestOf,
    Priority,
    Messages,
    Prompt,
    Input,
    Other,
}

fn classify_top_key(endpoint: Endpoint, key: &str) -> TopKey {
    use Endpoint::*;
    match (key, endpoint) {
        ("model", _) => TopKey::Model,
        ("stream", _) => TopKey::Stream,
        ("stream_options", ChatCompletions | Completions) => TopKey::StreamOptions,
        ("max_tokens", ChatCompletions | Completions) => TopKey::MaxTokens,
        ("max_completion_tokens", ChatCompletions) => TopKey::MaxCompletionTokens,
        ("n", ChatCompletions | Completions) => TopKey::N,
        ("best_of", ChatCompletions | Completions) => TopKey::BestOf,
        ("priority", _) => TopKey::Priority,
        ("messages", ChatCompletions) => TopKey::Messages,
        ("prompt", Completions) => TopKey::Prompt,
        ("input", Embeddings) => TopKey::Input,
        _ => TopKey::Other,
    }
}

impl TopFields {
    fn finish(self, endpoint: Endpoint) -> Result<ParsedRequest, RequestError> {
        if self.model_count > 1 {
            return Err(ambiguous(format!(
                "the body has {} `model` members; send exactly one",
                self.model_count
            )));
        }
        let model = match self.model {
            None => return Err(RequestError::missing("model".into())),
            Some(Err(got)) => {
                return Err(RequestError::invalid_type("model".into(), "a string", got))
            }
            Some(Ok(m)) if m.is_empty() => {
                return Err(RequestError::invalid_value(
                    "model".into(),
                    "'model' must not be empty".into(),
                ))
            }
            Some(Ok(m)) => m,
        };
        let stream = optional_bool("stream", self.stream)?;
        let options = match self.stream_options {
            None => StreamOptions::default(),
            Some(Ok(options)) => options,
            Some(Err(got)) => {
                return Err(RequestError::invalid_type(
                    "stream_options".into(),
                    "an object or null",
                    got,
                ))
            }
        };
        let client_wants_usage =
            optional_bool("stream_options.include_usage", options.include_usage)?;
        let client_wants_continuous_usage = optional_bool(
            "stream_options.continuous_usage_stats",
            options.continuous_usage_stats,
        )?;
        let max_tokens = token_limit("max_tokens", self.max_tokens)?;
        let max_completion_tokens =
            token_limit("max_completion_tokens", self.max_completion_tokens)?;
        let choices = self.n.unwrap_or(1).max(self.best_of.unwrap_or(1)).max(1);
        let priority_member = self.priority.is_some();
        let priority = match self.priority {
            None | Some(Shape::Null) => None,
            Some(Shape::UInt(n)) => Some(i64::try_from(n).map_err(|_| {
                RequestError::invalid_value("priority".into(), "'priority' is out of range".into())
            })?),
            Some(Shape::NegInt(n)) => Some(n),
            Some(got) => {
                return Err(RequestError::invalid_type(
                    "priority".into(),
                    "an integer",
                    got,
                ))
            }
        };
        let (field, prompt_tokens_estimate) = match endpoint {
            Endpoint::ChatCompletions => ("messages", self.payload),
            Endpoint::Completions => ("prompt", self.payload),
            Endpoint::Embeddings => ("input", self.payload),
        };
        let prompt_tokens_estimate = match prompt_tokens_estimate {
            None => return Err(RequestError::missing(field.into())),
            Some(r) => r?,
        };
        let max_tokens = match endpoint {
            Endpoint::ChatCompletions => max_completion_tokens.or(max_tokens),
            Endpoint::Completions => max_tokens,
            Endpoint::Embeddings => {
                if stream {
                    return Err(RequestError::invalid_value(
                        "stream".into(),
                        "'stream' is not supported for embeddings".into(),
                    ));
                }
                Some(0)
            }
        };
        Ok(ParsedRequest {
            model,
            stream,
            client_wants_usage,
            client_wants_continuous_usage,
            max_tokens,
            prompt_tokens_estimate,
            choices: if endpoint == Endpoint::Embeddings {
                1
            } else {
                choices
            },
            priority,
            priority_member,
        })
    }
}

/// A boolean-or-null field: absent and null read as `false`.
fn optional_bool(param: &str, value: Option<Shape>) -> Result<bool, RequestError> {
    match value {
        None | Some(Shape::Null) => Ok(false),
        Some(Shape::Bool(b)) => Ok(b),
        Some(got) => Err(RequestError::invalid_type(param.into(), "a boolean", got)),
    }
}

/// `max_tokens`-like field: a non-negative integer or null.
fn token_limit(param: &str, value: Option<Shape>) -> Result<Option<u64>, RequestError> {
    match value {
        None | Some(Shape::Null) => Ok(None),
        Some(Shape::UInt(n)) => Ok(Some(n)),
        Some(Shape::NegInt(n)) => Err(RequestError::invalid_value(
            param.into(),
            format!("'{param}' must be a non-negative integer, got {n}"),
        )),
        Some(got) => Err(RequestError::invalid_type(
            param.into(),
            "a non-negative integer",
            got,
        )),
    }
}

/// The request body: `Err(shape)` when it is not an object.
struct TopH {
    endpoint: Endpoint,
}

impl<'de> Handler<'de> for TopH {
    type Out = Result<TopFields, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(shape)
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let endpoint = self.endpoint;
        let mut f = TopFields::default();
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| classify_top_key(endpoint, k)))? {
            match key {
                TopKey::Model => {
                    f.model_count = f.model_count.saturating_add(1);
                    f.model = Some(map.next_value_seed(Seed(StringH))?)
                }
                TopKey::N => f.n = Some(map.next_value_seed(Seed(CountH))?),
                TopKey::BestOf => f.best_of = Some(map.next_value_seed(Seed(CountH))?),
                TopKey::Stream => f.stream = Some(map.next_value_seed(Seed(ShapeOf))?),
                TopKey::StreamOptions => {
                    f.stream_options = Some(map.next_value_seed(Seed(StreamOptionsH))?)
                }
                TopKey::MaxTokens => f.max_tokens = Some(map.next_value_seed(Seed(ShapeOf))?),
                TopKey::Priority => f.priority = Some(map.next_value_seed(Seed(ShapeOf))?),
                TopKey::MaxCompletionTokens => {
                    f.max_completion_tokens = Some(map.next_value_seed(Seed(ShapeOf))?)
                }
                TopKey::Messages => f.payload = Some(map.next_value_seed(Seed(MessagesH))?),
                TopKey::Prompt => {
                    f.payload = Some(map.next_value_seed(Seed(PromptH { param: "prompt" }))?)
                }
                TopKey::Input => {
                    f.payload = Some(map.next_value_seed(Seed(PromptH { param: "input" }))?)
                }
                TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Ok(f))
    }
}

/// `n` / `best_of` read as leniently as the backend's validation (pydantic's lax mode takes
/// `4`, `4.0` and `"4"`), never refused here: what the backend refuses costs nothing, and
/// what it accepts must be reserved for. Fractions round up; anything else reads as 1.
struct CountH;

impl Handler<'_> for CountH {
    type Out = u64;

    fn scalar(self, shape: Shape) -> u64 {
        match shape {
            Shape::UInt(n) => n,
            Shape::Float(f) if f.is_finite() && f > 0.0 => f.ceil() as u64,
            _ => 1,
        }
    }

    fn string(self, s: &str) -> u64 {
        let s = s.trim();
        match s.parse::<u64>() {
            Ok(n) => n,
            Err(_) => match s.parse::<f64>() {
                Ok(f) => self.scalar(Shape::Float(f)),
                Err(_) => 1,
            },
        }
    }
}

/// A string value, owned; anything else comes back as its shape.
struct StringH;

impl Handler<'_> for StringH {
    type Out = Result<String, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(shape)
    }

    fn string(self, s: &str) -> Self::Out {
        Ok(s.to_owned())
    }
}

/// The `stream_options` flags, each the last occurrence's shape.
#[derive(Clone, Copy, Default)]
struct StreamOptions {
    include_usage: Option<Shape>,
    continuous_usage_stats: Option<Shape>,
}

#[derive(Clone, Copy)]
enum StreamOptionsKey {
    IncludeUsage,
    ContinuousUsageStats,
    Other,
}

/// `stream_options`: `Ok` for an object or null (null has no flags), `Err(shape)` otherwise.
struct StreamOptionsH;

impl<'de> Handler<'de> for StreamOptionsH {
    type Out = Result<StreamOptions, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        match shape {
            Shape::Null => Ok(StreamOptions::default()),
            other => Err(other),
        }
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut options = StreamOptions::default();
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "include_usage" => StreamOptionsKey::IncludeUsage,
            "continuous_usage_stats" => StreamOptionsKey::ContinuousUsageStats,
            _ => StreamOptionsKey::Other,
        }))? {
            match key {
                StreamOptionsKey::IncludeUsage => {
                    options.include_usage = Some(map.next_value_seed(Seed(ShapeOf))?)
                }
                StreamOptionsKey::ContinuousUsageStats => {
                    options.continuous_usage_stats = Some(map.next_value_seed(Seed(ShapeOf))?)
                }
                StreamOptionsKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Ok(options))
    }
}

/// `messages`: a non-empty array of message objects; out is the chat estimate.
struct MessagesH;

impl<'de> Handler<'de> for MessagesH {
    type Out = Result<u64, RequestError>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(RequestError::invalid_type(
            "messages".into(),
            "an array of messages",
            shape,
        ))
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut total = REPLY_PRIMING_TOKENS;
        let mut index = 0usize;
        while let Some(message) = seq.next_element_seed(Seed(MessageH { index }))? {
            match message {
                Ok(n) => total = total.saturating_add(n),
                Err(e) => {
                    // Keep the first error but finish the array: a later syntax error must
                    // still win, and the rest of the body must be consumed anyway.
                    skip_seq(&mut seq)?;
                    return Ok(Err(e));
                }
            }
            index += 1;
        }
        if index == 0 {
            return Ok(Err(RequestError::invalid_value(
                "messages".into(),
                "'messages' must not be empty".into(),
            )));
        }
        Ok(Ok(total))
    }
}

/// One element of `messages`.
struct MessageH {
    index: usize,
}

#[derive(Clone, Copy)]
enum MessageKey {
    Role,
    Content,
    Other,
}

impl<'de> Handler<'de> for MessageH {
    type Out = Result<u64, RequestError>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(RequestError::invalid_type(
            format!("messages[{}]", self.index),
            "an object",
            shape,
        ))
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let index = self.index;
        let mut role = None;
        let mut content = None;
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "role" => MessageKey::Role,
            "content" => MessageKey::Content,
            _ => MessageKey::Other,
        }))? {
            match key {
                MessageKey::Role => role = Some(map.next_value_seed(Seed(ShapeOf))?),
                MessageKey::Content => {
                    content = Some(map.next_value_seed(Seed(ContentH { index }))?)
                }
                MessageKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let role = match role {
            Some(Shape::Str { len }) => estimate_len(len),
            None => {
                return Ok(Err(RequestError::missing(format!(
                    "messages[{index}].role"
                ))))
            }
            Some(got) => {
                return Ok(Err(RequestError::invalid_type(
                    format!("messages[{index}].role"),
                    "a string",
                    got,
                )))
            }
        };
        // A missing `content` is allowed: assistant messages that only carry `tool_calls`
        // omit it, and the upstream is the one to judge role-specific requirements.
        let content = match content {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(e)) => return Ok(Err(e)),
        };
        Ok(Ok(role
            .saturating_add(content)
            .saturating_add(PER_MESSAGE_TOKENS)))
    }
}

/// `messages[i].content`: string, null, or an array of content parts.
struct ContentH {
    index: usize,
}

impl<'de> Handler<'de> for ContentH {
    type Out = Result<u64, RequestError>;

    fn scalar(self, shape: Shape) -> Self::Out {
        match shape {
            Shape::Str { len } => Ok(estimate_len(len)),
            Shape::Null => Ok(0),
            got => Err(RequestError::invalid_type(
                format!("messages[{}].content", self.index),
                "a string, an array of content parts, or null",
                got,
            )),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut total = 0u64;
        let mut part = 0usize;
        while let Some(r) = seq.next_element_seed(Seed(PartH {
            message: self.index,
            part,
        }))? {
            match r {
                Ok(n) => total = total.saturating_add(n),
                Err(e) => {
                    skip_seq(&mut seq)?;
                    return Ok(Err(e));
                }
            }
            part += 1;
        }
        Ok(Ok(total))
    }
}

/// `messages[i].content[j]`: `{"type":"text","text":"..."}` or any other typed part.
struct PartH {
    message: usize,
    part: usize,
}

#[derive(Clone, Copy)]
enum PartKey {
    Type,
    Text,
    Other,
}

impl PartH {
    fn path(&self, field: &str) -> String {
        format!("messages[{}].content[{}]{field}", self.message, self.part)
    }
}

impl<'de> Handler<'de> for PartH {
    type Out = Result<u64, RequestError>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(RequestError::invalid_type(
            self.path(""),
            "an object",
            shape,
        ))
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut part_type = None;
        let mut text = None;
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            "type" => PartKey::Type,
            "text" => PartKey::Text,
            _ => PartKey::Other,
        }))? {
            match key {
                PartKey::Type => part_type = Some(map.next_value_seed(Seed(IsTextH))?),
                PartKey::Text => text = Some(map.next_value_seed(Seed(ShapeOf))?),
                PartKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(match part_type {
            None => Err(RequestError::missing(self.path(".type"))),
            Some(Err(got)) => Err(RequestError::invalid_type(
                self.path(".type"),
                "a string",
                got,
            )),
            Some(Ok(false)) => Ok(NON_TEXT_PART_TOKENS),
            Some(Ok(true)) => match text {
                Some(Shape::Str { len }) => Ok(estimate_len(len)),
                None => Err(RequestError::missing(self.path(".text"))),
                Some(got) => Err(RequestError::invalid_type(
                    self.path(".text"),
                    "a string",
                    got,
                )),
            },
        })
    }
}

/// A part's `type`: `Ok(is "text")`, or the shape of a non-string.
struct IsTextH;

impl Handler<'_> for IsTextH {
    type Out = Result<bool, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(shape)
    }

    fn string(self, s: &str) -> Self::Out {
        Ok(s == "text")
    }
}

const PROMPT_EXPECTED: &str =
    "a string, an array of strings, an array of token ids, or an array of token-id arrays";

/// `prompt` (completions) or `input` (embeddings).
struct PromptH {
    param: &'static str,
}

/// One element of a `prompt`/`input` array.
enum Elem {
    Str(usize),
    /// A number: `Ok(())` for a valid token id, else its shape.
    Token(Result<(), Shape>),
    /// A nested array: its length, or the first bad element's index and shape.
    Tokens(Result<u64, (usize, Shape)>),
    Other(Shape),
}

/// The array form, fixed by the first element.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Strings,
    Tokens,
    TokenArrays,
}

impl Form {
    fn expected(self) -> &'static str {
        match self {
            Form::Strings => "a string, like the array's first element",
            Form::Tokens => "an integer token id, like the array's first element",
            Form::TokenArrays => "an array of token ids, like the array's first element",
        }
    }
}

impl Elem {
    fn shape(&self) -> Shape {
        match *self {
            Elem::Str(len) => Shape::Str { len },
            Elem::Token(Ok(())) => Shape::UInt(0),
            Elem::Token(Err(s)) | Elem::Other(s) => s,
            Elem::Tokens(_) => Shape::Array,
        }
    }
}

/// Checks a token id; `param` is its path.
fn token_error(param: String, got: Shape) -> RequestError {
    match got {
        Shape::NegInt(n) => RequestError::invalid_value(
            param.clone(),
            format!("'{param}' must be a non-negative integer token id, got {n}"),
        ),
        got => RequestError::invalid_type(param, "an integer token id", got),
    }
}

impl<'de> Handler<'de> for PromptH {
    type Out = Result<u64, RequestError>;

    fn scalar(self, shape: Shape) -> Self::Out {
        match shape {
            Shape::Str { len } => Ok(estimate_len(len)),
            got => Err(RequestError::invalid_type(
                self.param.into(),
                PROMPT_EXPECTED,
                got,
            )),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let param = self.param;
        let mut form = None;
        let mut total = 0u64;
        let mut index = 0usize;
        while let Some(elem) = seq.next_element_seed(Seed(ElemH))? {
            let at = || format!("{param}[{index}]");
            let this_form = match &elem {
                Elem::Str(_) => Some(Form::Strings),
                Elem::Token(_) => Some(Form::Tokens),
                Elem::Tokens(_) => Some(Form::TokenArrays),
                Elem::Other(_) => None,
            };
            let result = match (form, this_form) {
                (None, None) => Err(RequestError::invalid_type(
                    at(),
                    "a string, an integer token id, or an array of token ids",
                    elem.shape(),
                )),
                (Some(f), t) if Some(f) != t => {
                    Err(RequestError::invalid_type(at(), f.expected(), elem.shape()))
                }
                _ => match elem {
                    Elem::Str(len) => Ok(estimate_len(len)),
                    Elem::Token(Ok(())) => Ok(1),
                    Elem::Token(Err(got)) => Err(token_error(at(), got)),
                    Elem::Tokens(Ok(n)) => Ok(n),
                    Elem::Tokens(Err((inner, got))) => {
                        Err(token_error(format!("{param}[{index}][{inner}]"), got))
                    }
                    Elem::Other(got) => Err(RequestError::invalid_type(at(), PROMPT_EXPECTED, got)),
                },
            };
            match result {
                Ok(n) => total = total.saturating_add(n),
                Err(e) => {
                    skip_seq(&mut seq)?;
                    return Ok(Err(e));
                }
            }
            form = form.or(this_form);
            index += 1;
        }
        Ok(Ok(total))
    }
}

struct ElemH;

impl<'de> Handler<'de> for ElemH {
    type Out = Elem;

    fn scalar(self, shape: Shape) -> Elem {
        match shape {
            Shape::Str { len } => Elem::Str(len),
            Shape::UInt(_) => Elem::Token(Ok(())),
            Shape::NegInt(_) | Shape::Float(_) => Elem::Token(Err(shape)),
            other => Elem::Other(other),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
        let mut count = 0u64;
        let mut index = 0usize;
        while let Some(shape) = seq.next_element_seed(Seed(ShapeOf))? {
            if !matches!(shape, Shape::UInt(_)) {
                skip_seq(&mut seq)?;
                return Ok(Elem::Tokens(Err((index, shape))));
            }
            count = count.saturating_add(1);
            index += 1;
        }
        Ok(Elem::Tokens(Ok(count)))
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Elem, A::Error> {
        skip_map(&mut map)?;
        Ok(Elem::Other(Shape::Object))
    }
}

/// A refusal of a request whose model could be read two ways (`ambiguous_model`).
pub(crate) fn ambiguous(message: impl Into<String>) -> RequestError {
    RequestError {
        message: message.into(),
        param: Some("model".into()),
        code: "ambiguous_model",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ParsedRequest, RequestError> {
        parse_request(Endpoint::ChatCompletions, body.as_bytes())
    }

    fn err(endpoint: Endpoint, body: &[u8]) -> RequestError {
        match parse_request(endpoint, body) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e,
        }
    }

    fn chat_err(body: &str) -> RequestError {
        err(Endpoint::ChatCompletions, body.as_bytes())
    }

    /// (code, param, message) for compact assertions.
    fn triple(e: &RequestError) -> (&'static str, Option<&str>, &str) {
        (e.code, e.param.as_deref(), e.message.as_str())
    }

    #[test]
    fn estimate_values() {
        assert_eq!(estimate_text_tokens(""), 0);
        assert_eq!(estimate_text_tokens("a"), 1);
        assert_eq!(estimate_text_tokens("abcd"), 1);
        assert_eq!(estimate_text_tokens("abcde"), 2);
        assert_eq!(estimate_text_tokens("hello world"), 3);
        assert_eq!(estimate_text_tokens("user"), 1);
        assert_eq!(estimate_text_tokens("assistant"), 3);
        // 3 CJK characters = 9 bytes.
        assert_eq!(estimate_text_tokens("日本語"), 3);
        assert_eq!(estimate_text_tokens("🙂"), 1);
    }

    #[test]
    fn valid_chat_request() {
        let p = chat(
            r#"{"model":"llama","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"hello world"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":100,"temperature":0.2}"#,
        )
        .unwrap();
        // 3 + (system 2 + "You are terse." 14B→4 + 3) + (user 1 + 3 + 3) = 3 + 9 + 7
        assert_eq!(
            p,
            ParsedRequest {
                model: "llama".into(),
                stream: true,
                client_wants_usage: true,
                client_wants_continuous_usage: false,
                max_tokens: Some(100),
                prompt_tokens_estimate: 19,
                choices: 1,
                priority: None,
                priority_member: false,
            }
        );
    }

    #[test]
    fn priority_is_an_integer_or_null() {
        let body = |v: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"priority":{v}}}"#
            )
        };
        let p = chat(&body("-3")).unwrap();
        assert_eq!((p.priority, p.priority_member), (Some(-3), true));
        let p = chat(&body("7")).unwrap();
        assert_eq!((p.priority, p.priority_member), (Some(7), true));
        let p = chat(&body("null")).unwrap();
        assert_eq!((p.priority, p.priority_member), (None, true));
        for bad in [r#""high""#, "1.5", "true", "[1]"] {
            let e = chat(&body(bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("priority"), "{bad}");
        }
        assert!(chat(&body("18446744073709551615")).is_err());
    }

    #[test]
    fn chat_content_parts_and_null_content() {
        let p = chat(
            r#"{"model":"m","messages":[
                {"role":"user","content":[{"type":"text","text":"describe this"},{"type":"image_url","image_url":{"url":"data:..."}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"x"}]},
                {"role":"tool","content":"42","tool_call_id":"x"}]}"#,
        )
        .unwrap();
        // 3 + (1 + 4 + 85 + 3) + (3 + 0 + 3) + (1 + 1 + 3)
        assert_eq!(p.prompt_tokens_estimate, 3 + 93 + 6 + 5);
        assert!(!p.stream);
        assert!(!p.client_wants_usage);
        assert_eq!(p.max_tokens, None);
    }

    #[test]
    fn escaped_text_is_measured_unescaped() {
        // "a\nb\u00e9" unescapes to 4 bytes + é (2 bytes) = 5 bytes → 2 tokens.
        let p =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"a\nb\u00e9"}]}"#).unwrap();
        assert_eq!(p.prompt_tokens_estimate, 3 + 1 + 2 + 3);
    }

    #[test]
    fn max_completion_tokens_wins_for_chat() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"user","content":""}],"max_tokens":10,"max_completion_tokens":20}"#,
        )
        .unwrap();
        assert_eq!(p.max_tokens, Some(20));
        let p = chat(
            r#"{"model":"m","messages":[{"role":"user","content":""}],"max_tokens":10,"max_completion_tokens":null}"#,
        )
        .unwrap();
        assert_eq!(p.max_tokens, Some(10));
    }

    #[test]
    fn nulls_mean_absent() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":null,"stream_options":null,"max_tokens":null}"#,
        )
        .unwrap();
        assert!(!p.stream);
        assert!(!p.client_wants_usage);
        assert_eq!(p.max_tokens, None);
        let p = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":null,"other":1}}"#,
        )
        .unwrap();
        assert!(!p.client_wants_usage);
        let p = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true,"continuous_usage_stats":null}}"#,
        )
        .unwrap();
        assert!(p.client_wants_usage);
        assert!(!p.client_wants_continuous_usage);
    }

    #[test]
    fn continuous_usage_stats_flag() {
        let wants = |options: &str| {
            let p = chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stream":true,"stream_options":{options}}}"#
            ))
            .unwrap();
            (p.client_wants_usage, p.client_wants_continuous_usage)
        };
        assert_eq!(
            wants(r#"{"include_usage":true,"continuous_usage_stats":true}"#),
            (true, true)
        );
        assert_eq!(wants(r#"{"continuous_usage_stats":true}"#), (false, true));
        assert_eq!(
            wants(r#"{"continuous_usage_stats":true,"continuous_usage_stats":false}"#),
            (false, false)
        );
        assert_eq!(
            wants(r#"{"continuous\u005fusage_stats":true}"#),
            (false, true)
        );
        assert_eq!(wants("null"), (false, false));
        assert_eq!(
            wants(r#"{"other":{"continuous_usage_stats":true}}"#),
            (false, false)
        );
        // Embeddings do not read stream_options at all.
        let p = parse_request(
            Endpoint::Embeddings,
            br#"{"model":"e","input":"x","stream_options":{"continuous_usage_stats":true}}"#,
        )
        .unwrap();
        assert!(!p.client_wants_continuous_usage);
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let p = chat(
            r#"{"model":"b","stream":"bad","stream":true,"messages":5,"messages":[{"role":"user","content":"x","content":"hello world"}]}"#,
        )
        .unwrap();
        assert_eq!(p.model, "b");
        assert!(p.stream);
        assert_eq!(p.prompt_tokens_estimate, 3 + 1 + 3 + 3);
    }

    #[test]
    fn duplicate_model_is_ambiguous() {
        for body in [
            r#"{"model":"a","model":"b","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"a","mod\u0065l":"a","messages":[{"role":"user","content":"x"}]}"#,
        ] {
            let e = chat_err(body);
            assert_eq!(e.code, "ambiguous_model", "{body}");
            assert_eq!(e.param.as_deref(), Some("model"));
        }
        let e = err(
            Endpoint::Embeddings,
            br#"{"model":"a","input":"x","model":"b"}"#,
        );
        assert_eq!(e.code, "ambiguous_model");
    }

    #[test]
    fn reservation_counts_n_and_best_of_and_clamps_to_context() {
        let p = chat(r#"{"model":"m","messages":[{"role":"user","content":"hello world"}],"max_tokens":100,"n":4}"#).unwrap();
        assert_eq!(p.choices, 4);
        assert_eq!(reservation_tokens(&p, 512), 10 + 400);
        let p = parse_request(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"x","max_tokens":10,"n":2,"best_of":5}"#,
        )
        .unwrap();
        assert_eq!(p.choices, 5);
        assert_eq!(reservation_tokens(&p, 512), 1 + 50);
        let p = chat(r#"{"model":"m","messages":[{"role":"user","content":"hello world"}],"max_tokens":18446744073709551615,"n":3}"#).unwrap();
        assert_eq!(reservation_tokens(&p, 512), u64::MAX);
        // Known context of 1000 tokens: each sequence can make at most 1000 - 10.
        assert_eq!(reservation_tokens_within(&p, 512, Some(1000)), 10 + 3 * 990);
        // A prompt estimate beyond the context still reserves at least one token per sequence.
        assert_eq!(reservation_tokens_within(&p, 512, Some(5)), 10 + 3);
        // Lenient like the backend: never refused here, never less than one sequence.
        for (n, want) in [
            ("\"3\"", 3),
            ("2.5", 3),
            ("-1", 1),
            ("[2]", 1),
            ("null", 1),
            ("0", 1),
        ] {
            let p = chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"n":{n}}}"#
            ))
            .unwrap();
            assert_eq!(p.choices, want, "n = {n}");
        }
    }

    #[test]
    fn escaped_keys_are_recognised() {
        let p = chat(r#"{"mod\u0065l":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(p.model, "m");
    }

    #[test]
    fn completions_prompt_forms() {
        let est = |prompt: &str| {
            parse_request(
                Endpoint::Completions,
                format!(r#"{{"model":"m","prompt":{prompt},"max_tokens":7,"max_completion_tokens":"ignored"}}"#)
                    .as_bytes(),
            )
            .map(|p| (p.prompt_tokens_estimate, p.max_tokens))
        };
        assert_eq!(est(r#""hello world""#), Ok((3, Some(7))));
        assert_eq!(est(r#"["hello world","abcd"]"#), Ok((4, Some(7))));
        assert_eq!(est("[1,2,3,4,5]"), Ok((5, Some(7))));
        assert_eq!(est("[[1,2],[3],[]]"), Ok((3, Some(7))));
        assert_eq!(est("[]"), Ok((0, Some(7))));
        assert_eq!(est(r#""""#), Ok((0, Some(7))));
    }

    #[test]
    fn embeddings_input_forms_and_reservation() {
        let p = parse_request(
            Endpoint::Embeddings,
            br#"{"model":"e5","input":["hello world","x"],"max_tokens":-1,"stream":false,"encoding_format":"float"}"#,
        )
        .unwrap();
        assert_eq!(p.prompt_tokens_estimate, 4);
        assert_eq!(p.max_tokens, Some(0));
        assert_eq!(reservation_tokens(&p, 4096), 4);
        let p =
            parse_request(Endpoint::Embeddings, br#"{"model":"e5","input":[[1,2,3]]}"#).unwrap();
        assert_eq!(p.prompt_tokens_estimate, 3);
    }

    #[test]
    fn reservation_uses_max_tokens_or_default() {
        let mut p =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"hello world"}]}"#).unwrap();
        assert_eq!(p.prompt_tokens_estimate, 10);
        assert_eq!(reservation_tokens(&p, 512), 522);
        p.max_tokens = Some(8);
        assert_eq!(reservation_tokens(&p, 512), 18);
        p.max_tokens = Some(u64::MAX);
        assert_eq!(reservation_tokens(&p, 512), u64::MAX);
    }

    #[test]
    fn malformed_json() {
        let e = chat_err(r#"{"model":"m","messages":[}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_json",
                None,
                "request body is not valid JSON: expected value at line 1 column 26"
            )
        );
        let e = chat_err("");
        assert_eq!(
            triple(&e),
            (
                "invalid_json",
                None,
                "request body is not valid JSON: EOF while parsing a value at line 1 column 0"
            )
        );
        let e = chat_err("{\"model\":\"m\"}\n{}");
        assert_eq!(
            triple(&e),
            (
                "invalid_json",
                None,
                "request body is not valid JSON: trailing characters at line 2 column 1"
            )
        );
    }

    #[test]
    fn syntax_error_wins_over_earlier_type_error() {
        let e = chat_err(r#"{"model":5,"messages":[{"role":"user","content":"x"}],"x":tru}"#);
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn body_not_an_object() {
        let e = chat_err(r#"[{"model":"m"}]"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_json",
                None,
                "request body must be a JSON object, got array"
            )
        );
        let e = chat_err("null");
        assert_eq!(e.message, "request body must be a JSON object, got null");
    }

    #[test]
    fn invalid_utf8() {
        let e = err(Endpoint::ChatCompletions, b"{\"model\":\"m\xff\"}");
        assert_eq!(
            triple(&e),
            (
                "invalid_utf8",
                None,
                "request body is not valid UTF-8 (invalid byte at offset 11)"
            )
        );
    }

    #[test]
    fn missing_model() {
        let e = chat_err(r#"{"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(
            triple(&e),
            ("missing_field", Some("model"), "'model' is required")
        );
    }

    #[test]
    fn model_wrong_type_or_empty() {
        let e = chat_err(r#"{"model":42,"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("model"),
                "'model' must be a string, got number"
            )
        );
        let e = chat_err(r#"{"model":null,"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.message, "'model' must be a string, got null");
        let e = chat_err(r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(
            triple(&e),
            ("invalid_value", Some("model"), "'model' must not be empty")
        );
    }

    #[test]
    fn stream_wrong_type() {
        let e =
            chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"true"}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("stream"),
                "'stream' must be a boolean, got string"
            )
        );
    }

    #[test]
    fn stream_options_wrong_types() {
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":[]}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("stream_options"),
                "'stream_options' must be an object or null, got array"
            )
        );
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("stream_options.include_usage"),
                "'stream_options.include_usage' must be a boolean, got number"
            )
        );
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"continuous_usage_stats":"yes"}}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("stream_options.continuous_usage_stats"),
                "'stream_options.continuous_usage_stats' must be a boolean, got string"
            )
        );
        // include_usage is reported first, whatever the key order.
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"continuous_usage_stats":0,"include_usage":{}}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }

    #[test]
    fn messages_missing_wrong_type_or_empty() {
        let e = chat_err(r#"{"model":"m"}"#);
        assert_eq!(
            triple(&e),
            ("missing_field", Some("messages"), "'messages' is required")
        );
        let e = chat_err(r#"{"model":"m","messages":{"role":"user"}}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("messages"),
                "'messages' must be an array of messages, got object"
            )
        );
        let e = chat_err(r#"{"model":"m","messages":[]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_value",
                Some("messages"),
                "'messages' must not be empty"
            )
        );
        let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"},"hi"]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("messages[1]"),
                "'messages[1]' must be an object, got string"
            )
        );
    }

    #[test]
    fn message_role_errors() {
        let e = chat_err(r#"{"model":"m","messages":[{"content":"x"}]}"#);
        assert_eq!(
            triple(&e),
            (
                "missing_field",
                Some("messages[0].role"),
                "'messages[0].role' is required"
            )
        );
        let e = chat_err(r#"{"model":"m","messages":[{"role":1,"content":"x"}]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("messages[0].role"),
                "'messages[0].role' must be a string, got number"
            )
        );
    }

    #[test]
    fn nested_content_wrong_type_has_param_path() {
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"system","content":"a"},{"role":"user","content":"b"},{"role":"user","content":{"text":"c"}},{"role":"user","content":5}]}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("messages[2].content"),
                "'messages[2].content' must be a string, an array of content parts, or null, got object"
            )
        );
    }

    #[test]
    fn content_part_errors() {
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},7]}]}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("messages[0].content[1]"),
                "'messages[0].content[1]' must be an object, got number"
            )
        );
        let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]}"#);
        assert_eq!(
            triple(&e),
            (
                "missing_field",
                Some("messages[0].content[0].type"),
                "'messages[0].content[0].type' is required"
            )
        );
        let e =
            chat_err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#);
        assert_eq!(e.code, "missing_field");
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].text"));
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":["a"]}]}]}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("messages[0].content[0].text"),
                "'messages[0].content[0].text' must be a string, got array"
            )
        );
        let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":null}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        assert_eq!(e.code, "invalid_type");
    }

    #[test]
    fn first_bad_message_is_reported() {
        let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":1},{"role":2}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn max_tokens_negative_or_wrong_type() {
        let e =
            chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-5}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_value",
                Some("max_tokens"),
                "'max_tokens' must be a non-negative integer, got -5"
            )
        );
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":1.5}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("max_completion_tokens"),
                "'max_completion_tokens' must be a non-negative integer, got number"
            )
        );
        let e = chat_err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"10"}"#,
        );
        assert_eq!(
            e.message,
            "'max_tokens' must be a non-negative integer, got string"
        );
    }

    #[test]
    fn embeddings_stream_true_is_refused() {
        let e = err(
            Endpoint::Embeddings,
            br#"{"model":"e","input":"x","stream":true}"#,
        );
        assert_eq!(
            triple(&e),
            (
                "invalid_value",
                Some("stream"),
                "'stream' is not supported for embeddings"
            )
        );
    }

    #[test]
    fn prompt_and_input_errors() {
        let comp = |b: &str| err(Endpoint::Completions, b.as_bytes());
        let e = comp(r#"{"model":"m"}"#);
        assert_eq!(
            triple(&e),
            ("missing_field", Some("prompt"), "'prompt' is required")
        );
        let e = comp(r#"{"model":"m","prompt":{"a":1}}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("prompt"),
                "'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays, got object"
            )
        );
        let e = comp(r#"{"model":"m","prompt":["a",1]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("prompt[1]"),
                "'prompt[1]' must be a string, like the array's first element, got number"
            )
        );
        let e = comp(r#"{"model":"m","prompt":[1,-2]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_value",
                Some("prompt[1]"),
                "'prompt[1]' must be a non-negative integer token id, got -2"
            )
        );
        let e = comp(r#"{"model":"m","prompt":[[1,2],[3,"x"]]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("prompt[1][1]"),
                "'prompt[1][1]' must be an integer token id, got string"
            )
        );
        let e = comp(r#"{"model":"m","prompt":[true]}"#);
        assert_eq!(e.param.as_deref(), Some("prompt[0]"));
        let e = err(Endpoint::Embeddings, br#"{"model":"m","input":[1.5]}"#);
        assert_eq!(
            triple(&e),
            (
                "invalid_type",
                Some("input[0]"),
                "'input[0]' must be an integer token id, got number"
            )
        );
        let e = err(Endpoint::Embeddings, br#"{"model":"m","prompt":"x"}"#);
        assert_eq!(
            triple(&e),
            ("missing_field", Some("input"), "'input' is required")
        );
    }

    #[test]
    fn unknown_and_other_endpoint_fields_pass_through() {
        // `messages` is not validated for completions, `prompt` not for chat.
        let p = parse_request(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"x","messages":5,"logit_bias":{"1":2},"n":2}"#,
        )
        .unwrap();
        assert_eq!(p.prompt_tokens_estimate, 1);
        let p =
            chat(r#"{"model":"m","prompt":5,"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(p.prompt_tokens_estimate, 8);
    }

    #[test]
    fn deep_nesting_neither_crashes_nor_fails_where_it_is_skipped() {
        // Skipped values are walked iteratively by serde_json, without a depth limit.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let p = chat(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"x":{}}}"#,
            deep(100_000)
        ))
        .unwrap();
        assert_eq!(p.prompt_tokens_estimate, 8);
        let e = chat_err(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{}]}}]}}"#,
            deep(100_000)
        ));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = chat_err(&"[".repeat(100_000));
        assert_eq!(e.code, "invalid_json");
    }
}
