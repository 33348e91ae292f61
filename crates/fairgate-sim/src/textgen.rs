//! Deterministic output: words for generated tokens and unit vectors for embeddings.
//!
//! Output depends only on `(seed, request body bytes)`: the body is hashed with 64-bit FNV-1a
//! and xored into the seed of a SplitMix64 generator. We use our own tiny generator rather than
//! `rand` so the text stays identical across dependency upgrades.

use crate::prefix_cache::mix64;

/// Each output token is one of these words followed by a space.
const VOCAB: &[&str] = &[
    "the", "a", "model", "token", "fair", "gate", "share", "cache", "block", "queue", "batch",
    "input", "reply", "we", "it", "is", "was", "and", "or", "but", "so", "then", "now", "here",
    "data", "time", "step", "load", "fast", "slow", "good", "new", "old", "big", "small", "one",
    "two", "three", "more", "less", "very", "quite", "to", "of", "in", "on", "at", "by", "for",
    "with", "from", "as", "this", "that", "each", "every", "some", "any", "all", "none", "yes",
    "no", "maybe", "done",
];

/// 64-bit FNV-1a of arbitrary bytes (request bodies).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64: tiny, fast and fully deterministic.
#[derive(Debug, Clone)]
pub struct WordRng {
    state: u64,
}

impl WordRng {
    /// Generator for one request.
    pub fn new(seed: u64, body_hash: u64) -> Self {
        Self {
            state: seed ^ body_hash,
        }
    }

    /// Next raw 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Next output word (without the trailing space).
    pub fn next_word(&mut self) -> &'static str {
        // Modulo bias over 64 words from a 64-bit value is irrelevant here.
        VOCAB[(self.next_u64() % VOCAB.len() as u64) as usize]
    }
}

/// A deterministic unit vector of `dim` floats for one embedding input.
pub fn embedding(seed: u64, input_ids: &[u32], dim: usize) -> Vec<f32> {
    let mut h = seed ^ 0x5eed_e4be_dd16_0000;
    for &id in input_ids {
        h = mix64(h ^ u64::from(id));
    }
    let mut rng = WordRng::new(h, 0);
    let mut v: Vec<f32> = (0..dim)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(rng: &mut WordRng, n: u64) -> String {
        let mut s = String::with_capacity(usize::try_from(n).unwrap_or(0).saturating_mul(6));
        for _ in 0..n {
            s.push_str(rng.next_word());
            s.push(' ');
        }
        s
    }

    #[test]
    fn words_are_deterministic_and_single_tokens() {
        let a = text_of(&mut WordRng::new(1, hash_bytes(b"x")), 20);
        let b = text_of(&mut WordRng::new(1, hash_bytes(b"x")), 20);
        let c = text_of(&mut WordRng::new(2, hash_bytes(b"x")), 20);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.split(' ').filter(|w| !w.is_empty()).count(), 20);
        assert!(VOCAB
            .iter()
            .all(|w| w.len() <= 5 && w.bytes().all(|b| b.is_ascii_lowercase())));
    }

    #[test]
    fn embeddings_are_unit_vectors() {
        let v = embedding(3, &[1, 2, 3], 64);
        assert_eq!(v.len(), 64);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
        assert_eq!(v, embedding(3, &[1, 2, 3], 64));
        assert_ne!(v, embedding(3, &[1, 2, 4], 64));
        assert!(embedding(3, &[], 0).is_empty());
    }
}
