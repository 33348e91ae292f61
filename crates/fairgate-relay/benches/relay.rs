//! Throughput of the hot-path functions: `cargo bench -p fairgate-relay`.
//!
//! Plain timing loops (`harness = false`, no criterion) so the bench adds no dependencies:
//! each case runs for about half a second after a warm-up and prints time per operation and
//! input throughput. Good enough to spot regressions of 2x, not 5%.

use fairgate_relay::{parse_request, with_include_usage, with_stream_usage, Endpoint, StreamRelay};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn bench(name: &str, bytes_per_op: usize, mut op: impl FnMut()) {
    for _ in 0..10 {
        op();
    }
    let budget = Duration::from_millis(500);
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < budget {
        op();
        iters += 1;
    }
    let per_op = start.elapsed().as_secs_f64() / iters.max(1) as f64;
    let mb_s = bytes_per_op as f64 / per_op / 1e6;
    println!("{name:<44} {:>10.2} µs/op {:>9.1} MB/s", per_op * 1e6, mb_s);
}

fn chat_body(messages: usize, words: usize) -> Vec<u8> {
    let text = "The quick brown fox jumps over the lazy dog, \"again\".\n ".repeat(words / 10 + 1);
    let mut body = String::from(
        r#"{"model":"meta-llama/Llama-3.1-8B-Instruct","temperature":0.7,"messages":["#,
    );
    for i in 0..messages {
        if i > 0 {
            body.push(',');
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        body.push_str(&format!(
            r#"{{"role":"{role}","content":{}}}"#,
            serde_json::json!(text)
        ));
    }
    body.push_str(r#"],"stream":true,"max_tokens":512}"#);
    body.into_bytes()
}

/// vLLM with `continuous_usage_stats`: cumulative usage on every chunk.
fn continuous_stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":{{\"prompt_tokens\":12,\"total_tokens\":{},\"completion_tokens\":{}}}}}\n\n",
            13 + i,
            i + 1
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":1012,\"completion_tokens\":1000}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":1012,\"completion_tokens\":1000}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn main() {
    let small = chat_body(4, 40);
    let large = chat_body(40, 2000);
    bench(
        &format!("parse_request chat {} B", small.len()),
        small.len(),
        || {
            let _ = black_box(parse_request(Endpoint::ChatCompletions, black_box(&small)));
        },
    );
    bench(
        &format!("parse_request chat {} B", large.len()),
        large.len(),
        || {
            let _ = black_box(parse_request(Endpoint::ChatCompletions, black_box(&large)));
        },
    );
    bench(
        &format!("with_include_usage {} B", large.len()),
        large.len(),
        || {
            let _ = black_box(with_include_usage(black_box(&large)));
        },
    );
    bench(
        &format!("with_stream_usage {} B", large.len()),
        large.len(),
        || {
            let _ = black_box(with_stream_usage(black_box(&large)));
        },
    );

    let s = stream(1000);
    let events: Vec<&[u8]> = s.split_inclusive(|&b| b == b'\n').collect();
    for strip in [false, true] {
        bench(
            &format!("StreamRelay strip={strip} whole {} B", s.len()),
            s.len(),
            || {
                let mut r = StreamRelay::new(strip);
                black_box(r.push(black_box(&s)));
                black_box(r.finish());
            },
        );
        bench(
            &format!("StreamRelay strip={strip} per line"),
            s.len(),
            || {
                let mut r = StreamRelay::new(strip);
                for e in &events {
                    black_box(r.push(black_box(e)));
                }
                black_box(r.finish());
            },
        );
        bench(
            &format!("StreamRelay strip={strip} 7-byte pushes"),
            s.len(),
            || {
                let mut r = StreamRelay::new(strip);
                for c in s.chunks(7) {
                    black_box(r.push(black_box(c)));
                }
                black_box(r.finish());
            },
        );
    }

    let c = continuous_stream(1000);
    let lines: Vec<&[u8]> = c.split_inclusive(|&b| b == b'\n').collect();
    for (strip_usage_chunk, strip_chunk_usage) in
        [(false, false), (true, false), (false, true), (true, true)]
    {
        bench(
            &format!(
                "StreamRelay continuous opts=({strip_usage_chunk},{strip_chunk_usage}) per line"
            ),
            c.len(),
            || {
                let mut r = StreamRelay::with_options(strip_usage_chunk, strip_chunk_usage);
                for e in &lines {
                    black_box(r.push(black_box(e)));
                }
                black_box(r.finish());
            },
        );
    }
}
