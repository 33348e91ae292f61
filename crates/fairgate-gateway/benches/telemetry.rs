//! What the live telemetry windows cost a request: `Telemetry::record` runs once per finished
//! request, on the request's task.
//!
//! `cargo bench -p fairgate-gateway --bench telemetry`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fairgate_gateway::telemetry::{Finished, Telemetry};

fn bench(c: &mut Criterion) {
    let users: Vec<String> = (0..1_000).map(|i| format!("user{i}@example.org")).collect();
    let t = Telemetry::default();
    let now = 1_800_000_000_000i64;
    let mut i = 0usize;
    c.bench_function("telemetry/record (1,000 users, same minute)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            t.record(black_box(&Finished {
                now_ms: now,
                model: "llama",
                tenant: "lab",
                user: Some(&users[i % users.len()]),
                status: 200,
                prompt_tokens: 120,
                completion_tokens: 40,
                cached_tokens: 64,
                cost_micros: 9,
                ttft_ms: Some(35),
            }))
        })
    });
    let models: Vec<String> = (0..8).map(|i| format!("model-{i}")).collect();
    let names: Vec<&str> = models.iter().map(String::as_str).collect();
    for m in 0..60 {
        for (k, u) in users.iter().enumerate().take(200) {
            t.record(&Finished {
                now_ms: now - m * 60_000,
                model: names[k % names.len()],
                tenant: "lab",
                user: Some(u),
                status: 200,
                prompt_tokens: 120,
                completion_tokens: 40,
                cached_tokens: 64,
                cost_micros: 9,
                ttft_ms: Some(35),
            });
        }
    }
    c.bench_function(
        "telemetry/overview (8 models, 1 h, 200 users a minute)",
        |b| b.iter(|| t.overview(now, 3_600_000, 30_000, 10, black_box(&names))),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
