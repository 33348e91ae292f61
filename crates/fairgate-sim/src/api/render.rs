//! Response bodies in vLLM's wire shape: compact JSON, SSE events for streams.
//!
//! Token chunks are the hot path of streaming, so each response pre-serializes its chunk once
//! with a placeholder word and splits it around the placeholder; a token chunk is then
//! `head + word + " " + tail` in one allocation, with no JSON serialization per token
//! (the words are plain ASCII letters and never need escaping). With continuous usage stats
//! the tail stops before the closing brace and each chunk appends its own `"usage":{..}}`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Which OpenAI endpoint a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-",
            Kind::Completion => "cmpl-",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        }
    }
}

/// `usage` as vLLM reports it (with `--enable-prompt-tokens-details`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt: u64, completion: u64, cached: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            total_tokens: prompt + completion,
            completion_tokens: completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
        }
    }
}

/// How the chunks of one stream carry `usage`, from vLLM's `stream_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    /// No `include_usage`: no `usage` field at all, no usage chunk.
    Off,
    /// `include_usage`: `"usage":null` on every chunk, then a `choices: []` usage chunk.
    Final,
    /// `include_usage` + `continuous_usage_stats`: cumulative usage on every chunk (the tokens
    /// sent so far, that chunk's included), then the same usage chunk as [`StreamUsage::Final`].
    Continuous,
}

impl StreamUsage {
    /// vLLM applies `continuous_usage_stats` only together with `include_usage`.
    pub fn new(include_usage: bool, continuous_usage_stats: bool) -> Self {
        match (include_usage, continuous_usage_stats) {
            (false, _) => StreamUsage::Off,
            (true, false) => StreamUsage::Final,
            (true, true) => StreamUsage::Continuous,
        }
    }

    /// Whether the stream ends with a usage chunk.
    pub fn final_chunk(self) -> bool {
        self != StreamUsage::Off
    }

    /// The `usage` field of a chunk that is not the final usage chunk.
    fn field(self, usage: Usage) -> Option<Option<Usage>> {
        match self {
            StreamUsage::Off => None,
            StreamUsage::Final => Some(None),
            StreamUsage::Continuous => Some(Some(usage)),
        }
    }
}

/// Identity fields shared by every body of one response.
#[derive(Debug, Clone)]
pub struct Head<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

#[derive(Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    /// Absent without include_usage; `null` on token chunks with it (an object with continuous
    /// usage stats); an object on the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChunkChoice<'a> {
    index: u32,
    delta: ChatDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<Option<()>>,
}

#[derive(Serialize)]
struct TextChunkChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    stop_reason: Option<()>,
}

const PLACEHOLDER: &str = "\u{1}FAIRGATEWORD\u{1}";
const DONE: &[u8] = b"data: [DONE]\n\n";

fn sse(json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(json.len() + 8);
    b.put_slice(b"data: ");
    b.put_slice(json);
    b.put_slice(b"\n\n");
    b.freeze()
}

/// Builds every SSE event of one streaming response.
#[derive(Debug, Clone)]
pub struct ChunkFormat {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    usage: StreamUsage,
    /// `data: {...` up to where the word goes.
    head: Bytes,
    /// The rest of a non-final token chunk: through `\n\n`, or with continuous usage up to
    /// (not including) the envelope's closing brace.
    tail: Bytes,
    /// The same for the final token chunk (finish_reason "length").
    last_tail: Bytes,
}

impl ChunkFormat {
    pub fn new(kind: Kind, head: &Head<'_>, usage: StreamUsage) -> Self {
        // Continuous usage: the template has no usage field, and each chunk appends it where
        // the closing brace was (`usage` is the envelope's last field, as in vLLM).
        let null_usage = usage == StreamUsage::Final;
        let plain = token_chunk_json(kind, head, null_usage, false);
        let last = token_chunk_json(kind, head, null_usage, true);
        let (start, tail) = split_template(&plain);
        let (_, last_tail) = split_template(&last);
        let mut h = BytesMut::with_capacity(start.len() + 6);
        h.put_slice(b"data: ");
        h.put_slice(start);
        let finish = |t: &[u8]| {
            let mut b = BytesMut::with_capacity(t.len() + 2);
            if usage == StreamUsage::Continuous {
                // Serialized JSON objects always end in `}`; the fallback is unreachable.
                b.put_slice(t.strip_suffix(b"}").unwrap_or(t));
            } else {
                b.put_slice(t);
                b.put_slice(b"\n\n");
            }
            b.freeze()
        };
        Self {
            kind,
            id: head.id.to_owned(),
            created: head.created,
            model: head.model.to_owned(),
            usage,
            head: h.freeze(),
            tail: finish(tail),
            last_tail: finish(last_tail),
        }
    }

    /// How this stream carries usage.
    pub fn stream_usage(&self) -> StreamUsage {
        self.usage
    }

    fn head(&self) -> Head<'_> {
        Head {
            id: &self.id,
            created: self.created,
            model: &self.model,
        }
    }

    /// Chat only: the first event, `delta: {"role":"assistant","content":""}`. `usage` (no
    /// completion tokens yet) is written only with continuous usage stats.
    pub fn role(&self, usage: Usage) -> Bytes {
        let h = self.head();
        let env = Envelope {
            id: h.id,
            object: self.kind.chunk_object(),
            created: h.created,
            model: h.model,
            choices: [ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: "",
                },
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
            }],
            usage: self.usage.field(usage),
        };
        sse(&serde_json::to_vec(&env).unwrap_or_default())
    }

    /// One token: `word` plus a space; `last` carries `finish_reason: "length"`. `usage` (this
    /// token included) is written only with continuous usage stats.
    pub fn token(&self, word: &str, last: bool, usage: Usage) -> Bytes {
        /// `,"usage":` + the largest usage object + `}\n\n`, with room to spare.
        const USAGE_ROOM: usize = 160;
        let tail = if last { &self.last_tail } else { &self.tail };
        let continuous = self.usage == StreamUsage::Continuous;
        let room = if continuous { USAGE_ROOM } else { 0 };
        let mut b = BytesMut::with_capacity(self.head.len() + word.len() + 1 + tail.len() + room);
        b.put_slice(&self.head);
        b.put_slice(word.as_bytes());
        b.put_u8(b' ');
        b.put_slice(tail);
        if continuous {
            b.put_slice(b",\"usage\":");
            // Integers into memory: serialization cannot fail.
            let _ = serde_json::to_writer((&mut b).writer(), &usage);
            b.put_slice(b"}\n\n");
        }
        b.freeze()
    }

    /// The final `choices: []` event carrying usage (only with include_usage).
    pub fn usage(&self, usage: Usage) -> Bytes {
        let h = self.head();
        let env = Envelope {
            id: h.id,
            object: self.kind.chunk_object(),
            created: h.created,
            model: h.model,
            choices: [(); 0],
            usage: Some(Some(usage)),
        };
        sse(&serde_json::to_vec(&env).unwrap_or_default())
    }

    pub fn done() -> Bytes {
        Bytes::from_static(DONE)
    }
}

/// A token chunk with the placeholder word; `null_usage` adds `"usage":null`, otherwise the
/// field is absent.
fn token_chunk_json(kind: Kind, head: &Head<'_>, null_usage: bool, last: bool) -> Vec<u8> {
    let finish_reason = last.then_some("length");
    let usage = null_usage.then_some(None);
    let r = match kind {
        Kind::Chat => serde_json::to_vec(&Envelope {
            id: head.id,
            object: kind.chunk_object(),
            created: head.created,
            model: head.model,
            choices: [ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: None,
                    content: PLACEHOLDER,
                },
                logprobs: None,
                finish_reason,
                stop_reason: last.then_some(None),
            }],
            usage,
        }),
        Kind::Completion => serde_json::to_vec(&Envelope {
            id: head.id,
            object: kind.chunk_object(),
            created: head.created,
            model: head.model,
            choices: [TextChunkChoice {
                index: 0,
                text: PLACEHOLDER,
                logprobs: None,
                finish_reason,
                stop_reason: None,
            }],
            usage,
        }),
    };
    r.unwrap_or_default()
}

/// Splits serialized JSON around the (escaped) placeholder. The placeholder is searched from
/// the end: the only user-controlled strings (id, model) come before the content field.
fn split_template(json: &[u8]) -> (&[u8], &[u8]) {
    let escaped = br"\u0001FAIRGATEWORD\u0001";
    let pos = json
        .windows(escaped.len())
        .rposition(|w| w == escaped)
        .unwrap_or(json.len());
    let end = (pos + escaped.len()).min(json.len());
    (&json[..pos], &json[end..])
}

#[derive(Serialize)]
struct ChatMessageOut<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
    stop_reason: Option<()>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: &'static str,
    stop_reason: Option<()>,
}

#[derive(Serialize)]
struct Full<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [C; 1],
    usage: Usage,
}

/// A whole non-streaming chat or text completion (always `finish_reason: "length"`).
pub fn full_response(kind: Kind, head: &Head<'_>, text: &str, usage: Usage) -> Vec<u8> {
    let r = match kind {
        Kind::Chat => serde_json::to_vec(&Full {
            id: head.id,
            object: "chat.completion",
            created: head.created,
            model: head.model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessageOut {
                    role: "assistant",
                    content: text,
                },
                logprobs: None,
                finish_reason: "length",
                stop_reason: None,
            }],
            usage,
        }),
        Kind::Completion => serde_json::to_vec(&Full {
            id: head.id,
            object: "text_completion",
            created: head.created,
            model: head.model,
            choices: [TextChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason: "length",
                stop_reason: None,
            }],
            usage,
        }),
    };
    r.unwrap_or_default()
}

/// Standard base64 (with padding), for `encoding_format: "base64"` embeddings.
pub fn base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse_sse(b: &Bytes) -> Value {
        let s = std::str::from_utf8(b).unwrap();
        let body = s
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(body).unwrap()
    }

    const HEAD: Head<'static> = Head {
        id: "chatcmpl-1",
        created: 5,
        model: "m\"odel",
    };

    #[test]
    fn chat_chunks_with_usage() {
        let f = ChunkFormat::new(Kind::Chat, &HEAD, StreamUsage::Final);
        let u0 = Usage::new(3, 0, 1);
        assert_eq!(
            parse_sse(&f.role(u0)),
            json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m\"odel",
                   "choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null})
        );
        assert_eq!(
            parse_sse(&f.token("the", false, u0)),
            json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m\"odel",
                   "choices":[{"index":0,"delta":{"content":"the "},"logprobs":null,"finish_reason":null}],"usage":null})
        );
        let last = parse_sse(&f.token("a", true, u0));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["stop_reason"], Value::Null);
        let u = parse_sse(&f.usage(Usage::new(3, 2, 1)));
        assert_eq!(u["choices"], json!([]));
        assert_eq!(
            u["usage"],
            json!({"prompt_tokens":3,"total_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}})
        );
        // Compact JSON: no spaces outside the word itself.
        let t = f.token("x", false, u0);
        let json = std::str::from_utf8(&t[6..]).unwrap().replace("x ", "");
        assert!(!json.contains(' '), "{json}");
    }

    #[test]
    fn continuous_usage_on_every_chunk() {
        let f = ChunkFormat::new(Kind::Chat, &HEAD, StreamUsage::Continuous);
        let usage = r#""usage":{"prompt_tokens":3,"total_tokens":3,"completion_tokens":0,"prompt_tokens_details":{"cached_tokens":1}}"#;
        assert_eq!(
            std::str::from_utf8(&f.role(Usage::new(3, 0, 1))).unwrap(),
            format!(
                r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m\"odel","choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],{usage}}}"#
            ) + "\n\n"
        );
        assert_eq!(
            std::str::from_utf8(&f.token("the", false, Usage::new(3, 1, 1))).unwrap(),
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m\"odel","choices":[{"index":0,"delta":{"content":"the "},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":3,"total_tokens":4,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":1}}}"#
                .to_owned()
                + "\n\n"
        );
        let last = parse_sse(&f.token("a", true, Usage::new(3, 2, 1)));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["usage"]["completion_tokens"], 2);
        assert_eq!(last["usage"]["total_tokens"], 5);
        // The final usage chunk is the same as without continuous stats.
        let plain = ChunkFormat::new(Kind::Chat, &HEAD, StreamUsage::Final);
        assert_eq!(
            f.usage(Usage::new(3, 2, 1)),
            plain.usage(Usage::new(3, 2, 1))
        );

        let c = ChunkFormat::new(Kind::Completion, &HEAD, StreamUsage::Continuous);
        let v = parse_sse(&c.token("yes", true, Usage::new(7, 9, 0)));
        assert_eq!(v["choices"][0]["text"], "yes ");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens":7,"total_tokens":16,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":0}})
        );
    }

    #[test]
    fn continuous_stats_need_include_usage() {
        assert_eq!(StreamUsage::new(false, true), StreamUsage::Off);
        assert_eq!(StreamUsage::new(false, false), StreamUsage::Off);
        assert_eq!(StreamUsage::new(true, false), StreamUsage::Final);
        assert_eq!(StreamUsage::new(true, true), StreamUsage::Continuous);
        assert!(!StreamUsage::Off.final_chunk());
        assert!(StreamUsage::Continuous.final_chunk());
    }

    #[test]
    fn completion_chunks_without_usage() {
        let f = ChunkFormat::new(Kind::Completion, &HEAD, StreamUsage::Off);
        let v = parse_sse(&f.token("yes", false, Usage::new(1, 1, 0)));
        assert_eq!(v["choices"][0]["text"], "yes ");
        assert_eq!(v["object"], "text_completion");
        assert!(v.get("usage").is_none());
        assert_eq!(&ChunkFormat::done()[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // RFC 4648 §10, the rest of the vectors, and the standard (not URL-safe) alphabet.
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
