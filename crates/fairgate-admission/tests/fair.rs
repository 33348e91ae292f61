//! Property tests of [`FairQueue`], driven by a small discrete-time simulation of a pool.
//!
//! The simulated pool has `cap` slots. On every step, each running request emits one output
//! token, charged with `charge(t, 2)` (VTC's w_q = 2). A request that has emitted all its
//! tokens calls `finish`. Then free slots are filled with `pop()`, and the prompt is charged
//! at dispatch (w_p = 1), as [`fairgate_admission::pool::Pool`] does. A popped request counts
//! as in flight until `finish`.
//!
//! # The service bound checked for backlogged tenants
//!
//! Notation:
//! - P = the largest prompt, O = the largest output, C = the number of slots.
//! - c_f = f's counter, in weighted tokens (raw cost / weight).
//! - B_f = (P + 2·C·O) / w_f.
//!
//! Take two tenants f and g that are both backlogged from step 0 onward, so both counters
//! start at 0 and neither is ever lifted:
//! - If f has never been dispatched, then c_f = 0 ≤ c_g.
//! - Otherwise, let t0 be f's last dispatch. f was the arg-min at t0, so
//!   c_f(t0) ≤ c_g(t0) ≤ c_g(now).
//! - Since t0, c_f has grown only by the prompt charged at t0 and by the decode tokens of
//!   f's requests in flight after t0. There are at most C of those, with at most O tokens
//!   each. So c_f − c_g ≤ B_f.
//!
//! By symmetry, |c_f − c_g| ≤ (P + 2·C·O) / min(w_f, w_g).
//!
//! In VTC's terms, U = max(w_p·L_input, w_q·M), with L_input = P and M = C·O tokens in the
//! running batch. Then P + 2·C·O ≤ 2U, so this is VTC's 2U bound, weighted.
//!
//! The same holds for groups (group counters, group weights) and for tenants inside one group
//! (tenant counters, tenant weights), because dispatch takes the arg-min at each level.
//!
//! Two corrections turn the counter bound into bounds on service:
//! - Rounding. Every charge floors `cost × SCALE / w`, so S_f / w_f lies in
//!   [c_f, c_f + n_f / SCALE), where n_f is the number of charges to f. That slack is added.
//! - Intervals. Over any interval in which both are backlogged, the service gained differs by
//!   D(t2) − D(t1) ≤ B_f + B_g, where D = c_f − c_g.
//!
//! # The starvation bound
//!
//! Let f be continuously backlogged, with its queue refilled to depth Q after every pop, and
//! let t0 be f's last dispatch.
//! - A dispatch of g before f's next dispatch needs c_g ≤ c_f ≤ c_f(t0⁻) + B_f.
//! - c_g ≥ c_f(t0⁻) at t0, since f was the arg-min.
//! - Each dispatch raises c_g by at least floor(1 · SCALE / w_g), because prompts are at
//!   least 1 token.
//! - So g gets at most B_f / inc_g + 1 dispatches in that gap.
//!
//! A new request of f waits behind Q − 1 of f's own, so it waits at most
//! Q·Σ_{g≠f}(B_f / inc_g + 1) + Q − 1 dispatches.

use std::collections::{BTreeMap, BTreeSet};

use fairgate_admission::fair::{FairQueue, Mode, TenantId, Ticket, SCALE};
use fairgate_types::Priority;
use proptest::prelude::*;

/// Raw cost per prompt token (VTC w_p).
const W_IN: u64 = 1;
/// Raw cost per output token (VTC w_q).
const W_OUT: u64 = 2;

/// SplitMix64, deterministic randomness inside one proptest case.
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

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Clone, Debug)]
struct Req {
    id: usize,
    tenant: usize,
    class: Priority,
    prompt: u64,
    output: u64,
    /// The value of `Sim::dispatches` when this request was queued.
    queued_at: u64,
}

struct Running {
    tenant: usize,
    left: u64,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    weight: u32,
    /// Named group and its weight; `None` for an ungrouped tenant.
    group: Option<(&'static str, u32)>,
}

fn solo(weight: u32) -> Spec {
    Spec {
        weight,
        group: None,
    }
}

struct Sim {
    q: FairQueue<Req>,
    ids: Vec<TenantId>,
    groups: Vec<Option<&'static str>>,
    weights: Vec<u64>,
    group_weights: BTreeMap<&'static str, u64>,
    cap: usize,
    running: Vec<Running>,
    /// Raw cost charged per tenant.
    service: Vec<u64>,
    /// `charge` calls per tenant; each floors the counter by less than one unit.
    charges: Vec<u64>,
    /// The model of each tenant's queue: `(class rank, id)`.
    model: Vec<BTreeSet<(usize, usize)>>,
    in_flight: Vec<usize>,
    dispatches: u64,
    next_id: usize,
    arrived: usize,
    completed: usize,
    /// Returning (idle → active) arrivals seen, for the no-banking check.
    returns: usize,
    /// Keep every tenant with this many queued entries after each of its pops.
    refill: Option<usize>,
    rng: Rng,
    max_prompt: u64,
    max_output: u64,
    batch_percent: u64,
}

impl Sim {
    fn new(cap: usize, specs: &[Spec], seed: u64, max_prompt: u64, max_output: u64) -> Sim {
        let mut q = FairQueue::new(Mode::Fair);
        let mut group_weights = BTreeMap::new();
        let ids = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (g, gw) = match s.group {
                    Some((g, gw)) => (Some(g), gw),
                    None => (None, s.weight),
                };
                if let Some(g) = g {
                    group_weights.insert(g, u64::from(gw));
                }
                q.set_tenant(&format!("t{i}"), s.weight, g, gw)
            })
            .collect();
        let n = specs.len();
        Sim {
            q,
            ids,
            groups: specs.iter().map(|s| s.group.map(|(g, _)| g)).collect(),
            weights: specs.iter().map(|s| u64::from(s.weight)).collect(),
            group_weights,
            cap,
            running: Vec::new(),
            service: vec![0; n],
            charges: vec![0; n],
            model: vec![BTreeSet::new(); n],
            in_flight: vec![0; n],
            dispatches: 0,
            next_id: 0,
            arrived: 0,
            completed: 0,
            returns: 0,
            refill: None,
            rng: Rng(seed),
            max_prompt,
            max_output,
            batch_percent: 0,
        }
    }

    fn n(&self) -> usize {
        self.ids.len()
    }

    fn active(&self, t: usize) -> bool {
        !self.model[t].is_empty() || self.in_flight[t] > 0
    }

    fn same_named_group(&self, a: usize, b: usize) -> bool {
        self.groups[a].is_some() && self.groups[a] == self.groups[b]
    }

    /// Weight the top level sees for `t`: its group's, or its own when ungrouped.
    fn top_weight(&self, t: usize) -> u64 {
        match self.groups[t] {
            Some(g) => self.group_weights[g],
            None => self.weights[t],
        }
    }

    fn charge(&mut self, t: usize, cost: u64) {
        self.q.charge(self.ids[t], cost);
        self.service[t] += cost;
        self.charges[t] += 1;
    }

    fn arrive_random(&mut self, t: usize) {
        let class = if self.rng.chance(self.batch_percent) {
            Priority::Batch
        } else {
            Priority::Interactive
        };
        let prompt = self.rng.range(1, self.max_prompt);
        let output = self.rng.range(1, self.max_output);
        self.arrive(t, class, prompt, output);
    }

    /// Queues a request. When the tenant was idle, this also checks that it comes back
    /// without banked credit. At tenant level it is lifted to the smallest counter of the
    /// active peers in its group. At group level, if its group was idle, the group is lifted
    /// to the smallest counter of the active groups.
    fn arrive(&mut self, t: usize, class: Priority, prompt: u64, output: u64) {
        let id_t = self.ids[t];
        let mut expect = None;
        if !self.active(t) {
            self.returns += 1;
            let peers: Vec<usize> = (0..self.n())
                .filter(|&u| u != t && self.active(u) && self.same_named_group(t, u))
                .collect();
            let m_t = peers.iter().map(|&u| self.q.counter(self.ids[u])).min();
            assert_eq!(
                self.q.min_active_counter(id_t),
                m_t,
                "min_active_counter of idle t{t} is the floor of its active peers"
            );
            let m_g = if peers.is_empty() {
                (0..self.n())
                    .filter(|&u| u != t && self.active(u))
                    .map(|u| self.q.group_counter(self.ids[u]))
                    .min()
            } else {
                None
            };
            expect = Some((self.q.counter(id_t), m_t, self.q.group_counter(id_t), m_g));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.arrived += 1;
        self.model[t].insert((class.rank(), id));
        self.q.push(
            id_t,
            class,
            Req {
                id,
                tenant: t,
                class,
                prompt,
                output,
                queued_at: self.dispatches,
            },
        );
        if let Some((c0, m_t, g0, m_g)) = expect {
            let (c, gc) = (self.q.counter(id_t), self.q.group_counter(id_t));
            if let Some(m) = m_t {
                assert!(c >= m, "t{t} returned below its active peers: {c} < {m}");
            }
            if let Some(m) = m_g {
                assert!(
                    gc >= m,
                    "t{t}'s group returned below active groups: {gc} < {m}"
                );
            }
            assert_eq!(
                c,
                m_t.map_or(c0, |m| c0.max(m)),
                "tenant-level lift of t{t}"
            );
            assert_eq!(
                gc,
                m_g.map_or(g0, |m| g0.max(m)),
                "group-level lift of t{t}"
            );
        }
    }

    /// Checks that `(t, id)` is what fair dispatch must pick. Its group has the smallest
    /// counter among backlogged groups. Inside a named group, t has the smallest counter among
    /// backlogged members. Inside t, the request is the oldest of t's highest class present.
    /// Classes play no part across tenants.
    fn check_choice(&self, t: usize, id: usize) {
        let gc = self.q.group_counter(self.ids[t]);
        let c = self.q.counter(self.ids[t]);
        for u in (0..self.n()).filter(|&u| !self.model[u].is_empty()) {
            let gu = self.q.group_counter(self.ids[u]);
            assert!(
                gu >= gc,
                "t{t} (group counter {gc}) dispatched before backlogged t{u} ({gu})"
            );
            if self.same_named_group(t, u) {
                let cu = self.q.counter(self.ids[u]);
                assert!(
                    cu >= c,
                    "t{t} ({c}) dispatched before group peer t{u} ({cu})"
                );
            }
        }
        let &(_, first) = self.model[t].first().expect("t is backlogged");
        assert_eq!(first, id, "t{t}: oldest of its highest class goes first");
    }

    /// One output token for every running request; finished ones leave.
    fn decode(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let t = self.running[i].tenant;
            self.charge(t, W_OUT);
            self.running[i].left -= 1;
            if self.running[i].left == 0 {
                self.running.swap_remove(i);
                self.in_flight[t] -= 1;
                self.q.finish(self.ids[t]);
                self.completed += 1;
            } else {
                i += 1;
            }
        }
    }

    /// Fills free slots. Returns the dispatched requests with their dispatch index.
    fn dispatch(&mut self) -> Vec<(Req, u64)> {
        let mut out = Vec::new();
        while self.running.len() < self.cap {
            let Some((tid, peeked)) = self.q.peek() else {
                break;
            };
            let (t, id) = (peeked.tenant, peeked.id);
            assert_eq!(self.ids[t], tid);
            if self.q.mode() == Mode::Fair {
                self.check_choice(t, id);
            }
            let (tid2, req) = self.q.pop().expect("peek promised an entry");
            assert_eq!((tid2, req.id), (tid, id), "pop returns what peek showed");
            assert!(self.model[t].remove(&(req.class.rank(), req.id)));
            self.in_flight[t] += 1;
            let at = self.dispatches;
            self.dispatches += 1;
            self.charge(t, W_IN * req.prompt);
            self.running.push(Running {
                tenant: t,
                left: req.output,
            });
            if let Some(depth) = self.refill {
                while self.model[t].len() < depth {
                    self.arrive_random(t);
                }
            }
            out.push((req, at));
        }
        out
    }

    fn step(&mut self) -> Vec<(Req, u64)> {
        self.decode();
        self.dispatch()
    }

    /// Runs without arrivals until everything queued has been dispatched and has finished.
    fn drain(&mut self) {
        let mut guard = 0u64;
        while !self.q.is_empty() || !self.running.is_empty() {
            self.step();
            guard += 1;
            assert!(
                guard < 1_000_000,
                "queue does not drain: {} queued",
                self.q.len()
            );
        }
    }

    fn check_model(&self) {
        self.q.check_invariants();
        let queued: usize = self.model.iter().map(BTreeSet::len).sum();
        assert_eq!(self.q.len(), queued);
        for t in 0..self.n() {
            assert_eq!(self.q.queued(self.ids[t]), self.model[t].len());
            assert_eq!(self.q.in_flight(self.ids[t]), self.in_flight[t]);
        }
    }

    /// The largest lead of t's counter over a backlogged peer's, in counter units (see the
    /// module docs). `w` is the weight at the level compared.
    fn lead_bound(&self, w: u64) -> u64 {
        (self.max_prompt * W_IN * SCALE) / w
            + self.cap as u64 * self.max_output * ((W_OUT * SCALE) / w)
    }
}

fn specs_from(weights: &[u32]) -> Vec<Spec> {
    weights.iter().map(|&w| solo(w)).collect()
}

/// Tracks the counter difference D = c_a − c_b (counter units) of one pair, for the bounds
/// checked at every step.
struct Pair {
    a: usize,
    b: usize,
    lo: i128,
    hi: i128,
}

/// The pairs of tenants to compare: all of them, or those of one named group.
fn pairs(ts: &[usize]) -> Vec<Pair> {
    let mut out = Vec::new();
    for (i, &a) in ts.iter().enumerate() {
        for &b in &ts[i + 1..] {
            out.push(Pair { a, b, lo: 0, hi: 0 });
        }
    }
    out
}

/// Checks the service-difference bounds of every pair in `ps`, which are all continuously
/// backlogged since step 0. With `groups`, it compares group counters, group weights and
/// the whole group's service. Otherwise it compares tenant counters and tenant weights.
fn check_pairs(sim: &Sim, ps: &mut [Pair], groups: bool) {
    for p in ps {
        let (ia, ib) = (sim.ids[p.a], sim.ids[p.b]);
        let (ca, cb, wa, wb) = if groups {
            (
                sim.q.group_counter(ia),
                sim.q.group_counter(ib),
                sim.top_weight(p.a),
                sim.top_weight(p.b),
            )
        } else {
            (
                sim.q.counter(ia),
                sim.q.counter(ib),
                sim.weights[p.a],
                sim.weights[p.b],
            )
        };
        let (ba, bb) = (sim.lead_bound(wa), sim.lead_bound(wb));
        let d = i128::from(ca) - i128::from(cb);
        assert!(
            d <= i128::from(ba) && -d <= i128::from(bb),
            "counter gap of t{} and t{}: {d} outside [-{bb}, {ba}]",
            p.a,
            p.b
        );
        p.lo = p.lo.min(d);
        p.hi = p.hi.max(d);
        assert!(
            p.hi - p.lo <= i128::from(ba) + i128::from(bb),
            "interval service gap of t{} and t{} exceeds B_a + B_b",
            p.a,
            p.b
        );
        // The same in weighted service, independently of the queue's counters.
        let member = |x: usize, y: usize| {
            if groups {
                sim.groups[x] == sim.groups[y] && sim.groups[x].is_some() || x == y
            } else {
                x == y
            }
        };
        let served = |x: usize| -> (f64, u64) {
            (0..sim.n())
                .filter(|&u| member(x, u))
                .fold((0.0, 0), |(s, n), u| {
                    (s + sim.service[u] as f64, n + sim.charges[u])
                })
        };
        let ((sa, na), (sb, nb)) = (served(p.a), served(p.b));
        let gap = sa / wa as f64 - sb / wb as f64;
        let slack = (na + nb) as f64 / SCALE as f64 + 1e-9;
        let bound_a =
            (sim.max_prompt * W_IN + W_OUT * sim.cap as u64 * sim.max_output) as f64 / wa as f64;
        let bound_b =
            (sim.max_prompt * W_IN + W_OUT * sim.cap as u64 * sim.max_output) as f64 / wb as f64;
        assert!(
            gap <= bound_a + slack && -gap <= bound_b + slack,
            "weighted service gap of t{} and t{}: {gap} outside [-{bound_b}, {bound_a}]",
            p.a,
            p.b
        );
    }
}

fn weights_strategy(max_n: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(1u32..=4, 2..=max_n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Property 1. Every tenant is backlogged (its queue refilled to depth Q after each pop),
    /// and no request waits more than K_f dispatches (the module docs derive K_f).
    #[test]
    fn backlogged_tenants_are_served_within_a_bounded_number_of_dispatches(
        weights in weights_strategy(5),
        cap in 1usize..=4,
        max_prompt in 1u64..=32,
        max_output in 1u64..=16,
        depth in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(cap, &specs_from(&weights), seed, max_prompt, max_output);
        sim.refill = Some(depth);
        for t in 0..sim.n() {
            for _ in 0..depth {
                sim.arrive_random(t);
            }
        }
        let n = sim.n();
        let k: Vec<u64> = (0..n)
            .map(|f| {
                let lead = sim.lead_bound(sim.weights[f]);
                let gap: u64 = (0..n)
                    .filter(|&g| g != f)
                    .map(|g| lead / (W_IN * SCALE / sim.weights[g]) + 1)
                    .sum();
                depth as u64 * gap + depth as u64 - 1
            })
            .collect();
        let mut served = vec![0u64; n];
        for _ in 0..1_500 {
            for (req, at) in sim.step() {
                let waited = at - req.queued_at;
                prop_assert!(
                    waited <= k[req.tenant],
                    "t{} waited {waited} dispatches, bound {}", req.tenant, k[req.tenant]
                );
                served[req.tenant] += 1;
            }
        }
        // Everyone got dispatches (1 500 steps is far beyond any K_f here, at one dispatch
        // per max_output steps at least).
        prop_assert!(served.iter().all(|&s| s > 0), "served {served:?}");
        sim.check_model();
    }

    /// Property 1 with random on/off arrivals in random groups. Once arrivals stop, every
    /// request is dispatched and finishes. Every return from idle is lifted (checked inside
    /// `arrive`), and each dispatch is the fair arg-min (checked in `dispatch`).
    #[test]
    fn random_arrivals_all_drain_and_returning_tenants_bank_nothing(
        specs in prop::collection::vec(
            (1u32..=4, prop::option::of((0usize..2, 1u32..=4))), 2..=6),
        cap in 1usize..=4,
        max_prompt in 1u64..=32,
        max_output in 1u64..=12,
        batch_percent in 0u64..=50,
        seed in any::<u64>(),
    ) {
        const NAMES: [&str; 2] = ["g0", "g1"];
        // One weight per named group: the first member's wins, as the queue keeps the last
        // `set_tenant` call's group weight.
        let mut gw: [Option<u32>; 2] = [None; 2];
        let specs: Vec<Spec> = specs
            .iter()
            .map(|&(w, g)| Spec {
                weight: w,
                group: g.map(|(g, x)| (NAMES[g], *gw[g].get_or_insert(x))),
            })
            .collect();
        let mut sim = Sim::new(cap, &specs, seed, max_prompt, max_output);
        sim.batch_percent = batch_percent;
        let mut on = vec![true; sim.n()];
        for _ in 0..600 {
            for (t, on) in on.iter_mut().enumerate() {
                if sim.rng.chance(5) {
                    *on = !*on;
                }
                if *on && sim.rng.chance(30) {
                    sim.arrive_random(t);
                }
            }
            sim.step();
            sim.check_model();
        }
        sim.drain();
        sim.check_model();
        prop_assert_eq!(sim.completed, sim.arrived);
        prop_assert!(sim.q.is_empty());
        prop_assert!(sim.in_flight.iter().all(|&n| n == 0));
        prop_assert!(sim.returns > 0, "first arrivals count as returns from idle");
    }

    /// Property 2. Tenants that are continuously backlogged from step 0 stay within
    /// (P + 2·C·O)/w of each other in counters and in weighted service, at every step. This is
    /// VTC's 2U bound, weighted.
    #[test]
    fn backlogged_service_difference_is_bounded(
        weights in weights_strategy(5),
        cap in 1usize..=4,
        max_prompt in 1u64..=64,
        max_output in 1u64..=32,
        batch_percent in 0u64..=50,
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(cap, &specs_from(&weights), seed, max_prompt, max_output);
        sim.refill = Some(2);
        sim.batch_percent = batch_percent;
        for t in 0..sim.n() {
            sim.arrive_random(t);
            sim.arrive_random(t);
        }
        let all: Vec<usize> = (0..sim.n()).collect();
        let (mut tenants, mut groups) = (pairs(&all), pairs(&all));
        for _ in 0..1_000 {
            sim.step();
            check_pairs(&sim, &mut tenants, false);
            check_pairs(&sim, &mut groups, true);
        }
        sim.check_model();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Property 2. With weights 1:2:4, all tenants backlogged, the service shares converge
    /// to 1/7, 2/7, 4/7.
    #[test]
    fn weighted_shares_converge_to_weight_shares(
        seed in any::<u64>(),
        cap in 1usize..=4,
        batch_percent in 0u64..=50,
    ) {
        let mut sim = Sim::new(cap, &specs_from(&[1, 2, 4]), seed, 16, 16);
        sim.refill = Some(2);
        sim.batch_percent = batch_percent;
        for t in 0..3 {
            sim.arrive_random(t);
            sim.arrive_random(t);
        }
        let mut ps = pairs(&[0, 1, 2]);
        for _ in 0..6_000 {
            sim.step();
            check_pairs(&sim, &mut ps, false);
        }
        let total: u64 = sim.service.iter().sum();
        for (t, w) in [1.0, 2.0, 4.0].into_iter().enumerate() {
            let share = sim.service[t] as f64 / total as f64;
            prop_assert!(
                (share - w / 7.0).abs() < 0.03,
                "t{t} share {share:.4}, want {:.4} (service {:?})", w / 7.0, sim.service
            );
        }
    }

    /// Property 6. Group A (weight 3, three tenants of random weights) and group B (weight 1,
    /// one tenant) are all backlogged. A and B split service 3:1 regardless of how many
    /// tenants each has. Inside A, tenants split A's service by their weights. Both levels
    /// keep their counter gap bound at every step.
    #[test]
    fn groups_share_by_group_weight_regardless_of_member_count(
        a_weights in prop::collection::vec(1u32..=4, 3),
        b_weight in 1u32..=4,
        cap in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let mut specs: Vec<Spec> = a_weights
            .iter()
            .map(|&w| Spec { weight: w, group: Some(("A", 3)) })
            .collect();
        specs.push(Spec { weight: b_weight, group: Some(("B", 1)) });
        let mut sim = Sim::new(cap, &specs, seed, 16, 8);
        sim.refill = Some(2);
        for t in 0..4 {
            sim.arrive_random(t);
            sim.arrive_random(t);
        }
        let mut groups = pairs(&[0, 3]);
        let mut inside_a = pairs(&[0, 1, 2]);
        for _ in 0..8_000 {
            sim.step();
            check_pairs(&sim, &mut groups, true);
            check_pairs(&sim, &mut inside_a, false);
        }
        let a: u64 = sim.service[..3].iter().sum();
        let b = sim.service[3];
        let ratio = a as f64 / b as f64;
        prop_assert!((ratio - 3.0).abs() < 0.15, "A:B = {ratio:.3} ({a} vs {b})");
        let wa: u64 = a_weights.iter().map(|&w| u64::from(w)).sum();
        for (t, &w) in a_weights.iter().enumerate() {
            let share = sim.service[t] as f64 / a as f64;
            let want = f64::from(w) / wa as f64;
            prop_assert!(
                (share - want).abs() < 0.05,
                "t{t} has {share:.3} of A, want {want:.3}"
            );
        }
    }
}

// ---- property 4: random operation sequences against a model ------------------------------

const N: usize = 5;
const GROUPS: [Option<&str>; 3] = [None, Some("g0"), Some("g1")];

#[derive(Clone, Debug)]
enum Op {
    Push {
        t: usize,
        batch: bool,
    },
    /// Removes the `k`-th ticket ever issued (modulo), live or stale.
    Remove {
        k: usize,
    },
    Pop,
    Finish {
        t: usize,
    },
    Start {
        t: usize,
    },
    Charge {
        t: usize,
        cost: u64,
    },
    Refund {
        t: usize,
        cost: u64,
    },
    SetTenant {
        t: usize,
        weight: u32,
        group: usize,
        group_weight: u32,
    },
    SetMode {
        fifo: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..N, any::<bool>()).prop_map(|(t, batch)| Op::Push { t, batch }),
        2 => any::<usize>().prop_map(|k| Op::Remove { k }),
        5 => Just(Op::Pop),
        3 => (0..N).prop_map(|t| Op::Finish { t }),
        1 => (0..N).prop_map(|t| Op::Start { t }),
        3 => (0..N, 0u64..5_000).prop_map(|(t, cost)| Op::Charge { t, cost }),
        1 => (0..N, 0u64..5_000).prop_map(|(t, cost)| Op::Refund { t, cost }),
        2 => (0..N, 0u32..=5, 0..GROUPS.len(), 0u32..=5).prop_map(
            |(t, weight, group, group_weight)| Op::SetTenant { t, weight, group, group_weight }
        ),
        1 => any::<bool>().prop_map(|fifo| Op::SetMode { fifo }),
    ]
}

struct Model {
    /// Live entries by arrival: `seq → (tenant, class rank, ticket index)`.
    entries: BTreeMap<u64, (usize, usize, usize)>,
    /// Every ticket issued, with its entry's `seq` while it is queued.
    tickets: Vec<(Ticket, Option<u64>)>,
    in_flight: [usize; N],
    groups: [Option<&'static str>; N],
    next_seq: u64,
}

impl Model {
    fn queued(&self, t: usize) -> usize {
        self.entries.values().filter(|e| e.0 == t).count()
    }

    fn unqueue(&mut self, k: usize) {
        let seq = self.tickets[k].1.take().expect("live ticket");
        self.entries.remove(&seq);
    }
}

fn name(t: usize) -> String {
    format!("t{t}")
}

/// Checks that the entry `k` of tenant `t` is the one the queue must dispatch next.
fn check_next(q: &FairQueue<usize>, ids: &[TenantId], m: &Model, t: usize, k: usize) {
    let seq = m.tickets[k].1.expect("next entry is queued");
    match q.mode() {
        Mode::Fifo => {
            assert_eq!(
                m.entries.keys().next(),
                Some(&seq),
                "FIFO takes the oldest entry"
            );
        }
        Mode::Fair => {
            let backlogged: BTreeSet<usize> = m.entries.values().map(|e| e.0).collect();
            let gc = q.group_counter(ids[t]);
            let c = q.counter(ids[t]);
            for &u in &backlogged {
                assert!(
                    q.group_counter(ids[u]) >= gc,
                    "t{t}'s group is not the arg-min"
                );
                if m.groups[t].is_some() && m.groups[u] == m.groups[t] {
                    assert!(q.counter(ids[u]) >= c, "t{t} is not its group's arg-min");
                }
            }
            let best = m
                .entries
                .iter()
                .filter(|(_, e)| e.0 == t)
                .map(|(&s, e)| (e.1, s))
                .min();
            assert_eq!(
                best.map(|b| b.1),
                Some(seq),
                "t{t}: highest class, oldest first"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Property 4. Any sequence of operations keeps the internal invariants, and `len`,
    /// `queued`, `in_flight`, the tenant views, `peek` and `pop` agree with a model.
    #[test]
    fn random_operations_keep_invariants(ops in prop::collection::vec(op(), 1..200)) {
        let mut q: FairQueue<usize> = FairQueue::new(Mode::Fair);
        let ids: Vec<TenantId> = (0..N).map(|t| q.set_tenant(&name(t), 1, None, 1)).collect();
        let mut m = Model {
            entries: BTreeMap::new(),
            tickets: Vec::new(),
            in_flight: [0; N],
            groups: [None; N],
            next_seq: 0,
        };
        for op in ops {
            match op {
                Op::Push { t, batch } => {
                    let class = if batch { Priority::Batch } else { Priority::Interactive };
                    let k = m.tickets.len();
                    let ticket = q.push(ids[t], class, k);
                    m.entries.insert(m.next_seq, (t, class.rank(), k));
                    m.tickets.push((ticket, Some(m.next_seq)));
                    m.next_seq += 1;
                }
                Op::Remove { k } => {
                    if m.tickets.is_empty() {
                        continue;
                    }
                    let k = k % m.tickets.len();
                    let live = m.tickets[k].1.is_some();
                    let got = q.remove(m.tickets[k].0);
                    prop_assert_eq!(got, live.then_some(k));
                    if live {
                        m.unqueue(k);
                    }
                }
                Op::Pop => {
                    let peeked = q.peek().map(|(t, &k)| (t, k));
                    if let Some((tid, k)) = peeked {
                        let t = ids.iter().position(|&x| x == tid).expect("known tenant");
                        check_next(&q, &ids, &m, t, k);
                    }
                    let popped = q.pop();
                    prop_assert_eq!(popped, peeked);
                    prop_assert_eq!(popped.is_none(), m.entries.is_empty());
                    if let Some((tid, k)) = popped {
                        let t = ids.iter().position(|&x| x == tid).expect("known tenant");
                        prop_assert_eq!(m.entries[&m.tickets[k].1.expect("live")].0, t);
                        m.unqueue(k);
                        m.in_flight[t] += 1;
                        // A dispatched entry's ticket no longer removes anything.
                        prop_assert_eq!(q.remove(m.tickets[k].0), None);
                    }
                }
                Op::Finish { t } => {
                    if m.in_flight[t] > 0 {
                        q.finish(ids[t]);
                        m.in_flight[t] -= 1;
                    }
                }
                Op::Start { t } => {
                    q.start(ids[t]);
                    m.in_flight[t] += 1;
                }
                Op::Charge { t, cost } => {
                    let before = q.counter(ids[t]);
                    q.charge(ids[t], cost);
                    prop_assert!(q.counter(ids[t]) >= before);
                }
                Op::Refund { t, cost } => {
                    let before = q.counter(ids[t]);
                    q.refund(ids[t], cost);
                    prop_assert!(q.counter(ids[t]) <= before);
                }
                Op::SetTenant { t, weight, group, group_weight } => {
                    let got = q.set_tenant(&name(t), weight, GROUPS[group], group_weight);
                    prop_assert_eq!(got, ids[t]);
                    m.groups[t] = GROUPS[group];
                }
                Op::SetMode { fifo } => {
                    q.set_mode(if fifo { Mode::Fifo } else { Mode::Fair });
                }
            }
            q.check_invariants();
            prop_assert_eq!(q.len(), m.entries.len());
            prop_assert_eq!(q.is_empty(), m.entries.is_empty());
            let views: Vec<_> = q.tenants().collect();
            prop_assert_eq!(views.len(), N);
            for t in 0..N {
                prop_assert_eq!(q.queued(ids[t]), m.queued(t));
                prop_assert_eq!(q.in_flight(ids[t]), m.in_flight[t]);
                prop_assert_eq!(q.tenant_id(&name(t)), Some(ids[t]));
                let v = &views[t];
                prop_assert_eq!(v.name.to_string(), name(t));
                prop_assert_eq!(v.group.as_deref(), m.groups[t]);
                prop_assert_eq!(v.queued, m.queued(t));
                prop_assert_eq!(v.in_flight, m.in_flight[t]);
            }
        }
        // Everything still drains in either mode.
        while let Some((tid, k)) = q.pop() {
            let t = ids.iter().position(|&x| x == tid).expect("known tenant");
            m.unqueue(k);
            m.in_flight[t] += 1;
        }
        prop_assert!(m.entries.is_empty());
        for (&id, &n) in ids.iter().zip(&m.in_flight) {
            for _ in 0..n {
                q.finish(id);
            }
        }
        q.check_invariants();
        prop_assert!(views_idle(&q));
    }

    /// Property 5. Within one tenant, every interactive entry leaves before any batch entry,
    /// each class in arrival order, whatever the charges in between.
    #[test]
    fn interactive_before_batch_within_a_tenant(
        pushes in prop::collection::vec((0usize..3, any::<bool>()), 1..60),
        charges in prop::collection::vec((0usize..3, 0u64..500), 0..60),
    ) {
        let mut q: FairQueue<(usize, bool, usize)> = FairQueue::new(Mode::Fair);
        let ids: Vec<TenantId> = (0..3).map(|t| q.set_tenant(&name(t), 1, None, 1)).collect();
        for (i, &(t, batch)) in pushes.iter().enumerate() {
            let class = if batch { Priority::Batch } else { Priority::Interactive };
            q.push(ids[t], class, (t, batch, i));
        }
        let mut popped: Vec<Vec<(bool, usize)>> = vec![Vec::new(); 3];
        let mut charges = charges.into_iter();
        while let Some((_, (t, batch, i))) = q.pop() {
            popped[t].push((batch, i));
            if let Some((u, cost)) = charges.next() {
                q.charge(ids[u], cost);
            }
        }
        for (t, got) in popped.iter().enumerate() {
            let mut want = got.clone();
            want.sort();
            prop_assert_eq!(got, &want, "t{}: interactive first, then batch, each FIFO", t);
        }
    }
}

fn views_idle<T>(q: &FairQueue<T>) -> bool {
    q.tenants().all(|v| v.queued == 0 && v.in_flight == 0)
}

// ---- deterministic examples -------------------------------------------------------------

/// Property 5. A tenant's batch entry goes before another tenant's interactive entry when its
/// counter is lower: classes order work inside a tenant only.
#[test]
fn class_does_not_jump_a_lower_counter_tenant() {
    let mut q = FairQueue::new(Mode::Fair);
    let low = q.set_tenant("low", 1, None, 1);
    let high = q.set_tenant("high", 1, None, 1);
    q.push(low, Priority::Batch, "low-batch");
    q.push(high, Priority::Interactive, "high-interactive");
    q.charge(high, 10);
    assert_eq!(q.pop().map(|(_, x)| x), Some("low-batch"));
    q.charge(low, 100);
    assert_eq!(q.pop().map(|(_, x)| x), Some("high-interactive"));
    q.check_invariants();
}

/// Property 3, ungrouped (group level). A tenant that idles while another is served returns
/// exactly at the floor of the active groups, never below it.
#[test]
fn idle_ungrouped_tenant_returns_at_the_active_floor() {
    let mut q = FairQueue::new(Mode::Fair);
    let a = q.set_tenant("a", 1, None, 1);
    let b = q.set_tenant("b", 2, None, 1);
    let c = q.set_tenant("c", 1, None, 1);
    // Everyone starts active. Then b goes idle while a and c keep being served.
    for t in [a, b, c] {
        q.push(t, Priority::Interactive, ());
        q.pop();
    }
    q.charge(b, 100);
    q.finish(b);
    for _ in 0..50 {
        q.charge(a, 300);
        q.charge(c, 200);
    }
    assert!(q.group_counter(b) < q.group_counter(c));
    let floor = q.group_counter(a).min(q.group_counter(c));
    q.push(b, Priority::Batch, ());
    assert_eq!(q.group_counter(b), floor);
    // Its own group alone: nothing to lift it to at tenant level.
    assert_eq!(q.min_active_counter(b), Some(q.counter(b)));
    q.check_invariants();
    // Once it is active, no more lifting: it is charged normally from the floor.
    q.charge(b, 2);
    assert_eq!(q.group_counter(b), floor + SCALE);
}

/// Property 3, grouped (tenant level). A member that idles inside a busy group returns at the
/// floor of its active group peers, and the group itself, still active, is not lifted.
#[test]
fn idle_grouped_tenant_returns_at_the_floor_of_its_active_peers() {
    let mut q = FairQueue::new(Mode::Fair);
    let a = q.set_tenant("a", 1, Some("lab"), 2);
    let b = q.set_tenant("b", 1, Some("lab"), 2);
    let other = q.set_tenant("other", 1, None, 1);
    for t in [a, b, other] {
        q.start(t);
    }
    q.finish(b);
    for _ in 0..20 {
        q.charge(a, 500);
        q.charge(other, 1_000);
    }
    let group_before = q.group_counter(b);
    assert_eq!(q.min_active_counter(b), Some(q.counter(a)));
    assert!(q.counter(b) < q.counter(a));
    q.push(b, Priority::Interactive, ());
    assert_eq!(q.counter(b), q.counter(a));
    assert_eq!(q.group_counter(b), group_before);
    // Now the whole group goes idle while `other` runs on. It returns at other's level.
    q.pop();
    q.finish(a);
    q.finish(b);
    for _ in 0..20 {
        q.charge(other, 1_000);
    }
    q.push(a, Priority::Interactive, ());
    assert_eq!(q.group_counter(a), q.group_counter(other));
    q.check_invariants();
}

/// Property 3. Without an active peer there is nothing to lift to: the counter stays.
#[test]
fn lone_returning_tenant_keeps_its_counter() {
    let mut q = FairQueue::new(Mode::Fair);
    let a = q.set_tenant("a", 1, None, 1);
    q.start(a);
    q.charge(a, 7);
    q.finish(a);
    q.push(a, Priority::Interactive, ());
    assert_eq!(q.counter(a), 7 * SCALE);
    assert_eq!(q.group_counter(a), 7 * SCALE);
}

/// FIFO mode ignores counters, classes and groups. Switching back to fair resumes by counters.
#[test]
fn fifo_mode_is_arrival_order_and_switching_back_is_fair() {
    let mut q = FairQueue::new(Mode::Fifo);
    let a = q.set_tenant("a", 1, Some("g"), 1);
    let b = q.set_tenant("b", 8, None, 1);
    for (t, class, x) in [
        (a, Priority::Batch, 0),
        (b, Priority::Interactive, 1),
        (a, Priority::Interactive, 2),
        (b, Priority::Batch, 3),
    ] {
        q.push(t, class, x);
    }
    q.charge(a, 10_000);
    assert!(
        q.is_next_in_line(b),
        "FIFO: everyone counts as next in line"
    );
    assert_eq!(q.pop().map(|(_, x)| x), Some(0));
    q.set_mode(Mode::Fair);
    assert!(q.is_next_in_line(b));
    assert!(!q.is_next_in_line(a));
    assert_eq!(q.pop().map(|(_, x)| x), Some(1));
    assert_eq!(q.pop().map(|(_, x)| x), Some(3));
    assert_eq!(q.pop().map(|(_, x)| x), Some(2));
    q.check_invariants();
}
