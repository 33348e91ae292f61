//! Every OpenAI surface beside chat is accounted in its own unit, priced, and held by budgets
//! and rate limits, through the gateway against the simulator: images per image, transcription
//! and translation per second of audio, speech per character, rerank, score, responses and
//! embeddings in tokens. The ledger's units equal what the simulator served.

mod common;

use common::cluster::metrics_text;
use common::*;
use fairgate::config::TenantDecl;
use fairgate_sim::SimConfig;
use fairgate_types::{Budget, BudgetPeriod, Micros, OnLimit, Price, RateLimits, TenantPolicy};
use serde_json::{json, Value};

fn tenant(name: &str, policy: TenantPolicy) -> TenantDecl {
    TenantDecl {
        name: name.into(),
        weight: 1,
        group: None,
        policy,
    }
}

const PRICE: Price = Price {
    input_per_mtok: 1_000_000,
    output_per_mtok: 2_000_000,
    per_image: 40_000,
    per_audio_minute: 6_000,
    per_mchar: 15_000_000,
};

/// A WAV of `secs` seconds (8-bit mono, 8 kHz).
fn wav(secs: u64) -> Vec<u8> {
    fairgate_relay::units::wav_of_seconds(secs, 8000)
}

/// A multipart form with a file part (after the model, or before it when `model_last`).
fn form(file: &[u8], fields: &[(&str, &str)], model_last: bool) -> (String, Vec<u8>) {
    let boundary = "fgTestBoundary7";
    let mut b = Vec::new();
    let field = |b: &mut Vec<u8>, name: &str, value: &str| {
        b.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    };
    let (first, last): (Vec<_>, Vec<_>) = fields
        .iter()
        .partition(|(n, _)| !(model_last && *n == "model"));
    for (n, v) in &first {
        field(&mut b, n, v);
    }
    b.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
            .as_bytes(),
    );
    b.extend_from_slice(file);
    b.extend_from_slice(b"\r\n");
    for (n, v) in &last {
        field(&mut b, n, v);
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

async fn upload(
    gw: &TestGateway,
    key: &str,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    gw.http
        .post(format!("{}{path}", gw.base))
        .bearer_auth(key)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn row_for<'a>(rows: &'a [Value], endpoint: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no row for {endpoint}: {rows:#?}"))
}

#[tokio::test]
async fn each_surface_is_recorded_in_its_unit_and_priced() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 8).with(|c| c.models[0].price = PRICE);
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;

    // Images: three asked, three made, priced per image.
    let r = gw
        .post(
            &key,
            "/v1/images/generations",
            json!({"model": "m", "prompt": "a red bicycle", "n": 3}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let made = v["data"].as_array().unwrap().len() as u64;
    assert_eq!(made, 3);

    // Transcription: the simulator reports the seconds; the model field comes after the file.
    let (ct, body) = form(&wav(7), &[("model", "m")], true);
    let r = upload(&gw, &key, "/v1/audio/transcriptions", &ct, body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let transcribed = v["usage"]["seconds"].as_u64().unwrap();
    assert_eq!(transcribed, 7);

    // Translation as plain text: no usage in the answer, so the WAV upload's length counts.
    let (ct, body) = form(
        &wav(5),
        &[("model", "m"), ("response_format", "text")],
        false,
    );
    let r = upload(&gw, &key, "/v1/audio/translations", &ct, body).await;
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().is_empty());

    // Speech: characters of the input; the answer is audio.
    let input = "Hello from the gateway, é!";
    let r = gw
        .post(
            &key,
            "/v1/audio/speech",
            json!({"model": "m", "input": input, "voice": "alloy"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    let audio = r.bytes().await.unwrap();
    assert_eq!(&audio[..4], b"RIFF");

    // Rerank and score: tokens from vLLM's usage shapes.
    let r = gw
        .post(&key, "/v1/rerank", json!({"model": "m", "query": "fair share", "documents": ["weighted fair queueing", "a bicycle"]}))
        .await;
    assert_eq!(r.status(), 200);
    let rerank: Value = r.json().await.unwrap();
    let r = gw
        .post(&key, "/score", json!({"model": "m", "text_1": "fair share", "text_2": ["queueing", "bicycles are red"]}))
        .await;
    assert_eq!(r.status(), 200);
    let score: Value = r.json().await.unwrap();
    let r = gw
        .post(
            &key,
            "/v1/responses",
            json!({"model": "m", "input": "say hi", "max_output_tokens": 6}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    let r = gw
        .post(
            &key,
            "/v1/embeddings",
            json!({"model": "m", "input": ["one two three", "four"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let emb: Value = r.json().await.unwrap();

    let rows = gw.wait_rows(Some("t"), 8).await;
    let images = row_for(&rows, "/v1/images/generations");
    assert_eq!(images["unit"], "images", "{images}");
    assert_eq!(images["units"], made, "{images}");
    let image_prompt = images["prompt_tokens"].as_u64().unwrap();
    assert_eq!(images["cost"], 3 * 40_000 + image_prompt, "{images}");

    let tr = row_for(&rows, "/v1/audio/transcriptions");
    assert_eq!(tr["unit"], "audio_seconds", "{tr}");
    assert_eq!(tr["units"], transcribed, "{tr}");
    assert_eq!(tr["cost"], 700, "7 s at 6000 micros a minute: {tr}");

    let tl = row_for(&rows, "/v1/audio/translations");
    assert_eq!(tl["unit"], "audio_seconds", "{tl}");
    assert_eq!(tl["units"], 5, "{tl}");

    let sp = row_for(&rows, "/v1/audio/speech");
    assert_eq!(sp["unit"], "characters", "{sp}");
    assert_eq!(sp["units"], input.chars().count() as u64, "{sp}");
    let sp_prompt = sp["prompt_tokens"].as_u64().unwrap();
    // 15_000_000 micros per million characters: 15 per character.
    assert_eq!(sp["cost"], 26 * 15 + sp_prompt, "{sp}");

    let rr = row_for(&rows, "/v1/rerank");
    assert_eq!(rr["unit"], "tokens");
    assert_eq!(rr["prompt_tokens"], rerank["usage"]["total_tokens"], "{rr}");
    assert_eq!(rr["units"], rerank["usage"]["total_tokens"], "{rr}");
    let sc = row_for(&rows, "/score");
    assert_eq!(sc["prompt_tokens"], score["usage"]["prompt_tokens"], "{sc}");
    let rs = row_for(&rows, "/v1/responses");
    assert_eq!(rs["prompt_tokens"], resp["usage"]["input_tokens"], "{rs}");
    assert_eq!(
        rs["completion_tokens"], resp["usage"]["output_tokens"],
        "{rs}"
    );
    assert_eq!(
        rs["cost"],
        resp["usage"]["input_tokens"].as_u64().unwrap()
            + 2 * resp["usage"]["output_tokens"].as_u64().unwrap()
    );
    let em = row_for(&rows, "/v1/embeddings");
    assert_eq!(em["prompt_tokens"], emb["usage"]["prompt_tokens"], "{em}");
    assert_eq!(em["units"], emb["usage"]["prompt_tokens"], "{em}");

    // A refused request has no units.
    let r = gw
        .post(
            &key,
            "/v1/images/generations",
            json!({"model": "m", "prompt": "x", "n": 50}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let rows = gw.wait_rows(Some("t"), 9).await;
    let bad = rows
        .iter()
        .find(|r| r["endpoint"] == "/v1/images/generations" && r["status"] == 400)
        .unwrap();
    assert_eq!(bad["units"], 0, "{bad}");
    assert_eq!(bad["cost"], 0, "{bad}");
    gw.shutdown().await;
}

#[tokio::test]
async fn budgets_and_rate_limits_hold_units() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 8).with(|c| {
        c.models[0].price = Price {
            per_image: 40_000,
            ..Price::default()
        };
        c.tenants = vec![
            // Money for two images and a half.
            tenant(
                "budget",
                TenantPolicy {
                    budgets: vec![Budget {
                        period: BudgetPeriod::Day,
                        tokens: None,
                        cost: Some(Micros(100_000)),
                    }],
                    ..TenantPolicy::default()
                },
            ),
            // Tokens for two images a minute (an image weighs 1000 tokens by default).
            tenant(
                "rate",
                TenantPolicy {
                    limits: RateLimits {
                        tpm: Some(2_500),
                        ..RateLimits::default()
                    },
                    on_limit: Some(OnLimit::Reject),
                    ..TenantPolicy::default()
                },
            ),
        ];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    let (_, budget_key) = gw.key("budget", None).await;
    let (_, rate_key) = gw.key("rate", None).await;
    let image = |n: u64| json!({"model": "m", "prompt": "a cat", "n": n});

    let r = gw
        .post(&budget_key, "/v1/images/generations", image(2))
        .await;
    assert_eq!(r.status(), 200);
    // 80_000 spent; one more image (40_000) does not fit in 100_000.
    let r = gw
        .post(&budget_key, "/v1/images/generations", image(1))
        .await;
    assert_eq!(r.status(), 402, "{}", r.text().await.unwrap());
    let rows = gw.wait_rows(Some("budget"), 2).await;
    assert_eq!(sum(&rows, "cost"), 80_000);
    assert_eq!(sum(&rows, "units"), 2);

    let r = gw.post(&rate_key, "/v1/images/generations", image(2)).await;
    assert_eq!(r.status(), 200);
    let r = gw.post(&rate_key, "/v1/images/generations", image(2)).await;
    assert_eq!(r.status(), 429, "{}", r.text().await.unwrap());
    let rows = gw.wait_rows(Some("rate"), 2).await;
    assert_eq!(sum(&rows, "units"), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_large_upload_is_spooled_and_sent_whole_with_its_model_after_the_file() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let mut setup = Setup::one("m", &sim.url, 8).with(|c| c.models[0].price = PRICE);
    setup.max_body_bytes = 8 << 20;
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;

    // 6 minutes of audio, 2.9 MB: over the 1 MiB the gateway keeps in memory.
    let audio = wav(360);
    let (ct, body) = form(&audio, &[("model", "m")], true);
    let r = upload(&gw, &key, "/v1/audio/transcriptions", &ct, body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    // The simulator decoded the whole file: its length is the upload's.
    assert_eq!(v["usage"]["seconds"], 360, "{v}");
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows[0]["units"], 360, "{}", rows[0]);
    assert_eq!(rows[0]["model"], "m");
    let text = metrics_text(&gw).await;
    assert!(
        text.contains("fairgate_uploads_spooled_total{unit=\"audio_seconds\"} 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("spooled"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Over the body limit: refused whole, as before.
    let (ct, body) = form(&wav(1200), &[("model", "m")], true);
    let r = upload(&gw, &key, "/v1/audio/transcriptions", &ct, body).await;
    assert_eq!(r.status(), 413);
    gw.shutdown().await;
}
