//! Fault injection: the per-request `x-sim-fault` header and the configured random rates.
//!
//! Header syntax: a comma-separated list of directives (whitespace around them is ignored):
//! - `error`: answer HTTP 500 (vLLM-shaped `InternalServerError`) before any byte; counts nothing;
//! - `hang`: never answer, until the client disconnects (or the server shuts down); counts nothing;
//! - `abort-after=N`: produce N tokens, then break the response body so the client sees a
//!   truncated stream (for non-streaming requests: a 200 head followed by a broken body);
//!   the prompt and the N tokens are counted, `finished_reason="abort"`. The client receives
//!   all N token chunks (with continuous usage stats the last one says N): the break comes
//!   50 ms after them, so the transport has flushed them (over HTTP/1.1 and HTTP/2 alike);
//! - `slow=MS`: wait MS milliseconds before the first byte (added to `slow_start`); the wait
//!   comes first, so `slow=100,error` answers 500 after 100 ms.
//!
//! `abort-after` applies to chat and text completions; embeddings ignore it. With N at or above
//! the output length the request simply completes.
//! Example: `x-sim-fault: slow=200, abort-after=5`. An unknown directive is a 400.
//! `error_rate` / `hang_rate` draw from a counter-based generator seeded with `seed`, so a given
//! sequence of requests fails the same way on every run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::prefix_cache::mix64;

/// Name of the request header that injects faults.
pub const FAULT_HEADER: &str = "x-sim-fault";

/// Faults requested for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fault {
    /// Answer 500 before any byte.
    pub error: bool,
    /// Never answer.
    pub hang: bool,
    /// Break the body after this many tokens.
    pub abort_after: Option<u64>,
    /// Extra delay before the first byte.
    pub slow: Duration,
}

impl Fault {
    /// Parses the header value; the error names the bad directive.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut f = Fault::default();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, arg) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part, None),
            };
            let number = |what: &str| -> Result<u64, String> {
                arg.and_then(|a| a.parse::<u64>().ok())
                    .ok_or_else(|| format!("invalid {FAULT_HEADER} directive `{part}`: {what}"))
            };
            match (key, arg) {
                ("error", None) => f.error = true,
                ("hang", None) => f.hang = true,
                ("abort-after", Some(_)) => {
                    f.abort_after = Some(number("expected abort-after=N")?);
                }
                ("slow", Some(_)) => f.slow = Duration::from_millis(number("expected slow=MS")?),
                _ => return Err(format!("unknown {FAULT_HEADER} directive `{part}`")),
            }
        }
        Ok(f)
    }
}

/// Deterministic uniform draws in [0, 1) for the configured fault rates.
#[derive(Debug)]
pub struct Sampler {
    seed: u64,
    counter: AtomicU64,
}

impl Sampler {
    /// A sampler whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// True with probability `rate` (rates ≤ 0 never fire and draw nothing).
    pub fn hit(&self, rate: f64) -> bool {
        if rate <= 0.0 || rate.is_nan() {
            return false;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let bits = mix64(self.seed ^ mix64(n.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        // 53 random bits → uniform f64 in [0, 1).
        let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
        u < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        assert_eq!(Fault::parse("").unwrap(), Fault::default());
        let f = Fault::parse(" slow=150 , abort-after=3,error").unwrap();
        assert!(f.error && !f.hang);
        assert_eq!(f.abort_after, Some(3));
        assert_eq!(f.slow, Duration::from_millis(150));
        assert!(Fault::parse("hang").unwrap().hang);
        assert!(Fault::parse("abort-after").is_err());
        assert!(Fault::parse("abort-after=x").is_err());
        assert!(Fault::parse("explode").is_err());
        assert!(Fault::parse("error=1").is_err());
    }

    #[test]
    fn sampler_rates() {
        let s = Sampler::new(7);
        assert!(!s.hit(0.0));
        assert!((0..100).all(|_| s.hit(1.0)));
        let hits = (0..10_000).filter(|_| s.hit(0.25)).count();
        assert!((2000..3000).contains(&hits), "{hits}");
        let a: Vec<bool> = (0..50).map(|_| Sampler::new(1).hit(0.5)).collect();
        assert!(a.iter().all(|&x| x == a[0]), "same seed, same first draw");
    }
}
