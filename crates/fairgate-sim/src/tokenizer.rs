//! A deterministic stand-in tokenizer (no vocabulary files), about one token per four characters
//! of English.
//!
//! Rules, applied left to right:
//! - whitespace attaches to the token that follows it (`" world"` is one token); whitespace at
//!   the very end of the text is a token of its own;
//! - a maximal run of alphanumeric characters is split into pieces of at most 4 characters
//!   (`"tokenizer"` → `"toke"`, `"nize"`, `"r"`);
//! - every other character (punctuation, symbols, emoji) is one token.
//!
//! A token's id is the 32-bit FNV-1a hash of its text, so equal text always gives equal ids and
//! the prefix cache can hash ids like vLLM hashes real token ids.
//!
//! Chat prompts are framed like a chat template: each message costs
//! `tokens(role) + tokens(content) + 3` and the assistant prompt at the end costs 3 more.
//! Content may be a string, `null`, or an array of parts; `{"type":"text"}` parts count their
//! text and every other part type (images, audio, ...) counts 0 tokens.

/// Fixed ids of the framing tokens (`<|im_start|>`, the role/content separator, `<|im_end|>`).
const IM_START: u32 = 0xFFFF_FF01;
const ROLE_SEP: u32 = 0xFFFF_FF02;
const IM_END: u32 = 0xFFFF_FF03;
/// Id of the word "assistant" in the generation prompt.
const ASSISTANT: u32 = 0xFFFF_FF04;

/// Framing tokens added per chat message.
pub const MESSAGE_FRAMING_TOKENS: usize = 3;
/// Tokens of the assistant generation prompt appended after the last message.
pub const ASSISTANT_PROMPT_TOKENS: usize = 3;

/// Token ids of `text` (see the module doc for the rules).
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    tokenize_into(text, &mut out);
    out
}

/// Appends the token ids of `text` to `out` (lets callers build one prompt without copies).
pub fn tokenize_into(text: &str, out: &mut Vec<u32>) {
    out.extend(pieces(text).map(token_id));
}

/// Number of tokens in `text`, without allocating.
pub fn count_tokens(text: &str) -> usize {
    pieces(text).count()
}

/// The token strings of `text`, in order; concatenated they give back `text` exactly.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { text, pos: 0 }
}

/// Id of one token string: 32-bit FNV-1a, stable across runs and platforms.
pub fn token_id(piece: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in piece.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Iterator over token strings; see [`pieces`].
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let rest = &self.text[start..];
        if rest.is_empty() {
            return None;
        }
        let mut chars = rest.char_indices();
        // Leading whitespace belongs to the token that follows.
        let mut body = None;
        for (i, c) in chars.by_ref() {
            if !c.is_whitespace() {
                body = Some((i, c));
                break;
            }
        }
        let end = match body {
            // Only whitespace left: it is the last token.
            None => rest.len(),
            Some((i, c)) if c.is_alphanumeric() => {
                let mut end = i + c.len_utf8();
                let mut taken = 1;
                while taken < 4 {
                    match chars.next() {
                        Some((j, d)) if d.is_alphanumeric() => {
                            end = j + d.len_utf8();
                            taken += 1;
                        }
                        _ => break,
                    }
                }
                end
            }
            Some((i, c)) => i + c.len_utf8(),
        };
        self.pos = start + end;
        Some(&rest[..end])
    }
}

/// One chat message as the tokenizer sees it: a role and its text parts.
pub trait ChatMessageText {
    /// The role (`system`, `user`, ...).
    fn role(&self) -> &str;
    /// Calls `f` for each text segment of the content, in order.
    fn for_each_text(&self, f: &mut dyn FnMut(&str));
}

/// Token ids of a chat prompt framed like a chat template (see the module doc).
pub fn chat_prompt_ids<M: ChatMessageText>(messages: &[M]) -> Vec<u32> {
    let mut out = Vec::with_capacity(64);
    for m in messages {
        out.push(IM_START);
        tokenize_into(m.role(), &mut out);
        out.push(ROLE_SEP);
        m.for_each_text(&mut |t| tokenize_into(t, &mut out));
        out.push(IM_END);
    }
    out.extend_from_slice(&[IM_START, ASSISTANT, ROLE_SEP]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Msg(&'static str, Vec<&'static str>);
    impl ChatMessageText for Msg {
        fn role(&self) -> &str {
            self.0
        }
        fn for_each_text(&self, f: &mut dyn FnMut(&str)) {
            for t in &self.1 {
                f(t);
            }
        }
    }

    #[test]
    fn splits_words_punctuation_and_whitespace() {
        let p: Vec<_> = pieces("Hello, tokenizer world!  ").collect();
        assert_eq!(
            p,
            vec!["Hell", "o", ",", " toke", "nize", "r", " worl", "d", "!", "  "]
        );
        assert_eq!(count_tokens("Hello, tokenizer world!  "), 10);
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("   "), 1);
    }

    #[test]
    fn handles_multibyte_characters() {
        let p: Vec<_> = pieces("héllo wörld 😀").collect();
        assert_eq!(p, vec!["héll", "o", " wörl", "d", " 😀"]);
    }

    #[test]
    fn ids_are_stable_and_distinguish_text() {
        assert_eq!(tokenize("abc"), tokenize("abc"));
        assert_ne!(tokenize("abc"), tokenize("abd"));
        assert_eq!(tokenize("abcdefgh").len(), 2);
    }

    #[test]
    fn chat_framing_counts() {
        let msgs = [Msg("user", vec!["hi all"]), Msg("system", vec!["a", "b"])];
        let ids = chat_prompt_ids(&msgs);
        // user: 1 + 2 + 3; system: 2 + 2 + 3; assistant prompt: 3.
        assert_eq!(ids.len(), 6 + 7 + 3);
        assert_eq!(&ids[..3], &[IM_START, token_id("user"), ROLE_SEP]);
    }
}
