//! Cost of the guard on the gateway's hot paths: `cargo bench -p fairgate-guard`.
//!
//! - `scan_4k`: [`Guard::scan`] on a 4 KiB prompt of ordinary prose with a few PII values
//!   (target: at most 50 µs), plus the PII and injection halves on their own and `redact`.
//! - `stream_512_tokens`: a 512-token answer (about 2 KiB, a few PII values) fed to a
//!   [`fairgate_guard::StreamScan`] in 4-byte chunks; criterion reports time per answer and,
//!   as throughput, per chunk. `push_4_byte_chunks` is `log` mode's work; `block_holdback`
//!   adds `clean_until` after every chunk (what `block` mode asks to release held text);
//!   `sse_parse_and_scan` is the gateway's completion guardrail per event: the chunk's JSON
//!   (`delta.content`) read with a borrowed parse, then pushed, then `clean_until`, against
//!   `sse_parse_only`, the parse alone.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fairgate_guard::{Guard, GuardConfig};

const PROSE: &[&str] = &[
    "The committee reviewed the quarterly report and agreed that the migration to the new cluster should continue as planned. ",
    "Several teams raised concerns about queueing delays during the evening peak, when batch jobs compete with interactive users. ",
    "Please summarize the main arguments of the attached paper in plain language, and list three open questions for the seminar. ",
    "In 2023 the department processed 1,284 requests, up 12% from the year before, with a median turnaround of 3.5 days. ",
    "Students should follow the instructions in the lab handbook and record every measurement in the shared notebook. ",
    "The model was fine-tuned on a corpus of public-domain books and evaluated on reading comprehension benchmarks. ",
    "Write a short, friendly reply that thanks the author, mentions the deadline on 14 March, and asks for the final slides. ",
    "Our findings suggest that smaller batch sizes reduce tail latency without hurting throughput on the H100 nodes. ",
];

const PII: &[&str] = &[
    "Contact me at maria.gonzalez@example.com or +44 20 7946 0958 if anything is unclear. ",
    "The reimbursement goes to DE89 3704 0044 0532 0130 00, card on file 4111 1111 1111 1111. ",
];

/// About `len` bytes of prose with the PII sentences spread through it.
fn text(len: usize) -> String {
    let mut out = String::with_capacity(len + 256);
    let mut i = 0;
    while out.len() < len {
        out.push_str(PROSE[i % PROSE.len()]);
        if i % 7 == 3 {
            out.push_str(PII[(i / 7) % PII.len()]);
        }
        i += 1;
    }
    let mut cut = len.min(out.len());
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
}

fn bench_scan(c: &mut Criterion) {
    let prompt = text(4096);
    let guard = Guard::new(&GuardConfig::default()).unwrap();
    let findings = guard.scan(&prompt);
    assert!(
        findings.pii.len() >= 4 && !findings.injection.flagged,
        "{findings:?}"
    );
    let pii_only = Guard::new(&GuardConfig {
        injection: false,
        ..GuardConfig::default()
    })
    .unwrap();
    let injection_only = Guard::new(&GuardConfig {
        email: false,
        phone: false,
        credit_card: false,
        iban: false,
        ssn: false,
        ip: false,
        ..GuardConfig::default()
    })
    .unwrap();

    let mut g = c.benchmark_group("scan_4k");
    g.throughput(Throughput::Bytes(prompt.len() as u64));
    g.bench_function("scan", |b| b.iter(|| guard.scan(black_box(&prompt))));
    g.bench_function("pii_only", |b| b.iter(|| pii_only.scan(black_box(&prompt))));
    g.bench_function("injection_only", |b| {
        b.iter(|| injection_only.scan(black_box(&prompt)))
    });
    g.bench_function("redact", |b| {
        b.iter(|| guard.redact(black_box(&prompt), black_box(&findings)))
    });
    g.finish();
}

fn bench_stream(c: &mut Criterion) {
    // 512 tokens of about 4 bytes each.
    let answer = text(2048);
    let chunks: Vec<&str> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < answer.len() {
            let mut j = (i + 4).min(answer.len());
            while !answer.is_char_boundary(j) {
                j += 1;
            }
            v.push(&answer[i..j]);
            i = j;
        }
        v
    };
    let guard = Guard::new(&GuardConfig::default()).unwrap();
    let run = || {
        let mut s = guard.stream();
        let mut found = 0;
        for chunk in &chunks {
            found += usize::from(s.push(black_box(chunk)).is_some());
            while s.next_finding().is_some() {
                found += 1;
            }
        }
        while s.finish().is_some() || s.next_finding().is_some() {
            found += 1;
        }
        found
    };
    assert_eq!(run(), guard.scan(&answer).pii.len());

    let holdback = || {
        let mut s = guard.stream();
        let mut clean = 0;
        for chunk in &chunks {
            if s.push(black_box(chunk)).is_some() {
                while s.next_finding().is_some() {}
            }
            clean = s.clean_until();
        }
        while s.finish().is_some() || s.next_finding().is_some() {}
        clean + s.clean_until()
    };
    // The same answer as the SSE events a vLLM stream carries, one token each.
    let events: Vec<String> = chunks
        .iter()
        .map(|c| {
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]})
            .to_string()
        })
        .collect();
    let parse = |e: &str| -> usize {
        let c: SseChunk = serde_json::from_str(e).unwrap();
        c.choices
            .iter()
            .filter_map(|c| c.delta.as_ref()?.content.as_ref())
            .map(|t| t.len())
            .sum()
    };
    let sse = || {
        let mut s = guard.stream();
        let mut clean = 0;
        for e in &events {
            let c: SseChunk = serde_json::from_str(black_box(e)).unwrap();
            for ch in &c.choices {
                if let Some(t) = ch.delta.as_ref().and_then(|d| d.content.as_deref()) {
                    if s.push(t).is_some() {
                        while s.next_finding().is_some() {}
                    }
                }
            }
            clean = s.clean_until();
        }
        while s.finish().is_some() || s.next_finding().is_some() {}
        clean
    };
    assert_eq!(events.iter().map(|e| parse(e)).sum::<usize>(), answer.len());

    let mut g = c.benchmark_group("stream_512_tokens");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("push_4_byte_chunks", |b| b.iter(run));
    g.bench_function("block_holdback", |b| b.iter(holdback));
    g.bench_function("sse_parse_only", |b| {
        b.iter(|| events.iter().map(|e| parse(black_box(e))).sum::<usize>())
    });
    g.bench_function("sse_parse_and_scan", |b| b.iter(sse));
    g.finish();
}

#[derive(serde::Deserialize)]
struct SseChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<SseChoice<'a>>,
}

#[derive(serde::Deserialize)]
struct SseChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<SseDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct SseDelta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

criterion_group!(benches, bench_scan, bench_stream);
criterion_main!(benches);
