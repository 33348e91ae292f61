//! The hostile-client suite: a table of bad inputs across `/v1`, relayed paths, `/admin` and
//! `/portal`, sent over raw TCP to the real `fairgate` binary (a child process, so its RSS can be
//! read from /proc) in front of two in-process simulators (models `a` and `b`).
//!
//! Each row asserts the status (one of a set where the contract allows several), the error's
//! shape (OpenAI JSON with `error.message`, `error.type` and `error.code` on `/v1`, relayed
//! paths and `/admin`; an HTML page on `/portal`), the `code` where the contract names one, that
//! no backend address leaks, and that the gateway still answers `/healthz` afterwards (no
//! panic, no hang). Over the whole table: the gateway's RSS grows by less than a bound, and
//! every request that is due a ledger row (`/v1` and relayed paths with a valid key) has
//! exactly one, found by the `x-request-id` the response carried.
//!
//! Every row runs even when an earlier one fails; the test then fails listing all failing rows.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Sim;
use fairgate_sim::SimConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN: &str = "hostile-admin-token-0123456789abcdef";
/// Request bodies above this get 413 on the proxy routes (the gateway's `max_body_bytes`).
const MAX_BODY: usize = 1024 * 1024;
/// The read timeouts the gateway is started with (`[limits]`), so trickle rows end quickly.
const HEADER_TIMEOUT_MS: u64 = 2_000;
const BODY_TIMEOUT_MS: u64 = 2_000;
/// A row gets this long to be answered (trickle rows included: the server must cut them off
/// well before).
const ROW_LIMIT: Duration = Duration::from_secs(20);
/// Bound on RSS growth over the whole table (it sends several MiB bodies and 100k-deep JSON).
const RSS_GROWTH_LIMIT_KB: u64 = 200 * 1024;
/// In a row's statuses: the server closed the connection without answering, in time.
const CLOSED: u16 = 0;

// ---------------------------------------------------------------------------------------------
// The gateway as a child process

struct Gateway {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(sim_a: &str, sim_b: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("fg.db").display());
        let config = format!(
            r#"
listen = "127.0.0.1:0"
database = "{db}"
data_dir = "{data}"
max_body_bytes = {MAX_BODY}

[[models]]
name = "a"
[[models.backends]]
url = "{sim_a}"
max_in_flight = 16

[[models]]
name = "b"
[[models.backends]]
url = "{sim_b}"
max_in_flight = 16
"#,
            data = dir.path().display()
        );
        let path = dir.path().join("fairgate.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fairgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FAIRGATE_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "info")
            // Read timeouts (issue 10's `[limits]`); ignored by a build without them.
            .env(
                "FAIRGATE_LIMITS__HEADER_READ_TIMEOUT_MS",
                HEADER_TIMEOUT_MS.to_string(),
            )
            .env(
                "FAIRGATE_LIMITS__BODY_READ_TIMEOUT_MS",
                BODY_TIMEOUT_MS.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start the fairgate binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.send(l.clone());
                    log.lock().unwrap().push(l);
                }
            });
        }
        drop(tx);
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = rx.recv().await {
                if line.contains("listening") {
                    if let Some(a) = find_addr(&line) {
                        return a;
                    }
                }
            }
            panic!("fairgate exited before listening");
        })
        .await
        .unwrap_or_else(|_| panic!("fairgate did not report its address in 60 s"));
        // Keep draining the channel so senders never block (they are unbounded anyway).
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Gateway {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn rss_kb(&self) -> u64 {
        let pid = self.child.id().expect("gateway running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn panicked(&self) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("panicked"))
            .cloned()
    }
}

/// The first `127.0.0.1:<port>` in a log line (text or JSON format, with or without colours).
fn find_addr(line: &str) -> Option<SocketAddr> {
    let i = line.find("127.0.0.1:")?;
    let rest = &line[i + "127.0.0.1:".len()..];
    let port: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    format!("127.0.0.1:{port}").parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

#[derive(Clone, Copy, Debug)]
enum Pace {
    /// Everything at once (written concurrently with reading, so an early answer to an
    /// oversized body is still read).
    AllAtOnce,
    /// The first `prefix` bytes at once, then one byte every 250 ms (never finishing within
    /// [`ROW_LIMIT`]): a slow-loris client.
    Trickle { prefix: usize },
}

#[derive(Debug, Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send_raw(addr: SocketAddr, bytes: Vec<u8>, pace: Pace) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        match pace {
            Pace::AllAtOnce => {
                for chunk in bytes.chunks(64 * 1024) {
                    if wr.write_all(chunk).await.is_err() {
                        return; // the server answered early and closed: expected for some rows
                    }
                }
            }
            Pace::Trickle { prefix } => {
                let prefix = prefix.min(bytes.len());
                if wr.write_all(&bytes[..prefix]).await.is_err() {
                    return;
                }
                for b in &bytes[prefix..] {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if wr.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Keep the write half open (no FIN) so "the client is slow" is what the server sees.
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(ROW_LIMIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if complete(&buf) {
                        return Ok(());
                    }
                }
                // A reset after the answer arrived (the server closed with unread input).
                Err(e) if e.kind() == ErrorKind::ConnectionReset && !buf.is_empty() => {
                    return Ok(())
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await;
    writer.abort();
    match read {
        Err(_) => return Err(format!("no complete answer within {ROW_LIMIT:?}")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    parse_response(&buf)
}

/// Whether `buf` holds one whole response (by Content-Length or the chunked terminator).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(cl) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= cl;
    }
    if head.contains("transfer-encoding: chunked") {
        return find(body, b"0\r\n\r\n").is_some();
    }
    false // until EOF
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const CLOSED_WITHOUT_ANSWER: &str = "connection closed without an answer";

fn parse_response(buf: &[u8]) -> Result<Resp, String> {
    if buf.is_empty() {
        return Err(CLOSED_WITHOUT_ANSWER.into());
    }
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "incomplete answer: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        )
    })?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size_line = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
        else {
            break;
        };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

/// A request with `Host`, `Connection: close` and (unless the caller framed the body itself)
/// `Content-Length`.
fn req(method: &str, target: &str, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Vec<u8> {
    req_bytes(method, target.as_bytes(), headers, body.as_ref())
}

fn req_bytes(method: &str, target: &[u8], headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 512);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !framed {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Raw head bytes (for header tricks a string API would refuse), then the body.
fn raw_head(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    out.extend_from_slice(body);
    out
}

fn chat_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        .to_string()
}

fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "hostileBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\nRIFF0000WAVE\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// `{"error":{"message": string, "type": string, "code": ...}}` with a JSON content type.
    OpenAi,
    /// An HTML page (`text/html`), or a redirect (to the sign-in page).
    Html,
    /// Whatever the HTTP layer answers (a malformed head never reaches a route).
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ledger {
    /// A `/v1` or relayed request with a valid key: exactly one row under its request id.
    One,
    /// Anonymous `/v1` traffic is recorded at a bounded rate per address: at most one row.
    AtMostOne,
    /// Not a ledger route (admin, portal, or refused by the HTTP layer).
    NotDue,
}

struct Row {
    name: String,
    bytes: Vec<u8>,
    pace: Pace,
    statuses: &'static [u16],
    shape: Shape,
    code: Option<&'static str>,
    ledger: Ledger,
}

struct Keys {
    /// Tenant key for every model.
    any: String,
    /// Tenant key scoped to model `a`.
    a: String,
}

#[rustfmt::skip]
fn table(k: &Keys) -> Vec<Row> {
    let mut rows = Vec::new();
    let bearer = format!("Bearer {}", k.any);
    let bearer_a = format!("Bearer {}", k.a);
    let admin = format!("Bearer {ADMIN}");
    let json_ct = ("Content-Type", "application/json");
    let auth = ("Authorization", bearer.as_str());
    let auth_a = ("Authorization", bearer_a.as_str());
    let auth_admin = ("Authorization", admin.as_str());
    let chat = "/v1/chat/completions";
    let mut row = |name: &str,
                   bytes: Vec<u8>,
                   pace: Pace,
                   statuses: &'static [u16],
                   shape: Shape,
                   code: Option<&'static str>,
                   ledger: Ledger| {
        rows.push(Row {
            name: name.to_owned(),
            bytes,
            pace,
            statuses,
            shape,
            code,
            ledger,
        })
    };
    use Ledger::*;
    use Shape::*;
    const NOW: Pace = Pace::AllAtOnce;
    const BAD: &[u16] = &[400];
    const SCOPE: &[u16] = &[400, 403];

    // ---- /v1: sizes and slowness
    let big = format!(
        r#"{{"model":"a","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(3 * MAX_BODY)
    );
    row("v1 body 3x max_body_bytes", req("POST", chat, &[auth, json_ct], &big), NOW, &[413], OpenAi, Some("body_too_large"), One);
    let mut chunked = Vec::new();
    for _ in 0..(3 * MAX_BODY / 65536) {
        chunked.extend_from_slice(format!("10000\r\n{}\r\n", "y".repeat(65536)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    row("v1 chunked body over the limit", req("POST", chat, &[auth, json_ct, ("Transfer-Encoding", "chunked")], &chunked), NOW, &[413], OpenAi, Some("body_too_large"), One);
    row("v1 Content-Length far over the limit (body never sent)", req("POST", chat, &[auth, json_ct, ("Content-Length", "10737418240")], b""), NOW, &[413], OpenAi, Some("body_too_large"), One);
    row("v1 trickled body", req("POST", chat, &[auth, json_ct], chat_body("a") + &" ".repeat(200)), Pace::Trickle { prefix: 300 }, &[408], OpenAi, Some("request_timeout"), One);
    let head = format!("POST {chat} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: {bearer}\r\nX-Slow: {}\r\n\r\n", "s".repeat(200));
    // The HTTP layer may answer 408 or just close the connection (status 0 here).
    row("v1 trickled headers", head.into_bytes(), Pace::Trickle { prefix: 40 }, &[408, CLOSED], Any, None, NotDue);
    row("v1 one 100 KB header", req("POST", chat, &[auth, json_ct, ("X-Big", &"h".repeat(100 * 1024))], chat_body("a")), NOW, &[431], Any, None, NotDue);
    let many: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("X-H{i}"), "v".repeat(30)))
        .collect();
    let many_ref: Vec<(&str, &str)> = std::iter::once(auth)
        .chain(many.iter().map(|(a, b)| (a.as_str(), b.as_str())))
        .collect();
    row("v1 3000 headers", req("POST", chat, &many_ref, chat_body("a")), NOW, &[431], Any, None, NotDue);
    row("v1 20 KB query string", req("POST", &format!("{chat}?q={}", "q".repeat(20 * 1024)), &[auth, json_ct], chat_body("a")), NOW, &[414], Any, None, NotDue);
    row("v1 20 KB path", req("POST", &format!("/v1/{}", "p".repeat(20 * 1024)), &[auth, json_ct], chat_body("a")), NOW, &[414], Any, None, NotDue);

    // ---- /v1: malformed and hostile JSON
    row("v1 non-UTF-8 body", req("POST", chat, &[auth, json_ct], b"{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xc0\"}]}"), NOW, BAD, OpenAi, None, One);
    row("v1 truncated JSON", req("POST", chat, &[auth, json_ct], r#"{"model":"a","messages":["#), NOW, BAD, OpenAi, None, One);
    row("v1 empty body", req("POST", chat, &[auth, json_ct], b""), NOW, BAD, OpenAi, None, One);
    row("v1 JSON array instead of object", req("POST", chat, &[auth, json_ct], "[1,2,3]"), NOW, BAD, OpenAi, None, One);
    row("v1 100k nested arrays", req("POST", chat, &[auth, json_ct], format!(r#"{{"model":"a","messages":{}"#, "[".repeat(100_000))), NOW, BAD, OpenAi, None, One);
    row("v1 100k nested objects", req("POST", chat, &[auth, json_ct], format!(r#"{{"model":"a","x":{}1{}}}"#, r#"{"a":"#.repeat(100_000), "}".repeat(100_000))), NOW, BAD, OpenAi, None, One);
    let with = |extra: &str| {
        format!(r#"{{"model":"a","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#)
    };
    row("v1 max_tokens 1e400", req("POST", chat, &[auth, json_ct], with(r#""max_tokens":1e400"#)), NOW, BAD, OpenAi, None, One);
    row("v1 max_tokens u64::MAX+1", req("POST", chat, &[auth, json_ct], with(r#""max_tokens":18446744073709551616"#)), NOW, BAD, OpenAi, None, One);
    row("v1 max_tokens u64::MAX (clamped or refused)", req("POST", chat, &[auth, json_ct], with(r#""max_tokens":18446744073709551615"#)), NOW, &[200, 400], Any, None, One);
    row("v1 max_tokens negative", req("POST", chat, &[auth, json_ct], with(r#""max_tokens":-1"#)), NOW, BAD, OpenAi, None, One);
    row("v1 max_tokens as string", req("POST", chat, &[auth, json_ct], with(r#""max_tokens":"10""#)), NOW, BAD, OpenAi, None, One);
    row("v1 max_tokens fractional", req("POST", chat, &[auth, json_ct], with(r#""max_tokens":1.5"#)), NOW, BAD, OpenAi, None, One);
    row("v1 n negative", req("POST", chat, &[auth, json_ct], with(r#""n":-3"#)), NOW, BAD, OpenAi, None, One);
    row("v1 stream as string", req("POST", chat, &[auth, json_ct], with(r#""stream":"yes""#)), NOW, BAD, OpenAi, None, One);
    row("v1 messages as string", req("POST", chat, &[auth, json_ct], r#"{"model":"a","messages":"hi"}"#), NOW, BAD, OpenAi, None, One);
    row("v1 model as number", req("POST", chat, &[auth, json_ct], r#"{"model":42,"messages":[]}"#), NOW, BAD, OpenAi, None, One);
    row("v1 model null", req("POST", chat, &[auth, json_ct], r#"{"model":null,"messages":[]}"#), NOW, BAD, OpenAi, None, One);
    row("v1 model missing", req("POST", chat, &[auth, json_ct], r#"{"messages":[{"role":"user","content":"hi"}]}"#), NOW, BAD, OpenAi, None, One);
    row("v1 duplicate model keys", req("POST", chat, &[auth, json_ct], r#"{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}"#), NOW, BAD, OpenAi, Some("ambiguous_model"), One);
    row("v1 model of 100 KB", req("POST", chat, &[auth, json_ct], chat_body(&"m".repeat(100 * 1024))), NOW, &[400, 404], OpenAi, None, One);
    row("v1 unknown model", req("POST", chat, &[auth, json_ct], chat_body("no-such-model")), NOW, &[404], OpenAi, None, One);
    row("v1 Content-Length shorter than the body", req("POST", chat, &[auth, json_ct, ("Content-Length", "10")], chat_body("a")), NOW, BAD, OpenAi, None, One);
    row("v1 Content-Length and Transfer-Encoding both", req("POST", chat, &[auth, json_ct, ("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"), NOW, BAD, Any, None, NotDue);
    row("v1 two different Content-Lengths", req("POST", chat, &[auth, json_ct, ("Content-Length", "5"), ("Content-Length", "6")], b"{}{}{}"), NOW, BAD, Any, None, NotDue);

    // ---- /v1: authentication and header tricks
    row("v1 no Authorization", req("POST", chat, &[json_ct], chat_body("a")), NOW, &[401], OpenAi, None, AtMostOne);
    row("v1 10 KB bearer token", req("POST", chat, &[json_ct, ("Authorization", &format!("Bearer {}", "t".repeat(10 * 1024)))], chat_body("a")), NOW, &[401], OpenAi, None, AtMostOne);
    row("v1 Basic auth", req("POST", chat, &[json_ct, ("Authorization", "Basic YWRtaW46YWRtaW4=")], chat_body("a")), NOW, &[401], OpenAi, None, AtMostOne);
    row("v1 admin token as API key", req("POST", chat, &[json_ct, auth_admin], chat_body("a")), NOW, &[401], OpenAi, None, AtMostOne);
    let mut h = format!("POST {chat} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer ").into_bytes();
    h.extend_from_slice(b"\xff\xfe\x80junk\r\n");
    let body = chat_body("a");
    h.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    row("v1 non-UTF-8 Authorization", raw_head(&h, body.as_bytes()), NOW, &[400, 401], Any, None, AtMostOne);
    let h = format!("POST {chat} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nX-Inject: a\rAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n", k.any, body.len());
    row("header injection: bare CR in a value", raw_head(h.as_bytes(), body.as_bytes()), NOW, BAD, Any, None, NotDue);
    let h = format!("POST {chat} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nAuthorization: Bearer {}\r\nX-Fold: a\r\n folded: yes\r\nContent-Length: {}\r\n\r\n", k.any, body.len());
    row("header injection: obsolete line folding", raw_head(h.as_bytes(), body.as_bytes()), NOW, BAD, Any, None, NotDue);
    let h = format!("POST {chat} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nBad Header: x\r\nContent-Length: {}\r\n\r\n", body.len());
    row("header name with a space", raw_head(h.as_bytes(), body.as_bytes()), NOW, BAD, Any, None, NotDue);
    let h = format!("POST {chat} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nX-Nul: a\0b\r\nContent-Length: {}\r\n\r\n", body.len());
    row("NUL in a header value", raw_head(h.as_bytes(), body.as_bytes()), NOW, BAD, Any, None, NotDue);
    row("TLS ClientHello on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), NOW, BAD, Any, None, NotDue);
    row("request line garbage", b"GARBAGE\r\n\r\n".to_vec(), NOW, BAD, Any, None, NotDue);
    row("cookie header on a chat request", req("POST", chat, &[auth, json_ct, ("Cookie", "fg_session=stolen; other=1")], chat_body("a")), NOW, &[200], Any, None, One);

    // ---- path tricks
    row("/v1/../admin/v1/tenants with a tenant key", req("GET", "/v1/../admin/v1/tenants", &[auth], b""), NOW, &[400, 404], Any, None, NotDue);
    row("/v1/%2e%2e/admin/v1/tenants with a tenant key", req("GET", "/v1/%2e%2e/admin/v1/tenants", &[auth], b""), NOW, &[400, 404], OpenAi, None, One);
    row("/v1/%2E%2E%2Fadmin%2Fv1%2Ftenants", req("GET", "/v1/%2E%2E%2Fadmin%2Fv1%2Ftenants", &[auth], b""), NOW, &[400, 404], OpenAi, None, One);
    row("//v1//chat/completions", req("POST", "//v1//chat/completions", &[auth, json_ct], chat_body("a")), NOW, &[200, 400, 404], Any, None, NotDue);
    row("NUL in the path", req_bytes("POST", b"/v1/chat/completions\0x", &[auth, json_ct], chat_body("a").as_bytes()), NOW, &[400, 404], Any, None, NotDue);
    row("%00 in the path", req("POST", "/v1/chat%00/completions", &[auth, json_ct], chat_body("a")), NOW, &[400, 404], OpenAi, None, One);
    row("absolute-form target", req("POST", "http://evil.example/v1/chat/completions", &[auth, json_ct], chat_body("a")), NOW, &[200, 400], Any, None, NotDue);
    row("asterisk-form target", req("OPTIONS", "*", &[auth], b""), NOW, &[400, 404, 405], Any, None, NotDue);
    row("TRACE on chat", req("TRACE", chat, &[auth], b""), NOW, &[400, 404, 405], Any, None, NotDue);

    // ---- relayed paths and scope bypasses (key scoped to model `a`)
    let b_body = r#"{"model":"b","text_1":"x","text_2":"y"}"#;
    for path in [
        "/v1/score?model=a",
        "/v1/rerank?model=a",
        "/v1/audio/speech?model=a",
        "/score?model=a",
        "/rerank?model=a",
    ] {
        row(&format!("scope: {path} with body model b"), req("POST", path, &[auth_a, json_ct], b_body), NOW, SCOPE, OpenAi, None, One);
    }
    row("scope: leading whitespace before JSON with model b", req("POST", "/v1/score?model=a", &[auth_a, json_ct], format!(" \n\t{b_body}")), NOW, SCOPE, OpenAi, None, One);
    row("scope: UTF-8 BOM before JSON with model b", req("POST", "/v1/score?model=a", &[auth_a, json_ct], format!("\u{feff}{b_body}")), NOW, SCOPE, OpenAi, None, One);
    row("scope: text/plain body with model b", req("POST", "/v1/score?model=a", &[auth_a, ("Content-Type", "text/plain")], b_body), NOW, SCOPE, OpenAi, None, One);
    row("scope: JSON duplicate model a then b", req("POST", "/v1/score", &[auth_a, json_ct], r#"{"model":"a","model":"b","text_1":"x","text_2":"y"}"#), NOW, SCOPE, OpenAi, None, One);
    row("scope: query model twice", req("POST", "/v1/score?model=a&model=b", &[auth_a, json_ct], r#"{"text_1":"x","text_2":"y"}"#), NOW, SCOPE, OpenAi, None, One);
    let (ct, mp) = multipart(&[("model", "a"), ("model", "b")]);
    row("scope: multipart model twice", req("POST", "/v1/audio/transcriptions", &[auth_a, ("Content-Type", &ct)], &mp), NOW, SCOPE, OpenAi, None, One);
    let (ct, mp) = multipart(&[("model", "b")]);
    row("scope: multipart model b, query model a", req("POST", "/v1/audio/transcriptions?model=a", &[auth_a, ("Content-Type", &ct)], &mp), NOW, SCOPE, OpenAi, None, One);
    row("scope: chat for model b", req("POST", chat, &[auth_a, json_ct], chat_body("b")), NOW, &[403], OpenAi, None, One);
    row("scope: model a with a Cyrillic lookalike", req("POST", chat, &[auth_a, json_ct], chat_body("\u{0430}")), NOW, &[403, 404], OpenAi, None, One);
    row("scope: /tokenize for model b", req("POST", "/tokenize", &[auth_a, json_ct], r#"{"model":"b","prompt":"hi"}"#), NOW, SCOPE, OpenAi, None, One);
    row("lora load with a tenant key", req("POST", "/v1/load_lora_adapter", &[auth, json_ct], r#"{"lora_name":"evil","lora_path":"/tmp/evil"}"#), NOW, &[403], OpenAi, Some("admin_only"), One);
    row("lora unload with a tenant key", req("POST", "/v1/unload_lora_adapter", &[auth, json_ct], r#"{"lora_name":"a"}"#), NOW, &[403], OpenAi, Some("admin_only"), One);
    row("relayed path not on the allowlist", req("POST", "/v1/not_a_real_endpoint", &[auth, json_ct], r#"{"model":"a"}"#), NOW, &[404], OpenAi, Some("unknown_url"), One);
    row("relayed path without any model", req("POST", "/v1/score", &[auth, json_ct], r#"{"text_1":"x"}"#), NOW, BAD, OpenAi, None, One);
    row("relayed 100k nested arrays", req("POST", "/v1/score", &[auth, json_ct], format!(r#"{{"model":"a","x":{}"#, "[".repeat(100_000))), NOW, BAD, OpenAi, None, One);
    row("relayed body over the limit", req("POST", "/v1/score", &[auth, json_ct], format!(r#"{{"model":"a","x":"{}"}}"#, "z".repeat(2 * MAX_BODY))), NOW, &[413], OpenAi, Some("body_too_large"), One);

    // ---- /admin
    let tenants = "/admin/v1/tenants";
    row("admin body 5 MiB", req("POST", tenants, &[auth_admin, json_ct], format!(r#"{{"name":"big","weight":1,"x":"{}"}}"#, "w".repeat(5 * 1024 * 1024))), NOW, &[413], OpenAi, Some("body_too_large"), NotDue);
    row("admin trickled body", req("POST", tenants, &[auth_admin, json_ct], format!(r#"{{"name":"slow","weight":1{}}}"#, " ".repeat(200))), Pace::Trickle { prefix: 200 }, &[408], OpenAi, Some("request_timeout"), NotDue);
    row("admin non-UTF-8 body", req("POST", tenants, &[auth_admin, json_ct], b"{\"name\":\"\xff\xfe\",\"weight\":1}"), NOW, &[400, 422], OpenAi, None, NotDue);
    row("admin 100k nested arrays", req("POST", tenants, &[auth_admin, json_ct], format!(r#"{{"name":"n","weight":{}"#, "[".repeat(100_000))), NOW, &[400, 422], OpenAi, None, NotDue);
    row("admin weight 1e400", req("POST", tenants, &[auth_admin, json_ct], r#"{"name":"huge","weight":1e400}"#), NOW, &[400, 422], OpenAi, None, NotDue);
    row("admin weight u64::MAX+1", req("POST", tenants, &[auth_admin, json_ct], r#"{"name":"huge","weight":18446744073709551616}"#), NOW, &[400, 422], OpenAi, None, NotDue);
    row("admin weight as string", req("POST", tenants, &[auth_admin, json_ct], r#"{"name":"str","weight":"heavy"}"#), NOW, &[400, 422], OpenAi, None, NotDue);
    row("admin duplicate keys", req("POST", tenants, &[auth_admin, json_ct], r#"{"name":"d1","name":"d2","weight":1}"#), NOW, &[400, 422], OpenAi, None, NotDue);
    row("admin no token", req("GET", tenants, &[], b""), NOW, &[401], OpenAi, None, NotDue);
    row("admin tenant key as token", req("GET", tenants, &[auth], b""), NOW, &[401, 403], OpenAi, None, NotDue);
    row("admin wrong token of 10 KB", req("GET", tenants, &[("Authorization", &format!("Bearer {}", "a".repeat(10 * 1024)))], b""), NOW, &[401], OpenAi, None, NotDue);
    row("admin requests?limit=-1", req("GET", "/admin/v1/requests?limit=-1", &[auth_admin], b""), NOW, &[400], OpenAi, None, NotDue);
    row("admin usage since 1e30", req("GET", "/admin/v1/usage?since=1000000000000000000000000000000", &[auth_admin], b""), NOW, &[400], OpenAi, None, NotDue);
    row("admin unknown key id with %00", req("GET", "/admin/v1/keys/%00", &[auth_admin], b""), NOW, &[400, 404], OpenAi, None, NotDue);
    row("admin key for an unknown tenant", req("POST", "/admin/v1/keys", &[auth_admin, json_ct], r#"{"tenant":"nope","name":"k"}"#), NOW, &[400, 404], OpenAi, None, NotDue);
    row("admin /admin/v1/../v1/models", req("GET", "/admin/v1/../v1/models", &[auth_admin], b""), NOW, &[400, 401, 404], Any, None, NotDue);

    // ---- /portal
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    row("portal sign-in body 2 MiB", req("POST", "/portal/login", &[form], format!("email=a%40b.c&password={}", "p".repeat(2 * 1024 * 1024))), NOW, &[413], Html, None, NotDue);
    row("portal sign-in trickled", req("POST", "/portal/login", &[form], format!("email=a%40b.c&password={}", "p".repeat(100))), Pace::Trickle { prefix: 150 }, &[408], Html, None, NotDue);
    row("portal sign-in non-UTF-8 form", req("POST", "/portal/login", &[form], b"email=\xff\xfe%FF&password=x"), NOW, &[200, 400, 401, 422], Html, None, NotDue);
    row("portal sign-in 60 KB e-mail", req("POST", "/portal/login", &[form], format!("email={}&password=x", "e".repeat(60 * 1024))), NOW, &[200, 400, 401, 413, 422], Html, None, NotDue);
    row("portal sign-in duplicate fields", req("POST", "/portal/login", &[form], "email=a%40b.c&email=c%40d.e&password=x&password=y"), NOW, &[200, 400, 401, 422], Html, None, NotDue);
    row("portal sign-in as JSON", req("POST", "/portal/login", &[json_ct], r#"{"email":"a@b.c","password":"x"}"#), NOW, &[400, 415, 422], Html, None, NotDue);
    row("portal junk session cookie", req("GET", "/portal", &[("Cookie", &format!("fg_session={}", "c".repeat(4096)))], b""), NOW, &[200, 302, 303], Html, None, NotDue);
    let many_cookies: String = (0..300).map(|i| format!("c{i}=v{i}; ")).collect();
    row("portal 300 cookies", req("GET", "/portal", &[("Cookie", &many_cookies)], b""), NOW, &[200, 302, 303], Html, None, NotDue);
    row("portal create key without a session", req("POST", "/portal/keys", &[form], "name=x&csrf=forged"), NOW, &[302, 303, 401, 403], Html, None, NotDue);
    row("portal /portal/../admin/v1/tenants", req("GET", "/portal/../admin/v1/tenants", &[], b""), NOW, &[400, 404], Any, None, NotDue);
    row("portal oidc callback with a 6 KB state", req("GET", &format!("/portal/oidc/callback?state={}&code=x", "s".repeat(6 * 1024)), &[], b""), NOW, &[302, 303, 400, 403, 404], Html, None, NotDue);
    row("portal history page=u64::MAX+1", req("GET", "/portal/history?page=18446744073709551616", &[("Cookie", "fg_session=x")], b""), NOW, &[200, 302, 303, 400], Html, None, NotDue);
    rows
}

// ---------------------------------------------------------------------------------------------
// Checks

fn check_shape(r: &Resp, shape: Shape, code: Option<&str>, leak: &[String]) -> Result<(), String> {
    let body = String::from_utf8_lossy(&r.body);
    for l in leak {
        if body.contains(l.as_str()) {
            return Err(format!("body names a backend address {l}: {body:.300}"));
        }
    }
    let ct = r.header("content-type").unwrap_or("").to_ascii_lowercase();
    match shape {
        Shape::Any => Ok(()),
        Shape::Html => {
            let redirect = (300..400).contains(&r.status) && r.header("location").is_some();
            if redirect || ct.starts_with("text/html") {
                Ok(())
            } else {
                Err(format!(
                    "expected an HTML page, got content-type {ct:?}: {body:.300}"
                ))
            }
        }
        Shape::OpenAi => {
            if !ct.starts_with("application/json") {
                return Err(format!(
                    "expected JSON, got content-type {ct:?}: {body:.300}"
                ));
            }
            let v: Value = serde_json::from_slice(&r.body)
                .map_err(|e| format!("error body is not JSON ({e}): {body:.300}"))?;
            let e = &v["error"];
            if !e["message"].as_str().is_some_and(|m| !m.is_empty()) {
                return Err(format!("error.message missing or empty: {v}"));
            }
            if !e["type"].is_string() {
                return Err(format!("error.type missing: {v}"));
            }
            if e.get("code").is_none() {
                return Err(format!("error.code missing: {v}"));
            }
            if let Some(want) = code {
                if e["code"].as_str() != Some(want) {
                    return Err(format!("error.code should be {want:?}: {v}"));
                }
            }
            Ok(())
        }
    }
}

async fn healthz(addr: SocketAddr) -> Result<(), String> {
    let r = send_raw(addr, req("GET", "/healthz", &[], b""), Pace::AllAtOnce).await?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("/healthz answered {}", r.status))
    }
}

async fn admin_json(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let c = reqwest::Client::new();
    let mut r = c
        .request(method, format!("{base}/admin/v1{path}"))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "admin {path}: {status} {v}");
    v
}

fn leak_markers(url: &str) -> Vec<String> {
    // The address and the bare port of a simulator must never appear in a client-facing body.
    let hostport = url.trim_start_matches("http://").to_owned();
    vec![hostport]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_clean_refusals() {
    let sim_a = Sim::start(SimConfig::instant("a")).await;
    let sim_b = Sim::start(SimConfig::instant("b")).await;
    let mut gw = Gateway::start(&sim_a.url, &sim_b.url).await;
    let base = gw.base();

    admin_json(
        &base,
        reqwest::Method::POST,
        "/tenants",
        Some(json!({"name": "t", "weight": 1})),
    )
    .await;
    let any = admin_json(
        &base,
        reqwest::Method::POST,
        "/keys",
        Some(json!({"tenant": "t", "name": "any"})),
    )
    .await;
    let a = admin_json(
        &base,
        reqwest::Method::POST,
        "/keys",
        Some(json!({"tenant": "t", "name": "a", "models": ["a"]})),
    )
    .await;
    let keys = Keys {
        any: any["key"].as_str().unwrap().to_owned(),
        a: a["key"].as_str().unwrap().to_owned(),
    };

    // Warm up (first requests allocate pools, caches, TLS-free HTTP clients), then the baseline.
    for _ in 0..3 {
        let r = send_raw(
            gw.addr,
            req(
                "POST",
                "/v1/chat/completions",
                &[
                    ("Authorization", &format!("Bearer {}", keys.any)),
                    ("Content-Type", "application/json"),
                ],
                chat_body("a"),
            ),
            Pace::AllAtOnce,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let rss_start = gw.rss_kb();
    let mut rss_max = rss_start;

    let leak = [leak_markers(&sim_a.url), leak_markers(&sim_b.url)].concat();
    let rows = table(&keys);
    assert!(rows.len() >= 60, "the table has {} rows", rows.len());
    let mut failures: Vec<String> = Vec::new();
    // (row name, request id, expectation) for the ledger check at the end.
    let mut due: Vec<(String, Option<String>, Ledger)> = Vec::new();

    for row in rows {
        let mut outcome = send_raw(gw.addr, row.bytes, row.pace).await;
        if row.statuses.contains(&CLOSED)
            && outcome.as_ref().is_err_and(|e| e == CLOSED_WITHOUT_ANSWER)
        {
            outcome = Ok(Resp::default()); // status 0
        }
        match &outcome {
            Err(e) => failures.push(format!("{}: {e}", row.name)),
            Ok(r) => {
                if !row.statuses.contains(&r.status) {
                    failures.push(format!(
                        "{}: status {} not in {:?}: {:.300}",
                        row.name,
                        r.status,
                        row.statuses,
                        String::from_utf8_lossy(&r.body)
                    ));
                } else if let Err(e) = check_shape(r, row.shape, row.code, &leak) {
                    failures.push(format!("{}: {e}", row.name));
                }
            }
        }
        if row.ledger != Ledger::NotDue {
            let id = outcome
                .as_ref()
                .ok()
                .and_then(|r| r.header("x-request-id").map(str::to_owned));
            due.push((row.name.clone(), id, row.ledger));
        }
        if !gw.alive() {
            failures.push(format!("{}: the gateway process exited", row.name));
            break;
        }
        if let Err(e) = healthz(gw.addr).await {
            failures.push(format!("{}: gateway unhealthy afterwards: {e}", row.name));
        }
        rss_max = rss_max.max(gw.rss_kb());
    }

    if gw.alive() {
        // Ledger: one row per request id where one is due (reading `requests` flushes first).
        let v = admin_json(&base, reqwest::Method::GET, "/requests?limit=10000", None).await;
        let ids: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        for (name, id, want) in &due {
            match (id, want) {
                (None, Ledger::One) => failures.push(format!(
                    "{name}: no x-request-id on the answer (ledger row unverifiable)"
                )),
                (None, _) => {}
                (Some(id), want) => {
                    let n = ids.iter().filter(|i| *i == id).count();
                    let ok = match want {
                        Ledger::One => n == 1,
                        Ledger::AtMostOne => n <= 1,
                        Ledger::NotDue => true,
                    };
                    if !ok {
                        failures.push(format!(
                            "{name}: {n} ledger rows for request {id}, expected {want:?}"
                        ));
                    }
                }
            }
        }
    }
    let growth = rss_max.saturating_sub(rss_start);
    if growth >= RSS_GROWTH_LIMIT_KB {
        failures.push(format!(
            "RSS grew by {growth} kB (from {rss_start} kB to a peak of {rss_max} kB), bound {RSS_GROWTH_LIMIT_KB} kB"
        ));
    }
    if let Some(p) = gw.panicked() {
        failures.push(format!("the gateway logged a panic: {p}"));
    }
    eprintln!("hostile: RSS {rss_start} kB -> peak {rss_max} kB");
    assert!(
        failures.is_empty(),
        "{} hostile-client rows failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
