//! The non-text surfaces a model server offers beside chat, so gateways can be tested on each
//! one's unit: `/v1/images/generations` (OpenAI's shape: `data` holds `n` images),
//! `/v1/audio/transcriptions` and `/translations` (vLLM's: multipart upload, `usage` with the
//! audio's seconds), `/v1/audio/speech` (a WAV whose length follows the input's characters),
//! and vLLM's pooling endpoints `/v1/rerank` (`usage.total_tokens`) and `/v1/score`
//! (`usage.prompt_tokens`). They answer at once and are not scheduled on the engine.
//!
//! Audio is decoded from WAV only (PCM of any rate); vLLM decodes more formats, the simulator
//! refuses them with vLLM's 400. Its own small multipart reader takes `name="..."` parts.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::wire::ApiError;
use super::{check_model, json_response, unhealthy, unix_now, AppState};
use crate::textgen::{self, WordRng};
use crate::tokenizer;

/// A 1x1 PNG, the image every generation returns.
const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// Spoken characters per second of generated speech, and its sample rate (8-bit mono).
const CHARS_PER_SECOND: u64 = 15;
const SPEECH_RATE: u32 = 4000;

fn bad(e: impl std::fmt::Display) -> Response {
    ApiError::bad_request(format!("Invalid request: {e}")).into_response()
}

#[derive(Deserialize)]
struct ImageRequest {
    model: Option<String>,
    prompt: String,
    n: Option<u64>,
    response_format: Option<String>,
}

pub(super) async fn images(State(st): State<AppState>, body: Bytes) -> Response {
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    let req: ImageRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    if let Err(e) = check_model(&st.sim, req.model.as_deref()) {
        return e.into_response();
    }
    if req.prompt.is_empty() {
        return bad("prompt cannot be empty");
    }
    let n = req.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return bad(format!("n must be between 1 and 10, got {n}"));
    }
    let url = req.response_format.as_deref() == Some("url");
    let data: Vec<_> = (0..n)
        .map(|i| {
            if url {
                json!({"url": format!("data:image/png;base64,{PNG_1X1}"), "revised_prompt": req.prompt, "index": i})
            } else {
                json!({"b64_json": PNG_1X1, "revised_prompt": req.prompt})
            }
        })
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&json!({"created": unix_now(), "data": data})).unwrap_or_default(),
    )
}

/// The `name="..."` parts of a multipart form, by name (the last one wins).
fn form_parts<'a>(headers: &HeaderMap, body: &'a [u8]) -> Option<Vec<(String, &'a [u8])>> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("\r\n--{boundary}");
    // Treat the body as if a CRLF came before the first delimiter.
    let mut rest = body.strip_prefix(&delim.as_bytes()[2..])?;
    let mut out = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(out);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let end = find(rest, delim.as_bytes())?;
        let part = &rest[..end];
        rest = &rest[end + delim.len()..];
        let head_end = find(part, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&part[..head_end]).ok()?;
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())?;
        out.push((name.to_owned(), &part[head_end + 4..]));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Seconds of a PCM WAV file (`data` size over the `fmt ` byte rate), as a float.
fn wav_duration(b: &[u8]) -> Option<f64> {
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return None;
    }
    let (mut i, mut rate) = (12, None::<u32>);
    while i + 8 <= b.len() {
        let size = u32::from_le_bytes(b[i + 4..i + 8].try_into().ok()?) as usize;
        match &b[i..i + 4] {
            b"fmt " => rate = Some(u32::from_le_bytes(b.get(i + 16..i + 20)?.try_into().ok()?)),
            b"data" => {
                let len = size.min(b.len() - i - 8);
                return Some(len as f64 / f64::from(rate.filter(|r| *r > 0)?));
            }
            _ => {}
        }
        i += 8 + size + (size & 1);
    }
    None
}

/// `/v1/audio/transcriptions` and `/v1/audio/translations`.
pub(super) async fn transcribe(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    let Some(parts) = form_parts(&headers, &body) else {
        return bad("expected a multipart/form-data body");
    };
    let field = |name: &str| parts.iter().rev().find(|(n, _)| n == name).map(|(_, v)| *v);
    let model = field("model").and_then(|v| std::str::from_utf8(v).ok());
    if let Err(e) = check_model(&st.sim, model) {
        return e.into_response();
    }
    let Some(file) = field("file") else {
        return bad("the form has no `file`");
    };
    let Some(secs) = wav_duration(file) else {
        return bad("could not decode the audio file (the simulator reads WAV only)");
    };
    // About two and a half words per second of speech.
    let words = ((secs * 2.5).ceil() as usize).max(1);
    let mut rng = WordRng::new(st.sim.config().seed, textgen::hash_bytes(file));
    let text: Vec<String> = (0..words).map(|_| rng.next_word().to_string()).collect();
    let text = text.join(" ");
    let format = field("response_format")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("json");
    match format {
        "text" => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response(),
        "verbose_json" => json_response(
            StatusCode::OK,
            serde_json::to_vec(&json!({
                "task": "transcribe", "language": "en", "duration": secs, "text": text,
                "segments": [{"id": 0, "start": 0.0, "end": secs, "text": text}],
            }))
            .unwrap_or_default(),
        ),
        "json" => json_response(
            StatusCode::OK,
            serde_json::to_vec(&json!({
                "text": text,
                "usage": {"type": "duration", "seconds": secs.ceil() as u64},
            }))
            .unwrap_or_default(),
        ),
        other => bad(format!("unsupported response_format `{other}`")),
    }
}

#[derive(Deserialize)]
struct SpeechRequest {
    model: Option<String>,
    input: String,
}

pub(super) async fn speech(State(st): State<AppState>, body: Bytes) -> Response {
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    let req: SpeechRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    if let Err(e) = check_model(&st.sim, req.model.as_deref()) {
        return e.into_response();
    }
    let chars = req.input.chars().count() as u64;
    if chars == 0 || chars > 4096 {
        return bad(format!("input must be 1 to 4096 characters, got {chars}"));
    }
    let samples = (chars * u64::from(SPEECH_RATE)).div_ceil(CHARS_PER_SECOND) as usize;
    let mut wav = Vec::with_capacity(44 + samples);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&((36 + samples) as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&[1, 0, 1, 0]); // PCM, mono
    wav.extend_from_slice(&SPEECH_RATE.to_le_bytes());
    wav.extend_from_slice(&SPEECH_RATE.to_le_bytes());
    wav.extend_from_slice(&[1, 0, 8, 0]); // block align 1, 8 bits
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples as u32).to_le_bytes());
    wav.extend((0..samples).map(|i| 128u8.wrapping_add(((i / 8) % 32) as u8)));
    (StatusCode::OK, [(header::CONTENT_TYPE, "audio/wav")], wav).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    fn text(&self) -> &str {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

#[derive(Deserialize)]
struct RerankRequest {
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    top_n: Option<usize>,
}

/// A deterministic relevance in (0, 1) for a pair of texts.
fn relevance(seed: u64, a: &str, b: &str) -> f64 {
    let h = textgen::hash_bytes(format!("{seed}\u{0}{a}\u{0}{b}").as_bytes());
    (h % 10_000) as f64 / 10_000.0
}

/// vLLM's `/rerank`, `/v1/rerank` and `/v2/rerank`: results sorted by relevance, usage as
/// `total_tokens` (the query beside each document).
pub(super) async fn rerank(State(st): State<AppState>, body: Bytes) -> Response {
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    let req: RerankRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    if let Err(e) = check_model(&st.sim, req.model.as_deref()) {
        return e.into_response();
    }
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| st.sim.config().model.clone());
    let seed = st.sim.config().seed;
    let q = tokenizer::count_tokens(&req.query) as u64;
    let total: u64 = req
        .documents
        .iter()
        .map(|d| q + tokenizer::count_tokens(d.text()) as u64)
        .sum();
    let mut results: Vec<_> = req
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| (i, d.text(), relevance(seed, &req.query, d.text())))
        .collect();
    results.sort_by(|a, b| b.2.total_cmp(&a.2));
    results.truncate(req.top_n.unwrap_or(results.len()));
    let results: Vec<_> = results
        .into_iter()
        .map(|(i, t, s)| json!({"index": i, "document": {"text": t}, "relevance_score": s}))
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&json!({
            "id": format!("rerank-{:032x}", st.sim.next_id()),
            "model": model,
            "usage": {"total_tokens": total},
            "results": results,
        }))
        .unwrap_or_default(),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    fn list(&self) -> Vec<&str> {
        match self {
            Texts::One(t) => vec![t],
            Texts::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Deserialize)]
struct ScoreRequest {
    model: Option<String>,
    text_1: Texts,
    text_2: Texts,
}

/// vLLM's `/score` and `/v1/score`: one `text_1` against each `text_2`, or pairwise.
pub(super) async fn score(State(st): State<AppState>, body: Bytes) -> Response {
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    let req: ScoreRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    if let Err(e) = check_model(&st.sim, req.model.as_deref()) {
        return e.into_response();
    }
    let (a, b) = (req.text_1.list(), req.text_2.list());
    let pairs: Vec<(&str, &str)> = match (a.len(), b.len()) {
        (1, _) => b.iter().map(|t| (a[0], *t)).collect(),
        (n, m) if n == m => a.iter().copied().zip(b.iter().copied()).collect(),
        (n, m) => {
            return bad(format!(
                "text_1 ({n}) and text_2 ({m}) must have the same length, or text_1 one item"
            ))
        }
    };
    let seed = st.sim.config().seed;
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| st.sim.config().model.clone());
    let tokens: u64 = pairs
        .iter()
        .map(|(x, y)| (tokenizer::count_tokens(x) + tokenizer::count_tokens(y)) as u64)
        .sum();
    let data: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(i, (x, y))| json!({"index": i, "object": "score", "score": relevance(seed, x, y)}))
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&json!({
            "id": format!("score-{:032x}", st.sim.next_id()),
            "object": "list",
            "created": unix_now(),
            "model": model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }))
        .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_durations() {
        let mut w = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0".to_vec();
        w.extend_from_slice(&8000u32.to_le_bytes());
        w.extend_from_slice(&8000u32.to_le_bytes());
        w.extend_from_slice(&[1, 0, 8, 0]);
        w.extend_from_slice(b"data");
        w.extend_from_slice(&12_000u32.to_le_bytes());
        w.resize(w.len() + 12_000, 128);
        assert_eq!(wav_duration(&w), Some(1.5));
        assert_eq!(wav_duration(b"ID3 mp3"), None);
    }

    #[test]
    fn forms_split_into_named_parts() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=xx".parse().unwrap(),
        );
        let body = b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF..\r\n--xx\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--xx--\r\n";
        let parts = form_parts(&h, body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], ("file".to_owned(), &b"RIFF.."[..]));
        assert_eq!(parts[1], ("model".to_owned(), &b"whisper"[..]));
    }
}
