//! Bounds on what the request path may cost the gateway, whatever clients and backends send:
//!
//! - [`ResponseMemory`]: backend answers read whole (non-stream answers, error bodies) are
//!   capped per request (`upstream.max_response_bytes`, else 502
//!   `upstream_response_too_large`) and together (`upstream.response_memory_bytes`): a
//!   byte-weighted semaphore is taken as bytes arrive and given back when the answer has been
//!   handed to the client. A read that finds no room waits up to [`MEMORY_WAIT`] for other
//!   answers to drain, then fails 503 `upstream_memory_exhausted` (Retry-After 1): waiting
//!   longer would hold a backend slot and a connection for an answer that may never fit, and
//!   several half-read answers waiting on each other would never progress.
//! - [`AnonymousFailures`]: failures nobody can be billed for (401 without a valid key, 404 on
//!   an unknown route) are written to the ledger at most `relay.anonymous_rows_per_minute`
//!   times per client address and minute. The rest are counted in
//!   `fairgate_anonymous_rejections_total{reason}` and summed into one ledger row per status
//!   per summary interval (`relay.anonymous_summary_s`, default 60 s): endpoint
//!   `anonymous:suppressed`, the status (401 or 404), `error_class` `suppressed`, and the
//!   number of requests the row stands for in `attempts` (none of them reached a backend, so
//!   that field is otherwise 0 for each of them). The per-address map is bounded
//!   ([`MAX_ADDRESSES`]); when it is full of addresses active this minute, a new address gets
//!   no rows of its own (its failures are still counted).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fairgate_types::{now_millis, LedgerRow, Outcome, RequestId};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a whole-answer read waits for room in the shared memory budget.
pub const MEMORY_WAIT: Duration = Duration::from_secs(2);

/// Addresses tracked for anonymous failures at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// Longest request path kept in a ledger row, in bytes (cut at a character boundary).
pub const MAX_ENDPOINT_BYTES: usize = 256;

/// Endpoint of the summary rows for suppressed anonymous failures.
pub const SUPPRESSED_ENDPOINT: &str = "anonymous:suppressed";

/// The request-path bounds shared by every request; one per gateway.
pub struct ProxyLimits {
    pub response_memory: ResponseMemory,
    pub anonymous: AnonymousFailures,
}

impl ProxyLimits {
    pub fn new(
        config: &crate::config::Config,
        registry: &Registry,
    ) -> Result<ProxyLimits, prometheus::Error> {
        Ok(ProxyLimits {
            response_memory: ResponseMemory::new(config.upstream.response_memory_bytes),
            anonymous: AnonymousFailures::new(registry)?,
        })
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// The shared budget for answers read whole.
pub struct ResponseMemory {
    sem: Arc<Semaphore>,
}

/// Why a whole-answer read failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Over the per-request limit.
    TooLarge(usize),
    /// No room in the shared budget within [`MEMORY_WAIT`].
    NoMemory,
    /// The body broke or went idle.
    Broken(String),
}

/// Bytes read and the share of the memory budget they hold; the share goes back when this is
/// dropped.
pub struct HeldBytes {
    pub bytes: Bytes,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl ResponseMemory {
    pub fn new(total: usize) -> ResponseMemory {
        ResponseMemory {
            sem: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes of the budget free right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    async fn take(&self, n: usize, held: &mut Option<OwnedSemaphorePermit>) -> bool {
        let mut left = n;
        while left > 0 {
            let chunk = u32::try_from(left).unwrap_or(u32::MAX);
            let got =
                tokio::time::timeout(MEMORY_WAIT, self.sem.clone().acquire_many_owned(chunk)).await;
            let Ok(Ok(p)) = got else {
                return false;
            };
            match held {
                Some(h) => h.merge(p),
                None => *held = Some(p),
            }
            left -= chunk as usize;
        }
        true
    }

    /// Reads a backend body whole: at most `limit` bytes, each taken from the shared budget
    /// as it arrives, each frame within `idle`.
    pub async fn read(
        &self,
        mut body: Incoming,
        idle: Duration,
        limit: usize,
    ) -> Result<HeldBytes, ReadError> {
        let mut buf = BytesMut::new();
        let mut permit = None;
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len().saturating_add(data.len()) > limit {
                            return Err(ReadError::TooLarge(limit));
                        }
                        if !self.take(data.len(), &mut permit).await {
                            return Err(ReadError::NoMemory);
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
                Ok(None) => {
                    return Ok(HeldBytes {
                        bytes: buf.freeze(),
                        permit,
                    })
                }
                Err(_) => return Err(ReadError::Broken("upstream went idle".into())),
            }
        }
    }
}

impl HeldBytes {
    /// A response body of these bytes that gives the memory back once it is dropped (sent
    /// or abandoned); its length is exact, so the answer keeps its `Content-Length`.
    pub fn into_body(self) -> axum::body::Body {
        axum::body::Body::new(HeldBody {
            bytes: (!self.bytes.is_empty()).then_some(self.bytes),
            _permit: self.permit,
        })
    }
}

struct HeldBody {
    bytes: Option<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.bytes.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Which anonymous failure; a fixed set, used as the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnonymousReason {
    /// 401: no key, or a key that is not one.
    Unauthenticated,
    /// 404: no such route.
    UnknownRoute,
}

impl AnonymousReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AnonymousReason::Unauthenticated => "unauthenticated",
            AnonymousReason::UnknownRoute => "unknown_route",
        }
    }

    fn status(self) -> u16 {
        match self {
            AnonymousReason::Unauthenticated => 401,
            AnonymousReason::UnknownRoute => 404,
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            AnonymousReason::Unauthenticated => Outcome::AuthFailed,
            AnonymousReason::UnknownRoute => Outcome::Rejected,
        }
    }
}

const REASONS: [AnonymousReason; 2] = [
    AnonymousReason::Unauthenticated,
    AnonymousReason::UnknownRoute,
];

/// Rows per address per minute for anonymous failures; see the module docs.
pub struct AnonymousFailures {
    /// Per address: (minute index, rows written in it).
    seen: Mutex<HashMap<IpAddr, (u64, u32)>>,
    epoch: Instant,
    /// Suppressed since the last summary, per reason (in `REASONS` order).
    suppressed: [AtomicU64; 2],
    /// Start of the period the next summary covers.
    since_ms: AtomicU64,
    metric: IntCounterVec,
    summarizer: AtomicBool,
}

impl AnonymousFailures {
    pub fn new(registry: &Registry) -> Result<AnonymousFailures, prometheus::Error> {
        let metric = IntCounterVec::new(
            Opts::new(
                "fairgate_anonymous_rejections_total",
                "Anonymous failures (401 without a valid key, 404 unknown route) not written to the ledger one by one, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(metric.clone()))?;
        for r in REASONS {
            metric.with_label_values(&[r.as_str()]);
        }
        Ok(AnonymousFailures {
            seen: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            suppressed: [AtomicU64::new(0), AtomicU64::new(0)],
            since_ms: AtomicU64::new(u64::try_from(now_millis()).unwrap_or(0)),
            metric,
            summarizer: AtomicBool::new(false),
        })
    }

    /// Whether this anonymous failure from `addr` gets its own ledger row; when not, it is
    /// counted for the metric and the next summary row.
    pub fn admit(&self, addr: IpAddr, reason: AnonymousReason, per_minute: u32) -> bool {
        let minute = self.epoch.elapsed().as_secs() / 60;
        let own_row = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= MAX_ADDRESSES && !seen.contains_key(&addr) {
                seen.retain(|_, (m, _)| *m == minute);
            }
            if seen.len() >= MAX_ADDRESSES && !seen.contains_key(&addr) {
                false
            } else {
                let e = seen.entry(addr).or_insert((minute, 0));
                if e.0 != minute {
                    *e = (minute, 0);
                }
                if e.1 < per_minute {
                    e.1 += 1;
                    true
                } else {
                    false
                }
            }
        };
        if !own_row {
            self.metric.with_label_values(&[reason.as_str()]).inc();
            let i = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
            if let Some(c) = self.suppressed.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        own_row
    }

    /// The summary rows for what was suppressed since the last call (none when nothing was).
    pub fn take_summary(&self) -> Vec<LedgerRow> {
        let now = u64::try_from(now_millis()).unwrap_or(0);
        let since = self.since_ms.swap(now, Ordering::Relaxed);
        let mut rows = Vec::new();
        for (i, r) in REASONS.iter().enumerate() {
            let n = self
                .suppressed
                .get(i)
                .map_or(0, |c| c.swap(0, Ordering::Relaxed));
            if n == 0 {
                continue;
            }
            let mut row = LedgerRow::new(
                RequestId::new(),
                i64::try_from(since).unwrap_or(0),
                SUPPRESSED_ENDPOINT.to_owned(),
            );
            row.status = r.status();
            row.outcome = r.outcome();
            row.error_class = Some("suppressed".to_owned());
            row.attempts = u32::try_from(n).unwrap_or(u32::MAX);
            row.duration_ms = now.saturating_sub(since);
            rows.push(row);
        }
        rows
    }

    /// Claims the one summarizer task: true the first time only.
    pub fn start_summarizer(&self) -> bool {
        !self.summarizer.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate_at_char("abc", 5), "abc");
        assert_eq!(truncate_at_char("abcdef", 3), "abc");
        assert_eq!(truncate_at_char("aé", 2), "a");
        assert_eq!(truncate_at_char("ééé", 5), "éé");
    }

    #[test]
    fn anonymous_rows_are_bounded_per_address_and_summed() {
        let a = AnonymousFailures::new(&Registry::new()).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let own = (0..10)
            .filter(|_| a.admit(ip, AnonymousReason::UnknownRoute, 3))
            .count();
        assert_eq!(own, 3);
        assert!(a.admit(other, AnonymousReason::Unauthenticated, 3));
        assert_eq!(a.metric.with_label_values(&["unknown_route"]).get(), 7);
        let rows = a.take_summary();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].endpoint, SUPPRESSED_ENDPOINT);
        assert_eq!(rows[0].status, 404);
        assert_eq!(rows[0].attempts, 7);
        assert!(a.take_summary().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_budget_is_shared_and_given_back() {
        let m = ResponseMemory::new(1000);
        let mut a = None;
        assert!(m.take(600, &mut a).await);
        let mut b = None;
        // No room: waits MEMORY_WAIT (paused time), then gives up holding nothing extra.
        assert!(!m.take(600, &mut b).await);
        assert_eq!(m.available(), 400);
        drop(a);
        assert_eq!(m.available(), 1000);
        assert!(m.take(1000, &mut b).await);
        let held = HeldBytes {
            bytes: Bytes::from_static(b"abc"),
            permit: b,
        };
        let body = held.into_body();
        assert_eq!(m.available(), 0, "held while the body is alive");
        drop(body);
        assert_eq!(m.available(), 1000);
    }

    #[test]
    fn the_address_map_is_bounded() {
        let a = AnonymousFailures::new(&Registry::new()).unwrap();
        for i in 0..MAX_ADDRESSES as u32 + 50 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            a.admit(ip, AnonymousReason::Unauthenticated, 1);
        }
        assert!(a.seen.lock().unwrap().len() <= MAX_ADDRESSES);
        assert_eq!(a.take_summary()[0].attempts, 50);
    }
}
