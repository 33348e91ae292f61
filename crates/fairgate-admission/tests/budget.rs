//! Budgets: period arithmetic, reserve/extend/settle bookkeeping, rollover, and the invariant
//! that reservations never push a line past its cap.

use chrono::{TimeZone, Utc};
use fairgate_admission::budget::{
    next_period_start, period_start, BudgetExceeded, BudgetHold, BudgetScope, BudgetStatus,
    Budgets, CapKind, Spend,
};
use fairgate_types::{Budget, BudgetPeriod, Micros};
use proptest::prelude::*;

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .unwrap()
        .timestamp_millis()
}

fn tenant(name: &str) -> BudgetScope {
    BudgetScope::Tenant(name.to_owned())
}

fn key(name: &str) -> BudgetScope {
    BudgetScope::Key(name.to_owned())
}

fn tokens(n: u64) -> Spend {
    Spend::new(n, Micros(0))
}

fn day_tokens(n: u64) -> Budget {
    Budget {
        period: BudgetPeriod::Day,
        tokens: Some(n),
        cost: None,
    }
}

fn status(b: &Budgets, scope: &BudgetScope, period: BudgetPeriod, now: i64) -> BudgetStatus {
    b.status_at(scope, now)
        .into_iter()
        .find(|s| s.period == period)
        .expect("account exists")
}

/// A fixed "now" inside 2026-11-23 (UTC).
fn fixed_now() -> i64 {
    ms(2026, 11, 23, 15, 30, 0)
}

#[test]
fn period_start_day_and_month() {
    let t = ms(2026, 11, 23, 15, 30, 0) + 123;
    assert_eq!(
        period_start(BudgetPeriod::Day, t),
        ms(2026, 11, 23, 0, 0, 0)
    );
    assert_eq!(
        period_start(BudgetPeriod::Month, t),
        ms(2026, 11, 1, 0, 0, 0)
    );
    // Exactly at the boundary belongs to the new period; a millisecond before does not.
    let midnight = ms(2026, 12, 1, 0, 0, 0);
    assert_eq!(period_start(BudgetPeriod::Day, midnight), midnight);
    assert_eq!(period_start(BudgetPeriod::Month, midnight), midnight);
    assert_eq!(
        period_start(BudgetPeriod::Day, midnight - 1),
        ms(2026, 11, 30, 0, 0, 0)
    );
    assert_eq!(
        period_start(BudgetPeriod::Month, midnight - 1),
        ms(2026, 11, 1, 0, 0, 0)
    );
    // Year boundary.
    let eve = ms(2026, 12, 31, 23, 59, 59) + 999;
    assert_eq!(
        period_start(BudgetPeriod::Day, eve),
        ms(2026, 12, 31, 0, 0, 0)
    );
    assert_eq!(
        period_start(BudgetPeriod::Month, eve),
        ms(2026, 12, 1, 0, 0, 0)
    );
    assert_eq!(
        period_start(BudgetPeriod::Month, eve + 1),
        ms(2027, 1, 1, 0, 0, 0)
    );
    // Leap day, and before the epoch.
    assert_eq!(
        period_start(BudgetPeriod::Month, ms(2028, 2, 29, 12, 0, 0)),
        ms(2028, 2, 1, 0, 0, 0)
    );
    assert_eq!(
        period_start(BudgetPeriod::Day, ms(1969, 12, 31, 12, 0, 0)),
        ms(1969, 12, 31, 0, 0, 0)
    );
    assert_eq!(
        period_start(BudgetPeriod::Month, ms(1969, 12, 31, 12, 0, 0)),
        ms(1969, 12, 1, 0, 0, 0)
    );
}

#[test]
fn next_period_start_day_and_month() {
    let d = ms(2026, 11, 23, 0, 0, 0);
    assert_eq!(
        next_period_start(BudgetPeriod::Day, d),
        ms(2026, 11, 24, 0, 0, 0)
    );
    assert_eq!(
        next_period_start(BudgetPeriod::Month, ms(2026, 12, 1, 0, 0, 0)),
        ms(2027, 1, 1, 0, 0, 0)
    );
    assert_eq!(
        next_period_start(BudgetPeriod::Month, ms(2028, 2, 1, 0, 0, 0)),
        ms(2028, 3, 1, 0, 0, 0)
    );
    assert_eq!(
        next_period_start(BudgetPeriod::Month, ms(2026, 1, 1, 0, 0, 0)),
        ms(2026, 2, 1, 0, 0, 0)
    );
}

#[test]
fn spend_helpers_saturate() {
    let a = Spend::new(5, Micros(10));
    let b = Spend::new(7, Micros(3));
    assert_eq!(a.saturating_sub(b), Spend::new(0, Micros(7)));
    assert_eq!(a.saturating_add(b), Spend::new(12, Micros(13)));
    assert_eq!(
        Spend::new(u64::MAX, Micros(1)).saturating_add(b),
        Spend::new(u64::MAX, Micros(4))
    );
    assert_eq!(a.max(b), Spend::new(7, Micros(10)));
    assert_eq!(a.min(b), Spend::new(5, Micros(3)));
}

#[test]
fn reserve_and_settle_arithmetic() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [(tenant("t"), day_tokens(1000))];
    let hold = b.reserve(&lines, tokens(100), tokens(400), now).unwrap();
    assert_eq!(hold.reservation().lines[0].reserved, tokens(400));
    let s = status(&b, &tenant("t"), BudgetPeriod::Day, now);
    assert_eq!((s.spent, s.reserved), (tokens(0), tokens(400)));
    assert_eq!(s.tokens_cap, Some(1000));
    assert_eq!(s.period_start, ms(2026, 11, 23, 0, 0, 0));
    assert_eq!(s.resets_at, ms(2026, 11, 24, 0, 0, 0));
    hold.settle_at(tokens(250), now);
    let s = status(&b, &tenant("t"), BudgetPeriod::Day, now);
    assert_eq!((s.spent, s.reserved), (tokens(250), tokens(0)));
}

#[test]
fn reserve_clips_the_estimate_to_what_is_left() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let start = period_start(BudgetPeriod::Day, now);
    b.seed(&tenant("t"), BudgetPeriod::Day, start, tokens(800));
    let lines = [(tenant("t"), day_tokens(1000))];
    let hold = b.reserve(&lines, tokens(100), tokens(400), now).unwrap();
    assert_eq!(hold.reservation().lines[0].reserved, tokens(200));
    // Less than `min` left: refused, with the numbers in the message.
    let e = b
        .reserve(&lines, tokens(100), tokens(400), now)
        .unwrap_err();
    assert_eq!(e.cap, CapKind::Tokens);
    assert_eq!((e.limit, e.spent, e.reserved), (1000, 800, 200));
    assert_eq!(
        e.to_string(),
        "budget exhausted: tenant `t` has used 1000 of its 1000 tokens for this day; \
         it resets at 2026-11-24T00:00:00Z"
    );
}

#[test]
fn cost_cap_message_and_month_reset() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [(
        key("k1"),
        Budget {
            period: BudgetPeriod::Month,
            tokens: None,
            cost: Some(Micros(2_000_000)),
        },
    )];
    let hold = b
        .reserve(
            &lines,
            Spend::new(10, Micros(100)),
            Spend::new(10, Micros(100)),
            now,
        )
        .unwrap();
    hold.settle_at(Spend::new(10, Micros(1_500_000)), now);
    let e = b
        .reserve(
            &lines,
            Spend::new(10, Micros(600_000)),
            Spend::new(10, Micros(600_000)),
            now,
        )
        .unwrap_err();
    assert_eq!(e.cap, CapKind::Cost);
    assert_eq!(
        e.to_string(),
        "budget exhausted: key `k1` has used 1.500000 of its 2.000000 spending cap for this \
         month; it resets at 2026-12-01T00:00:00Z"
    );
    // Tokens are not capped on this line, so the token estimate is held in full.
    let hold = b
        .reserve(
            &lines,
            Spend::new(10, Micros(100)),
            Spend::new(99_999, Micros(900_000)),
            now,
        )
        .unwrap();
    assert_eq!(
        hold.reservation().lines[0].reserved,
        Spend::new(99_999, Micros(500_000))
    );
}

#[test]
fn concurrent_holds_cannot_together_exceed_the_cap() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [(tenant("t"), day_tokens(1000))];
    let mut holds: Vec<BudgetHold> = Vec::new();
    loop {
        match b.reserve(&lines, tokens(100), tokens(400), now) {
            Ok(h) => holds.push(h),
            Err(e) => {
                assert_eq!(e.spent + e.reserved, 1000);
                break;
            }
        }
    }
    let held: Vec<u64> = holds
        .iter()
        .map(|h| h.reservation().lines[0].reserved.tokens)
        .collect();
    assert_eq!(held, vec![400, 400, 200]);
    assert_eq!(
        status(&b, &tenant("t"), BudgetPeriod::Day, now).reserved,
        tokens(1000)
    );
    drop(holds);
    assert_eq!(
        status(&b, &tenant("t"), BudgetPeriod::Day, now).reserved,
        tokens(0)
    );
}

#[test]
fn every_line_must_have_room_and_failure_takes_nothing() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [
        (tenant("t"), day_tokens(10_000)),
        (key("k"), day_tokens(50)),
    ];
    let e = b
        .reserve(&lines, tokens(100), tokens(400), now)
        .unwrap_err();
    assert_eq!(e.scope, key("k"));
    assert_eq!(
        status(&b, &tenant("t"), BudgetPeriod::Day, now).reserved,
        tokens(0)
    );
    // Both lines are charged on settle.
    let hold = b.reserve(&lines, tokens(10), tokens(400), now).unwrap();
    let held: Vec<u64> = hold
        .reservation()
        .lines
        .iter()
        .map(|l| l.reserved.tokens)
        .collect();
    assert_eq!(held, vec![400, 50]);
    b.settle(hold, tokens(70));
    // `settle` without `_at` uses the wall clock; look at today.
    let today = fairgate_types::now_millis();
    for scope in [tenant("t"), key("k")] {
        let s = status(&b, &scope, BudgetPeriod::Day, today);
        assert_eq!((s.spent, s.reserved), (tokens(70), tokens(0)));
    }
}

#[test]
fn extend_fails_exactly_when_the_cap_would_be_crossed() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [
        (tenant("t"), day_tokens(1_000_000)),
        (key("k"), day_tokens(1000)),
    ];
    let other = b.reserve(&lines, tokens(600), tokens(600), now).unwrap();
    let mut hold = b.reserve(&lines, tokens(100), tokens(100), now).unwrap();
    hold.extend_at(tokens(50), now).unwrap();
    assert_eq!(hold.reservation().lines[1].reserved, tokens(100));
    hold.extend_at(tokens(400), now).unwrap();
    assert_eq!(hold.reservation().lines[1].reserved, tokens(400));
    let e = hold.extend_at(tokens(401), now).unwrap_err();
    assert_eq!(e.scope, key("k"));
    assert_eq!((e.spent, e.reserved, e.limit), (0, 1000, 1000));
    // A failed extend grows no line, not even the one with room.
    let reserved: Vec<u64> = hold
        .reservation()
        .lines
        .iter()
        .map(|l| l.reserved.tokens)
        .collect();
    assert_eq!(reserved, vec![400, 400]);
    assert_eq!(
        status(&b, &tenant("t"), BudgetPeriod::Day, now).reserved,
        tokens(1000)
    );
    // Usage past the cap still settles in full.
    hold.settle_at(tokens(450), now);
    let s = status(&b, &key("k"), BudgetPeriod::Day, now);
    assert_eq!((s.spent, s.reserved), (tokens(450), tokens(600)));
    assert!(b.reserve(&lines, tokens(1), tokens(1), now).is_err());
    drop(other);
}

#[test]
fn front_extend_and_settle_use_the_wall_clock() {
    let b = Budgets::in_process();
    let now = fairgate_types::now_millis();
    let lines = [(key("k"), day_tokens(1000))];
    let mut h = b.reserve(&lines, tokens(1), tokens(1), now).unwrap();
    assert!(b.extend(&mut h, tokens(1001)).is_err());
    b.extend(&mut h, tokens(1000)).unwrap();
    b.settle(h, tokens(10));
    let s = b.status(&key("k"));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].reserved, tokens(0));
    // Settled into the current day, whichever it is by now.
    assert!(s[0].spent == tokens(10) || s[0].spent == tokens(0));
}

#[test]
fn drop_without_settle_releases() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [(tenant("t"), day_tokens(1000)), (key("k"), day_tokens(500))];
    let mut hold = b.reserve(&lines, tokens(100), tokens(300), now).unwrap();
    hold.extend_at(tokens(450), now).unwrap();
    drop(hold);
    for scope in [tenant("t"), key("k")] {
        let s = status(&b, &scope, BudgetPeriod::Day, now);
        assert_eq!((s.spent, s.reserved), (tokens(0), tokens(0)));
    }
}

#[test]
fn rollover_restarts_the_period_and_settles_into_the_current_one() {
    let b = Budgets::in_process();
    let late = ms(2026, 11, 23, 23, 0, 0);
    let next = ms(2026, 11, 24, 1, 0, 0);
    let lines = [(tenant("t"), day_tokens(1000))];
    b.reserve(&lines, tokens(900), tokens(900), late)
        .unwrap()
        .settle_at(tokens(900), late);
    assert!(b.reserve(&lines, tokens(200), tokens(200), late).is_err());
    let hold = b.reserve(&lines, tokens(50), tokens(50), late).unwrap();
    // Next day: spent restarts at zero, the live reservation carries over.
    let s = status(&b, &tenant("t"), BudgetPeriod::Day, next);
    assert_eq!((s.spent, s.reserved), (tokens(0), tokens(50)));
    assert_eq!(s.period_start, ms(2026, 11, 24, 0, 0, 0));
    let fresh = b.reserve(&lines, tokens(200), tokens(200), next).unwrap();
    hold.settle_at(tokens(60), next);
    fresh.settle_at(tokens(200), next);
    let s = status(&b, &tenant("t"), BudgetPeriod::Day, next);
    assert_eq!((s.spent, s.reserved), (tokens(260), tokens(0)));
}

#[test]
fn seed_replaces_spent_and_keeps_reservations() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let start = period_start(BudgetPeriod::Day, now);
    let lines = [(tenant("t"), day_tokens(1000))];
    let _hold = b.reserve(&lines, tokens(300), tokens(300), now).unwrap();
    b.seed(&tenant("t"), BudgetPeriod::Day, start, tokens(650));
    let s = status(&b, &tenant("t"), BudgetPeriod::Day, now);
    assert_eq!((s.spent, s.reserved), (tokens(650), tokens(300)));
    assert!(b.reserve(&lines, tokens(51), tokens(51), now).is_err());
    // A seed for an older period is stale and ignored.
    b.seed(
        &tenant("t"),
        BudgetPeriod::Day,
        start - 86_400_000,
        tokens(5),
    );
    assert_eq!(
        status(&b, &tenant("t"), BudgetPeriod::Day, now).spent,
        tokens(650)
    );
}

#[test]
fn duplicate_lines_merge_into_the_tighter_caps() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [
        (tenant("t"), day_tokens(1000)),
        (
            tenant("t"),
            Budget {
                period: BudgetPeriod::Day,
                tokens: Some(500),
                cost: Some(Micros(50)),
            },
        ),
        // No caps at all: nothing to hold.
        (
            key("k"),
            Budget {
                period: BudgetPeriod::Month,
                tokens: None,
                cost: None,
            },
        ),
    ];
    let hold = b
        .reserve(
            &lines,
            Spend::new(1, Micros(1)),
            Spend::new(800, Micros(80)),
            now,
        )
        .unwrap();
    assert_eq!(hold.reservation().lines.len(), 1);
    assert_eq!(
        hold.reservation().lines[0].reserved,
        Spend::new(500, Micros(50))
    );
    assert!(b.status_at(&key("k"), now).is_empty());
}

#[test]
fn no_lines_is_free() {
    let b = Budgets::in_process();
    let mut hold = b.reserve(&[], tokens(1), tokens(1), fixed_now()).unwrap();
    assert!(hold.reservation().lines.is_empty());
    hold.extend(tokens(1_000_000)).unwrap();
    hold.settle(tokens(5));
}

#[test]
fn sweep_drops_empty_accounts_only() {
    let b = Budgets::in_process();
    let now = fixed_now();
    let lines = [
        (tenant("t"), day_tokens(1000)),
        (key("k"), day_tokens(1000)),
    ];
    b.reserve(&lines, tokens(1), tokens(1), now)
        .unwrap()
        .settle_at(tokens(10), now);
    let _live = b
        .reserve(&[(key("k"), day_tokens(1000))], tokens(1), tokens(1), now)
        .unwrap();
    b.sweep(now);
    assert_eq!(b.status_at(&tenant("t"), now).len(), 1);
    // Next day: the tenant's account is empty and goes; the key still has a reservation.
    let tomorrow = now + 86_400_000;
    b.sweep(tomorrow);
    assert!(b.status_at(&tenant("t"), tomorrow).is_empty());
    assert_eq!(b.status_at(&key("k"), tomorrow).len(), 1);
}

#[test]
fn budget_exceeded_is_an_error() {
    fn is_error<E: std::error::Error>(_: &E) {}
    let e = BudgetExceeded {
        scope: tenant("t1"),
        period: BudgetPeriod::Day,
        cap: CapKind::Tokens,
        limit: 10_000,
        spent: 10_000,
        reserved: 0,
        resets_at: ms(2026, 11, 24, 0, 0, 0),
    };
    is_error(&e);
    assert_eq!(
        e.to_string(),
        "budget exhausted: tenant `t1` has used 10000 of its 10000 tokens for this day; \
         it resets at 2026-11-24T00:00:00Z"
    );
}

// ---- random sequences ----

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        key: usize,
        min: (u64, u64),
        extra: (u64, u64),
    },
    Extend {
        hold: usize,
        so_far: (u64, u64),
    },
    Settle {
        hold: usize,
        actual: (u64, u64),
    },
    Drop {
        hold: usize,
    },
    Advance {
        hours: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, (1..200u64, 0..300u64), (0..300u64, 0..500u64))
            .prop_map(|(key, min, extra)| Op::Reserve { key, min, extra }),
        3 => (any::<usize>(), (0..800u64, 0..1200u64))
            .prop_map(|(hold, so_far)| Op::Extend { hold, so_far }),
        2 => (any::<usize>(), (0..800u64, 0..1200u64))
            .prop_map(|(hold, actual)| Op::Settle { hold, actual }),
        2 => any::<usize>().prop_map(|hold| Op::Drop { hold }),
        1 => (0..30i64).prop_map(|hours| Op::Advance { hours }),
    ]
}

fn spend((t, c): (u64, u64)) -> Spend {
    Spend::new(t, Micros(c))
}

/// Every account: (scope, period, tokens cap, cost cap).
fn accounts() -> Vec<(BudgetScope, Budget)> {
    vec![
        (
            tenant("t"),
            Budget {
                period: BudgetPeriod::Day,
                tokens: Some(1000),
                cost: Some(Micros(2000)),
            },
        ),
        (
            tenant("t"),
            Budget {
                period: BudgetPeriod::Month,
                tokens: Some(5000),
                cost: None,
            },
        ),
        (key("a"), day_tokens(400)),
        (
            key("b"),
            Budget {
                period: BudgetPeriod::Month,
                tokens: None,
                cost: Some(Micros(1500)),
            },
        ),
    ]
}

fn used(b: &Budgets, scope: &BudgetScope, period: BudgetPeriod, now: i64) -> Option<BudgetStatus> {
    b.status_at(scope, now)
        .into_iter()
        .find(|s| s.period == period)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reservations_never_push_past_a_cap(ops in proptest::collection::vec(op(), 1..150)) {
        let b = Budgets::in_process();
        let accts = accounts();
        // Requests of key a count against the tenant's two budgets and a's; key b likewise.
        let requests = [
            vec![accts[0].clone(), accts[1].clone(), accts[2].clone()],
            vec![accts[0].clone(), accts[1].clone(), accts[3].clone()],
        ];
        let mut now = ms(2026, 1, 31, 20, 0, 0);
        let mut holds: Vec<BudgetHold> = Vec::new();
        let snapshot = |now: i64| -> Vec<Spend> {
            accts
                .iter()
                .map(|(s, bud)| {
                    used(&b, s, bud.period, now).map_or(Spend::ZERO, |st| st.spent.saturating_add(st.reserved))
                })
                .collect()
        };
        for op in ops {
            let before = snapshot(now);
            let mut grew = false;
            match op {
                Op::Reserve { key, min, extra } => {
                    let min = spend(min);
                    let est = min.saturating_add(spend(extra));
                    match b.reserve(&requests[key], min, est, now) {
                        Ok(h) => {
                            for line in &h.reservation().lines {
                                // At least `min`, at most the estimate.
                                prop_assert_eq!(line.reserved.max(min), line.reserved);
                                prop_assert_eq!(line.reserved.min(est), line.reserved);
                            }
                            holds.push(h);
                            grew = true;
                        }
                        Err(e) => {
                            // Refused only when a line really has less than `min` left.
                            let need = match e.cap {
                                CapKind::Tokens => min.tokens,
                                CapKind::Cost => min.cost.0,
                            };
                            prop_assert!(e.limit.saturating_sub(e.spent + e.reserved) < need);
                            prop_assert_eq!(snapshot(now), before.clone());
                        }
                    }
                }
                Op::Extend { hold, so_far } => {
                    if !holds.is_empty() {
                        let n = holds.len();
                        let h = &mut holds[hold % n];
                        let old = h.reservation().clone();
                        match h.extend_at(spend(so_far), now) {
                            Ok(()) => {
                                for line in &h.reservation().lines {
                                    prop_assert_eq!(line.reserved.max(spend(so_far)), line.reserved);
                                }
                                grew = true;
                            }
                            Err(_) => {
                                prop_assert_eq!(h.reservation(), &old);
                                prop_assert_eq!(snapshot(now), before.clone());
                            }
                        }
                    }
                }
                Op::Settle { hold, actual } => {
                    if !holds.is_empty() {
                        let n = holds.len();
                        holds.swap_remove(hold % n).settle_at(spend(actual), now);
                    }
                }
                Op::Drop { hold } => {
                    if !holds.is_empty() {
                        let n = holds.len();
                        drop(holds.swap_remove(hold % n));
                    }
                }
                Op::Advance { hours } => now += hours * 3_600_000,
            }
            let after = snapshot(now);
            for (i, (_, bud)) in accts.iter().enumerate() {
                // Reserving may only grow a line up to its cap; going past a cap happens only by
                // settling actual usage.
                if grew {
                    if let Some(cap) = bud.tokens {
                        prop_assert!(after[i].tokens <= cap.max(before[i].tokens), "tokens {i}: {:?} -> {:?}", before[i], after[i]);
                    }
                    if let Some(cap) = bud.cost {
                        prop_assert!(after[i].cost <= cap.max(before[i].cost), "cost {i}: {:?} -> {:?}", before[i], after[i]);
                    }
                }
            }
            // Reserved on each account is exactly what the live holds hold on it.
            for (scope, bud) in &accts {
                let held = holds
                    .iter()
                    .flat_map(|h| h.reservation().lines.iter())
                    .filter(|l| l.scope == *scope && l.period == bud.period)
                    .fold(Spend::ZERO, |acc, l| acc.saturating_add(l.reserved));
                let reserved = used(&b, scope, bud.period, now).map_or(Spend::ZERO, |s| s.reserved);
                prop_assert_eq!(reserved, held);
            }
        }
        holds.clear();
        for (scope, bud) in &accts {
            let reserved = used(&b, scope, bud.period, now).map_or(Spend::ZERO, |s| s.reserved);
            prop_assert_eq!(reserved, Spend::ZERO);
        }
    }
}
