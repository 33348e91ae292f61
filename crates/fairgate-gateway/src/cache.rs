//! Exact-match response cache, consulted before admission.
//!
//! Rules:
//! - Only deterministic requests are cached: a JSON object body with
//!   `temperature` present and equal to 0, `stream` absent/null/false and `n`
//!   absent/null/1. Anything else (or a body that does not parse) is passed
//!   through untouched; [`uncacheable_reason`] says why.
//! - The key is SHA-256 over (model, endpoint path, body bytes) with length
//!   prefixes, see [`cache_key`]. Matching is on the exact bytes: reordered
//!   JSON keys or different whitespace are a miss, by design. It is cheap
//!   and can never serve an answer to a request that differs semantically.
//! - Only `200` responses are stored, for `ttl`; an expired entry is a miss
//!   and is dropped when seen.
//! - Bounded by `max_entries` and `max_bytes` (body plus content-type
//!   bytes); the least recently used entries (a hit refreshes recency) are
//!   evicted until both hold. A single value larger than `max_bytes` is
//!   never stored, so it cannot flush the whole cache.
//!
//! All state sits behind one `std::sync::Mutex` that is only held for map
//! operations, never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fairgate_types::Usage;
use http::HeaderValue;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Limits of a [`ResponseCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// SHA-256 digest identifying one exact request.
pub type CacheKey = [u8; 32];

/// Bumped whenever the key layout changes, so old and new keys never meet.
const KEY_DOMAIN: &[u8] = b"fairgate.response-cache.v1";

/// SHA-256 over (model, endpoint path, the request body bytes) with
/// unambiguous framing (length prefixes), so different fields can never
/// collide by concatenation.
pub fn cache_key(model: &str, path: &str, body: &[u8]) -> CacheKey {
    let mut h = Sha256::new();
    for part in [KEY_DOMAIN, model.as_bytes(), path.as_bytes(), body] {
        // Fixed-width length first: ("ab","c") and ("a","bc") hash differently.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The few fields that decide determinism; unknown fields are ignored.
/// Typed fields: a wrongly typed value fails the parse and is not cached
/// (the backend would reject it anyway).
#[derive(Deserialize)]
struct Sampling {
    temperature: Option<f64>,
    stream: Option<bool>,
    n: Option<u64>,
}

/// Why a request may not be cached; `None` means cacheable.
pub fn uncacheable_reason(body: &[u8]) -> Option<&'static str> {
    // serde's derived struct also accepts a JSON array; insist on an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Some("body is not a JSON object");
    }
    // Duplicate keys are an error here too, which is what we want: backends
    // disagree on which duplicate wins.
    let Ok(s) = serde_json::from_slice::<Sampling>(body) else {
        return Some("body does not parse");
    };
    if s.stream == Some(true) {
        return Some("streamed requests are not cached");
    }
    match s.n {
        None | Some(1) => {}
        Some(_) => return Some("n is not 1"),
    }
    match s.temperature {
        // Absent means the backend default (usually 1), which samples.
        None => Some("temperature is not set"),
        Some(0.0) => None, // also matches -0.0 (float patterns compare with ==)
        Some(_) => Some("temperature is not 0"),
    }
}

/// A stored upstream response, replayed verbatim on a hit.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedResponse {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    pub usage: Option<Usage>,
}

impl CachedResponse {
    /// Bytes counted against `max_bytes`.
    fn size(&self) -> usize {
        self.body.len() + self.content_type.as_ref().map_or(0, HeaderValue::len)
    }
}

/// Counters since the cache was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    /// Entries dropped to make room (not expirations, not replacements).
    pub evictions: u64,
}

struct Entry {
    value: CachedResponse,
    /// `None` when `now + ttl` overflows: effectively never expires.
    expires_at: Option<Instant>,
    /// Position in `Inner::recency`.
    tick: u64,
    size: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Entry>,
    /// Recency order: the smallest tick is the least recently used.
    recency: BTreeMap<u64, CacheKey>,
    next_tick: u64,
    bytes: usize,
}

impl Inner {
    fn bump(&mut self) -> u64 {
        let t = self.next_tick;
        self.next_tick += 1;
        t
    }

    fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.recency.remove(&e.tick);
        self.bytes -= e.size;
        Some(e)
    }

    fn pop_lru(&mut self) -> bool {
        let Some((_, key)) = self.recency.pop_first() else {
            return false;
        };
        if let Some(e) = self.map.remove(&key) {
            self.bytes -= e.size;
        }
        true
    }
}

/// Bounded LRU cache of deterministic responses with a TTL.
pub struct ResponseCache {
    settings: CacheSettings,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("settings", &self.settings)
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ResponseCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    // Every critical section leaves the maps consistent before anything can
    // panic, so a poisoned lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks up `key` at time `now`; a hit makes the entry most recently
    /// used. Expired entries are misses and are removed.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<CachedResponse> {
        let found = {
            let mut inner = self.lock();
            let state = inner
                .map
                .get(key)
                .map(|e| (e.tick, e.expires_at.is_some_and(|at| now >= at)));
            match state {
                None => None,
                Some((_, true)) => {
                    inner.remove(key);
                    None
                }
                Some((old, false)) => {
                    let tick = inner.bump();
                    inner.recency.remove(&old);
                    inner.recency.insert(tick, *key);
                    inner.map.get_mut(key).map(|e| {
                        e.tick = tick;
                        e.value.clone()
                    })
                }
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `value` under `key` at time `now`, replacing any previous
    /// entry. Only status 200 is stored; a value larger than `max_bytes` is
    /// refused; otherwise least recently used entries are evicted until both
    /// caps hold.
    pub fn insert(&self, key: CacheKey, value: CachedResponse, now: Instant) {
        let s = &self.settings;
        let size = value.size();
        if value.status != 200 || size > s.max_bytes || s.max_entries == 0 || s.ttl.is_zero() {
            return;
        }
        let expires_at = now.checked_add(s.ttl);
        let mut evicted = 0u64;
        {
            let mut inner = self.lock();
            // A replacement frees its own room first and is not an eviction.
            inner.remove(&key);
            while inner.map.len() >= s.max_entries || inner.bytes + size > s.max_bytes {
                if !inner.pop_lru() {
                    break;
                }
                evicted += 1;
            }
            let tick = inner.bump();
            inner.recency.insert(tick, key);
            inner.bytes += size;
            inner.map.insert(
                key,
                Entry {
                    value,
                    expires_at,
                    tick,
                    size,
                },
            );
        }
        self.inserts.fetch_add(1, Ordering::Relaxed);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes currently held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_entries: usize, max_bytes: usize) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(60),
            max_entries,
            max_bytes,
        }
    }

    fn resp(body: &'static [u8]) -> CachedResponse {
        CachedResponse {
            status: 200,
            content_type: None,
            body: Bytes::from_static(body),
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                cached_tokens: 0,
            }),
        }
    }

    fn key(n: u8) -> CacheKey {
        [n; 32]
    }

    #[test]
    fn key_framing_is_unambiguous() {
        assert_ne!(cache_key("ab", "c", b""), cache_key("a", "bc", b""));
        assert_ne!(cache_key("m", "/p", b"x"), cache_key("m", "/px", b""));
        assert_ne!(cache_key("", "ab", b""), cache_key("ab", "", b""));
        assert_eq!(
            cache_key("m", "/v1/chat/completions", b"{}"),
            cache_key("m", "/v1/chat/completions", b"{}")
        );
        // Exact bytes: reordered keys are a different entry, by design.
        assert_ne!(
            cache_key("m", "/p", br#"{"a":1,"b":2}"#),
            cache_key("m", "/p", br#"{"b":2,"a":1}"#)
        );
    }

    #[test]
    fn determinism_rules() {
        let ok: &[&str] = &[
            r#"{"temperature":0}"#,
            r#"{"temperature":0.0,"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            r#"  {"temperature":-0.0,"stream":false,"n":1}"#,
            r#"{"temperature":0,"stream":null,"n":null}"#,
            r#"{"temperature":0,"tools":[{"type":"function"}],"tool_choice":"auto"}"#,
            r#"{"temperature":0,"logprobs":true,"top_logprobs":3,"unknown":{"x":[1,2]}}"#,
        ];
        for body in ok {
            assert_eq!(uncacheable_reason(body.as_bytes()), None, "{body}");
        }
        let bad: &[(&str, &str)] = &[
            (r#"{"model":"m"}"#, "temperature is not set"),
            (r#"{"temperature":null}"#, "temperature is not set"),
            (r#"{"temperature":0.7}"#, "temperature is not 0"),
            (r#"{"temperature":1e-9}"#, "temperature is not 0"),
            (
                r#"{"temperature":0,"stream":true}"#,
                "streamed requests are not cached",
            ),
            (r#"{"temperature":0,"n":2}"#, "n is not 1"),
            (r#"{"temperature":0,"n":0}"#, "n is not 1"),
            (r#"[0,false,1]"#, "body is not a JSON object"),
            ("", "body is not a JSON object"),
            (r#"{"temperature":"0"}"#, "body does not parse"),
            (
                r#"{"temperature":0,"temperature":1}"#,
                "body does not parse",
            ),
            (r#"{"temperature":0} x"#, "body does not parse"),
        ];
        for (body, why) in bad {
            assert_eq!(uncacheable_reason(body.as_bytes()), Some(*why), "{body}");
        }
    }

    #[test]
    fn ttl_expiry_is_a_miss_and_removes() {
        let c = ResponseCache::new(CacheSettings {
            ttl: Duration::from_secs(10),
            ..settings(10, 1000)
        });
        let t0 = Instant::now();
        c.insert(key(1), resp(b"hello"), t0);
        assert_eq!(
            c.get(&key(1), t0 + Duration::from_secs(9)),
            Some(resp(b"hello"))
        );
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        // A hit does not extend the TTL; a re-insert does.
        c.insert(key(1), resp(b"hello"), t0 + Duration::from_secs(20));
        assert!(c.get(&key(1), t0 + Duration::from_secs(29)).is_some());
    }

    #[test]
    fn lru_by_entries_and_get_refreshes() {
        let c = ResponseCache::new(settings(2, 1000));
        let t = Instant::now();
        c.insert(key(1), resp(b"a"), t);
        c.insert(key(2), resp(b"b"), t);
        assert!(c.get(&key(1), t).is_some()); // 1 is now the most recent
        c.insert(key(3), resp(b"c"), t);
        assert_eq!(c.len(), 2);
        assert!(c.get(&key(2), t).is_none());
        assert!(c.get(&key(1), t).is_some());
        assert!(c.get(&key(3), t).is_some());
    }

    #[test]
    fn lru_by_bytes() {
        let c = ResponseCache::new(settings(100, 10));
        let t = Instant::now();
        c.insert(key(1), resp(b"aaaa"), t);
        c.insert(key(2), resp(b"bbbb"), t);
        assert!(c.get(&key(1), t).is_some());
        c.insert(key(3), resp(b"cccc"), t);
        assert_eq!((c.len(), c.bytes()), (2, 8));
        assert!(c.get(&key(2), t).is_none());
        // A value needing the whole budget evicts everything else.
        c.insert(key(4), resp(b"dddddddddd"), t);
        assert_eq!((c.len(), c.bytes()), (1, 10));
        assert!(c.get(&key(4), t).is_some());
        // Content type counts too.
        let mut typed = resp(b"eeeeee");
        typed.content_type = Some(HeaderValue::from_static("json"));
        c.insert(key(5), typed.clone(), t);
        assert_eq!((c.len(), c.bytes()), (1, 10));
        assert_eq!(c.get(&key(5), t), Some(typed));
    }

    #[test]
    fn replace_updates_bytes_without_eviction() {
        let c = ResponseCache::new(settings(2, 10));
        let t = Instant::now();
        c.insert(key(1), resp(b"aaaa"), t);
        c.insert(key(2), resp(b"bb"), t);
        c.insert(key(1), resp(b"aaaaaaaa"), t);
        assert_eq!((c.len(), c.bytes()), (2, 10));
        assert_eq!(c.stats().evictions, 0);
    }

    #[test]
    fn oversize_and_non_200_refused() {
        let c = ResponseCache::new(settings(10, 10));
        let t = Instant::now();
        c.insert(key(1), resp(b"keep"), t);
        c.insert(key(2), resp(b"eleven byte"), t);
        let mut err = resp(b"err");
        err.status = 500;
        c.insert(key(3), err, t);
        let mut created = resp(b"ok");
        created.status = 201;
        c.insert(key(4), created, t);
        assert_eq!((c.len(), c.bytes()), (1, 4));
        assert!(c.get(&key(1), t).is_some(), "refusals must not evict");
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 0,
                inserts: 1,
                evictions: 0
            }
        );

        let zero = ResponseCache::new(CacheSettings {
            ttl: Duration::ZERO,
            ..settings(10, 10)
        });
        zero.insert(key(1), resp(b"x"), t);
        assert!(zero.is_empty());
    }

    #[test]
    fn stats_count() {
        let c = ResponseCache::new(CacheSettings {
            ttl: Duration::from_secs(5),
            ..settings(1, 100)
        });
        let t = Instant::now();
        assert!(c.get(&key(1), t).is_none()); // miss
        c.insert(key(1), resp(b"a"), t); // insert
        assert!(c.get(&key(1), t).is_some()); // hit
        c.insert(key(2), resp(b"b"), t); // insert + eviction of 1
        assert!(c.get(&key(1), t).is_none()); // miss
        assert!(c.get(&key(2), t + Duration::from_secs(5)).is_none()); // expired: miss
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 3,
                inserts: 2,
                evictions: 1
            }
        );
        assert!(c.is_empty());
    }

    #[test]
    fn huge_ttl_does_not_overflow() {
        let c = ResponseCache::new(CacheSettings {
            ttl: Duration::MAX,
            ..settings(1, 100)
        });
        let t = Instant::now();
        c.insert(key(1), resp(b"a"), t);
        assert!(c
            .get(&key(1), t + Duration::from_secs(86_400 * 365))
            .is_some());
    }
}
