//! Which prompt blocks a backend most likely still holds: an LRU set of the block hashes of
//! the requests routed to it (see `fairgate_relay::prefix` for the hashes).
//!
//! It is an estimate, like GIE's approximate prefix scorer: the backend evicts on its own
//! schedule, so the index is bounded by the backend's KV capacity (from
//! `vllm:cache_config_info` when scraped) and forgets the least recently routed blocks first.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The keys are already SipHash outputs: hashing them again (std's default) would only
/// triple the cost of a lookup, which runs up to 256 times per backend per request.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; fold anything else in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type BlockMap = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

/// Index size when the backend's KV capacity is unknown: 32k blocks ≈ 512k tokens.
pub const DEFAULT_CAPACITY: usize = 32_768;

#[derive(Debug)]
pub struct PrefixIndex {
    /// Block hash → tick of its last use.
    last_use: BlockMap,
    /// Uses in tick order; entries whose tick is no longer current are stale and skipped.
    order: VecDeque<(u64, u64)>,
    tick: u64,
    capacity: usize,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        PrefixIndex::new(DEFAULT_CAPACITY)
    }
}

impl PrefixIndex {
    pub fn new(capacity: usize) -> PrefixIndex {
        PrefixIndex {
            last_use: BlockMap::default(),
            order: VecDeque::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.evict();
    }

    /// How many leading blocks of `blocks` are in the index. Hashes are chained, so the first
    /// miss ends the shared prefix.
    pub fn matched(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|b| self.last_use.contains_key(b))
            .count()
    }

    /// Records that `blocks` were just sent to this backend.
    pub fn insert(&mut self, blocks: &[u64]) {
        for &b in blocks {
            self.tick += 1;
            self.last_use.insert(b, self.tick);
            self.order.push_back((b, self.tick));
        }
        self.evict();
        // Re-touched blocks leave stale entries behind; compact when they dominate.
        if self.order.len() > 2 * self.capacity + 64 {
            let live = &self.last_use;
            self.order.retain(|(b, t)| live.get(b) == Some(t));
        }
    }

    fn evict(&mut self) {
        while self.last_use.len() > self.capacity {
            let Some((b, t)) = self.order.pop_front() else {
                break;
            };
            if self.last_use.get(&b) == Some(&t) {
                self.last_use.remove(&b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_leading_blocks() {
        let mut ix = PrefixIndex::new(100);
        ix.insert(&[1, 2, 3, 4]);
        assert_eq!(ix.matched(&[1, 2, 3, 9, 4]), 3);
        assert_eq!(ix.matched(&[9, 1]), 0);
        assert_eq!(ix.matched(&[]), 0);
    }

    #[test]
    fn evicts_least_recently_routed() {
        let mut ix = PrefixIndex::new(4);
        ix.insert(&[1, 2, 3, 4]);
        ix.insert(&[1, 2]); // 1 and 2 are now the freshest
        ix.insert(&[5, 6]);
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.matched(&[1, 2]), 2);
        assert_eq!(ix.matched(&[3]), 0);
        assert_eq!(ix.matched(&[5, 6]), 2);
        ix.set_capacity(2);
        assert_eq!(ix.matched(&[5, 6]), 2);
        assert_eq!(ix.matched(&[1]), 0);
    }

    #[test]
    fn stays_bounded_under_repeated_touches() {
        let mut ix = PrefixIndex::new(8);
        for i in 0..10_000u64 {
            ix.insert(&[i % 8, (i * 7) % 13]);
            assert!(ix.len() <= 8);
            assert!(ix.order.len() <= 2 * 8 + 64 + 2);
        }
    }
}
