//! vLLM-style block-hash prefix cache, bounded with LRU eviction over blocks.
//!
//! A prompt is cut into full blocks of `block_size` token ids; block `i` is keyed by a hash
//! chained over every token up to the end of that block, so a block only matches when the
//! whole prefix before it matches too (vLLM's `hash(parent_hash, block_tokens)`).
//! A request's cached tokens are the leading blocks already present, times the block size.
//! Like vLLM, the last prompt token is never a cache hit (one token must be computed to get
//! logits), so a prompt of exactly `k` blocks hits at most `k - 1` of them.
//!
//! Simplification: cached blocks live in their own LRU set bounded by the KV capacity in
//! blocks, instead of sharing physical blocks with running requests.

use std::collections::{BTreeMap, HashMap};

/// Chained hashes of the full blocks of `ids`.
pub fn block_hashes(ids: &[u32], block_size: usize) -> Vec<u64> {
    let block_size = block_size.max(1);
    let mut out = Vec::with_capacity(ids.len() / block_size);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for block in ids.chunks_exact(block_size) {
        for &id in block {
            // FNV-1a over 32-bit ids; the running value carries the parent hash forward.
            h ^= u64::from(id);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Finalize so block boundaries matter (a mix of the length-free FNV state).
        out.push(mix64(h ^ out.len() as u64));
    }
    out
}

/// SplitMix64 finalizer; spreads bits so hash-map keys are well distributed.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The cache itself: block hash → last-use tick, plus tick → hash for LRU order.
#[derive(Debug)]
pub struct PrefixCache {
    block_size: usize,
    capacity: usize,
    tick: u64,
    blocks: HashMap<u64, u64>,
    lru: BTreeMap<u64, u64>,
}

impl PrefixCache {
    /// A cache of at most `capacity_blocks` blocks of `block_size` tokens.
    pub fn new(block_size: u64, capacity_blocks: u64) -> Self {
        Self {
            block_size: usize::try_from(block_size.max(1)).unwrap_or(usize::MAX),
            capacity: usize::try_from(capacity_blocks).unwrap_or(usize::MAX),
            tick: 0,
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
        }
    }

    /// Looks `ids` up, then records all of its full blocks as most recently used (the prefill
    /// that follows computes them). Returns the number of cached prompt tokens.
    pub fn lookup_and_insert(&mut self, ids: &[u32]) -> u64 {
        if ids.is_empty() {
            return 0;
        }
        let hashes = block_hashes(ids, self.block_size);
        // Blocks that lie entirely before the last token can be hits.
        let hit_limit = (ids.len() - 1) / self.block_size;
        let hits = hashes
            .iter()
            .take(hit_limit)
            .take_while(|h| self.blocks.contains_key(h))
            .count();
        for h in hashes {
            self.touch(h);
        }
        (hits * self.block_size) as u64
    }

    fn touch(&mut self, hash: u64) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if let Some(old) = self.blocks.insert(hash, self.tick) {
            self.lru.remove(&old);
        }
        self.lru.insert(self.tick, hash);
        while self.blocks.len() > self.capacity {
            match self.lru.pop_first() {
                Some((_, victim)) => {
                    self.blocks.remove(&victim);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32, salt: u32) -> Vec<u32> {
        (0..n).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn hashes_are_chained() {
        let a = ids(64, 0);
        let mut b = a.clone();
        b[0] = 999; // differs only in the first block
        let ha = block_hashes(&a, 16);
        let hb = block_hashes(&b, 16);
        assert_eq!(ha.len(), 4);
        assert!(ha.iter().zip(&hb).all(|(x, y)| x != y));
        assert_eq!(block_hashes(&a[..40], 16), ha[..2]);
    }

    #[test]
    fn second_lookup_hits_full_blocks_but_not_the_last_token() {
        let mut c = PrefixCache::new(16, 1000);
        let p = ids(100, 1);
        assert_eq!(c.lookup_and_insert(&p), 0);
        assert_eq!(c.lookup_and_insert(&p), 96);
        // Exactly four blocks: the last block holds the last token, so only three hit.
        let q = ids(64, 2);
        c.lookup_and_insert(&q);
        assert_eq!(c.lookup_and_insert(&q), 48);
        // A shared prefix hits only up to the divergence.
        let mut r = p.clone();
        r[40] = 12345;
        assert_eq!(c.lookup_and_insert(&r), 32);
    }

    #[test]
    fn lru_eviction_bounds_the_cache() {
        let mut c = PrefixCache::new(16, 4);
        let a = ids(65, 1);
        let b = ids(65, 2);
        c.lookup_and_insert(&a);
        assert_eq!(c.blocks.len(), 4);
        c.lookup_and_insert(&b);
        assert_eq!(c.blocks.len(), 4);
        assert_eq!(c.lookup_and_insert(&a), 0, "a was evicted by b");
        let mut zero = PrefixCache::new(16, 0);
        zero.lookup_and_insert(&a);
        assert!(zero.blocks.is_empty());
        assert_eq!(zero.lookup_and_insert(&a), 0);
    }
}
