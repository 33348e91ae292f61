//! Helpers shared by the integration tests: a served simulator on a real port, an in-process
//! caller for virtual-time tests, and SSE parsing.
#![allow(dead_code)] // each test binary uses a different subset

use axum::body::Body;
use axum::http::{Request, Response};
use fairgate_sim::{SimConfig, Simulator};
use serde_json::Value;
use tower::ServiceExt;

/// A simulator served on 127.0.0.1:<ephemeral>.
pub struct Served {
    pub sim: Simulator,
    pub base: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.expect("serve task panicked")
    }
}

pub async fn serve(cfg: SimConfig) -> Served {
    let sim = Simulator::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fairgate_sim::serve(listener, sim.clone(), async move {
        let _ = rx.await;
    }));
    Served {
        sim,
        base: format!("http://{addr}"),
        stop: Some(tx),
        task,
    }
}

/// Calls the router in-process (no sockets, so paused time stays deterministic).
pub async fn call(
    sim: &Simulator,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Response<Body> {
    let mut req = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    sim.router().oneshot(req).await.unwrap()
}

pub async fn get(sim: &Simulator, path: &str) -> Response<Body> {
    let req = Request::get(path).body(Body::empty()).unwrap();
    sim.router().oneshot(req).await.unwrap()
}

/// Reads a whole body as text.
pub async fn text(resp: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Parses an SSE body into its JSON events; the bool says whether `[DONE]` ended it.
pub fn sse(text: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev
            .strip_prefix("data: ")
            .expect("every event is `data: ...`");
        assert!(!done, "nothing may follow [DONE]");
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).expect("event is JSON"));
        }
    }
    (events, done)
}

/// Concatenated generated text of chat or completion stream events.
pub fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str().or(c["text"].as_str()))
        .collect()
}

pub fn chat_body(content: &str, max_tokens: u64, stream: bool) -> Value {
    serde_json::json!({
        "model": "sim",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}
