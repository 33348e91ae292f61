//! The SU report end to end: a Slurm job recorded in the store, requests from three tenants
//! served by the job's backend (named `slurm-<jobid>` as the provisioner names it), and the
//! job's SUs split among the tenants by their tokens, the same in the admin API, the CLI and
//! the operator's CSV export.

mod common;

use std::collections::BTreeMap;

use common::portal::cookie_of;
use common::*;
use fairgate_sim::SimConfig;
use fairgate_store::Store;
use fairgate_types::{SlurmJobRow, IDLE_TENANT};
use reqwest::{header, Method};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
const DAY_MS: i64 = 86_400_000;
const GPUS: u64 = 8;
const SU_PER_GPU_HOUR: f64 = 108.6;

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(gw: &TestGateway, cookie: &str, path: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", gw.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

/// Equal to float rounding (serde_json reads floats to within an ulp or so, not exactly).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// Two JSON values alike: the same shape, text and integers, floats [`close`].
fn assert_same(a: &Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            assert!(
                close(x.as_f64().unwrap(), y.as_f64().unwrap()),
                "{x} != {y}"
            )
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{a} != {b}");
            x.iter().zip(y).for_each(|(x, y)| assert_same(x, y));
        }
        (Value::Object(x), Value::Object(y)) => {
            assert!(x.keys().eq(y.keys()), "{a} != {b}");
            x.values()
                .zip(y.values())
                .for_each(|(x, y)| assert_same(x, y));
        }
        _ => assert_eq!(a, b),
    }
}

#[tokio::test]
async fn a_jobs_sus_are_split_by_tenants_tokens_in_the_api_the_cli_and_the_csv() {
    let sim = Sim::start(SimConfig::instant("llama")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("llama", &sim.url, 8).with(|c| {
        c.models[0].backends[0].name = Some("slurm-4242".into());
    });
    let gw = TestGateway::start(setup, &db.url).await;

    // The job ran from yesterday's midnight (UTC) for three whole days, so today's requests
    // fall inside it even when the test runs across midnight.
    let today = fairgate_types::now_millis().div_euclid(DAY_MS) * DAY_MS;
    let (start, end) = (today - DAY_MS, today + 2 * DAY_MS);
    let job = SlurmJobRow {
        job_id: "4242".into(),
        model: "llama".into(),
        backend: "slurm-4242".into(),
        nodes: "gpu-01,gpu-02".into(),
        gpus: GPUS,
        gpu_type: Some("a100".into()),
        su_per_gpu_hour_micros: fairgate_types::micro_sus(SU_PER_GPU_HOUR),
        submitted_at: start - 60_000,
        started_at: Some(start),
        ended_at: Some(end),
        state: "COMPLETED".into(),
        reason: None,
    };
    let store = Store::connect(&gw.db_url).await.unwrap();
    store.upsert_slurm_job(&job).await.unwrap();
    store.close().await;

    // Three tenants, different amounts of work.
    for (tenant, requests, max_tokens) in [("t-a", 1, 10), ("t-b", 2, 20), ("t-c", 3, 30)] {
        gw.tenant(tenant, 1).await;
        let (_, key) = gw.key(tenant, None).await;
        for _ in 0..requests {
            let r = gw
                .post(
                    &key,
                    "/v1/chat/completions",
                    chat("llama", max_tokens, false),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
    }

    // What the ledger says each tenant got, per UTC day.
    let rows = gw.requests(None).await;
    assert_eq!(rows.len(), 6);
    let mut tokens: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in &rows {
        assert_eq!(
            r["backend"], "slurm-4242",
            "the backend's name is in the ledger"
        );
        let day = fairgate_types::utc_day(r["ts"].as_i64().unwrap());
        let n = r["prompt_tokens"].as_u64().unwrap() + r["completion_tokens"].as_u64().unwrap();
        *tokens
            .entry(day)
            .or_default()
            .entry(r["tenant"].as_str().unwrap().to_owned())
            .or_default() += n;
    }
    // Each day of the job: 24 h × 8 GPUs, split by tokens, or all idle.
    let day_hours = 24.0 * GPUS as f64;
    let mut want: Vec<(String, String, u64, f64)> = Vec::new(); // day, tenant, tokens, share
    for d in 0..3 {
        let day = fairgate_types::utc_day(start + d * DAY_MS);
        match tokens.get(&day) {
            None => want.push((day, IDLE_TENANT.into(), 0, 1.0)),
            Some(per) => {
                let total: u64 = per.values().sum();
                for (t, n) in per {
                    want.push((day.clone(), t.clone(), *n, *n as f64 / total as f64));
                }
            }
        }
    }
    want.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert!(want.iter().any(|w| w.1 == "t-c"), "{want:?}");

    // The admin API.
    let (since, until) = (fairgate_types::utc_day(start), fairgate_types::utc_day(end));
    let (s, report) = gw
        .admin(
            Method::GET,
            &format!("/slurm/su?since={since}&until={until}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["since"], since.as_str());
    assert_eq!(report["until"], until.as_str());
    let lines = report["lines"].as_array().unwrap();
    assert_eq!(lines.len(), want.len(), "{report:#}");
    let mut per_tenant: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (l, (day, tenant, n, share)) in lines.iter().zip(&want) {
        assert_eq!(l["day"], day.as_str(), "{l}");
        assert_eq!(l["tenant"], tenant.as_str(), "{l}");
        assert_eq!(l["model"], "llama");
        assert_eq!(l["job_id"], "4242");
        assert_eq!(l["tokens"].as_u64(), Some(*n), "{l}");
        let (h, su, sh) = (
            l["gpu_hours"].as_f64().unwrap(),
            l["sus"].as_f64().unwrap(),
            l["share"].as_f64().unwrap(),
        );
        assert!(close(sh, *share), "{l}: share {share}");
        assert!(close(h, day_hours * share), "{l}");
        assert!(close(su, day_hours * SU_PER_GPU_HOUR * share), "{l}");
        let e = per_tenant.entry(tenant.clone()).or_default();
        e.0 += h;
        e.1 += su;
    }
    let totals = report["totals"].as_array().unwrap();
    assert_eq!(totals.len(), per_tenant.len(), "{report:#}");
    for (t, (tenant, (h, su))) in totals.iter().zip(&per_tenant) {
        assert_eq!(t["tenant"], tenant.as_str());
        assert!(close(t["gpu_hours"].as_f64().unwrap(), *h), "{t}");
        assert!(close(t["sus"].as_f64().unwrap(), *su), "{t}");
    }
    let all: f64 = totals.iter().map(|t| t["sus"].as_f64().unwrap()).sum();
    assert!(close(all, 3.0 * day_hours * SU_PER_GPU_HOUR), "{all}");

    // The jobs listing, errors, the default range.
    let (s, jobs) = gw
        .admin(
            Method::GET,
            &format!("/slurm/jobs?since={since}&until={until}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{jobs}");
    assert_eq!(jobs["data"], json!([job]));
    let (s, err) = gw
        .admin(Method::GET, "/slurm/su?since=yesterday", None)
        .await;
    assert_eq!(s, 400, "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("since"),
        "{err}"
    );
    let (s, err) = gw
        .admin(
            Method::GET,
            &format!("/slurm/su?since={until}&until={since}"),
            None,
        )
        .await;
    assert_eq!(s, 400, "{err}");
    let (s, month) = gw.admin(Method::GET, "/slurm/su", None).await;
    assert_eq!(s, 200, "{month}");
    assert!(month["since"].as_str().unwrap().ends_with("-01"), "{month}");
    let r = gw
        .http
        .get(format!("{}/admin/v1/slurm/su", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the admin token is required");

    // The CLI prints the same report (the job has ended, so nothing moves in between).
    let (ok, out, err) = cli(
        &gw,
        &["su-report", "--since", &since, "--until", &until, "--json"],
    )
    .await;
    assert_same(&json_out(ok, &out, &err), &report);
    let (ok, table, err) = cli(&gw, &["su-report", "--since", &since, "--until", &until]).await;
    assert!(ok, "{err}");
    assert!(table.contains("GPU-HOURS"), "{table}");
    for (day, tenant, n, _) in &want {
        assert!(
            table.lines().any(|l| l.starts_with(day.as_str())
                && l.contains(tenant.as_str())
                && l.contains(&format!(" {n} "))),
            "{day} {tenant} {n}: {table}"
        );
    }

    // The operator's CSV export: the same lines, the same numbers.
    let (s, v) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": "ops@example.org", "password": PASSWORD, "role": "operator"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let r = browser()
        .post(format!("{}/portal/login", gw.base))
        .form(&[("email", "ops@example.org"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = cookie_of(&r);
    let page = get(&gw, &cookie, "/portal/usage")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("action=\"/portal/export-su.csv\""), "{page}");
    let r = get(
        &gw,
        &cookie,
        &format!("/portal/export-su.csv?since={since}&until={until}"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(
        r.headers()[header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"fairgate-su-{since}-{until}.csv\"").as_str()
    );
    let csv = r.text().await.unwrap();
    let mut csv_lines = csv.lines();
    assert_eq!(
        csv_lines.next(),
        Some("day,tenant,model,job_id,gpu_hours,sus,tokens,share")
    );
    let csv_lines: Vec<&str> = csv_lines.collect();
    assert_eq!(csv_lines.len(), lines.len(), "{csv}");
    for (c, l) in csv_lines.iter().zip(lines) {
        let f: Vec<&str> = c.split(',').collect();
        assert_eq!(f.len(), 8, "{c}");
        let text = |k: &str| l[k].as_str().unwrap().to_owned();
        assert_eq!(
            (f[0], f[1], f[2], f[3]),
            (
                text("day").as_str(),
                text("tenant").as_str(),
                text("model").as_str(),
                text("job_id").as_str()
            ),
            "{c}"
        );
        let num = |i: usize| f[i].parse::<f64>().unwrap();
        assert!(close(num(4), l["gpu_hours"].as_f64().unwrap()), "{c}");
        assert!(close(num(5), l["sus"].as_f64().unwrap()), "{c}");
        assert_eq!(f[6].parse::<u64>().unwrap(), l["tokens"].as_u64().unwrap());
        assert!(close(num(7), l["share"].as_f64().unwrap()), "{c}");
    }
    let r = get(&gw, &cookie, "/portal/export-su.csv?since=2025-02-30").await;
    assert_eq!(r.status(), 400);

    gw.shutdown().await;
    db.cleanup().await;
}
