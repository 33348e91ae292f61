//! A minimal fixed-answer model server (`fairgate bench-backend`, hidden): about half the
//! simulator's CPU per request, so `fairgate bench --backend fixed` measures the gateway
//! against a ceiling set by HTTP itself rather than by the simulator's bookkeeping.
//!
//! Every chat or completion request gets the same pre-built answer: a JSON body with usage,
//! or, when the body asks `"stream":true`, `max_tokens` SSE chunks (16 if absent), a usage
//! chunk and `[DONE]`. `/health` answers 200, `/metrics` an empty page (the gateway then has no
//! engine figures for it, as for a server without Prometheus), `/v1/models` the one model.
//! Nothing is parsed but two substrings of the request body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Pre-built answers, shared by every connection.
struct Answers {
    json: Bytes,
    models: Bytes,
    /// One content chunk (repeated `max_tokens` times) and the stream's tail.
    chunk: Bytes,
    tail: Bytes,
    /// Streams of the most common lengths, built once.
    streams: Vec<Bytes>,
}

const MAX_PREBUILT: usize = 512;

impl Answers {
    fn new(model: &str) -> Self {
        let json = format!(
            r#"{{"id":"chatcmpl-fixed","object":"chat.completion","created":1718000000,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"A short fixed answer."}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16}}}}"#
        );
        let models = format!(
            r#"{{"object":"list","data":[{{"id":"{model}","object":"model","created":1718000000,"owned_by":"fixed"}}]}}"#
        );
        let chunk = format!(
            "data: {{\"id\":\"chatcmpl-fixed\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        );
        let tail = format!(
            "data: {{\"id\":\"chatcmpl-fixed\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"total_tokens\":28,\"completion_tokens\":16}}}}\n\ndata: [DONE]\n\n"
        );
        let mut a = Self {
            json: Bytes::from(json),
            models: Bytes::from(models),
            chunk: Bytes::from(chunk),
            tail: Bytes::from(tail),
            streams: Vec::new(),
        };
        a.streams = (0..=64).map(|n| a.build_stream(n)).collect();
        a
    }

    fn build_stream(&self, n: usize) -> Bytes {
        let mut b = BytesMut::with_capacity(self.chunk.len() * n + self.tail.len());
        for _ in 0..n {
            b.extend_from_slice(&self.chunk);
        }
        b.extend_from_slice(&self.tail);
        b.freeze()
    }

    fn stream(&self, n: usize) -> Bytes {
        match self.streams.get(n) {
            Some(s) => s.clone(),
            None => self.build_stream(n.min(MAX_PREBUILT)),
        }
    }
}

/// `"max_tokens":N` of a compact or spaced JSON body, if present.
fn max_tokens(body: &[u8]) -> Option<usize> {
    let key = b"\"max_tokens\"";
    let at = memchr::memmem::find(body, key)? + key.len();
    let rest = body.get(at..)?;
    let rest = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b':'))
        .and_then(|i| rest.get(i..))?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}

fn streams(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"stream\":true").is_some()
        || memchr::memmem::find(body, b"\"stream\": true").is_some()
}

async fn answer(
    a: Arc<Answers>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let (status, ctype, body) = match (req.method(), path) {
        (&Method::GET, "/health") => (StatusCode::OK, "text/plain", Bytes::new()),
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain", Bytes::new()),
        (&Method::GET, "/v1/models") => (StatusCode::OK, "application/json", a.models.clone()),
        (&Method::POST, _) => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if streams(&body) {
                let n = max_tokens(&body).unwrap_or(16);
                (StatusCode::OK, "text/event-stream", a.stream(n))
            } else {
                (StatusCode::OK, "application/json", a.json.clone())
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", Bytes::new()),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

/// Serves fixed answers for `model` on `listen` until the process is stopped.
pub async fn serve(listen: SocketAddr, model: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let answers = Arc::new(Answers::new(model));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let a = answers.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(a.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_tokens_and_stream() {
        assert_eq!(max_tokens(br#"{"max_tokens":64,"stream":true}"#), Some(64));
        assert_eq!(max_tokens(br#"{"max_tokens": 7}"#), Some(7));
        assert_eq!(max_tokens(br#"{"model":"m"}"#), None);
        assert!(streams(br#"{"stream":true}"#));
        assert!(!streams(br#"{"stream":false}"#));
    }

    #[test]
    fn a_stream_has_its_chunks_usage_and_done() {
        let a = Answers::new("m");
        let s = a.stream(3);
        let text = std::str::from_utf8(&s).unwrap();
        assert_eq!(text.matches("\"content\":\" tok\"").count(), 3);
        assert!(text.contains("\"usage\":{"));
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(a.stream(1000).len(), a.build_stream(MAX_PREBUILT).len());
    }
}
