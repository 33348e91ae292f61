//! A minimal `/v1/responses` (OpenAI's Responses API as vLLM serves it), so gateways can be
//! tested on the `input_tokens`/`output_tokens` usage shape, streamed and not. Instant and not
//! scheduled on the engine: `input` (a string) is tokenized for `input_tokens`, and
//! `max_output_tokens` (default 16) words are produced.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;

use super::wire::ApiError;
use super::{check_model, json_response, AppState};
use crate::textgen::{self, WordRng};
use crate::tokenizer;

#[derive(Deserialize)]
struct ResponsesRequest {
    model: Option<String>,
    input: String,
    max_output_tokens: Option<u64>,
    stream: Option<bool>,
}

pub(super) async fn responses(State(st): State<AppState>, body: Bytes) -> Response {
    let req: ResponsesRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(format!("invalid request: {e}")).into_response(),
    };
    if let Err(e) = check_model(&st.sim, req.model.as_deref()) {
        return e.into_response();
    }
    let model = req.model.unwrap_or_else(|| st.sim.config().model.clone());
    let input_tokens = tokenizer::count_tokens(&req.input) as u64;
    let n = req.max_output_tokens.unwrap_or(16).clamp(1, 4096);
    let mut rng = WordRng::new(st.sim.config().seed, textgen::hash_bytes(&body));
    let words: Vec<String> = (0..n).map(|_| format!("{} ", rng.next_word())).collect();
    let id = format!("resp_{:032x}", st.sim.next_id());
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + n,
    });
    let text: String = words.concat();
    let done = json!({
        "id": id, "object": "response", "status": "completed", "model": model,
        "output": [{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": text}]}],
        "usage": usage,
    });
    if !req.stream.unwrap_or(false) {
        return json_response(
            StatusCode::OK,
            serde_json::to_vec(&done).unwrap_or_default(),
        );
    }
    let event = |name: &str, v: serde_json::Value| {
        Ok::<Bytes, std::convert::Infallible>(Bytes::from(format!("event: {name}\ndata: {v}\n\n")))
    };
    let mut events = vec![event(
        "response.created",
        json!({"type": "response.created", "response": {"id": id, "status": "in_progress", "usage": null}}),
    )];
    for w in &words {
        events.push(event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "delta": w}),
        ));
    }
    events.push(event(
        "response.completed",
        json!({"type": "response.completed", "response": done}),
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream::iter(events)),
    )
        .into_response()
}
