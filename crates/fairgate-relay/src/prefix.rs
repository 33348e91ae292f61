//! Prompt prefix blocks, for routing requests that share a prompt prefix to the replica that
//! most likely still holds it in its KV cache.
//!
//! The gateway has no tokenizer, so like the Gateway API Inference Extension's approximate
//! prefix scorer it cuts the prompt text into fixed blocks of bytes (64 bytes ≈ 16 tokens,
//! vLLM's default block) and chains their hashes: block i's hash covers blocks 0..=i, so two
//! prompts share hash i exactly when their first i + 1 blocks are equal. Only whole blocks
//! count, as only whole blocks are cached by vLLM.
//!
//! The text is what the model server's chat template sees first: each message's role and
//! content, in order (text parts of multi-part content; other parts by their raw JSON). For
//! completions it is the prompt (raw JSON for token arrays and batches). Embeddings have no
//! prefix cache and give no blocks.

use std::borrow::Cow;
use std::hash::{DefaultHasher, Hasher};

use serde::Deserialize;

use crate::Endpoint;

/// Bytes per block: about 16 tokens of English text.
pub const BLOCK_BYTES: usize = 64;
/// Blocks looked at per request (256 × 64 bytes ≈ 4k tokens), as GIE does: enough to tell
/// shared system prompts and documents apart, bounded work per request.
pub const MAX_BLOCKS: usize = 256;

/// Chained hashes of the whole leading blocks of the request's prompt, at most `max_blocks`.
/// Empty for bodies it cannot read (the request parser reports those) and for embeddings.
pub fn prompt_blocks(endpoint: Endpoint, body: &[u8], max_blocks: usize) -> Vec<u64> {
    let mut chain = Chain::new(max_blocks);
    match endpoint {
        Endpoint::ChatCompletions => {
            if let Ok(chat) = serde_json::from_slice::<Chat<'_>>(body) {
                for m in chat.messages {
                    if chain.full() {
                        break;
                    }
                    chain.feed(m.role.as_bytes());
                    chain.feed(b"\n");
                    match m.content {
                        Some(Content::Text(t)) => chain.feed(t.as_bytes()),
                        Some(Content::Parts(parts)) => {
                            for p in parts {
                                match p {
                                    Part::Text { text } => chain.feed(text.as_bytes()),
                                    Part::Other(v) => chain.feed(v.to_string().as_bytes()),
                                }
                            }
                        }
                        Some(Content::Other(v)) => chain.feed(v.to_string().as_bytes()),
                        None => {}
                    }
                    chain.feed(b"\n");
                }
            }
        }
        Endpoint::Completions => {
            if let Ok(c) = serde_json::from_slice::<Completion<'_>>(body) {
                match c.prompt {
                    Some(Content::Text(t)) => chain.feed(t.as_bytes()),
                    Some(Content::Parts(_)) | None => {}
                    Some(Content::Other(v)) => chain.feed(v.to_string().as_bytes()),
                }
            }
        }
        Endpoint::Embeddings => {}
    }
    chain.out
}

#[derive(Deserialize)]
struct Chat<'a> {
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    #[serde(borrow)]
    Parts(Vec<Part<'a>>),
    /// Token arrays and anything else: rare, so a plain `Value` (serde's untagged enums
    /// cannot hand out borrowed raw JSON).
    Other(serde_json::Value),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Part<'a> {
    Text {
        #[serde(borrow)]
        text: Cow<'a, str>,
    },
    Other(serde_json::Value),
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow, default)]
    prompt: Option<Content<'a>>,
}

/// Cuts a byte stream into blocks and chains their hashes.
struct Chain {
    max: usize,
    prev: u64,
    buf: [u8; BLOCK_BYTES],
    len: usize,
    out: Vec<u64>,
}

impl Chain {
    fn new(max: usize) -> Chain {
        Chain {
            max,
            prev: 0,
            buf: [0; BLOCK_BYTES],
            len: 0,
            out: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.out.len() >= self.max
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.full() {
            let take = (BLOCK_BYTES - self.len).min(bytes.len());
            self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
            if self.len == BLOCK_BYTES {
                // SipHash with fixed keys: the same on every replica and every run.
                let mut h = DefaultHasher::new();
                h.write_u64(self.prev);
                h.write(&self.buf);
                self.prev = h.finish();
                self.out.push(self.prev);
                self.len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(system: &str, user: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "model": "m",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }))
        .unwrap()
    }

    #[test]
    fn shared_system_prompt_shares_leading_blocks() {
        let system = "You are a helpful assistant for the physics department. ".repeat(20);
        let a = prompt_blocks(
            Endpoint::ChatCompletions,
            &chat(&system, &"first question ".repeat(9)),
            256,
        );
        let b = prompt_blocks(
            Endpoint::ChatCompletions,
            &chat(&system, &"another one entirely ".repeat(7)),
            256,
        );
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        // The system prompt is ~1,140 bytes: 17 whole blocks are common, then they differ.
        assert_eq!(shared, (system.len() + "system\n".len()) / BLOCK_BYTES);
        assert!(a.len() > shared && b.len() > shared);
        let c = prompt_blocks(
            Endpoint::ChatCompletions,
            &chat("Other prompt. ", "first question"),
            256,
        );
        assert_ne!(a[0], c.first().copied().unwrap_or(0));
    }

    #[test]
    fn key_order_and_escapes_do_not_matter() {
        let a = br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 0123456789012345678901234567890123456789012345678901234567890123456789"}]}"#;
        let b = "{\"messages\":[{\"content\":\"café 0123456789012345678901234567890123456789012345678901234567890123456789\",\"role\":\"user\"}],\"model\":\"m\"}";
        let x = prompt_blocks(Endpoint::ChatCompletions, a, 256);
        assert!(!x.is_empty());
        assert_eq!(
            x,
            prompt_blocks(Endpoint::ChatCompletions, b.as_bytes(), 256)
        );
    }

    #[test]
    fn bounded_and_total() {
        let long = "x".repeat(BLOCK_BYTES * 10);
        let body = serde_json::to_vec(&serde_json::json!({"model":"m","prompt": long})).unwrap();
        assert_eq!(prompt_blocks(Endpoint::Completions, &body, 4).len(), 4);
        assert_eq!(prompt_blocks(Endpoint::Completions, &body, 256).len(), 10);
        assert!(prompt_blocks(Endpoint::Completions, b"not json", 256).is_empty());
        assert!(prompt_blocks(Endpoint::Embeddings, &body, 256).is_empty());
        let parts = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert_eq!(
            prompt_blocks(Endpoint::ChatCompletions, parts, 256).len(),
            1
        );
    }
}
