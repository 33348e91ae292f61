//! HTTP routes with vLLM's paths, status codes and JSON shapes.
//!
//! Inference requests go: health switch (503 while [`Simulator::set_healthy`] is off) → parse
//! (400 on malformed JSON or wrong types) → model check (the base model or a LoRA adapter of
//! `lora_modules`, else 404; responses echo the requested name) →
//! limits (400: `n` ≠ 1, `max_tokens` < 1, empty prompt, prompt + max_tokens over
//! `max_model_len` or over the blocks of the whole KV cache, `stream_options` without `stream`,
//! a non-zero `priority` under the `fcfs` scheduling policy) → delay
//! (`slow_start` + `slow=`) → injected failure (`error` → 500, `hang`) → engine or fast path.
//! Without `max_tokens`, the output length is `default_max_tokens`, clipped to what fits in
//! `max_model_len`. The `content-type` header is not checked. `/detokenize` is not offered:
//! token ids are hashes and cannot be turned back into text.
//!
//! Streams follow vLLM's `stream_options`: `include_usage` adds `"usage":null` to every chunk
//! and a final `choices: []` chunk with the usage; `continuous_usage_stats` (honoured only with
//! `include_usage`, as in vLLM) puts the cumulative usage on every chunk instead of `null`: the
//! chat role chunk carries 0 completion tokens, the k-th token chunk k. Unlike vLLM, these
//! per-chunk objects also carry `prompt_tokens_details`, like every usage object here.

mod media;
mod render;
mod responses;
mod wire;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulingPolicy;
use crate::engine::{SeqEvent, SeqRequest};
use crate::fault::{Fault, FAULT_HEADER};
use crate::metrics::FinishReason;
use crate::textgen::{self, WordRng};
use crate::tokenizer;
use crate::{Generation, Simulator};

use render::{ChunkFormat, Head, Kind, StreamUsage, Usage};
use wire::{
    ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, StreamOptions, TokenizeRequest,
};

/// Request bodies above this are refused (413) before parsing.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

#[derive(Clone)]
struct AppState {
    sim: Simulator,
    /// Cancelled at server shutdown, so requests hung by fault injection end.
    stop: CancellationToken,
}

/// All routes, for one simulator.
pub(crate) fn router(sim: Simulator, stop: CancellationToken) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/images/generations", post(media::images))
        .route("/v1/audio/transcriptions", post(media::transcribe))
        .route("/v1/audio/translations", post(media::transcribe))
        .route("/v1/audio/speech", post(media::speech))
        .route("/v1/rerank", post(media::rerank))
        .route("/v2/rerank", post(media::rerank))
        .route("/rerank", post(media::rerank))
        .route("/v1/score", post(media::score))
        .route("/score", post(media::score))
        .route("/tokenize", post(tokenize))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            record_request,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            require_api_key,
        ))
        .with_state(AppState { sim, stop })
}

/// vLLM's `--api-key` check: `/v1/*` needs the bearer key (CORS preflights pass), the other
/// routes do not.
async fn require_api_key(
    State(sim): State<Simulator>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(key) = &sim.config().api_key {
        let guarded = req.uri().path().starts_with("/v1") && req.method() != http_method_options();
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| given == key);
        if guarded && !ok {
            return json_response(
                StatusCode::UNAUTHORIZED,
                br#"{"error":"Unauthorized"}"#.to_vec(),
            );
        }
    }
    next.run(req).await
}

/// Remembers what arrived (see [`Simulator::recent_requests`]); probes and scrapes are left out.
async fn record_request(
    State(sim): State<Simulator>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path != "/metrics" && path != "/health" {
        sim.remember(crate::SeenRequest {
            method: req.method().to_string(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map_or_else(|| path.to_owned(), |p| p.as_str().to_owned()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        });
    }
    next.run(req).await
}

fn http_method_options() -> axum::http::Method {
    axum::http::Method::OPTIONS
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long a body stays pending before it breaks; see [`body_break`].
const BREAK_GRACE: Duration = Duration::from_millis(50);

/// The error that breaks a body, returned only after [`BREAK_GRACE`]. A body error makes hyper
/// drop what it has not yet written: over HTTP/1 it closes the connection without flushing its
/// buffer, over HTTP/2 the RST_STREAM discards the stream's queued DATA (and even its HEADERS
/// when they are still queued). A single yield was not enough: over HTTP/2 clients saw 2 of 3
/// chunks, or no response at all. While the body is pending, hyper writes and flushes what it
/// holds, so the client receives every chunk sent before the break and the usage it saw
/// matches the tokens counted. 50 ms costs nothing in tests (the fault is opt-in) and under
/// paused time it elapses instantly.
async fn body_break(why: &'static str) -> std::io::Error {
    tokio::time::sleep(BREAK_GRACE).await;
    std::io::Error::other(why)
}

/// A response whose head (and `prefix`, if any) goes out and whose body then fails: the client
/// sees a truncated body on a dropped connection.
fn broken_response(status: StatusCode, prefix: Option<Bytes>) -> Response {
    let chunks = stream::iter(prefix.map(Ok)).chain(stream::once(async {
        Err::<Bytes, _>(body_break("simulated connection abort").await)
    }));
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// Resolves the requested model: `Ok(None)` for the base model, `Ok(Some(i))` for LoRA adapter
/// `lora_modules[i]`, 404 for any other name.
fn check_model(sim: &Simulator, model: Option<&str>) -> Result<Option<usize>, ApiError> {
    let cfg = sim.config();
    match model {
        // vLLM serves the default model when the field is absent or empty.
        Some(m) if !m.is_empty() && m != cfg.model => match cfg.lora_index(m) {
            Some(i) => Ok(Some(i)),
            None => Err(ApiError::model_not_found(m)),
        },
        _ => Ok(None),
    }
}

/// The 503 every inference route answers while the simulator is switched unhealthy.
fn unhealthy(sim: &Simulator) -> Option<Response> {
    (!sim.is_healthy()).then(|| ApiError::engine_unhealthy().into_response())
}

fn fault_of(headers: &HeaderMap) -> Result<Fault, ApiError> {
    match headers.get(FAULT_HEADER) {
        None => Ok(Fault::default()),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("invalid {FAULT_HEADER} header")))?;
            Fault::parse(s).map_err(ApiError::bad_request)
        }
    }
}

/// A validated chat or completion request.
#[derive(Debug)]
struct Job {
    kind: Kind,
    prompt_ids: Vec<u32>,
    max_tokens: u64,
    stream: bool,
    usage: StreamUsage,
    fault: Fault,
    body_hash: u64,
    /// LoRA adapter the request names; `None` for the base model.
    lora: Option<usize>,
    /// vLLM's request `priority` (lower first under the `priority` policy).
    priority: i64,
}

/// Request fields shared by chat and completions, before validation.
struct JobSpec<'a> {
    kind: Kind,
    model: Option<&'a str>,
    prompt_ids: Vec<u32>,
    max_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<&'a StreamOptions>,
    n: Option<u64>,
    priority: i64,
}

fn validate(
    sim: &Simulator,
    spec: JobSpec<'_>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Job, ApiError> {
    let cfg = sim.config();
    let lora = check_model(sim, spec.model)?;
    if let Some(n) = spec.n.filter(|&n| n != 1) {
        return Err(ApiError::bad_request(format!(
            "n={n} is not supported by the simulator; only n=1"
        )));
    }
    if spec.priority != 0 && cfg.scheduling_policy == SchedulingPolicy::Fcfs {
        // vLLM's own message (`Processor._validate_request`).
        return Err(ApiError::bad_request(format!(
            "Got priority {} but Priority scheduling is not enabled.",
            spec.priority
        )));
    }
    let stream = spec.stream.unwrap_or(false);
    if spec.stream_options.is_some() && !stream {
        return Err(ApiError::bad_request(
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    let prompt = spec.prompt_ids.len() as u64;
    if prompt == 0 {
        return Err(ApiError::bad_request("The decoder prompt cannot be empty"));
    }
    let max_len = cfg.max_model_len;
    if prompt >= max_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, your request has \
             {prompt} input tokens. Please reduce the length of the input messages."
        )));
    }
    let max_tokens = match spec.max_tokens {
        Some(0) => {
            return Err(ApiError::bad_request(
                "max_tokens must be at least 1, got 0.",
            ));
        }
        Some(m) => m,
        None => cfg.default_max_tokens.clamp(1, max_len - prompt),
    };
    if prompt.saturating_add(max_tokens) > max_len {
        return Err(ApiError::bad_request(format!(
            "'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's \
             maximum context length is {max_len} tokens and your request has {prompt} input \
             tokens ({max_tokens} > {max_len} - {prompt})."
        )));
    }
    // The engine allocates whole blocks: a request must fit the cache alone when it is full
    // length, or it would preempt itself forever.
    let need = prompt + max_tokens;
    if cfg.blocks_for(need) > cfg.num_blocks() {
        return Err(ApiError::bad_request(format!(
            "The request needs {need} KV-cache tokens but the cache holds only {} tokens.",
            cfg.num_blocks() * cfg.effective_block_size()
        )));
    }
    Ok(Job {
        kind: spec.kind,
        prompt_ids: spec.prompt_ids,
        max_tokens,
        stream,
        usage: StreamUsage::new(
            spec.stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            spec.stream_options
                .and_then(|o| o.continuous_usage_stats)
                .unwrap_or(false),
        ),
        fault: fault_of(headers)?,
        body_hash: textgen::hash_bytes(body),
        lora,
        priority: spec.priority,
    })
}

fn chat_job(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Result<Job, ApiError> {
    let req: ChatRequest = wire::parse(body)?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid request: `messages` is empty",
        ));
    }
    for m in &req.messages {
        m.validate()?;
    }
    let spec = JobSpec {
        kind: Kind::Chat,
        model: req.model.as_deref(),
        prompt_ids: tokenizer::chat_prompt_ids(&req.messages),
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        stream: req.stream,
        stream_options: req.stream_options.as_ref(),
        n: req.n,
        priority: req.priority,
    };
    validate(sim, spec, headers, body)
}

fn completion_job(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Result<Job, ApiError> {
    let req: CompletionRequest = wire::parse(body)?;
    let spec = JobSpec {
        kind: Kind::Completion,
        model: req.model.as_deref(),
        prompt_ids: req.prompt.single_token_ids()?,
        max_tokens: req.max_tokens,
        stream: req.stream,
        stream_options: req.stream_options.as_ref(),
        n: req.n,
        priority: req.priority,
    };
    validate(sim, spec, headers, body)
}

async fn chat(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let arrival = Instant::now();
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    match chat_job(&st.sim, &headers, &body) {
        Ok(job) => run(&st, job, arrival).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let arrival = Instant::now();
    if let Some(r) = unhealthy(&st.sim) {
        return r;
    }
    match completion_job(&st.sim, &headers, &body) {
        Ok(job) => run(&st, job, arrival).await,
        Err(e) => e.into_response(),
    }
}

/// Applies delay and injected failures. `Some(response)` means the request ends here.
async fn inject(st: &AppState, fault: &Fault) -> Option<Response> {
    let sim = &st.sim;
    let cfg = sim.config();
    let delay = cfg.slow_start.saturating_add(fault.slow);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fault.error || sim.sampler().hit(cfg.error_rate) {
        return Some(ApiError::internal("simulated engine failure").into_response());
    }
    if fault.hang || sim.sampler().hit(cfg.hang_rate) {
        // Hung until the client leaves (this future is then dropped) or the server stops.
        st.stop.cancelled().await;
        return Some(broken_response(StatusCode::OK, None));
    }
    None
}

async fn run(st: &AppState, job: Job, arrival: Instant) -> Response {
    if let Some(r) = inject(st, &job.fault).await {
        return r;
    }
    let sim = &st.sim;
    let cfg = sim.config();
    let prompt_tokens = job.prompt_ids.len() as u64;
    let gen = sim
        .start(SeqRequest {
            prompt_ids: job.prompt_ids,
            max_tokens: job.max_tokens,
            abort_after: job.fault.abort_after,
            lora: job.lora,
            priority: job.priority,
            arrival,
        })
        .await;
    let id = format!("{}{:032x}", job.kind.id_prefix(), sim.next_id());
    let head = Head {
        id: &id,
        created: unix_now(),
        model: cfg.served_name(job.lora),
    };
    let rng = WordRng::new(cfg.seed, job.body_hash);
    if job.stream {
        let fmt = ChunkFormat::new(job.kind, &head, job.usage);
        stream_response(StreamState {
            gen,
            fmt,
            rng,
            kind: job.kind,
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens: 0,
            pending: None,
            phase: Phase::Tokens,
        })
    } else {
        full_response(gen, job.kind, &head, rng, prompt_tokens, job.max_tokens).await
    }
}

async fn full_response(
    mut gen: Generation,
    kind: Kind,
    head: &Head<'_>,
    mut rng: WordRng,
    prompt_tokens: u64,
    max_tokens: u64,
) -> Response {
    let cap = usize::try_from(max_tokens).unwrap_or(0).min(1 << 20);
    let mut text = String::with_capacity(cap * 6);
    let mut cached = 0;
    let mut completion = 0;
    loop {
        match gen.next().await {
            Some(SeqEvent::Started { cached_tokens }) => cached = cached_tokens,
            Some(SeqEvent::Token { last }) => {
                text.push_str(rng.next_word());
                text.push(' ');
                completion += 1;
                if last {
                    break;
                }
            }
            Some(SeqEvent::Aborted) => {
                // Send the first half of what the answer would have been, then break.
                let usage = Usage::new(prompt_tokens, completion, cached);
                let mut full = render::full_response(kind, head, &text, usage);
                full.truncate(full.len() / 2);
                return broken_response(StatusCode::OK, Some(Bytes::from(full)));
            }
            None => {
                return ApiError::internal("the simulated engine dropped the request")
                    .into_response()
            }
        }
    }
    drop(gen);
    let usage = Usage::new(prompt_tokens, completion, cached);
    json_response(
        StatusCode::OK,
        render::full_response(kind, head, &text, usage),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tokens,
    Usage,
    Done,
    End,
}

/// Everything one SSE response needs between chunks.
struct StreamState {
    gen: Generation,
    fmt: ChunkFormat,
    rng: WordRng,
    kind: Kind,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// Tokens produced so far, each of which is in a chunk sent or about to be sent.
    completion_tokens: u64,
    /// A chunk to send before asking the sequence for more (the first token after the role).
    pending: Option<Bytes>,
    phase: Phase,
}

impl StreamState {
    fn usage(&self, completion_tokens: u64) -> Usage {
        Usage::new(self.prompt_tokens, completion_tokens, self.cached_tokens)
    }

    /// The next SSE event; an `Err` breaks the body (abort-after fault, engine loss).
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if let Some(b) = self.pending.take() {
            return Some(Ok(b));
        }
        loop {
            match self.phase {
                Phase::Tokens => match self.gen.next().await {
                    Some(SeqEvent::Started { cached_tokens }) => {
                        self.cached_tokens = cached_tokens;
                    }
                    Some(SeqEvent::Token { last }) => {
                        self.completion_tokens += 1;
                        if last {
                            self.phase = Phase::Usage;
                        }
                        let usage = self.usage(self.completion_tokens);
                        let chunk = self.fmt.token(self.rng.next_word(), last, usage);
                        // vLLM opens a chat stream with the role, together with the first token.
                        // The role chunk carries no token, so its usage counts none.
                        if self.kind == Kind::Chat && self.completion_tokens == 1 {
                            self.pending = Some(chunk);
                            return Some(Ok(self.fmt.role(self.usage(0))));
                        }
                        return Some(Ok(chunk));
                    }
                    Some(SeqEvent::Aborted) => {
                        self.phase = Phase::End;
                        return Some(Err(body_break("simulated stream abort").await));
                    }
                    None => {
                        self.phase = Phase::End;
                        return Some(Err(
                            body_break("the simulated engine dropped the request").await
                        ));
                    }
                },
                Phase::Usage => {
                    self.phase = Phase::Done;
                    if self.fmt.stream_usage().final_chunk() {
                        let u = self.usage(self.completion_tokens);
                        return Some(Ok(self.fmt.usage(u)));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some(Ok(ChunkFormat::done()));
                }
                Phase::End => return None,
            }
        }
    }
}

fn stream_response(state: StreamState) -> Response {
    let chunks = stream::unfold(state, |mut st| async move {
        let item = st.next_chunk().await?;
        Some((item, st))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(chunks),
    )
        .into_response()
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingData {
    index: usize,
    object: &'static str,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<()>,
}

#[derive(Serialize)]
struct EmbeddingResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    data: Vec<EmbeddingData>,
    usage: EmbeddingUsage,
}

/// Embeddings run outside the batching engine: one prefill-shaped delay, no KV, no prefix cache.
async fn embeddings(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let arrival = Instant::now();
    let sim = &st.sim;
    let cfg = sim.config();
    if let Some(r) = unhealthy(sim) {
        return r;
    }
    let parsed = (|| {
        let req: EmbeddingRequest = wire::parse(&body)?;
        let lora = check_model(sim, req.model.as_deref())?;
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid request: unsupported encoding_format `{other}`"
                )))
            }
        };
        let inputs = req.input.token_ids();
        if inputs.is_empty() || inputs.iter().any(Vec::is_empty) {
            return Err(ApiError::bad_request(
                "Invalid request: input cannot be empty",
            ));
        }
        if let Some(long) = inputs.iter().find(|i| i.len() as u64 > cfg.max_model_len) {
            return Err(ApiError::bad_request(format!(
                "This model's maximum context length is {} tokens. However, you requested {} \
                 tokens in the input for embedding generation. Please reduce the length of the \
                 input.",
                cfg.max_model_len,
                long.len()
            )));
        }
        Ok((inputs, base64, fault_of(&headers)?, lora))
    })();
    let (inputs, base64, fault, lora) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Some(r) = inject(&st, &fault).await {
        return r;
    }
    let total: u64 = inputs.iter().map(|i| i.len() as u64).sum();
    if !cfg.is_instant() {
        let per = cfg
            .prefill_per_token
            .saturating_mul(u32::try_from(total).unwrap_or(u32::MAX));
        tokio::time::sleep(cfg.prefill_overhead.saturating_add(per)).await;
    }
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, ids)| {
            let v = textgen::embedding(cfg.seed, ids, cfg.embedding_dim);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(render::base64(&bytes))
            } else {
                EmbeddingValue::Float(v)
            };
            EmbeddingData {
                index,
                object: "embedding",
                embedding,
            }
        })
        .collect();
    let m = sim.metrics();
    m.prompt_tokens.inc_by(total);
    m.finish(
        FinishReason::Stop,
        total,
        0,
        (Instant::now() - arrival).as_secs_f64(),
    );
    let resp = EmbeddingResponse {
        id: format!("embd-{:032x}", sim.next_id()),
        object: "list",
        created: unix_now(),
        model: cfg.served_name(lora),
        data,
        usage: EmbeddingUsage {
            prompt_tokens: total,
            total_tokens: total,
            completion_tokens: 0,
            prompt_tokens_details: None,
        },
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&resp).unwrap_or_default(),
    )
}

#[derive(Serialize)]
struct TokenizeResponse {
    count: usize,
    max_model_len: u64,
    tokens: Vec<u32>,
}

async fn tokenize(State(st): State<AppState>, body: Bytes) -> Response {
    let sim = &st.sim;
    let result = (|| {
        let req: TokenizeRequest = wire::parse(&body)?;
        check_model(sim, req.model.as_deref())?;
        match (&req.messages, &req.prompt) {
            (Some(msgs), _) => {
                for m in msgs {
                    m.validate()?;
                }
                Ok(tokenizer::chat_prompt_ids(msgs))
            }
            (None, Some(p)) => p.single_token_ids(),
            (None, None) => Err(ApiError::bad_request(
                "Invalid request: either `prompt` or `messages` is required",
            )),
        }
    })();
    match result {
        Ok(tokens) => {
            let r = TokenizeResponse {
                count: tokens.len(),
                max_model_len: sim.config().max_model_len,
                tokens,
            };
            json_response(StatusCode::OK, serde_json::to_vec(&r).unwrap_or_default())
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct ModelPermission {
    id: String,
    object: &'static str,
    created: u64,
    allow_create_engine: bool,
    allow_sampling: bool,
    allow_logprobs: bool,
    allow_search_indices: bool,
    allow_view: bool,
    allow_fine_tuning: bool,
    organization: &'static str,
    group: Option<()>,
    is_blocking: bool,
}

/// One `/v1/models` entry. Like vLLM: the base model has `parent: null` and its
/// `max_model_len`; a LoRA adapter has its path as `root`, the base model as `parent` and
/// `max_model_len: null`.
#[derive(Serialize)]
struct ModelCard<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    root: &'a str,
    parent: Option<&'a str>,
    max_model_len: Option<u64>,
    permission: [ModelPermission; 1],
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelCard<'a>>,
}

fn model_card<'a>(
    sim: &Simulator,
    created: u64,
    id: &'a str,
    parent: Option<&'a str>,
    max_model_len: Option<u64>,
) -> ModelCard<'a> {
    ModelCard {
        id,
        object: "model",
        created,
        owned_by: "vllm",
        root: id,
        parent,
        max_model_len,
        permission: [ModelPermission {
            id: format!("modelperm-{:032x}", sim.next_id()),
            object: "model_permission",
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: None,
            is_blocking: false,
        }],
    }
}

async fn models(State(st): State<AppState>) -> Response {
    let sim = &st.sim;
    let cfg = sim.config();
    let created = unix_now();
    let base = model_card(sim, created, &cfg.model, None, Some(cfg.max_model_len));
    let mut data = vec![base];
    // Each adapter once, in configuration order; a name equal to the base model's is the base
    // model (see `SimConfig::lora_index`).
    for (i, a) in cfg.lora_modules.iter().enumerate() {
        if cfg.lora_index(a) == Some(i) {
            data.push(model_card(sim, created, a, Some(&cfg.model), None));
        }
    }
    let list = ModelList {
        object: "list",
        data,
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).unwrap_or_default(),
    )
}

/// 200 with an empty body once started; 503 during the configured startup delay and while
/// switched unhealthy.
async fn health(State(st): State<AppState>) -> StatusCode {
    let delay: Duration = st.sim.config().startup_delay;
    if !st.sim.is_healthy() || st.sim.started().elapsed() < delay {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        br#"{"version":"0.0.0-fairgate-sim"}"#.to_vec(),
    )
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.sim.metrics().render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::not_found("Not Found").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;

    fn sim() -> Simulator {
        Simulator::new(SimConfig {
            max_model_len: 100,
            kv_cache_tokens: 80,
            ..SimConfig::instant("m")
        })
    }

    fn spec(prompt: usize, max_tokens: Option<u64>) -> JobSpec<'static> {
        JobSpec {
            kind: Kind::Completion,
            model: Some("m"),
            prompt_ids: vec![1; prompt],
            max_tokens,
            stream: None,
            stream_options: None,
            n: None,
            priority: 0,
        }
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let s = sim();
        let h = HeaderMap::new();
        let ok = validate(&s, spec(10, Some(5)), &h, b"").unwrap();
        assert_eq!(ok.max_tokens, 5);
        // Default output length (64) is clipped to the context window.
        let roomy = Simulator::new(SimConfig {
            max_model_len: 100,
            ..SimConfig::instant("m")
        });
        let clipped = validate(&roomy, spec(60, None), &h, b"").unwrap();
        assert_eq!(clipped.max_tokens, 40);
        // Empty prompt, prompt over the window, prompt + max_tokens over the window or over
        // the KV cache (80 tokens), max_tokens 0.
        for (p, m) in [
            (0, Some(1)),
            (100, Some(1)),
            (90, Some(20)),
            (70, Some(20)),
            (1, Some(0)),
        ] {
            let e = validate(&s, spec(p, m), &h, b"").unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "prompt {p} max {m:?}");
        }
        let mut wrong = spec(1, None);
        wrong.model = Some("other");
        assert_eq!(
            validate(&s, wrong, &h, b"").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        let mut many = spec(1, None);
        many.n = Some(2);
        assert!(validate(&s, many, &h, b"").is_err());
        let opts = StreamOptions::default();
        let mut opts_no_stream = spec(1, None);
        opts_no_stream.stream_options = Some(&opts);
        assert!(validate(&s, opts_no_stream, &h, b"").is_err());
        let mut bad = HeaderMap::new();
        bad.insert(FAULT_HEADER, "boom".parse().unwrap());
        assert!(validate(&s, spec(1, None), &bad, b"").is_err());
    }

    #[tokio::test]
    async fn priority_needs_the_priority_policy() {
        let h = HeaderMap::new();
        let fcfs = sim();
        let mut high = spec(1, Some(1));
        high.priority = -3;
        let e = validate(&fcfs, high, &h, b"").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "Got priority -3 but Priority scheduling is not enabled."
        );
        // Priority 0 is the default and always accepted.
        assert_eq!(
            validate(&fcfs, spec(1, Some(1)), &h, b"").unwrap().priority,
            0
        );
        let prio = Simulator::new(SimConfig {
            scheduling_policy: SchedulingPolicy::Priority,
            ..SimConfig::instant("m")
        });
        let mut low = spec(1, Some(1));
        low.priority = 7;
        assert_eq!(validate(&prio, low, &h, b"").unwrap().priority, 7);
    }

    #[tokio::test]
    async fn kv_limit_counts_whole_blocks() {
        // 90 tokens of cache in blocks of 16: 5 blocks, 80 tokens usable.
        let s = Simulator::new(SimConfig {
            kv_cache_tokens: 90,
            ..SimConfig::instant("m")
        });
        let h = HeaderMap::new();
        assert!(validate(&s, spec(40, Some(40)), &h, b"").is_ok());
        let e = validate(&s, spec(40, Some(41)), &h, b"").unwrap_err();
        assert!(e.message.contains("holds only 80 tokens"), "{}", e.message);
    }
}
