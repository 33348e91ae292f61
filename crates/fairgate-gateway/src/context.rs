//! Models' context lengths, as their backends report them (`max_model_len` in vLLM's and the
//! simulator's `/v1/models`). The config does not carry it, so the portal asks one healthy
//! backend per model and remembers the answer for a while. When no backend answers, or the
//! answer has no length for the model, the length is unknown and the portal says so rather
//! than guess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::upstream::{HttpClient, ModelPool, Upstreams};

/// How long a length a backend reported is kept before it is asked again.
const KNOWN_FOR: Duration = Duration::from_secs(600);
/// How long "no answer" is kept, so a page view does not wait on a silent backend each time.
const UNKNOWN_FOR: Duration = Duration::from_secs(30);
/// The longest a page waits for a backend's answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(1000);
/// Largest `/v1/models` body read.
const MAX_BODY: usize = 1024 * 1024;

/// Per model: when it was last asked and what was learnt.
#[derive(Default)]
pub struct ContextLengths {
    known: Mutex<HashMap<String, (Instant, Option<u64>)>>,
    /// A background refresh for the request path is running.
    refreshing: std::sync::atomic::AtomicBool,
}

impl ContextLengths {
    /// Every model's context length that is known; models missing from the map are unknown.
    /// Asks the backends of models not asked recently, all at once, each within
    /// [`ASK_TIMEOUT`].
    pub async fn all(&self, upstreams: &Upstreams, client: &HttpClient) -> HashMap<String, u64> {
        let now = Instant::now();
        let due: Vec<Arc<ModelPool>> = {
            let known = self.lock();
            upstreams
                .pools
                .iter()
                .filter(|p| match known.get(&p.name) {
                    None => true,
                    Some((at, v)) => {
                        let keep = if v.is_some() { KNOWN_FOR } else { UNKNOWN_FOR };
                        now.saturating_duration_since(*at) > keep
                    }
                })
                .cloned()
                .collect()
        };
        if !due.is_empty() {
            let answers = join_all(due.iter().map(|p| ask(client, p))).await;
            let mut known = self.lock();
            for (p, v) in due.iter().zip(answers) {
                known.insert(p.name.clone(), (Instant::now(), v));
            }
        }
        self.lock()
            .iter()
            .filter_map(|(k, (_, v))| v.map(|v| (k.clone(), v)))
            .collect()
    }

    /// The request path's read: the length last learnt for `model`, without waiting on any
    /// backend, and whether the caller should start a background refresh (it is unknown or
    /// old and none is running; [`ContextLengths::refreshed`] ends it), so later requests see
    /// it (reservations clamp `max_tokens` to it).
    pub fn known_or_due(&self, model: &str) -> (Option<u64>, bool) {
        let now = Instant::now();
        let (value, due) = match self.lock().get(model) {
            None => (None, true),
            Some((at, v)) => {
                let keep = if v.is_some() { KNOWN_FOR } else { UNKNOWN_FOR };
                (*v, now.saturating_duration_since(*at) > keep)
            }
        };
        let start = due
            && !self
                .refreshing
                .swap(true, std::sync::atomic::Ordering::AcqRel);
        (value, start)
    }

    /// Marks the background refresh started by [`ContextLengths::known_or_due`] as over.
    pub fn refreshed(&self) {
        self.refreshing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<u64>)>> {
        // Only whole-entry inserts happen under this lock: the map is usable after a panic.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Asks the first healthy, non-draining backend of `p`.
async fn ask(client: &HttpClient, p: &ModelPool) -> Option<u64> {
    let b = p.backends().iter().find_map(|b| {
        let s = b.status();
        (s.state == "healthy" && !s.draining).then(|| b.clone())
    })?;
    // vLLM's --api-key guards /v1/*: the backend's own credential and CA go along.
    let body = fetch(b.client(client), &b, &format!("{}/v1/models", b.url)).await?;
    max_model_len(&body, &p.name)
}

async fn fetch(client: &HttpClient, b: &crate::upstream::Backend, url: &str) -> Option<Bytes> {
    let mut req = http::Request::get(url)
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .ok()?;
    b.authorize(req.headers_mut());
    let fut = async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Some(
            Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .ok()?
                .to_bytes(),
        )
    };
    tokio::time::timeout(ASK_TIMEOUT, fut).await.ok().flatten()
}

/// The `max_model_len` of the entry whose `id` is `model`, if the list has one.
fn max_model_len(body: &[u8], model: &str) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("data")?
        .as_array()?
        .iter()
        .find(|e| e.get("id").and_then(Value::as_str) == Some(model))?
        .get("max_model_len")?
        .as_u64()
        .filter(|n| *n > 0)
}

/// A context length for people: `8192 tokens`, or `—` when unknown.
pub fn shown(len: Option<u64>) -> String {
    match len {
        Some(n) => format!("{n} tokens"),
        None => "—".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_models_own_entry_only() {
        let body = br#"{"object":"list","data":[
            {"id":"base","max_model_len":8192,"parent":null},
            {"id":"sql-lora","max_model_len":null,"parent":"base"}]}"#;
        assert_eq!(max_model_len(body, "base"), Some(8192));
        assert_eq!(max_model_len(body, "sql-lora"), None);
        assert_eq!(max_model_len(body, "other"), None);
        assert_eq!(max_model_len(b"not json", "base"), None);
        assert_eq!(max_model_len(br#"{"data":[{"id":"base"}]}"#, "base"), None);
        assert_eq!(shown(Some(4096)), "4096 tokens");
        assert_eq!(shown(None), "—");
    }
}
