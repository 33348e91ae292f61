//! Async tests of [`Pool`] on tokio's paused clock. They cover capacity, cancellation,
//! deadlines, live reconfiguration, reported state, and the exchange of service between
//! replicas. No test measures wall-clock speed: time only advances when every task is idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairgate_admission::fair::Mode;
use fairgate_admission::pool::{AdmitError, AdmitRequest, Headroom, Permit, Pool, PoolConfig};
use fairgate_types::Priority;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

/// SplitMix64: deterministic randomness for the stress loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

const TENANTS: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];

fn req(tenant: &str, weight: u32, deadline: Duration) -> AdmitRequest<'_> {
    AdmitRequest {
        tenant,
        weight,
        group: None,
        group_weight: weight,
        priority: Priority::Interactive,
        tokens: 10,
        prompt_estimate: 5,
        max_queued: 1_000,
        deadline: Instant::now() + deadline,
    }
}

fn pool(cap: usize) -> Arc<Pool> {
    pool_with(cap, Mode::Fair)
}

fn pool_with(cap: usize, mode: Mode) -> Arc<Pool> {
    pool_headroom(cap, mode, Headroom::Auto)
}

fn pool_headroom(cap: usize, mode: Mode, headroom: Headroom) -> Arc<Pool> {
    Pool::new(
        "m",
        PoolConfig {
            max_in_flight: cap,
            mode,
            headroom,
            ..PoolConfig::default()
        },
    )
}

const HOUR: Duration = Duration::from_secs(3_600);

/// Lets every runnable task run until it blocks (the clock does not move).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

type Order = Arc<Mutex<Vec<&'static str>>>;

/// Spawns a waiter. Once it is admitted, it records its name, holds the slot for `hold`, and
/// then frees it.
fn waiter(
    p: &Arc<Pool>,
    name: &'static str,
    weight: u32,
    order: &Order,
    hold: Duration,
) -> JoinHandle<()> {
    let (p, order) = (p.clone(), order.clone());
    tokio::spawn(async move {
        let permit = p.admit(req(name, weight, HOUR)).await.expect("admitted");
        order.lock().unwrap().push(name);
        sleep(hold).await;
        drop(permit);
    })
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        t.await.expect("task ran to completion");
    }
}

/// Checks the pool's snapshot against itself and the bound. Per-tenant counts add up to the
/// totals, in-flight never exceeds capacity, and the pool never idles more than `headroom`
/// slots while requests wait (there is no token bound here).
fn check_state(p: &Pool, cap: usize, headroom: usize) -> (usize, usize) {
    let s = p.state();
    assert!(s.in_flight <= cap, "{} in flight > {cap}", s.in_flight);
    let tenant_in_flight: usize = s.tenants.iter().map(|t| t.view.in_flight).sum();
    let tenant_queued: usize = s.tenants.iter().map(|t| t.view.queued).sum();
    assert_eq!(tenant_in_flight, s.in_flight);
    assert_eq!(tenant_queued, s.queued);
    if s.queued > 0 {
        assert!(
            s.in_flight + headroom >= cap,
            "work-conserving beyond the headroom: {} of {cap} slots idle while {} wait",
            cap - s.in_flight,
            s.queued
        );
    }
    (s.in_flight, s.queued)
}

#[tokio::test(start_paused = true)]
async fn concurrent_tenants_never_exceed_capacity_and_drain() {
    // Without headroom the pool is strictly work-conserving; with the automatic headroom it
    // idles at most its size (at most half the pool: two slots of four) while only tenants
    // over their share wait.
    stress(Headroom::Slots(0), 0).await;
    stress(Headroom::Auto, 2).await;
}

async fn stress(headroom: Headroom, idle: usize) {
    const CAP: usize = 4;
    const REQUESTS: u64 = 300;
    let p = pool_headroom(CAP, Mode::Fair, headroom);
    let mut rng = Rng(7);
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let t = rng.range(0, TENANTS.len() as u64 - 1) as usize;
        let (arrive, hold, tokens) = (rng.range(0, 2_000), rng.range(1, 80), rng.range(0, 40));
        let batch = rng.range(0, 3) == 0;
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            sleep(Duration::from_millis(arrive)).await;
            let mut r = req(TENANTS[t], 1 + t as u32 % 3, HOUR);
            r.priority = if batch {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            if i % 5 == 0 {
                r.group = Some("lab");
                r.group_weight = 2;
            }
            let mut permit = p.admit(r).await.expect("admitted before the deadline");
            assert!(p.in_flight() <= CAP);
            for _ in 0..tokens {
                sleep(Duration::from_millis(hold / (tokens + 1) + 1)).await;
                permit.add_completion_tokens(1);
            }
            sleep(Duration::from_millis(hold)).await;
            drop(permit);
        }));
    }
    let sampler = {
        let p = p.clone();
        tokio::spawn(async move {
            let (mut saw_full, mut saw_queue) = (false, false);
            for _ in 0..10_000 {
                let (in_flight, queued) = check_state(&p, CAP, idle);
                saw_full |= in_flight == CAP;
                saw_queue |= queued > 0;
                sleep(Duration::from_millis(1)).await;
            }
            (saw_full, saw_queue)
        })
    };
    join_all(tasks).await;
    let (saw_full, saw_queue) = sampler.await.unwrap();
    assert!(saw_full && saw_queue, "the load should have queued");
    assert_eq!(p.in_flight(), 0);
    assert_eq!(p.queued(), 0);
    assert_eq!(p.admitted_total(), REQUESTS);
    let s = p.state();
    assert_eq!((s.in_flight, s.queued, s.tokens_in_flight), (0, 0, 0));
    assert!(s
        .tenants
        .iter()
        .all(|t| t.view.in_flight == 0 && t.view.queued == 0));
}

#[tokio::test(start_paused = true)]
async fn aborted_waiter_leaves_the_queue_at_once() {
    let p = pool(1);
    let held = p.admit(req("h", 1, HOUR)).await.unwrap();
    let order: Order = Arc::default();
    let ws: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|n| waiter(&p, n, 1, &order, Duration::from_millis(1)))
        .collect();
    settle().await;
    assert_eq!(p.queued(), 3);
    let mut ws = ws.into_iter();
    let a = ws.next().unwrap();
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    assert_eq!(p.queued(), 2, "the aborted waiter left at once");
    assert_eq!(p.in_flight(), 1);
    drop(held);
    join_all(ws.collect()).await;
    assert_eq!(*order.lock().unwrap(), ["b", "c"]);
    assert_eq!((p.in_flight(), p.queued()), (0, 0));
}

/// The grant reaches a waiter whose task is aborted before it runs again. The slot must come
/// back and go to the next waiter.
#[tokio::test(start_paused = true)]
async fn waiter_aborted_after_its_grant_gives_the_slot_on() {
    let p = pool(1);
    let held = p.admit(req("h", 1, HOUR)).await.unwrap();
    let order: Order = Arc::default();
    let first = waiter(&p, "a", 1, &order, Duration::from_millis(5));
    settle().await;
    let second = waiter(&p, "b", 1, &order, Duration::from_millis(5));
    settle().await;
    assert_eq!(p.queued(), 2);
    // The grant goes to `a` synchronously inside the drop; `a` has not run since.
    drop(held);
    assert_eq!((p.in_flight(), p.queued()), (1, 1));
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!((p.in_flight(), p.queued()), (1, 0), "a's slot went to b");
    second.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["b"]);
    assert_eq!((p.in_flight(), p.queued()), (0, 0));
}

/// Aborts, timeouts and grants race in random interleavings. Capacity never leaks, and the
/// queue ends empty.
#[tokio::test(start_paused = true)]
async fn aborts_racing_with_grants_never_leak_capacity() {
    for seed in 0..400u64 {
        let mut rng = Rng(seed);
        let cap = rng.range(1, 3) as usize;
        let p = pool(cap);
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(p.admit(req("h", 1, HOUR)).await.unwrap());
        }
        let mut tasks = Vec::new();
        for _ in 0..rng.range(1, 6) {
            let p = p.clone();
            let name = TENANTS[rng.range(0, 3) as usize];
            let (deadline, hold) = (rng.range(1, 6), rng.range(0, 3));
            tasks.push(Some(tokio::spawn(async move {
                let r = req(name, 1, Duration::from_millis(deadline));
                if let Ok(permit) = p.admit(r).await {
                    sleep(Duration::from_millis(hold)).await;
                    drop(permit);
                }
            })));
            for _ in 0..rng.range(0, 2) {
                tokio::task::yield_now().await;
            }
        }
        // Interleave freeing the held slots, aborting waiters, yields and clock steps.
        for _ in 0..(cap + tasks.len()) * 2 {
            match rng.range(0, 4) {
                0 => drop(held.pop()),
                1 => {
                    let i = rng.range(0, tasks.len() as u64 - 1) as usize;
                    if let Some(t) = &tasks[i] {
                        t.abort();
                    }
                }
                2 => sleep(Duration::from_millis(rng.range(0, 2))).await,
                _ => {
                    for _ in 0..rng.range(1, 3) {
                        tokio::task::yield_now().await;
                    }
                }
            }
            check_state(&p, cap, 0);
        }
        drop(held);
        for t in tasks.iter_mut().filter_map(Option::take) {
            // Finished, cancelled or timed out: all fine, as long as nothing leaks.
            let _ = t.await;
        }
        assert_eq!(
            (p.in_flight(), p.queued()),
            (0, 0),
            "seed {seed}: capacity leaked"
        );
        let s = p.state();
        assert_eq!(s.tokens_in_flight, 0, "seed {seed}");
        // The pool still works at full capacity.
        let mut again = Vec::new();
        for _ in 0..cap {
            again.push(
                p.admit(req("z", 1, Duration::ZERO))
                    .await
                    .expect("free slot"),
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn timeout_when_next_in_line_means_the_pool_is_overloaded() {
    let p = pool(1);
    let _held = p.admit(req("a", 1, HOUR)).await.unwrap();
    let started = Instant::now();
    let e = p
        .admit(req("b", 1, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, AdmitError::Timeout { overloaded: true, waited, .. } if waited >= Duration::from_secs(2)),
        "{e:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(e.reason(), "pool_overloaded");
    assert!(e.retry_after() >= Duration::from_secs(1), "{e:?}");
    assert_eq!(p.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn timeout_when_held_back_by_other_tenants_is_a_queue_timeout() {
    let p = pool(1);
    // b holds the only slot and has been served a lot.
    let mut held = p.admit(req("b", 1, HOUR)).await.unwrap();
    held.add_completion_tokens(1_000);
    // c arrives and is lifted to b's level. Then b queues a second request, and b's stream
    // moves on, so c has the lower counter: b is held back by c's share.
    let order: Order = Arc::default();
    let c = waiter(&p, "c", 1, &order, Duration::from_millis(1));
    settle().await;
    let p2 = p.clone();
    let b = tokio::spawn(async move {
        p2.admit(req("b", 1, Duration::from_secs(1)))
            .await
            .map(drop)
    });
    settle().await;
    held.add_completion_tokens(1);
    let e = b.await.unwrap().unwrap_err();
    assert_eq!(e.reason(), "queue_timeout", "{e:?}");
    assert!(matches!(
        e,
        AdmitError::Timeout {
            overloaded: false,
            ..
        }
    ));
    assert!(e.retry_after() >= Duration::from_secs(1));
    assert_eq!(p.queued(), 1);
    drop(held);
    c.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["c"]);
}

/// Runs a pool of one slot with `a` and `b` each queuing six requests. With `reweight`, b's
/// weight goes from 1 to 4 while they wait. Returns the dispatch order.
async fn order_with_live_weight(reweight: bool) -> Vec<&'static str> {
    let p = pool(1);
    let held = p.admit(req("x", 1, HOUR)).await.unwrap();
    let order: Order = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        for n in ["a", "b"] {
            tasks.push(waiter(&p, n, 1, &order, Duration::from_millis(10)));
            settle().await;
        }
    }
    assert_eq!(p.queued(), 12);
    if reweight {
        p.set_tenant("b", 4, None, 4);
    }
    drop(held);
    join_all(tasks).await;
    let order = order.lock().unwrap().clone();
    order
}

#[tokio::test(start_paused = true)]
async fn live_weight_change_reorders_queued_requests() {
    // a and b are lifted to x's counter and tie, and a was seen first. Each dispatch charges
    // 5 prompt tokens: 5 for a, 5/4 for b once b weighs 4.
    assert_eq!(
        order_with_live_weight(false).await,
        ["a", "b", "a", "b", "a", "b", "a", "b", "a", "b", "a", "b"]
    );
    assert_eq!(
        order_with_live_weight(true).await,
        ["a", "b", "b", "b", "b", "a", "b", "b", "a", "a", "a", "a"]
    );
}

#[tokio::test(start_paused = true)]
async fn growing_the_pool_dispatches_waiters_at_once() {
    let p = pool(1);
    let held = p.admit(req("h", 1, HOUR)).await.unwrap();
    let order: Order = Arc::default();
    let tasks: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|n| waiter(&p, n, 1, &order, Duration::from_secs(1)))
        .collect();
    settle().await;
    assert_eq!((p.in_flight(), p.queued()), (1, 3));
    p.reconfigure(PoolConfig {
        max_in_flight: 4,
        ..PoolConfig::default()
    });
    // Dispatched inside `reconfigure`, with no time passing.
    assert_eq!((p.in_flight(), p.queued()), (4, 0));
    settle().await;
    assert_eq!(order.lock().unwrap().len(), 3);
    // Shrinking revokes nothing, but new work waits until in-flight falls under the bound.
    p.reconfigure(PoolConfig {
        max_in_flight: 2,
        ..PoolConfig::default()
    });
    assert_eq!(p.in_flight(), 4);
    let late = waiter(&p, "d", 1, &order, Duration::from_millis(1));
    settle().await;
    assert_eq!(p.queued(), 1);
    drop(held);
    assert_eq!(p.queued(), 1, "3 in flight is still over 2");
    join_all(tasks).await;
    late.await.unwrap();
    assert_eq!(order.lock().unwrap().last(), Some(&"d"));
    assert_eq!((p.in_flight(), p.queued()), (0, 0));
}

/// The heavy tenant holds the slot and has been served a lot. It queues two more requests,
/// then a light tenant queues one. Returns the dispatch order.
async fn heavy_light_order(mode: Mode, switch_to: Option<Mode>) -> Vec<&'static str> {
    let p = pool_with(1, mode);
    let mut held = p.admit(req("heavy", 1, HOUR)).await.unwrap();
    held.add_completion_tokens(1_000);
    let order: Order = Arc::default();
    let mut tasks = Vec::new();
    for n in ["heavy", "heavy", "light"] {
        tasks.push(waiter(&p, n, 1, &order, Duration::from_millis(10)));
        settle().await;
    }
    // Light was lifted to heavy's counter on arrival; heavy's stream keeps being charged.
    held.add_completion_tokens(1);
    if let Some(m) = switch_to {
        p.reconfigure(PoolConfig {
            max_in_flight: 1,
            mode: m,
            ..PoolConfig::default()
        });
    }
    drop(held);
    join_all(tasks).await;
    let order = order.lock().unwrap().clone();
    order
}

#[tokio::test(start_paused = true)]
async fn fifo_and_fair_modes_order_differently() {
    assert_eq!(
        heavy_light_order(Mode::Fair, None).await,
        ["light", "heavy", "heavy"]
    );
    assert_eq!(
        heavy_light_order(Mode::Fifo, None).await,
        ["heavy", "heavy", "light"]
    );
    // The mode switches live, for requests already queued.
    assert_eq!(
        heavy_light_order(Mode::Fair, Some(Mode::Fifo)).await,
        ["heavy", "heavy", "light"]
    );
    assert_eq!(
        heavy_light_order(Mode::Fifo, Some(Mode::Fair)).await,
        ["light", "heavy", "heavy"]
    );
}

#[tokio::test(start_paused = true)]
async fn state_reports_queues_flights_and_shares() {
    let p = pool(2);
    let mut a1 = p.admit(req("a", 1, HOUR)).await.unwrap();
    let mut a2 = p.admit(req("a", 1, HOUR)).await.unwrap();
    let order: Order = Arc::default();
    let w = vec![
        waiter(&p, "a", 1, &order, Duration::ZERO),
        waiter(&p, "b", 3, &order, Duration::ZERO),
        waiter(&p, "b", 3, &order, Duration::ZERO),
    ];
    settle().await;
    let s = p.state();
    assert_eq!(
        (s.name.as_str(), s.mode, s.max_in_flight),
        ("m", Mode::Fair, 2)
    );
    assert_eq!((s.in_flight, s.queued, s.tokens_in_flight), (2, 3, 20));
    let view = |s: &fairgate_admission::pool::PoolState, n: &str| {
        s.tenants
            .iter()
            .find(|t| &*t.view.name == n)
            .cloned()
            .expect("tenant listed")
    };
    let (ta, tb) = (view(&s, "a"), view(&s, "b"));
    assert_eq!(
        (ta.view.in_flight, ta.view.queued, ta.view.weight),
        (2, 1, 1)
    );
    assert_eq!(
        (tb.view.in_flight, tb.view.queued, tb.view.weight),
        (0, 2, 3)
    );
    assert_eq!(tb.view.group, None);
    assert_eq!((ta.view.service, ta.service_last_minute), (10, 10));
    assert!((ta.share_last_minute - 1.0).abs() < 1e-9);

    a1.add_completion_tokens(20);
    a2.add_completion_tokens(10);
    drop((a1, a2));
    join_all(w).await;
    let s = p.state();
    assert_eq!((s.in_flight, s.queued), (0, 0));
    // a: 3 prompts of 5 + 30 output tokens at 2; b: 2 prompts of 5.
    let (ta, tb) = (view(&s, "a"), view(&s, "b"));
    assert_eq!((ta.service_last_minute, tb.service_last_minute), (75, 10));
    let sum: f64 = s.tenants.iter().map(|t| t.share_last_minute).sum();
    assert!((sum - 1.0).abs() < 1e-9, "shares sum to {sum}");
    assert!((ta.share_last_minute - 75.0 / 85.0).abs() < 1e-9);
    // A minute later the window is empty, but the counters and totals remain.
    sleep(Duration::from_secs(61)).await;
    let s = p.state();
    assert!(s
        .tenants
        .iter()
        .all(|t| t.service_last_minute == 0 && t.share_last_minute == 0.0));
    assert_eq!(view(&s, "a").view.service, 75);
}

/// Orders `a` and `b` in a full one-slot pool, optionally after absorbing `remote` service
/// for `a`, either before `a` arrives or while both wait.
async fn replica_order(remote: Option<i64>, before: bool) -> Vec<&'static str> {
    let p = pool(1);
    let held = p.admit(req("x", 1, HOUR)).await.unwrap();
    if let (Some(cost), true) = (remote, before) {
        p.absorb_remote_service("a", 1, cost);
    }
    let order: Order = Arc::default();
    let mut tasks = Vec::new();
    for n in ["a", "b"] {
        tasks.push(waiter(&p, n, 1, &order, Duration::from_millis(1)));
        settle().await;
    }
    if let (Some(cost), false) = (remote, before) {
        p.absorb_remote_service("a", 1, cost);
    }
    drop(held);
    join_all(tasks).await;
    let order = order.lock().unwrap().clone();
    order
}

#[tokio::test(start_paused = true)]
async fn remote_service_round_trip_changes_local_order() {
    // Replica 1 serves `a`.
    let r1 = pool(4);
    let mut permit: Permit = r1.admit(req("a", 1, HOUR)).await.unwrap();
    permit.add_completion_tokens(500);
    drop(permit);
    drop(r1.admit(req("c", 1, HOUR)).await.unwrap());
    let mut taken = r1.take_local_service();
    taken.sort();
    let taken: Vec<(String, i64)> = taken.into_iter().map(|(n, c)| (n.to_string(), c)).collect();
    assert_eq!(taken, [("a".to_owned(), 1_005), ("c".to_owned(), 5)]);
    assert!(r1.take_local_service().is_empty(), "taken once");
    let a_remote = taken[0].1;

    // Replica 2 without the exchange: a and b tie and a, seen first, goes first.
    assert_eq!(replica_order(None, false).await, ["a", "b"]);
    // With it, a's remote service puts it behind b. This holds whether a was idle...
    assert_eq!(replica_order(Some(a_remote), true).await, ["b", "a"]);
    // ...or already queued.
    assert_eq!(replica_order(Some(a_remote), false).await, ["b", "a"]);

    // Absorbed service is not local service: it is not published again.
    let r2 = pool(1);
    r2.absorb_remote_service("a", 1, 1_000);
    assert!(r2.take_local_service().is_empty());
    let s = r2.state();
    assert_eq!(s.tenants.len(), 1);
    assert_eq!(s.tenants[0].service_last_minute, 0);
}

/// A request reserving `tokens` for the token bound.
fn sized(tenant: &str, tokens: u64, deadline: Duration) -> AdmitRequest<'_> {
    AdmitRequest {
        tokens,
        ..req(tenant, 1, deadline)
    }
}

#[tokio::test(start_paused = true)]
async fn next_in_line_timeout_with_someone_behind_is_pool_overloaded() {
    let p = pool(1);
    let _held = p.admit(req("x", 1, HOUR)).await.unwrap();
    let p2 = p.clone();
    let b = tokio::spawn(async move {
        p2.admit(req("b", 1, Duration::from_secs(1)))
            .await
            .map(drop)
    });
    settle().await;
    let p3 = p.clone();
    let _c = tokio::spawn(async move { p3.admit(req("c", 1, HOUR)).await.map(drop) });
    settle().await;
    // `c` has more service, so `b` is strictly next in line when its deadline passes.
    p.absorb_remote_service("c", 1, 100);
    assert_eq!(b.await.unwrap().unwrap_err().reason(), "pool_overloaded");
}

#[tokio::test(start_paused = true)]
async fn settle_refund_is_published_and_leaves_the_window() {
    let p = pool(1);
    let mut r = req("a", 1, Duration::from_secs(1));
    r.prompt_estimate = 100;
    let mut permit = p.admit(r).await.unwrap();
    permit.settle(10, 0);
    drop(permit);
    let s = p.state();
    assert_eq!(s.tenants[0].view.service, 10);
    assert_eq!(s.tenants[0].service_last_minute, 10);
    assert_eq!(p.take_local_service(), vec![(Arc::from("a"), 10)]);

    // A refund after the service was published goes out as a negative delta.
    let mut r = req("a", 1, Duration::from_secs(1));
    r.prompt_estimate = 50;
    let mut permit = p.admit(r).await.unwrap();
    assert_eq!(p.take_local_service(), vec![(Arc::from("a"), 50)]);
    permit.settle(20, 0);
    drop(permit);
    assert_eq!(p.take_local_service(), vec![(Arc::from("a"), -30)]);
}

#[tokio::test(start_paused = true)]
async fn shrinking_token_bound_does_not_wedge_the_queue_head() {
    let p = Pool::new(
        "m",
        PoolConfig {
            max_in_flight: 4,
            max_tokens_in_flight: Some(100),
            ..PoolConfig::default()
        },
    );
    let held = p.admit(sized("x", 60, HOUR)).await.unwrap();
    let p2 = p.clone();
    let big = tokio::spawn(async move {
        p2.admit(sized("a", 80, Duration::from_secs(30)))
            .await
            .map(drop)
    });
    settle().await;
    p.reconfigure(PoolConfig {
        max_in_flight: 4,
        max_tokens_in_flight: Some(50),
        ..PoolConfig::default()
    });
    drop(held);
    // Larger than the new bound, it runs alone instead of blocking the queue forever.
    assert_eq!(p.in_flight(), 1, "queued {}", p.queued());
    big.await.unwrap().unwrap();
}

/// A heavy tenant holds every slot but the headroom and has more queued; a light tenant's
/// request is admitted at once, ahead of the queued heavy work.
#[tokio::test(start_paused = true)]
async fn a_light_tenant_is_admitted_ahead_of_queued_heavy_work_into_the_headroom() {
    let p = pool_headroom(8, Mode::Fair, Headroom::Slots(1));
    // The light tenant has been here (one request, done); the heavy one floods.
    drop(p.admit(req("light", 1, HOUR)).await.unwrap());
    let mut heavy = Vec::new();
    for _ in 0..7 {
        heavy.push(p.admit(req("heavy", 1, HOUR)).await.unwrap());
    }
    // The eighth slot is the headroom, and heavy (share 4 of 8 beside light) holds 7: its
    // next request queues although a slot is free.
    let order: Order = Arc::default();
    let queued = waiter(&p, "heavy", 1, &order, HOUR);
    settle().await;
    assert_eq!((p.in_flight(), p.queued()), (7, 1));
    // The light tenant's request is admitted at once, ahead of the queued heavy request.
    let light = tokio::time::timeout(Duration::ZERO, p.admit(req("light", 1, HOUR))).await;
    assert!(light.is_ok(), "light must not wait behind heavy's queue");
    assert_eq!((p.in_flight(), p.queued()), (8, 1));
    // A freed slot goes to the queued heavy request as usual.
    drop(heavy.pop());
    settle().await;
    assert_eq!(*order.lock().unwrap(), ["heavy"]);
    queued.abort();
}

/// A tenant at or above its fair share never takes a headroom slot, even when it is free.
#[tokio::test(start_paused = true)]
async fn headroom_is_never_used_by_a_tenant_at_or_above_its_share() {
    let p = pool_headroom(4, Mode::Fair, Headroom::Slots(1));
    // a has been here; b floods. Equal weights: each one's share is 2 of 4 slots.
    drop(p.admit(req("a", 1, HOUR)).await.unwrap());
    let mut b = Vec::new();
    for _ in 0..3 {
        b.push(p.admit(req("b", 1, HOUR)).await.unwrap());
    }
    // One slot is left, and it is the headroom: b is over its share, so b waits...
    let b4 = tokio::time::timeout(Duration::from_secs(1), p.admit(req("b", 1, HOUR))).await;
    assert!(
        b4.is_err(),
        "b is over its share: the headroom slot is not b's"
    );
    assert_eq!(p.in_flight(), 3);
    // ...while a, below its share, takes it at once.
    let a = tokio::time::timeout(Duration::ZERO, p.admit(req("a", 1, HOUR))).await;
    assert!(a.is_ok(), "a is below its share");
    assert_eq!(p.in_flight(), 4);
    // A slot a holds is a's own: when one of b's ends, b may take the freed slot again.
    drop(b.pop());
    let b5 = tokio::time::timeout(Duration::ZERO, p.admit(req("b", 1, HOUR))).await;
    assert!(
        b5.is_ok(),
        "the headroom is in a's hands, so b's 3 slots are not over the limit"
    );
}

/// The automatic headroom costs nothing while one tenant has the pool to itself, and appears
/// once a second tenant has been admitted.
#[tokio::test(start_paused = true)]
async fn automatic_headroom_appears_with_a_second_tenant() {
    let p = pool_headroom(8, Mode::Fair, Headroom::Auto);
    let mut heavy = Vec::new();
    for _ in 0..8 {
        let r = tokio::time::timeout(Duration::ZERO, p.admit(req("heavy", 1, HOUR))).await;
        heavy.push(r.expect("alone, heavy uses every slot").unwrap());
    }
    assert_eq!(p.state().headroom, 0, "one tenant: no headroom");
    // Light arrives while the pool is full: it waits for the next free slot (no headroom yet).
    let order: Order = Arc::default();
    let light = waiter(&p, "light", 1, &order, Duration::from_millis(10));
    settle().await;
    assert_eq!(p.queued(), 1);
    drop(heavy.pop());
    settle().await;
    assert_eq!(*order.lock().unwrap(), ["light"]);
    sleep(Duration::from_millis(20)).await;
    light.await.unwrap();
    // Two tenants now: heavy refills only up to the headroom; light finds its slot at once.
    let refill = waiter(&p, "heavy", 1, &order, HOUR);
    settle().await;
    assert_eq!(
        p.in_flight(),
        7,
        "one slot kept for a tenant below its share"
    );
    assert_eq!(
        p.state().headroom,
        1,
        "two tenants: the operator sees the slot kept"
    );
    assert_eq!(p.queued(), 1);
    let again = tokio::time::timeout(Duration::ZERO, p.admit(req("light", 1, HOUR))).await;
    assert!(again.is_ok(), "light is admitted at once");
    refill.abort();
}

/// A tenant counts toward the automatic headroom as light only while its latest admission found
/// nothing else of it in flight: a flood's first stream does, its next ones do not.
#[tokio::test(start_paused = true)]
async fn a_flood_stops_counting_as_light_once_it_holds_several_slots() {
    let p = pool_headroom(16, Mode::Fair, Headroom::Auto);
    let mut held = Vec::new();
    held.push(p.admit(req("heavy", 1, HOUR)).await.unwrap());
    held.push(p.admit(req("light", 1, HOUR)).await.unwrap());
    // Both were admitted with nothing else in flight: two light tenants, two slots kept.
    assert_eq!(p.state().headroom, 2);
    for _ in 0..4 {
        held.push(p.admit(req("heavy", 1, HOUR)).await.unwrap());
    }
    assert_eq!(
        p.state().headroom,
        1,
        "heavy holds five slots now: only light is kept a slot for"
    );
}

/// Several interactive tenants, each one request at a time, are kept a slot each (up to half
/// the pool): the flood beside them cannot take the slots they come back to.
#[tokio::test(start_paused = true)]
async fn several_light_tenants_are_kept_a_slot_each() {
    let p = pool_headroom(16, Mode::Fair, Headroom::Auto);
    let mut heavy = Vec::new();
    for _ in 0..16 {
        heavy.push(p.admit(req("heavy", 1, HOUR)).await.unwrap());
    }
    // Five chat users arrive one after another while the flood holds everything; each is let
    // in as a heavy stream ends, and then keeps coming back.
    let names = ["c0", "c1", "c2", "c3", "c4"];
    let mut chats = Vec::new();
    for name in names {
        drop(heavy.pop());
        chats.push(p.admit(req(name, 1, HOUR)).await.unwrap());
    }
    // 30 s of back-to-back requests (each finds nothing else of its tenant in flight).
    for _ in 0..300 {
        chats.clear();
        for name in names {
            chats.push(p.admit(req(name, 1, HOUR)).await.unwrap());
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.state().headroom, 5, "one slot per light tenant");
    // The flood asks for more: it may not take the slots the chat users come back to.
    let order: Order = Arc::default();
    let refill: Vec<_> = (0..8)
        .map(|_| waiter(&p, "heavy", 1, &order, HOUR))
        .collect();
    settle().await;
    assert_eq!(p.in_flight(), 16, "11 heavy + 5 chat users");
    chats.clear();
    settle().await;
    assert_eq!(
        p.in_flight(),
        11,
        "the chat users' slots stay free for them while they are between requests"
    );
    for name in names {
        let again = tokio::time::timeout(Duration::ZERO, p.admit(req(name, 1, HOUR))).await;
        assert!(again.is_ok(), "{name} is admitted at once");
    }
    for w in refill {
        w.abort();
    }
}

/// Many tenants that each sent one request a while ago are not kept a slot each: the headroom
/// follows how many of them are likely in flight at once.
#[tokio::test(start_paused = true)]
async fn many_occasional_light_tenants_keep_what_they_use() {
    let p = pool_headroom(16, Mode::Fair, Headroom::Auto);
    let _heavy = p.admit(req("heavy", 1, HOUR)).await.unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("occasional{i}")).collect();
    // One short request each, 400 ms apart: about one in flight at any time.
    for _ in 0..3 {
        for name in &names {
            let one = p.admit(req(name, 1, HOUR)).await.unwrap();
            sleep(Duration::from_millis(50)).await;
            drop(one);
            sleep(Duration::from_millis(350)).await;
        }
    }
    let h = p.state().headroom;
    assert!(
        (1..=5).contains(&h),
        "13 light tenants (heavy's one request too), 1.1 in flight on average: headroom {h}, \
         not one each (8, half the pool)"
    );
}

/// FIFO mode (the plain-proxy baseline) keeps no headroom.
#[tokio::test(start_paused = true)]
async fn fifo_keeps_no_headroom() {
    let p = pool_headroom(4, Mode::Fifo, Headroom::Slots(1));
    let _a = p.admit(req("a", 1, HOUR)).await.unwrap();
    let _b1 = p.admit(req("b", 1, HOUR)).await.unwrap();
    let _b2 = p.admit(req("b", 1, HOUR)).await.unwrap();
    let b3 = tokio::time::timeout(Duration::ZERO, p.admit(req("b", 1, HOUR))).await;
    assert!(b3.is_ok(), "fifo fills every slot");
}

fn pool_engine(cap: usize, extra: usize) -> Arc<Pool> {
    Pool::new(
        "m",
        PoolConfig {
            max_in_flight: cap,
            headroom: Headroom::Slots(0),
            engine_extra: extra,
            engine_priority: true,
            ..PoolConfig::default()
        },
    )
}

/// Engine slots beyond the capacity (a priority-policy engine's `engine_max_seqs`) go only to
/// a tenant below its share, never to queued over-share work, and do not shrink the slots the
/// over-share tenant may hold.
#[tokio::test(start_paused = true)]
async fn engine_slots_go_only_to_tenants_below_their_share() {
    let p = pool_engine(4, 1);
    drop(p.admit(req("light", 1, HOUR)).await.unwrap());
    let mut heavy = Vec::new();
    for _ in 0..4 {
        let h = p.admit(req("heavy", 1, HOUR)).await.unwrap();
        assert!(!h.engine_slot());
        heavy.push(h);
    }
    // The pool is full; heavy (over its share of 2) queues and the engine slot stays free.
    let order: Order = Arc::default();
    let queued = waiter(&p, "heavy", 1, &order, HOUR);
    settle().await;
    assert_eq!((p.in_flight(), p.queued()), (4, 1));
    // The light tenant gets the engine slot at once, marked as such and at position 0.
    let light = tokio::time::timeout(Duration::ZERO, p.admit(req("light", 1, HOUR)))
        .await
        .expect("light must not wait")
        .unwrap();
    assert!(light.engine_slot());
    assert_eq!(light.rank(), 0);
    assert_eq!(p.in_flight(), 5);
    // The one engine slot is taken: a second light request waits like anyone else.
    let light2 = tokio::time::timeout(Duration::from_secs(1), p.admit(req("light", 1, HOUR))).await;
    assert!(light2.is_err(), "only one engine slot");
    // A heavy slot that frees goes to heavy's queued request: the engine slot in use does not
    // count against the pool's own capacity.
    drop(heavy.pop());
    settle().await;
    assert_eq!(*order.lock().unwrap(), ["heavy"]);
    assert_eq!(p.in_flight(), 5);
    drop(light);
    assert_eq!(p.in_flight(), 4);
    queued.abort();
}

/// The fair-share position a permit carries: whole fair shares already held, 0 below the share.
#[tokio::test(start_paused = true)]
async fn permits_carry_the_fair_share_position() {
    let p = pool_engine(8, 0);
    drop(p.admit(req("a", 1, HOUR)).await.unwrap());
    // Two tenants present: each one's share is 4 of 8 slots.
    let mut held = Vec::new();
    let mut ranks = Vec::new();
    for _ in 0..8 {
        let permit = p.admit(req("b", 1, HOUR)).await.unwrap();
        ranks.push(permit.rank());
        held.push(permit);
    }
    assert_eq!(ranks, [0, 0, 0, 0, 1, 1, 1, 1]);
    // Without a priority engine the position is not worked out.
    let q = pool_headroom(8, Mode::Fair, Headroom::Slots(0));
    drop(q.admit(req("a", 1, HOUR)).await.unwrap());
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(q.admit(req("b", 1, HOUR)).await.unwrap());
    }
    assert!(held.iter().all(|p| p.rank() == 0));
}

/// Length awareness: when a slot frees, a tenant whose recent answers were short goes ahead of
/// a long request whose tenant is only slightly behind on service (within one average
/// request); with it off, the fair order alone decides.
#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_first_to_short_work_within_the_band() {
    for length_aware in [true, false] {
        let p = Pool::new(
            "m",
            PoolConfig {
                max_in_flight: 1,
                headroom: Headroom::Slots(0),
                length_aware,
                ..PoolConfig::default()
            },
        );
        // "short" has been served once: 5 prompt + 20 completion tokens (cost 45).
        let mut first = p.admit(req("short", 1, HOUR)).await.unwrap();
        first.add_completion_tokens(20);
        drop(first);
        // A third tenant holds the only slot; then "long" (never seen: its counter starts at
        // the active floor, below short's) and "short" queue, both allowed 1,000 tokens.
        let filler = p.admit(req("filler", 1, HOUR)).await.unwrap();
        let order: Order = Arc::default();
        let mut tasks = Vec::new();
        for name in ["long", "short"] {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let ask = AdmitRequest {
                    tokens: 1_005,
                    ..req(name, 1, HOUR)
                };
                let permit = p.admit(ask).await.expect("admitted");
                order.lock().unwrap().push(name);
                drop(permit);
            }));
            settle().await;
        }
        assert_eq!(p.queued(), 2);
        drop(filler);
        for t in tasks {
            t.await.unwrap();
        }
        let expected = if length_aware {
            ["short", "long"]
        } else {
            ["long", "short"]
        };
        assert_eq!(
            *order.lock().unwrap(),
            expected,
            "length_aware {length_aware}"
        );
    }
}
