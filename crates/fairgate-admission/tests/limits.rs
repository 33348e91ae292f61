//! Rate limits: token bucket arithmetic, all-or-nothing acquisition over scopes, invariants
//! under random and concurrent use, and the async front under paused tokio time.

use fairgate_admission::limits::{
    Grant, InProcessLimiter, LimitError, LimitGuard, LimitKind, LimitRequest, LimitScope, Limits,
    RateLimiter, TokenBucket, Verdict, CONCURRENCY_POLL,
};
use fairgate_types::{OnLimit, RateLimits};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tenant(name: &str) -> LimitScope {
    LimitScope::Tenant(name.to_owned())
}

fn key(name: &str) -> LimitScope {
    LimitScope::Key(name.to_owned())
}

fn limits(rpm: Option<u64>, tpm: Option<u64>, max_concurrent: Option<u32>) -> RateLimits {
    RateLimits {
        rpm,
        tpm,
        max_concurrent,
    }
}

fn request(scopes: &[(LimitScope, RateLimits)], tokens: u64) -> LimitRequest {
    LimitRequest {
        scopes: scopes.to_vec(),
        tokens,
    }
}

fn granted(v: Verdict) -> Grant {
    match v {
        Verdict::Granted(g) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn bucket_refills_exactly_over_many_small_steps() {
    let t0 = Instant::now();
    // 60 per minute: one unit per second.
    let mut b = TokenBucket::full(60, t0);
    assert_eq!(b.try_take(60, t0), Ok(()));
    assert_eq!(b.level(t0), 0);
    assert_eq!(b.try_take(1, t0), Err(SEC));
    // 1000 refills of 1 ms each must add up to exactly one unit, with nothing lost.
    for ms in 1..1000 {
        b.refill(t0 + Duration::from_millis(ms));
        assert_eq!(b.level(t0 + Duration::from_millis(ms)), 0);
    }
    assert_eq!(
        b.try_take(1, t0 + Duration::from_millis(999)),
        Err(Duration::from_millis(1))
    );
    assert_eq!(b.level(t0 + SEC), 1);
    // Never above capacity, however long it idles.
    assert_eq!(b.level(t0 + Duration::from_secs(3600)), 60);
    assert!(b.is_full(t0 + Duration::from_secs(3600)));
}

#[test]
fn bucket_refund_clamps_and_charge_stops_at_empty() {
    let t0 = Instant::now();
    let mut b = TokenBucket::full(100, t0);
    b.refund(50, t0);
    assert_eq!(b.level(t0), 100);
    b.charge(250, t0);
    assert_eq!(b.level(t0), 0);
    b.refund(30, t0);
    assert_eq!(b.level(t0), 30);
}

#[test]
fn bucket_capacity_change_keeps_level_clamped() {
    let t0 = Instant::now();
    let mut b = TokenBucket::full(100, t0);
    b.charge(40, t0);
    b.set_capacity(1000, t0);
    // Raising the limit does not hand out a free burst.
    assert_eq!(b.level(t0), 60);
    b.set_capacity(10, t0);
    assert_eq!(b.level(t0), 10);
    assert_eq!(b.capacity(), 10);
}

#[test]
fn request_bigger_than_a_minute_passes_when_full() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    let s = [(tenant("t"), limits(None, Some(1000), None))];
    let g = granted(l.try_acquire(&request(&s, 5000), t0));
    assert_eq!(g.tpm[0].charged, 1000);
    assert_eq!(l.level(&tenant("t"), LimitKind::Tpm, t0), Some(0));
    // The next one waits for the whole bucket to refill: a minute.
    match l.try_acquire(&request(&s, 5000), t0) {
        Verdict::Wait(d) => {
            assert_eq!(d.limit, LimitKind::Tpm);
            assert_eq!(d.value, 1000);
            assert_eq!(d.retry_after, Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zero_limit_never_passes() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    for lim in [
        limits(Some(0), None, None),
        limits(None, Some(0), None),
        limits(None, None, Some(0)),
    ] {
        match l.try_acquire(&request(&[(key("k"), lim)], 1), t0) {
            Verdict::Never(d) => {
                assert_eq!(d.value, 0);
                assert!(d.retry_after > Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn all_or_nothing_across_scopes() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    let t = (tenant("t"), limits(Some(100), Some(10_000), Some(10)));
    let k = (key("k"), limits(Some(1), None, None));
    granted(l.try_acquire(&request(&[t.clone(), k.clone()], 100), t0));
    let before = (
        l.level(&tenant("t"), LimitKind::Rpm, t0),
        l.level(&tenant("t"), LimitKind::Tpm, t0),
        l.level(&tenant("t"), LimitKind::Concurrency, t0),
    );
    assert_eq!(before, (Some(99), Some(9_900), Some(1)));
    // The key is out of requests: the tenant must not be charged for the refused request.
    match l.try_acquire(&request(&[t, k], 100), t0) {
        Verdict::Wait(d) => {
            assert_eq!(d.scope, key("k"));
            assert_eq!(d.limit, LimitKind::Rpm);
            assert_eq!(d.retry_after, Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
    let after = (
        l.level(&tenant("t"), LimitKind::Rpm, t0),
        l.level(&tenant("t"), LimitKind::Tpm, t0),
        l.level(&tenant("t"), LimitKind::Concurrency, t0),
    );
    assert_eq!(before, after);
}

#[test]
fn wait_reports_the_longest_estimate() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    // Drain a 60 rpm tenant (1 s per request) and a 600 tpm key (10 tokens/s).
    let t = (tenant("t"), limits(Some(60), None, None));
    let k = (key("k"), limits(None, Some(600), None));
    granted(l.try_acquire(&request(std::slice::from_ref(&k), 600), t0));
    for _ in 0..60 {
        granted(l.try_acquire(&request(std::slice::from_ref(&t), 0), t0));
    }
    match l.try_acquire(&request(&[t, k], 100), t0) {
        Verdict::Wait(d) => {
            assert_eq!(d.scope, key("k"));
            assert_eq!(d.retry_after, Duration::from_secs(10));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scope_listed_twice_is_charged_twice_or_not_at_all() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    let t = (tenant("t"), limits(Some(3), None, Some(3)));
    granted(l.try_acquire(&request(&[t.clone(), t.clone()], 0), t0));
    assert_eq!(l.level(&tenant("t"), LimitKind::Rpm, t0), Some(1));
    assert!(matches!(
        l.try_acquire(&request(&[t.clone(), t.clone()], 0), t0),
        Verdict::Wait(_)
    ));
    assert_eq!(l.level(&tenant("t"), LimitKind::Rpm, t0), Some(1));
    assert_eq!(l.level(&tenant("t"), LimitKind::Concurrency, t0), Some(2));
}

#[test]
fn reconcile_refunds_charges_and_adjusts_from_last_value() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    let s = [(tenant("t"), limits(None, Some(1000), None))];
    let mut g = granted(l.try_acquire(&request(&s, 400), t0));
    let lvl = || l.level(&tenant("t"), LimitKind::Tpm, t0);
    assert_eq!(lvl(), Some(600));
    l.reconcile(&mut g, 100, t0);
    assert_eq!(lvl(), Some(900));
    // Second call adjusts from 100, not from the original 400.
    l.reconcile(&mut g, 300, t0);
    assert_eq!(lvl(), Some(700));
    // Charging more than is left clamps at empty.
    l.reconcile(&mut g, 5000, t0);
    assert_eq!(lvl(), Some(0));
    l.release(&g);
}

#[test]
fn reconcile_after_eviction_recreates_the_bucket() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    let s = [(tenant("t"), limits(None, Some(1000), None))];
    let mut g = granted(l.try_acquire(&request(&s, 100), t0));
    let later = t0 + Duration::from_secs(120);
    l.sweep(later);
    assert!(l.is_empty());
    l.reconcile(&mut g, 600, later);
    assert_eq!(l.level(&tenant("t"), LimitKind::Tpm, later), Some(500));
}

#[test]
fn live_limit_changes_apply_on_the_next_request() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    let s = |rpm| [(tenant("t"), limits(Some(rpm), None, None))];
    granted(l.try_acquire(&request(&s(10), 0), t0));
    assert_eq!(l.level(&tenant("t"), LimitKind::Rpm, t0), Some(9));
    granted(l.try_acquire(&request(&s(5), 0), t0));
    assert_eq!(l.level(&tenant("t"), LimitKind::Rpm, t0), Some(4));
    granted(l.try_acquire(&request(&s(100), 0), t0));
    assert_eq!(l.level(&tenant("t"), LimitKind::Rpm, t0), Some(3));
    // Limit removed: its bucket goes.
    granted(l.try_acquire(
        &request(&[(tenant("t"), limits(None, Some(10), None))], 0),
        t0,
    ));
    assert_eq!(l.level(&tenant("t"), LimitKind::Rpm, t0), None);
}

#[test]
fn idle_scopes_are_swept_and_unlimited_scopes_have_no_state() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    granted(l.try_acquire(&request(&[(key("free"), RateLimits::default())], 10), t0));
    assert!(l.is_empty());
    let busy = (key("busy"), limits(None, None, Some(2)));
    let idle = (key("idle"), limits(Some(10), Some(100), None));
    let g = granted(l.try_acquire(&request(&[busy], 10), t0));
    granted(l.try_acquire(&request(&[idle], 10), t0));
    assert_eq!(l.len(), 2);
    // Not yet refilled: kept.
    l.sweep(t0);
    assert_eq!(l.len(), 2);
    l.sweep(t0 + Duration::from_secs(60));
    assert_eq!(l.len(), 1);
    assert_eq!(l.level(&key("busy"), LimitKind::Concurrency, t0), Some(1));
    // A concurrency-only scope goes as soon as its last slot is back.
    l.release(&g);
    assert!(l.is_empty());
}

#[test]
fn scopes_do_not_grow_without_bound() {
    let l = InProcessLimiter::new();
    let t0 = Instant::now();
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_secs(i * 60);
        let s = [(key(&format!("k{i}")), limits(Some(10), None, None))];
        granted(l.try_acquire(&request(&s, 0), now));
    }
    assert!(l.len() <= 2048, "{} scopes kept", l.len());
}

#[test]
fn limit_error_display_names_scope_limit_and_value() {
    let e = LimitError {
        limit: LimitKind::Tpm,
        scope: tenant("t1"),
        value: 1000,
        retry_after: SEC,
        waited: false,
    };
    assert_eq!(
        e.to_string(),
        "tenant `t1` is over its tokens-per-minute limit (tpm = 1000)"
    );
    let e = LimitError {
        limit: LimitKind::Concurrency,
        scope: key("k1"),
        value: 4,
        ..e
    };
    assert_eq!(
        e.to_string(),
        "key `k1` is at its limit of requests in flight (max_concurrent = 4)"
    );
    assert_eq!(LimitKind::Rpm.as_str(), "rpm");
}

// ---- random sequences ----

#[derive(Clone, Debug)]
enum Op {
    Acquire { key: usize, tokens: u64 },
    Reconcile { grant: usize, actual: u64 },
    Release { grant: usize },
    Advance { ms: u64 },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..3000u64).prop_map(|(key, tokens)| Op::Acquire { key, tokens }),
        2 => (any::<usize>(), 0..3000u64).prop_map(|(grant, actual)| Op::Reconcile { grant, actual }),
        2 => any::<usize>().prop_map(|grant| Op::Release { grant }),
        2 => (0..20_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
    ]
}

fn rate_limits() -> impl Strategy<Value = RateLimits> {
    (
        proptest::option::of(1..20u64),
        proptest::option::of(1..2000u64),
        proptest::option::of(1..4u32),
    )
        .prop_map(|(rpm, tpm, c)| limits(rpm, tpm, c))
}

fn check_bounds(
    l: &InProcessLimiter,
    scopes: &[(LimitScope, RateLimits)],
    live: &[(usize, Grant)],
    now: Instant,
) -> Result<(), TestCaseError> {
    for (i, (scope, lim)) in scopes.iter().enumerate() {
        if let Some(v) = l.level(scope, LimitKind::Rpm, now) {
            prop_assert!(v <= lim.rpm.unwrap(), "rpm {v} over {:?}", lim.rpm);
        }
        if let Some(v) = l.level(scope, LimitKind::Tpm, now) {
            prop_assert!(v <= lim.tpm.unwrap(), "tpm {v} over {:?}", lim.tpm);
        }
        // Slots in use are exactly the live grants on this scope, and within the cap.
        let holders = live.iter().filter(|(k, _)| i == 0 || i == k + 1).count() as u64;
        let in_use = l.level(scope, LimitKind::Concurrency, now).unwrap_or(0);
        if let Some(cap) = lim.max_concurrent {
            prop_assert_eq!(in_use, holders);
            prop_assert!(in_use <= cap as u64);
        } else {
            prop_assert_eq!(in_use, 0);
        }
    }
    Ok(())
}

fn levels(l: &InProcessLimiter, scopes: &[LimitScope], now: Instant) -> Vec<Option<u64>> {
    scopes
        .iter()
        .flat_map(|s| [LimitKind::Rpm, LimitKind::Tpm].map(|k| l.level(s, k, now)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sequences_keep_buckets_in_bounds(
        lims in proptest::collection::vec(rate_limits(), 3),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let l = InProcessLimiter::new();
        let t0 = Instant::now();
        let mut now = t0;
        let scopes = vec![
            (tenant("t"), lims[0]),
            (key("a"), lims[1]),
            (key("b"), lims[2]),
        ];
        let names: Vec<LimitScope> = scopes.iter().map(|(s, _)| s.clone()).collect();
        let mut live: Vec<(usize, Grant)> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire { key, tokens } => {
                    let req = request(&[scopes[0].clone(), scopes[key + 1].clone()], tokens);
                    let before = levels(&l, &names, now);
                    match l.try_acquire(&req, now) {
                        Verdict::Granted(g) => {
                            // Exactly 1 request and min(tokens, C) tokens from each bucket.
                            for (j, (scope, lim)) in scopes.iter().enumerate() {
                                if j != 0 && j != key + 1 { continue; }
                                let rpm = l.level(scope, LimitKind::Rpm, now);
                                let tpm = l.level(scope, LimitKind::Tpm, now);
                                if let Some(c) = lim.rpm {
                                    prop_assert_eq!(rpm, Some(before[2 * j].unwrap_or(c) - 1));
                                }
                                if let Some(c) = lim.tpm {
                                    prop_assert_eq!(tpm, Some(before[2 * j + 1].unwrap_or(c) - tokens.min(c)));
                                }
                            }
                            live.push((key, g));
                        }
                        Verdict::Wait(d) => {
                            prop_assert!(d.retry_after > Duration::ZERO);
                            // Nothing taken. (A scope seen for the first time starts full.)
                            let after = levels(&l, &names, now);
                            for (b, a) in before.iter().zip(&after) {
                                if b.is_some() { prop_assert_eq!(b, a); }
                            }
                        }
                        Verdict::Never(_) => prop_assert!(false, "limits are at least 1"),
                    }
                }
                Op::Reconcile { grant, actual } => {
                    if !live.is_empty() {
                        let n = live.len();
                        l.reconcile(&mut live[grant % n].1, actual, now);
                    }
                }
                Op::Release { grant } => {
                    if !live.is_empty() {
                        let n = live.len();
                        let (_, g) = live.swap_remove(grant % n);
                        l.release(&g);
                    }
                }
                Op::Advance { ms } => now += Duration::from_millis(ms),
                Op::Sweep => l.sweep(now),
            }
            check_bounds(&l, &scopes, &live, now)?;
        }
        for (_, g) in live.drain(..) {
            l.release(&g);
        }
        check_bounds(&l, &scopes, &live, now)?;
        for s in &names {
            prop_assert_eq!(l.level(s, LimitKind::Concurrency, now).unwrap_or(0), 0);
        }
        // Everything refills and can be swept once idle.
        l.sweep(now + Duration::from_secs(60));
        prop_assert!(l.is_empty());
    }
}

// ---- threads ----

#[test]
fn concurrent_threads_keep_invariants() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 3000;
    let l = Arc::new(InProcessLimiter::new());
    let tenant_limits = limits(Some(50_000), Some(200_000), Some(3));
    let key_limits = limits(Some(20_000), Some(50_000), Some(2));
    let keys = [key("k0"), key("k1"), key("k2")];
    // Grants outstanding per scope, counted by the test: always within the caps.
    let outstanding: Arc<[AtomicU32; 4]> = Arc::new(Default::default());
    let handles: Vec<_> = (0..THREADS)
        .map(|th| {
            let l = l.clone();
            let keys = keys.clone();
            let outstanding = outstanding.clone();
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ th as u64;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut grants = 0;
                for _ in 0..ROUNDS {
                    let k = (next() % 3) as usize;
                    let req = request(
                        &[(tenant("t"), tenant_limits), (keys[k].clone(), key_limits)],
                        next() % 500,
                    );
                    if let Verdict::Granted(mut g) = l.try_acquire(&req, Instant::now()) {
                        grants += 1;
                        for (i, cap) in [(0usize, 3u32), (k + 1, 2)] {
                            let n = outstanding[i].fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(n <= cap, "scope {i} has {n} in flight, cap {cap}");
                        }
                        std::thread::yield_now();
                        l.reconcile(&mut g, next() % 800, Instant::now());
                        for i in [0usize, k + 1] {
                            outstanding[i].fetch_sub(1, Ordering::SeqCst);
                        }
                        l.release(&g);
                    }
                }
                grants
            })
        })
        .collect();
    let grants: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(grants > 0);
    let now = Instant::now();
    assert_eq!(l.level(&tenant("t"), LimitKind::Concurrency, now), Some(0));
    assert!(l.level(&tenant("t"), LimitKind::Rpm, now).unwrap() <= 50_000);
    assert!(l.level(&tenant("t"), LimitKind::Tpm, now).unwrap() <= 200_000);
    for k in &keys {
        assert_eq!(l.level(k, LimitKind::Concurrency, now).unwrap_or(0), 0);
        assert!(l.level(k, LimitKind::Rpm, now).unwrap_or(0) <= 20_000);
        assert!(l.level(k, LimitKind::Tpm, now).unwrap_or(0) <= 50_000);
    }
}

// ---- async front, paused time ----

fn front() -> (Limits, Arc<InProcessLimiter>) {
    let inner = Arc::new(InProcessLimiter::new());
    (Limits::new(inner.clone()), inner)
}

fn tnow() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[tokio::test(start_paused = true)]
async fn tpm_waiter_is_granted_after_refill_within_deadline() {
    let (limits, _) = front();
    // 600 tpm: 10 tokens per second.
    let s = [(tenant("t"), self::limits(None, Some(600), None))];
    let start = tnow();
    let _g = limits
        .acquire(request(&s, 600), start, OnLimit::Queue)
        .await
        .unwrap();
    let g = limits
        .acquire(
            request(&s, 60),
            start + Duration::from_secs(30),
            OnLimit::Queue,
        )
        .await
        .unwrap();
    let waited = tnow() - start;
    assert!(waited >= Duration::from_secs(6), "{waited:?}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    assert_eq!(g.grant().tpm[0].charged, 60);
}

#[tokio::test(start_paused = true)]
async fn waiter_past_deadline_gets_error_with_retry_after() {
    let (limits, inner) = front();
    let s = [(tenant("t"), self::limits(None, Some(600), None))];
    let start = tnow();
    let _g = limits
        .acquire(request(&s, 600), start, OnLimit::Queue)
        .await
        .unwrap();
    let deadline = start + SEC;
    let e = limits
        .acquire(request(&s, 600), deadline, OnLimit::Queue)
        .await
        .unwrap_err();
    assert!(tnow() >= deadline);
    assert!(e.waited);
    assert_eq!(e.limit, LimitKind::Tpm);
    assert_eq!(e.value, 600);
    assert!(e.retry_after > Duration::ZERO);
    assert!(e.retry_after <= Duration::from_secs(59));
    // The failed waiter took nothing: 1 s of refill is all there is.
    assert_eq!(
        inner.level(&tenant("t"), LimitKind::Tpm, tnow().into_std()),
        Some(10)
    );
}

#[tokio::test(start_paused = true)]
async fn reject_fails_at_once() {
    let (limits, _) = front();
    let s = [(key("k"), self::limits(Some(1), None, None))];
    let start = tnow();
    let far = start + Duration::from_secs(600);
    let _g = limits
        .acquire(request(&s, 0), far, OnLimit::Reject)
        .await
        .unwrap();
    let e = limits
        .acquire(request(&s, 0), far, OnLimit::Reject)
        .await
        .unwrap_err();
    assert_eq!(tnow(), start);
    assert!(!e.waited);
    assert_eq!(e.limit, LimitKind::Rpm);
    assert_eq!(e.retry_after, Duration::from_secs(60));
    assert_eq!(
        e.to_string(),
        "key `k` is over its requests-per-minute limit (rpm = 1)"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_limit_fails_at_once_even_when_queueing() {
    let (limits, _) = front();
    let s = [(key("k"), self::limits(None, None, Some(0)))];
    let start = tnow();
    let e = limits
        .acquire(
            request(&s, 0),
            start + Duration::from_secs(60),
            OnLimit::Queue,
        )
        .await
        .unwrap_err();
    assert_eq!(tnow(), start);
    assert_eq!(e.limit, LimitKind::Concurrency);
    assert_eq!(e.value, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrency_waiter_wakes_on_release() {
    let (limits, inner) = front();
    let s = [(tenant("t"), self::limits(None, None, Some(1)))];
    let start = tnow();
    let deadline = start + Duration::from_secs(60);
    let first = limits
        .acquire(request(&s, 0), deadline, OnLimit::Queue)
        .await
        .unwrap();
    let waiter = {
        let limits = limits.clone();
        let req = request(&s, 0);
        tokio::spawn(async move { limits.acquire(req, deadline, OnLimit::Queue).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished());
    drop(first);
    let second: LimitGuard = waiter.await.unwrap().unwrap();
    // Woken by the release, not by its poll timer.
    assert!(tnow() - start < CONCURRENCY_POLL);
    let now = tnow().into_std();
    assert_eq!(
        inner.level(&tenant("t"), LimitKind::Concurrency, now),
        Some(1)
    );
    drop(second);
    assert_eq!(inner.level(&tenant("t"), LimitKind::Concurrency, now), None);
}

#[tokio::test(start_paused = true)]
async fn refund_wakes_tpm_waiter_early() {
    let (limits, _) = front();
    let s = [(tenant("t"), self::limits(None, Some(600), None))];
    let start = tnow();
    let deadline = start + Duration::from_secs(60);
    let mut first = limits
        .acquire(request(&s, 600), deadline, OnLimit::Queue)
        .await
        .unwrap();
    let waiter = {
        let limits = limits.clone();
        let req = request(&s, 300);
        tokio::spawn(async move { limits.acquire(req, deadline, OnLimit::Queue).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    first.reconcile(100);
    waiter.await.unwrap().unwrap();
    // Without the refund it would have waited 30 s.
    assert!(tnow() - start < Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn dropped_waiting_future_takes_nothing() {
    let (limits, inner) = front();
    let s = [(tenant("t"), self::limits(Some(10), Some(600), Some(1)))];
    let start = tnow();
    let deadline = start + Duration::from_secs(60);
    let first = limits
        .acquire(request(&s, 600), deadline, OnLimit::Queue)
        .await
        .unwrap();
    let level = |kind| inner.level(&tenant("t"), kind, tnow().into_std());
    let before = [
        level(LimitKind::Rpm),
        level(LimitKind::Tpm),
        level(LimitKind::Concurrency),
    ];
    tokio::select! {
        r = limits.acquire(request(&s, 100), deadline, OnLimit::Queue) => panic!("{r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
    }
    assert_eq!(tnow() - start, Duration::from_millis(10));
    // Only refill has happened: 10 ms of 10 rpm and 600 tpm is less than a unit.
    let after = [
        level(LimitKind::Rpm),
        level(LimitKind::Tpm),
        level(LimitKind::Concurrency),
    ];
    assert_eq!(before, after);
    assert_eq!(after[2], Some(1));
    drop(first);
    assert_eq!(level(LimitKind::Concurrency), Some(0));
}

#[tokio::test(start_paused = true)]
async fn unlimited_request_takes_the_fast_path() {
    let (limits, inner) = front();
    let s = [
        (tenant("t"), RateLimits::default()),
        (key("k"), RateLimits::default()),
    ];
    let mut g = limits
        .acquire(request(&s, 1000), tnow(), OnLimit::Reject)
        .await
        .unwrap();
    assert!(g.grant().is_empty());
    g.reconcile(5);
    drop(g);
    assert!(inner.is_empty());
    let g = Limits::in_process()
        .acquire(LimitRequest::default(), tnow(), OnLimit::Queue)
        .await
        .unwrap();
    assert!(g.grant().is_empty());
}
