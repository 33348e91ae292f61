//! Cost of the guard on the gateway's hot paths: `cargo bench -p fairgate-guard`.
//!
//! - `scan_4k`: [`Guard::scan`] on a 4 KiB prompt of ordinary prose with a few PII values
//!   (target: at most 50 µs), plus the PII and injection halves on their own and `redact`.
//! - `stream_512_tokens`: a 512-token answer (about 2 KiB, a few PII values) fed to a
//!   [`fairgate_guard::StreamScan`] in 4-byte chunks; criterion reports time per chunk.

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

    let mut g = c.benchmark_group("stream_512_tokens");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("push_4_byte_chunks", |b| b.iter(run));
    g.finish();
}

criterion_group!(benches, bench_scan, bench_stream);
criterion_main!(benches);
