//! Micro-benchmark of one fair-queue dispatch decision.
//!
//! Each iteration is one dispatch decision in steady state:
//! - `pop` the next entry (arg-min group, then arg-min tenant, then class and arrival order);
//! - push one new entry for that tenant, so the backlog stays constant;
//! - `charge` the tenant a pseudo-random cost, which moves it in the ordered sets at both levels;
//! - `finish` the request, so in-flight counts stay constant.
//!
//! Every tenant keeps a few entries queued and starts from a pseudo-random counter. Sizes:
//! - 10, 1 000 and 10 000 ungrouped tenants;
//! - 1 000 and 10 000 tenants spread over 100 groups.
//!
//! Run: `cargo bench -p fairgate-admission --bench dispatch -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fairgate_admission::fair::{FairQueue, Mode, TenantId};
use fairgate_types::Priority;

/// Entries each tenant keeps queued.
const PER_TENANT: usize = 4;

/// A tiny LCG: deterministic "random-ish" costs without a dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// A queue with `tenants` backlogged tenants. With `groups`, the tenants are spread over
/// that many named groups; otherwise each tenant is its own group.
fn backlogged(tenants: usize, groups: Option<usize>) -> FairQueue<u64> {
    let mut q = FairQueue::new(Mode::Fair);
    let mut rng = Lcg(42);
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| {
            let group = groups.map(|g| format!("g{}", i % g));
            let gw = groups.map_or(1, |g| 1 + (i % g) as u32 % 3);
            q.set_tenant(&format!("t{i}"), 1 + i as u32 % 4, group.as_deref(), gw)
        })
        .collect();
    for k in 0..PER_TENANT {
        for &t in &ids {
            let class = if k % 3 == 2 {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            q.push(t, class, rng.next());
        }
    }
    // Spread the counters: every tenant (and so every group) has been served differently.
    for &t in &ids {
        q.charge(t, rng.next() % 100_000);
    }
    q
}

/// One dispatch decision and the bookkeeping that keeps the backlog in steady state.
fn decide(q: &mut FairQueue<u64>, rng: &mut Lcg) {
    let (t, x) = q.pop().expect("backlogged");
    q.push(t, Priority::Interactive, black_box(x));
    q.charge(t, 1 + rng.next() % 2_000);
    q.finish(t);
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(1));
    let cases: [(&str, usize, Option<usize>); 5] = [
        ("ungrouped", 10, None),
        ("ungrouped", 1_000, None),
        ("ungrouped", 10_000, None),
        ("100_groups", 1_000, Some(100)),
        ("100_groups", 10_000, Some(100)),
    ];
    for (name, tenants, groups) in cases {
        let mut q = backlogged(tenants, groups);
        let mut rng = Lcg(7);
        group.bench_function(BenchmarkId::new(name, tenants), |b| {
            b.iter(|| decide(&mut q, &mut rng));
        });
        // Steady state: the backlog never changed size.
        assert_eq!(q.len(), tenants * PER_TENANT);
        q.check_invariants();
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
