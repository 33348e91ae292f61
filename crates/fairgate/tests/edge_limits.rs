//! The gateway's edge under hostile clients, over real TCP against a real server on port 0:
//! body limits enforced while reading (413 in each route's style), trickled bodies and heads
//! (408 / closed), long URLs (414), huge heads (431), the client address behind trusted
//! proxies, `/readyz` semantics and a bounded shutdown that still records cut streams.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use common::{Sim, ADMIN};
use fairgate::client_addr::ClientAddr;
use fairgate::config::{BackendConfig, Config, ModelConfig};
use fairgate::server::{AppState, Gateway};
use fairgate_sim::SimConfig;
use fairgate_types::Outcome;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Short read deadlines so the trickle tests do not wait long.
const HEADER_TIMEOUT_MS: u64 = 800;
const BODY_TIMEOUT_MS: u64 = 800;

struct Edge {
    base: String,
    addr: SocketAddr,
    state: Arc<AppState>,
    db_url: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

async fn start(model: Option<(&str, &str)>, tweak: impl Fn(&mut Config)) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("t.db").display());
    let mut config = Config::load(None, Vec::<(String, String)>::new()).unwrap();
    config.listen = "127.0.0.1:0".into();
    config.database = db_url.clone();
    config.data_dir = dir.path().to_owned();
    config.admin_token = Some(ADMIN.to_owned());
    config.max_body_bytes = 1024 * 1024;
    config.limits.header_read_timeout_ms = HEADER_TIMEOUT_MS;
    config.limits.body_read_timeout_ms = BODY_TIMEOUT_MS;
    if let Some((name, url)) = model {
        config.models = vec![ModelConfig::new(name, vec![BackendConfig::new(url, 8)])];
    }
    tweak(&mut config);
    config.validate().unwrap();
    let gw = Gateway::build(config).await.unwrap();
    let state = gw.state().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(gw.serve(listener, async move {
        let _ = rx.await;
    }));
    Edge {
        base: format!("http://{addr}"),
        addr,
        state,
        db_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        stop: Some(tx),
        join: Some(join),
        _dir: dir,
    }
}

impl Edge {
    fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.join.take().unwrap()
    }

    async fn shutdown(mut self) {
        self.begin_shutdown().await.unwrap().unwrap();
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A tenant and a key for it; returns the key's secret.
    async fn key(&self) -> String {
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/tenants",
                json!({"name": "t1", "weight": 1}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/keys",
                json!({"tenant": "t1", "name": "k", "user": "u1"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_owned()
    }
}

/// One answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    /// 0 when the server closed without answering.
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Sends `head` (the request line and headers, blank line included), then lets `body` write
/// whatever it wants while the answer is read. Waits at most 20 s for the answer.
async fn exchange<F, Fut>(addr: SocketAddr, head: Vec<u8>, body: F) -> Raw
where
    F: FnOnce(OwnedWriteHalf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        // A server refusing a huge head may close before all of it is written.
        if w.write_all(&head).await.is_ok() {
            body(w).await;
        }
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if complete(&buf) {
                break;
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "no answer and no close within 20 s");
    parse(&buf)
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn complete(buf: &[u8]) -> bool {
    let Some(end) = head_end(buf) else {
        return false;
    };
    let raw = parse(buf);
    match raw
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => buf.len() >= end + n,
        None => false,
    }
}

fn parse(buf: &[u8]) -> Raw {
    let Some(end) = head_end(buf) else {
        return Raw {
            status: 0,
            head: String::from_utf8_lossy(buf).into_owned(),
            body: String::new(),
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head,
        body: String::from_utf8_lossy(&buf[end..]).into_owned(),
    }
}

/// Keeps the connection open without sending anything more.
async fn hold(w: OwnedWriteHalf) {
    std::future::pending::<()>().await;
    drop(w);
}

/// Writes `total` bytes of chunked body (1 MiB chunks) until done or the server hangs up;
/// returns how much was written.
async fn chunked(mut w: OwnedWriteHalf, total: u64) -> u64 {
    let chunk = vec![b'a'; 1024 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let frame_head = format!("{:x}\r\n", chunk.len());
        if w.write_all(frame_head.as_bytes()).await.is_err()
            || w.write_all(&chunk).await.is_err()
            || w.write_all(b"\r\n").await.is_err()
        {
            return sent;
        }
        sent += chunk.len() as u64;
    }
    let _ = w.write_all(b"0\r\n\r\n").await;
    sent
}

fn post_head(path: &str, extra: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n").into_bytes()
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded\r\nOrigin: http://gw\r\n";

fn assert_portal_page(r: &Raw, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{r:?}"
    );
    assert!(r.body.contains("<!doctype html>"), "{r:?}");
    assert_eq!(r.header("connection").as_deref(), Some("close"), "{r:?}");
}

fn assert_openai_error(r: &Raw, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
}

#[tokio::test]
async fn portal_sign_in_over_the_limit_is_refused_with_a_page() {
    let gw = start(None, |_| {}).await;
    // A declared 1.5 GB body, none of it sent: the answer must come without reading it.
    let r = exchange(
        gw.addr,
        post_head(
            "/portal/login",
            &format!("{FORM}Content-Length: 1500000000\r\n"),
        ),
        hold,
    )
    .await;
    assert_portal_page(&r, 413);
    // 1.5 MB declared and sent.
    let big = vec![b'a'; 1_500_000];
    let r = exchange(
        gw.addr,
        post_head(
            "/portal/login",
            &format!("{FORM}Content-Length: {}\r\n", big.len()),
        ),
        move |mut w| async move {
            let _ = w.write_all(&big).await;
            hold(w).await;
        },
    )
    .await;
    assert_portal_page(&r, 413);
    // 1.5 MB with no declared length (chunked): refused once 64 KiB have been read.
    let r = exchange(
        gw.addr,
        post_head(
            "/portal/login",
            &format!("{FORM}Transfer-Encoding: chunked\r\n"),
        ),
        |w| async move {
            chunked(w, 1_500_000).await;
        },
    )
    .await;
    assert_portal_page(&r, 413);
    // Under the limit, the form reaches the handler (a failed sign-in, not a refusal).
    let resp = gw
        .http
        .post(format!("{}/portal/login", gw.base))
        .header("origin", &gw.base)
        .form(&[("email", "nobody@example.org"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert!(
        ![413u16, 408].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    gw.shutdown().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The attack from the issue: a 1.5 GB upload to the sign-in form. Buffering it whole would
/// grow this process by gigabytes; refused at 64 KiB, it barely moves.
#[tokio::test]
async fn streamed_huge_sign_in_upload_does_not_grow_memory() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("SKIP: no /proc/self/status on this platform");
        return;
    }
    let gw = start(None, |_| {}).await;
    let before = rss_kib();
    let (tx, rx) = oneshot::channel();
    let r = exchange(
        gw.addr,
        post_head(
            "/portal/login",
            &format!("{FORM}Transfer-Encoding: chunked\r\n"),
        ),
        move |w| async move {
            let _ = tx.send(chunked(w, 1_500_000_000).await);
        },
    )
    .await;
    assert_portal_page(&r, 413);
    let after = rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "RSS grew by {grown_mib} MiB ({before} -> {after} KiB)"
    );
    // The writer stopped or was stopped; whatever it managed to send, the server is fine.
    drop(rx);
    assert_eq!(
        gw.http
            .get(format!("{}/healthz", gw.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_and_v1_bodies_over_the_limit_get_openai_413() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let gw = start(Some(("m", &sim.url)), |c| {
        c.limits.admin_body_bytes = 64 * 1024;
    })
    .await;
    let key = gw.key().await;
    let auth = format!("Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n");
    // Declared over the admin limit: refused unread.
    let r = exchange(
        gw.addr,
        post_head(
            "/admin/v1/tenants",
            &format!("{auth}Content-Length: 1500000\r\n"),
        ),
        hold,
    )
    .await;
    assert_openai_error(&r, 413, "body_too_large");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // Undeclared, found while reading.
    let r = exchange(
        gw.addr,
        post_head(
            "/admin/v1/tenants",
            &format!("{auth}Transfer-Encoding: chunked\r\n"),
        ),
        |w| async move {
            chunked(w, 1_500_000).await;
        },
    )
    .await;
    assert_openai_error(&r, 413, "body_too_large");
    // Without the admin token nothing is read: 401 first.
    let r = exchange(
        gw.addr,
        post_head("/admin/v1/tenants", "Content-Length: 1500000000\r\n"),
        hold,
    )
    .await;
    assert_openai_error(&r, 401, "admin_unauthorized");
    // Under the limit the admin API works as before.
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            "/tenants",
            json!({"name": "t2", "weight": 1}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // /v1, undeclared length over max_body_bytes.
    let r = exchange(
        gw.addr,
        post_head(
            "/v1/chat/completions",
            &format!(
                "Authorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            ),
        ),
        |w| async move {
            chunked(w, 3 * 1024 * 1024).await;
        },
    )
    .await;
    assert_openai_error(&r, 413, "body_too_large");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    gw.shutdown().await;
}

#[tokio::test]
async fn trickled_bodies_time_out_with_408_in_each_routes_style() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let gw = start(Some(("m", &sim.url)), |_| {}).await;
    let key = gw.key().await;
    let trickle = |mut w: OwnedWriteHalf| async move {
        // 10 of the 100 declared bytes, then nothing.
        let _ = w.write_all(b"email=a%40").await;
        hold(w).await;
    };
    let r = exchange(
        gw.addr,
        post_head("/portal/login", &format!("{FORM}Content-Length: 100\r\n")),
        trickle,
    )
    .await;
    assert_portal_page(&r, 408);
    let r = exchange(
        gw.addr,
        post_head(
            "/admin/v1/tenants",
            &format!("Authorization: Bearer {ADMIN}\r\nContent-Length: 100\r\n"),
        ),
        trickle,
    )
    .await;
    assert_openai_error(&r, 408, "request_timeout");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let r = exchange(
        gw.addr,
        post_head(
            "/v1/chat/completions",
            &format!("Authorization: Bearer {key}\r\nContent-Length: 100\r\n"),
        ),
        trickle,
    )
    .await;
    assert_openai_error(&r, 408, "request_timeout");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // The refused /v1 request has its ledger row.
    let mut found = false;
    for _ in 0..200 {
        let (s, v) = gw
            .admin(reqwest::Method::GET, "/requests?limit=100", Value::Null)
            .await;
        assert_eq!(s, 200);
        found = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["error_class"] == "request_timeout" && r["status"] == 408);
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(found, "no ledger row for the timed-out /v1 request");
    gw.shutdown().await;
}

#[tokio::test]
async fn trickled_head_is_cut_off() {
    let gw = start(None, |_| {}).await;
    // Half a request head, then silence: the server must not wait for ever.
    let r = exchange(
        gw.addr,
        b"POST /portal/login HTTP/1.1\r\nHost: gw\r\n".to_vec(),
        hold,
    )
    .await;
    assert!(r.status == 0 || r.status == 408, "{r:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn long_urls_and_huge_heads_are_refused() {
    let gw = start(None, |_| {}).await;
    let long = "a".repeat(9 * 1024);
    let r = exchange(
        gw.addr,
        format!("GET /v1/models?x={long} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes(),
        hold,
    )
    .await;
    assert_openai_error(&r, 414, "uri_too_long");
    // Just under the limit is fine (401: it reached the handler).
    let ok = "a".repeat(7 * 1024);
    let r = exchange(
        gw.addr,
        format!("GET /v1/models?x={ok} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes(),
        hold,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let big = "b".repeat(80 * 1024);
    let r = exchange(
        gw.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\n\r\n").into_bytes(),
        hold,
    )
    .await;
    assert_eq!(r.status, 431, "{r:?}");
    // Many headers of modest size add up the same way.
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "c".repeat(40)))
        .collect();
    let r = exchange(
        gw.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: gw\r\n{many}\r\n").into_bytes(),
        hold,
    )
    .await;
    assert_eq!(r.status, 431, "{r:?}");
    gw.shutdown().await;
}

/// `ClientAddr` over a real connection (peer 127.0.0.1), with the live config's
/// `trusted_proxies` changed between requests.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let gw = Gateway::build({
        let dir = std::env::temp_dir();
        let mut c = Config::load(None, Vec::<(String, String)>::new()).unwrap();
        c.database = "sqlite::memory:".into();
        c.data_dir = dir;
        c
    })
    .await
    .unwrap();
    let st = gw.state().clone();
    let app = axum::Router::new()
        .route(
            "/ip",
            get(|ClientAddr(ip): ClientAddr| async move { ip.to_string() }),
        )
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(fairgate::serving::serve(listener, app, st.clone(), async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let ip = |xff: Option<&'static str>| {
        let http = http.clone();
        let url = format!("{base}/ip");
        async move {
            let mut req = http.get(url);
            if let Some(x) = xff {
                req = req.header("x-forwarded-for", x);
            }
            req.send().await.unwrap().text().await.unwrap()
        }
    };
    let set_trusted = |list: &[&str]| {
        let mut c = (**st.live.load()).clone();
        c.trusted_proxies = fairgate::client_addr::TrustedProxies::parse(list).unwrap();
        st.live.store(Arc::new(c));
    };
    // No trusted proxies: the header is anyone's to forge.
    assert_eq!(ip(Some("6.6.6.6, 1.2.3.4")).await, "127.0.0.1");
    assert_eq!(ip(None).await, "127.0.0.1");
    // The peer is a trusted proxy: the right-most untrusted hop.
    set_trusted(&["127.0.0.1", "10.0.0.0/8"]);
    assert_eq!(ip(Some("6.6.6.6, 1.2.3.4, 10.1.1.1")).await, "1.2.3.4");
    assert_eq!(ip(Some("garbage")).await, "127.0.0.1");
    assert_eq!(ip(None).await, "127.0.0.1");
    // Trusted proxies elsewhere: this peer is not one of them.
    set_trusted(&["10.0.0.0/8"]);
    assert_eq!(ip(Some("1.2.3.4")).await, "127.0.0.1");
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn readyz_ignores_the_database() {
    let mut gw = start(None, |_| {}).await;
    let readyz = |base: String| async move {
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(readyz(gw.base.clone()).await, 200);
    // The database goes away: requests do not need it, so the replica stays in rotation.
    gw.state.store.close().await;
    assert!(gw.state.store.ping().await.is_err());
    assert_eq!(readyz(gw.base.clone()).await, 200);
    // (The ledger cannot flush into a closed store; that is the ledger's concern, not this test's.)
    let _ = gw.begin_shutdown().await;
}

/// An endless stream open at SIGTERM: `/readyz` turns 503 at once, the server returns within
/// the grace period (plus slack), and the cut stream's ledger row is there, cancelled, with
/// the tokens relayed before the cut.
#[tokio::test]
async fn shutdown_is_bounded_and_records_the_cut_stream_http1() {
    shutdown_cuts_stream(false).await;
}

/// The same over h2c, where hyper runs each stream in a task of its own.
#[tokio::test]
async fn shutdown_is_bounded_and_records_the_cut_stream_h2c() {
    shutdown_cuts_stream(true).await;
}

async fn shutdown_cuts_stream(h2: bool) {
    let sim = Sim::start(SimConfig {
        model: "slow".into(),
        max_model_len: 10_000_000,
        kv_cache_tokens: 1 << 24,
        decode_step_base: Duration::from_millis(20),
        prefill_overhead: Duration::from_millis(1),
        ..SimConfig::default()
    })
    .await;
    let mut gw = start(Some(("slow", &sim.url)), |c| {
        c.shutdown_grace_ms = 300;
        c.default_max_tokens = 16;
    })
    .await;
    let key = gw.key().await;
    let client = if h2 {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap()
    } else {
        gw.http.clone()
    };
    let mut resp = client
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .json(&json!({
            "model": "slow",
            "messages": [{"role": "user", "content": "go on for ever"}],
            "max_tokens": 1_000_000,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let want = if h2 {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };
    assert_eq!(resp.version(), want);
    // Let some tokens through first.
    let mut content_chunks = 0usize;
    while content_chunks < 5 {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        content_chunks += String::from_utf8_lossy(&chunk)
            .matches("\"content\"")
            .count();
    }
    let router = fairgate::server::router(gw.state.clone());
    let join = gw.begin_shutdown();
    // Not ready as soon as shutdown begins.
    let mut ready_status = 0;
    for _ in 0..200 {
        let req = http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap();
        let mut r = router.clone();
        ready_status = tower_service::Service::call(&mut r, req)
            .await
            .unwrap()
            .status()
            .as_u16();
        if ready_status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ready_status, 503);
    // The client keeps reading until the server cuts the stream.
    let reader = tokio::spawn(async move {
        let mut n = content_chunks;
        while let Ok(Some(chunk)) = resp.chunk().await {
            n += String::from_utf8_lossy(&chunk)
                .matches("\"content\"")
                .count();
        }
        n
    });
    // Without a bound this stream runs for hours; 300 ms grace plus generous slack.
    let done = tokio::time::timeout(Duration::from_secs(20), join).await;
    let result = done.expect("shutdown did not finish within grace + slack");
    result.unwrap().unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream was not cut")
        .unwrap();
    let store = fairgate_store::Store::connect(&gw.db_url).await.unwrap();
    let rows = store.requests(Some("t1"), 100).await.unwrap();
    let streamed: Vec<_> = rows.iter().filter(|r| r.stream).collect();
    assert_eq!(streamed.len(), 1, "{rows:#?}");
    let row = streamed[0];
    assert_eq!(row.outcome, Outcome::Cancelled, "{row:#?}");
    assert!(
        row.completion_tokens + 1 >= seen as u64 && row.completion_tokens < 1_000_000,
        "row has {} completion tokens, client saw {seen} chunks: {row:#?}",
        row.completion_tokens
    );
    store.close().await;
}
