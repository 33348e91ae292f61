//! Bounded observability (issue 10): metric labels only from known values, a series cap,
//! backends labelled by name and their series gone when they leave, `/metrics` behind a token,
//! and no backend address in client-facing bodies.

mod common;

use std::time::Duration;

use common::*;
use fairgate::config::Secret;
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::json;

async fn scrape(gw: &TestGateway) -> String {
    let resp = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

/// Port part of a `http://host:port` URL.
fn port_of(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

#[tokio::test]
async fn made_up_model_names_add_no_series() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    assert_eq!(
        gw.post(&key, "/v1/chat/completions", chat("m", 4, false))
            .await
            .status(),
        200
    );
    // The first unknown model makes the `_unknown` series; later ones must add nothing.
    let resp = gw
        .post(&key, "/v1/chat/completions", chat("nope-0", 4, false))
        .await;
    assert_eq!(resp.status(), 404);
    let before = scrape(&gw).await;
    for i in 0..40 {
        let name = format!("random-{i}-{}", i * 7919);
        let resp = gw
            .post(&key, "/v1/chat/completions", chat(&name, 4, false))
            .await;
        assert_eq!(resp.status(), 404);
    }
    let after = scrape(&gw).await;
    assert_eq!(series(&before), series(&after), "{after}");
    assert!(!after.contains("random-"), "{after}");
    assert!(
        after.contains(r#"fairgate_requests_total{model="_unknown",status="404",tenant="t"} 41"#),
        "{after}"
    );
    assert!(
        after.contains(r#"fairgate_requests_total{model="m",status="200",tenant="t"} 1"#),
        "{after}"
    );
    // No key: the anonymous tenant label, one series however many keys are made up.
    for i in 0..5 {
        let resp = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.base))
            .bearer_auth(format!("fg-madeup-{i}"))
            .json(&chat(&format!("x{i}"), 4, false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let text = scrape(&gw).await;
    assert!(text.contains(r#"tenant="_anonymous""#), "{text}");
    assert!(!text.contains("fg-madeup"), "{text}");
    gw.shutdown().await;
}

#[tokio::test]
async fn series_cap_sends_new_label_sets_to_overflow() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        Setup::one("m", &sim.url, 8).with(|c| c.metrics.max_series = 10),
        &db.url,
    )
    .await;
    // 12 known tenants, one successful request each: 12 label sets for a family capped at 10.
    let mut keys = Vec::new();
    for i in 0..12 {
        let t = format!("t{i}");
        gw.tenant(&t, 1).await;
        keys.push(gw.key(&t, None).await.1);
    }
    for k in &keys {
        assert_eq!(
            gw.post(k, "/v1/chat/completions", chat("m", 4, false))
                .await
                .status(),
            200
        );
    }
    let text = scrape(&gw).await;
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("fairgate_requests_total{"))
        .collect();
    assert_eq!(
        requests.len(),
        11,
        "10 label sets + _overflow: {requests:#?}"
    );
    assert!(
        text.contains(
            r#"fairgate_requests_total{model="_overflow",status="_overflow",tenant="_overflow"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"fairgate_metrics_series_dropped_total{metric="fairgate_requests_total"} 2"#
        ),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn backends_are_labelled_by_name_and_leave_with_their_series() {
    let a = Sim::start(SimConfig::instant("m")).await;
    let b = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        Setup::many("m", &[&a.url, &b.url], 4).with(|c| {
            c.models[0].backends[0].name = Some("gpu-a".into());
            c.models[0].backends[1].name = Some("gpu-b".into());
        }),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    for _ in 0..4 {
        assert_eq!(
            gw.post(&key, "/v1/chat/completions", chat("m", 4, false))
                .await
                .status(),
            200
        );
    }
    let text = scrape(&gw).await;
    assert!(
        text.contains(r#"fairgate_backend_up{backend="gpu-a",model="m"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"backend="gpu-b""#), "{text}");
    for url in [&a.url, &b.url] {
        assert!(!text.contains(url.as_str()), "{text}");
        assert!(!text.contains(&format!(":{}", port_of(url))), "{text}");
    }
    assert!(!text.contains("http://"), "{text}");
    // The ledger's backend column holds the name too.
    let rows = gw.wait_rows(Some("t"), 4).await;
    for r in &rows {
        let name = r["backend"].as_str().unwrap();
        assert!(name == "gpu-a" || name == "gpu-b", "{r}");
    }
    // The admin view shows the name next to the URL.
    let (s, v) = gw.admin(Method::GET, "/models/m/backends", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["backends"][1]["name"], "gpu-b", "{v}");

    // Removing gpu-b (idle) takes every one of its series away at the next scrape.
    let (s, v) = gw
        .admin(
            Method::POST,
            "/models/m/backends/remove",
            Some(json!({"url": b.url})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&gw).await;
        if !text.contains(r#"backend="gpu-b""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!text.contains(r#"backend="gpu-b""#), "{text}");
    assert!(text.contains(r#"backend="gpu-a""#), "{text}");

    // Added live with a name: labelled by it.
    let (s, v) = gw
        .admin(
            Method::POST,
            "/models/m/backends",
            Some(json!({"url": b.url, "name": "gpu-b2", "max_in_flight": 2})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "gpu-b2");
    let text = scrape(&gw).await;
    assert!(text.contains(r#"backend="gpu-b2""#), "{text}");
    // A second backend with the same name is refused.
    let (s, v) = gw
        .admin(
            Method::POST,
            "/models/m/backends",
            Some(json!({"url": "http://127.0.0.1:9", "name": "gpu-a"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_token_is_required_when_set() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let token = "metrics-token-0123456789";
    let gw = TestGateway::start(
        Setup::one("m", &sim.url, 8).with(move |c| c.metrics_token = Some(Secret::new(token))),
        &db.url,
    )
    .await;
    let url = format!("{}/metrics", gw.base);
    let resp = gw.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let resp = gw
        .http
        .get(&url)
        .bearer_auth("metrics-token-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = gw.http.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the admin token is not the metrics token"
    );
    let resp = gw.http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("fairgate_in_flight_requests"));
    gw.shutdown().await;
}

#[tokio::test]
async fn refused_connection_502_names_no_address() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        Setup::one("m", &dead, 4).with(|c| {
            c.routing.max_attempts = 1;
            c.models[0].backends[0].name = Some("gpu-dead".into());
        }),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let resp = gw
        .post(&key, "/v1/chat/completions", chat("m", 4, false))
        .await;
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_connect", "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
    assert!(!body.contains(port_of(&dead)), "{body}");
    assert!(!body.contains("http://"), "{body}");
    assert!(!body.contains("gpu-dead"), "{body}");
    // The operator still sees where it failed.
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows[0]["backend"], "gpu-dead");
    let (_, v) = gw.admin(Method::GET, "/models/m/backends", None).await;
    assert!(
        v["backends"][0]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    gw.shutdown().await;
}
