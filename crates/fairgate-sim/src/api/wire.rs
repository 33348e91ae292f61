//! Request bodies as vLLM's OpenAI server accepts them, and vLLM-shaped error responses.
//!
//! Bodies are parsed with borrowed strings where the JSON allows it (no copy of the prompt).
//! Unknown fields are ignored, as vLLM does for sampling knobs the simulator does not model
//! (`stop`, `temperature`, `logprobs`, `echo`, ...).
//! Accepted shapes:
//! - chat `messages[].content`: string, `null`, or an array of parts; `{"type":"text","text":..}`
//!   parts are counted, other part types count 0 tokens;
//! - completions `prompt`: a string, an array of token ids, or an array of one string / one
//!   token-id array (batches of more than one prompt are rejected with 400);
//! - embeddings `input`: a string, an array of strings, an array of token ids, or an array of
//!   token-id arrays; `encoding_format` `float` (default) or `base64`.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::tokenizer::{self, ChatMessageText};

/// An error answered in vLLM's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: message.into(),
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::not_found(format!("The model `{model}` does not exist."))
    }

    /// What every inference route answers while [`crate::Simulator::set_healthy`] is off.
    pub fn engine_unhealthy() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "ServiceUnavailableError",
            message: "EngineCore encountered an issue: the engine is unhealthy (simulated)."
                .to_owned(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "InternalServerError",
            message: message.into(),
        }
    }

    /// The body vLLM sends: `{"error":{"message","type","param":null,"code"}}`.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<()>,
            code: u16,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        serde_json::to_vec(&Outer {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: None,
                code: self.status.as_u16(),
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response()
    }
}

/// Parses a JSON body, mapping any syntax or type error to a 400 like vLLM's validation.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Invalid request: {e}")))
}

/// `stream_options`. Both fields are optional booleans (`null` reads as absent); any other
/// type is a 400.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// vLLM's extension: cumulative usage on every chunk. Like vLLM, it only takes effect
    /// together with `include_usage`.
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u64>,
    /// vLLM's scheduling priority (lower runs first under `--scheduling-policy priority`). An
    /// integer; anything else, `null` included, is a 400 as in vLLM (`int = 0`).
    #[serde(default)]
    pub priority: i64,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
}

/// Message content: a string or an array of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<ContentPart<'a>>),
}

/// One content part; only `text` parts carry tokens here.
#[derive(Debug, Deserialize)]
pub struct ContentPart<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
}

impl ChatMessageText for ChatMessage<'_> {
    fn role(&self) -> &str {
        &self.role
    }

    fn for_each_text(&self, f: &mut dyn FnMut(&str)) {
        match &self.content {
            None => {}
            Some(Content::Text(t)) => f(t),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    if let (true, Some(t)) = (p.kind == "text", &p.text) {
                        f(t);
                    }
                }
            }
        }
    }
}

impl ChatMessage<'_> {
    /// A `text` part without text is malformed, as in vLLM.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(Content::Parts(parts)) = &self.content {
            if parts.iter().any(|p| p.kind == "text" && p.text.is_none()) {
                return Err(ApiError::bad_request(
                    "Invalid request: content part of type `text` needs a `text` field",
                ));
            }
        }
        Ok(())
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub prompt: Prompt<'a>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u64>,
    /// vLLM's scheduling priority (lower runs first under `--scheduling-policy priority`). An
    /// integer; anything else, `null` included, is a 400 as in vLLM (`int = 0`).
    #[serde(default)]
    pub priority: i64,
}

/// Completions `prompt` / embeddings `input` / tokenize `prompt`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Ids(Vec<u32>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    IdLists(Vec<Vec<u32>>),
}

impl Prompt<'_> {
    /// Token ids of each prompt in the (possibly batched) input.
    pub fn token_ids(&self) -> Vec<Vec<u32>> {
        match self {
            Prompt::Text(t) => vec![tokenizer::tokenize(t)],
            Prompt::Ids(ids) => vec![ids.clone()],
            Prompt::Texts(ts) => ts.iter().map(|t| tokenizer::tokenize(t)).collect(),
            Prompt::IdLists(ls) => ls.clone(),
        }
    }

    /// Token ids of a single prompt; batches of more than one are a 400.
    pub fn single_token_ids(&self) -> Result<Vec<u32>, ApiError> {
        let mut all = self.token_ids();
        match all.len() {
            1 => Ok(all.pop().unwrap_or_default()),
            0 => Err(ApiError::bad_request("Invalid request: prompt is empty")),
            n => Err(ApiError::bad_request(format!(
                "Invalid request: this simulator serves one prompt per request, got {n}"
            ))),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub input: Prompt<'a>,
    #[serde(borrow, default)]
    pub encoding_format: Option<Cow<'a, str>>,
}

/// `POST /tokenize`: either a prompt or chat messages.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub prompt: Option<Prompt<'a>>,
    #[serde(borrow, default)]
    pub messages: Option<Vec<ChatMessage<'a>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_borrows_and_counts_parts() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x"}}]},{"role":"assistant","content":null}],"temperature":0.2}"#;
        let r: ChatRequest = parse(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        // The prompt text is not copied out of the body.
        assert!(matches!(r.messages[0].role, Cow::Borrowed("user")));
        let plain: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"long text"}]}"#).unwrap();
        assert!(matches!(
            plain.messages[0].content,
            Some(Content::Text(Cow::Borrowed(_)))
        ));
        assert_eq!(r.messages.len(), 2);
        let ids = tokenizer::chat_prompt_ids(&r.messages);
        // user: 1 + 1 + 3, assistant: 3 + 0 + 3, generation prompt 3
        assert_eq!(ids.len(), 5 + 6 + 3);
    }

    #[test]
    fn rejects_wrong_shapes() {
        for body in [
            &br#"{"messages":"hi"}"#[..],
            br#"{"model":"m"}"#,
            br#"{"messages":[{"content":"x"}]}"#,
            br#"{"messages":[],"max_tokens":-1}"#,
            br#"{"messages":[],"priority":"high"}"#,
            br#"{"messages":[],"priority":1.5}"#,
            br#"{"messages":[],"priority":null}"#,
            br#"not json"#,
        ] {
            let e = parse::<ChatRequest>(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn stream_options_are_optional_bools() {
        let opts = |b: &'static [u8]| parse::<ChatRequest>(b).map(|r| r.stream_options);
        let both = opts(
            br#"{"messages":[],"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (both.include_usage, both.continuous_usage_stats),
            (Some(true), Some(true))
        );
        let null = opts(br#"{"messages":[],"stream_options":{"continuous_usage_stats":null}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(null.continuous_usage_stats, None);
        for bad in [
            &br#"{"messages":[],"stream_options":{"continuous_usage_stats":"yes"}}"#[..],
            br#"{"messages":[],"stream_options":{"continuous_usage_stats":1}}"#,
            br#"{"messages":[],"stream_options":{"include_usage":"true"}}"#,
        ] {
            assert_eq!(opts(bad).unwrap_err().status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn prompt_shapes() {
        let p = |b: &'static [u8]| parse::<CompletionRequest>(b).unwrap().prompt;
        assert_eq!(
            p(br#"{"prompt":"abcd efgh"}"#)
                .single_token_ids()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            p(br#"{"prompt":[1,2,3]}"#).single_token_ids().unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            p(br#"{"prompt":["ab"]}"#).single_token_ids().unwrap().len(),
            1
        );
        assert_eq!(
            p(br#"{"prompt":[[5,6]]}"#).single_token_ids().unwrap(),
            vec![5, 6]
        );
        assert!(p(br#"{"prompt":["a","b"]}"#).single_token_ids().is_err());
        assert_eq!(p(br#"{"prompt":["a","b"]}"#).token_ids().len(), 2);
        assert!(parse::<CompletionRequest>(br#"{"prompt":[-1]}"#).is_err());
        assert!(parse::<CompletionRequest>(br#"{"prompt":{"x":1}}"#).is_err());
    }

    #[test]
    fn error_body_shape() {
        let e = ApiError::model_not_found("x");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}})
        );
    }
}
