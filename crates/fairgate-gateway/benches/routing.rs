//! Micro-benchmarks of the routing decision, which runs once per admitted request:
//! - `prompt_blocks`: hashing a chat prompt into chained 64-byte blocks (≈ 4k tokens, the
//!   256-block cap);
//! - `prefix_match`: looking those blocks up in one backend's index of 32k blocks;
//! - `choose`: the strategy's pick among 4, 16 and 64 candidate views.
//!
//! Run: `cargo bench -p fairgate --bench routing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fairgate_gateway::router::prefix::PrefixIndex;
use fairgate_gateway::router::{choose, LoraFit, Strategy, Thresholds, View};
use fairgate_relay::prefix::{prompt_blocks, MAX_BLOCKS};
use fairgate_relay::Endpoint;

fn chat(system_words: usize) -> Vec<u8> {
    let system = "Answer from the product manual, politely and briefly. ".repeat(system_words / 8);
    serde_json::to_vec(&serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "How do I reset the device to factory settings?"},
        ],
    }))
    .unwrap()
}

fn views(n: usize) -> Vec<View> {
    (0..n)
        .map(|i| View {
            in_flight: (i * 7) % 13,
            max_in_flight: 16,
            foreign: (i % 3) as f64,
            waiting: Some((i % 4) as f64),
            kv_usage: Some(0.1 * (i % 9) as f64),
            prefix_match: (i * 31) % 200,
            lora: LoraFit::Base,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let body = chat(3_000);
    c.bench_function("prompt_blocks/16KiB chat", |b| {
        b.iter(|| prompt_blocks(Endpoint::ChatCompletions, black_box(&body), MAX_BLOCKS))
    });
    let blocks = prompt_blocks(Endpoint::ChatCompletions, &body, MAX_BLOCKS);
    let mut index = PrefixIndex::new(32_768);
    for i in 0..120u64 {
        index.insert(&(0..256).map(|j| i * 1_000 + j).collect::<Vec<_>>());
    }
    index.insert(&blocks);
    c.bench_function("prefix_match/256 blocks in 32k", |b| {
        b.iter(|| index.matched(black_box(&blocks)))
    });
    let t = Thresholds {
        waiting: 5.0,
        kv_usage: 0.9,
    };
    let mut g = c.benchmark_group("choose");
    for n in [4, 16, 64] {
        let v = views(n);
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastLoaded,
            Strategy::PrefixAware,
        ] {
            g.bench_with_input(BenchmarkId::new(s.as_str(), n), &v, |b, v| {
                let mut r = 0usize;
                b.iter(|| {
                    r = r.wrapping_add(1);
                    choose(s, black_box(v), r, &t)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
