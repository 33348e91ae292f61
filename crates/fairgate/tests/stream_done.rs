//! A stream's row is `ok` as soon as its `[DONE]` has passed, even when the client closes the
//! connection right after reading it and the backend's end of stream never arrives (official
//! SDKs close at `[DONE]`; before this, such a row could be recorded as `cancelled`).

mod common;

use axum::body::Body;
use axum::routing::post;
use common::*;
use futures_util::StreamExt;

/// A backend whose stream sends its answer, usage and `[DONE]`, then keeps the connection open.
async fn lingering_backend() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            let events = [
                r#"data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#,
                r#"data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                r#"data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
                "data: [DONE]",
            ]
            .map(|e| Ok::<_, std::io::Error>(bytes::Bytes::from(format!("{e}\n\n"))));
            let body = futures_util::stream::iter(events).chain(futures_util::stream::pending());
            axum::response::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_stream_is_ok_once_done_has_passed_even_if_the_client_leaves_at_once() {
    let url = lingering_backend().await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &url, 4), &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 4, true))
        .await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.unwrap());
        if String::from_utf8_lossy(&seen).contains("[DONE]") {
            break;
        }
    }
    // The client leaves here, like an SDK at `[DONE]`; the backend never ends its stream.
    drop(body);
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows[0]["outcome"], "ok", "{}", rows[0]);
    assert_eq!(rows[0]["completion_tokens"], 1, "{}", rows[0]);
    assert_eq!(rows[0]["prompt_tokens"], 5, "{}", rows[0]);
    gw.shutdown().await;
}
