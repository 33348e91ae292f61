//! The gateway's own work per relayed chunk: `cargo bench -p fairgate-relay --bench chunk`.
//!
//! 1,000 vLLM chunks pushed one event per push (as a backend writes them), through
//! [`StreamRelay`] in the modes the gateway runs: criterion reports time per stream and, as
//! throughput, per chunk (elements/s; one over it is the time per chunk).
//! - `continuous_default`: vLLM with `continuous_usage_stats` (cumulative usage on every
//!   chunk, which the gateway asks for by default) and a client that asked for no usage, so
//!   every chunk's usage is read and cut out and the final usage chunk is dropped: the common
//!   case, and the most work.
//! - `continuous_client_wants_all`: the same stream passed through untouched (the client
//!   asked for both), usage still read from every chunk.
//! - `plain_strip_usage_chunk`: a backend without continuous usage (`"usage":null` on every
//!   chunk, as OpenAI sends): the nulls are dropped and the final usage chunk removed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fairgate_relay::StreamRelay;

const CHUNKS: usize = 1000;

fn chunk(i: usize, usage: bool) -> String {
    let usage = if usage {
        format!(
            "{{\"prompt_tokens\":12,\"total_tokens\":{},\"completion_tokens\":{}}}",
            13 + i,
            i + 1
        )
    } else {
        "null".to_owned()
    };
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":{usage}}}\n\n"
    )
}

/// One stream, one event per element.
fn events(usage_on_every_chunk: bool) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..CHUNKS)
        .map(|i| chunk(i, usage_on_every_chunk).into_bytes())
        .collect();
    v.push(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":1012,\"completion_tokens\":1000}}\n\n".to_vec());
    v.push(b"data: [DONE]\n\n".to_vec());
    v
}

fn relay(c: &mut Criterion) {
    let continuous = events(true);
    let plain = events(false);
    let mut g = c.benchmark_group("relay_1000_chunks");
    g.throughput(Throughput::Elements(CHUNKS as u64));
    for (name, evs, opts) in [
        ("continuous_default", &continuous, (true, true)),
        ("continuous_client_wants_all", &continuous, (false, false)),
        ("plain_strip_usage_chunk", &plain, (true, false)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut r = StreamRelay::with_options(opts.0, opts.1);
                for e in evs {
                    black_box(r.push(black_box(e)));
                }
                black_box(r.finish());
                black_box(r.usage())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
