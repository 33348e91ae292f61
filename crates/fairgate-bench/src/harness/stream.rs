//! Streamed chat requests as the load generator sees them: seeded prompts of a known token
//! count, one request read chunk by chunk (SSE) and cut at the run's deadline, and what each
//! request leaves behind ([`Rec`]) for the benchmarks' analyses.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::{rngs::StdRng, Rng};
use serde_json::{json, Value};

use super::process::MODEL;

/// What every request of a run shares: the client, the chat URL, the run's start and its
/// deadline (every request still open then is cut).
pub(crate) struct Ctx {
    pub(crate) client: reqwest::Client,
    pub(crate) url: String,
    pub(crate) t0: Instant,
    pub(crate) deadline: Instant,
}

impl Ctx {
    /// A run against gateway `gw` that starts now and ends after `seconds`.
    pub(crate) fn new(client: &reqwest::Client, gw: &str, seconds: f64) -> Ctx {
        let t0 = Instant::now();
        Ctx {
            client: client.clone(),
            url: format!("{gw}/v1/chat/completions"),
            t0,
            deadline: t0 + Duration::from_secs_f64(seconds),
        }
    }
}

/// One request as the client saw it; times in seconds since the run's start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rec {
    pub(crate) tenant: usize,
    /// Which of the run's gateways it went to (0 with one gateway).
    pub(crate) gateway: usize,
    pub(crate) sent: f64,
    /// First content chunk.
    pub(crate) first: Option<f64>,
    pub(crate) end: f64,
    pub(crate) prompt: u64,
    pub(crate) completion: u64,
    pub(crate) chunks: u64,
    pub(crate) expected_prompt: u64,
    /// Usage chunk and `[DONE]` seen.
    pub(crate) complete: bool,
    pub(crate) cut: bool,
    pub(crate) error: Option<String>,
}

impl Rec {
    /// (in, out) tokens served: usage when complete, else the prompt estimate and chunks.
    pub(crate) fn tokens(&self) -> (f64, f64) {
        if self.first.is_none() {
            return (0.0, 0.0);
        }
        if self.complete {
            (self.prompt as f64, self.completion as f64)
        } else {
            (self.expected_prompt as f64, self.chunks as f64)
        }
    }

    /// A completed request whose usage disagrees with what the client counted.
    fn usage_mismatch(&self) -> bool {
        self.complete && (self.completion != self.chunks || self.prompt != self.expected_prompt)
    }
}

/// The warning for requests that failed ("N errors, first: …"), if any did.
pub(crate) fn errors_warning<'a>(recs: impl IntoIterator<Item = &'a Rec>) -> Option<String> {
    let mut errors = recs.into_iter().filter_map(|r| r.error.as_deref());
    let first = errors.next()?;
    Some(format!("{} errors, first: {first}", errors.count() + 1))
}

/// The warning for completed requests whose usage is off, if any are.
pub(crate) fn usage_warning<'a>(recs: impl IntoIterator<Item = &'a Rec>) -> Option<String> {
    let bad = recs.into_iter().filter(|r| r.usage_mismatch()).count();
    (bad > 0).then(|| {
        format!(
            "{bad} completed requests whose usage differs from the chunks seen or the expected prompt"
        )
    })
}

/// `words` seeded random words of 1–4 lowercase letters, space-separated: exactly `words`
/// simulator tokens (each word is one token, its leading space included).
pub(crate) fn random_words(rng: &mut StdRng, words: u64) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut text = String::with_capacity(words as usize * 4);
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        for _ in 0..rng.gen_range(1..=4) {
            text.push(LETTERS[rng.gen_range(0..LETTERS.len())] as char);
        }
    }
    text
}

/// A streamed chat request for [`MODEL`] that asks for the usage chunk at the end.
pub(crate) fn chat_body(messages: Value, max_tokens: u64) -> String {
    json!({
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

/// Reads SSE events out of `buf` into `rec`; returns true at `[DONE]`.
pub(crate) fn take_events(buf: &mut Vec<u8>, rec: &mut Rec, now: f64) -> bool {
    let mut done = false;
    while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..pos + 2).collect();
        for line in event.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            {
                rec.chunks += 1;
                rec.first.get_or_insert(now);
            }
            if let Some(u) = v["usage"].as_object() {
                rec.prompt = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
                rec.completion = u
                    .get("completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
            }
            if v.get("error").is_some() {
                rec.error = Some(format!("error event: {v}"));
            }
        }
    }
    done
}

/// One streamed request, cut at the deadline.
pub(crate) async fn stream_one(ctx: &Ctx, key: &str, body: String, mut rec: Rec) -> Rec {
    let now = |c: &Ctx| c.t0.elapsed().as_secs_f64();
    rec.sent = now(ctx);
    let send = ctx
        .client
        .post(&ctx.url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send();
    let resp = tokio::select! {
        r = send => r,
        _ = tokio::time::sleep_until(ctx.deadline.into()) => {
            rec.cut = true;
            rec.end = now(ctx);
            return rec;
        }
    };
    let resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            rec.error = Some(format!("HTTP {status}: {}", text.trim()));
            rec.end = now(ctx);
            return rec;
        }
        Err(e) => {
            rec.error = Some(format!("request failed: {e}"));
            rec.end = now(ctx);
            return rec;
        }
    };
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut done = false;
    loop {
        let next = tokio::select! {
            c = stream.next() => c,
            _ = tokio::time::sleep_until(ctx.deadline.into()) => {
                rec.cut = true;
                break;
            }
        };
        let t = now(ctx);
        match next {
            None => break,
            Some(Err(e)) => {
                rec.error = Some(format!("stream broke: {e}"));
                break;
            }
            Some(Ok(b)) => {
                buf.extend_from_slice(&b);
                rec.end = t;
                done |= take_events(&mut buf, &mut rec, t);
            }
        }
    }
    if rec.end == 0.0 {
        rec.end = now(ctx);
    }
    rec.complete = done && rec.error.is_none() && !rec.cut;
    if !done && !rec.cut && rec.error.is_none() {
        rec.error = Some("stream ended without [DONE]".into());
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parsing_counts_content_and_usage() {
        let mut rec = Rec::default();
        let mut buf = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"hi \"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\ndata: [DO"
            .to_vec();
        assert!(!take_events(&mut buf, &mut rec, 1.5));
        assert_eq!((rec.chunks, rec.prompt, rec.completion), (1, 9, 1));
        assert_eq!(rec.first, Some(1.5));
        buf.extend_from_slice(b"NE]\n\n");
        assert!(take_events(&mut buf, &mut rec, 2.0));
        assert!(buf.is_empty());
    }

    #[test]
    fn warnings_count_errors_and_bad_usage() {
        let ok = Rec {
            complete: true,
            prompt: 9,
            expected_prompt: 9,
            completion: 2,
            chunks: 2,
            ..Rec::default()
        };
        let failed = |e: &str| Rec {
            error: Some(e.into()),
            ..Rec::default()
        };
        let recs = [ok.clone(), failed("HTTP 429"), failed("later")];
        assert_eq!(
            errors_warning(&recs).as_deref(),
            Some("2 errors, first: HTTP 429")
        );
        assert_eq!(errors_warning([&ok]), None);
        assert_eq!(usage_warning(&recs), None);
        let short = Rec {
            completion: 1,
            ..ok
        };
        assert!(usage_warning([&short]).is_some_and(|w| w.starts_with("1 completed")));
    }
}
