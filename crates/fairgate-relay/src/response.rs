//! Usage accounting for non-streaming upstream responses, and the `usage` object reader that
//! the stream relay shares.
//!
//! Like the request parser this walks the JSON once and keeps only three integers; the
//! `choices` (which may be most of the body) are syntax-checked and skipped.

use crate::json::{Handler, KeySeed, Seed, Shape, ShapeOf};
use fairgate_types::Usage;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess};

/// Usage reported in a non-stream JSON response body: `usage.prompt_tokens`,
/// `usage.completion_tokens` (0 when absent, as for embeddings) and
/// `usage.prompt_tokens_details.cached_tokens` (0 when absent). The Responses API's shape
/// (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`) reads the same way.
///
/// `None` when the body is not a valid JSON object or has no `usage` object (absent or null).
/// Counts that are not non-negative integers read as 0. Duplicate keys: last wins.
pub fn usage_from_body(body: &[u8]) -> Option<Usage> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let usage = Seed(BodyH).deserialize(&mut de).ok()?;
    de.end().ok()?;
    usage
}

/// An object whose `usage` member is read (a whole body, or a Responses API event's
/// `response` object); everything else is syntax-checked and skipped.
pub(crate) struct BodyH;

impl<'de> Handler<'de> for BodyH {
    type Out = Option<Usage>;

    fn scalar(self, _: Shape) -> Option<Usage> {
        None
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Usage>, A::Error> {
        let mut usage = None;
        while let Some(is_usage) = map.next_key_seed(KeySeed(|k: &str| k == "usage"))? {
            if is_usage {
                usage = map.next_value_seed(Seed(UsageH))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(usage)
    }
}

/// A `usage` value: `Some` for an object, `None` for null or anything else.
pub(crate) struct UsageH;

#[derive(Clone, Copy)]
enum UsageKey {
    Prompt,
    Completion,
    Total,
    Details,
    Other,
}

fn count(shape: Shape) -> u64 {
    match shape {
        Shape::UInt(n) => n,
        _ => 0,
    }
}

impl<'de> Handler<'de> for UsageH {
    type Out = Option<Usage>;

    fn scalar(self, _: Shape) -> Option<Usage> {
        None
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Usage>, A::Error> {
        let mut usage = Usage::default();
        let mut total = 0;
        while let Some(key) = map.next_key_seed(KeySeed(|k: &str| match k {
            // Chat/completions/embeddings, and the Responses API's names for the same counts.
            "prompt_tokens" | "input_tokens" => UsageKey::Prompt,
            "completion_tokens" | "output_tokens" => UsageKey::Completion,
            "prompt_tokens_details" | "input_tokens_details" => UsageKey::Details,
            // vLLM's rerank reports only `total_tokens`: all of it is input.
            "total_tokens" => UsageKey::Total,
            _ => UsageKey::Other,
        }))? {
            match key {
                UsageKey::Prompt => {
                    usage.prompt_tokens = count(map.next_value_seed(Seed(ShapeOf))?)
                }
                UsageKey::Completion => {
                    usage.completion_tokens = count(map.next_value_seed(Seed(ShapeOf))?)
                }
                UsageKey::Details => usage.cached_tokens = map.next_value_seed(Seed(DetailsH))?,
                UsageKey::Total => total = count(map.next_value_seed(Seed(ShapeOf))?),
                UsageKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if usage.prompt_tokens == 0 && usage.completion_tokens == 0 {
            usage.prompt_tokens = total;
        }
        Ok(Some(usage))
    }
}

/// `prompt_tokens_details`: its `cached_tokens`, 0 when absent or null.
struct DetailsH;

impl<'de> Handler<'de> for DetailsH {
    type Out = u64;

    fn scalar(self, _: Shape) -> u64 {
        0
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut cached = 0;
        while let Some(hit) = map.next_key_seed(KeySeed(|k: &str| k == "cached_tokens"))? {
            if hit {
                cached = count(map.next_value_seed(Seed(ShapeOf))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64, cached: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
        })
    }

    #[test]
    fn chat_response_usage() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"usage\": {}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"total_tokens":20,"completion_tokens":8,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(usage_from_body(body), usage(12, 8, 4));
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"e5","usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        assert_eq!(usage_from_body(body), usage(7, 0, 0));
    }

    #[test]
    fn null_details_and_odd_counts_read_as_zero() {
        let body =
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":-1,"prompt_tokens_details":null}}"#;
        assert_eq!(usage_from_body(body), usage(3, 0, 0));
    }

    #[test]
    fn missing_or_null_usage_or_bad_json_is_none() {
        assert_eq!(usage_from_body(br#"{"choices":[]}"#), None);
        assert_eq!(usage_from_body(br#"{"usage":null}"#), None);
        assert_eq!(usage_from_body(br#"{"usage":{"prompt_tokens":1}"#), None);
        assert_eq!(usage_from_body(b"[]"), None);
        assert_eq!(usage_from_body(b""), None);
        assert_eq!(usage_from_body(b"\xff"), None);
    }

    #[test]
    fn responses_api_usage() {
        let body = br#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":3},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":18}}"#;
        assert_eq!(usage_from_body(body), usage(11, 7, 3));
    }

    #[test]
    fn nested_usage_is_ignored_and_last_wins() {
        let body = br#"{"choices":[{"usage":{"prompt_tokens":99}}],"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2,"prompt_tokens":5}}"#;
        assert_eq!(usage_from_body(body), usage(5, 0, 0));
    }
}
