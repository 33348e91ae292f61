//! Opening and settling the one ledger row of a request: [`Tracker`] records exactly one row
//! whatever happens (an answer, an error, the client leaving), with the real usage, and frees
//! what admission took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use fairgate_types::{now_millis, LedgerRow, Outcome, RequestId, Unit, Usage, UsageSource};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::plan::*;
use crate::admission::Admitted;
use crate::error::ApiError;
use crate::identity::Principal;
use crate::proxy_limits::MAX_ENDPOINT_BYTES;
use crate::state::AppState;

/// One request's ledger row in the making; records itself exactly once.
pub(crate) struct Tracker {
    pub(crate) st: Arc<AppState>,
    pub(crate) row: LedgerRow,
    pub(crate) start: Instant,
    /// When the upstream call started, to split gateway overhead from upstream time.
    pub(crate) upstream_sent: Option<Instant>,
    /// Gateway time before the upstream call (excluding queue wait).
    pub(crate) overhead_before: Duration,
    /// Prompt tokens as estimated from the request, used when the upstream reports no usage.
    pub(crate) prompt_estimate: u64,
    /// The request's amount in its own unit as the request tells it (images asked for,
    /// characters to speak, seconds uploaded), used when the answer does not say.
    pub(crate) units_estimate: Option<u64>,
    /// The admission (backend slot, limits, budget) this request holds; settled with the
    /// real usage when the row is recorded, which also frees the slot.
    pub(crate) admitted: Option<Admitted>,
    /// An anonymous failure over its address's row budget: metrics only, no ledger row of its
    /// own (it is counted into the next `anonymous:suppressed` summary row instead).
    pub(crate) suppressed: bool,
    pub(crate) done: bool,
}

impl Tracker {
    pub(crate) fn start(st: &Arc<AppState>, endpoint: &str) -> Tracker {
        Tracker {
            st: st.clone(),
            row: LedgerRow {
                status: CLIENT_CLOSED,
                // Paths are client input of any length: the row keeps a bounded prefix.
                ..LedgerRow::new(
                    RequestId::new(),
                    now_millis(),
                    crate::proxy_limits::truncate_at_char(endpoint, MAX_ENDPOINT_BYTES).to_owned(),
                )
            },
            start: Instant::now(),
            upstream_sent: None,
            overhead_before: Duration::ZERO,
            prompt_estimate: 0,
            units_estimate: None,
            admitted: None,
            suppressed: false,
            done: false,
        }
    }

    pub(crate) fn attribute(&mut self, p: &Principal) {
        self.row.tenant = Some(p.tenant().to_owned());
        self.row.user = p.user().map(str::to_owned);
        self.row.key_id = Some(p.key_id().clone());
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn mark_first_token(&mut self) {
        if self.row.ttft_ms.is_none() {
            let t = self.start.elapsed();
            self.row.ttft_ms = Some(t.as_millis() as u64);
            if let Some(m) = &self.row.model {
                self.st
                    .metrics
                    .ttft
                    .with_label_values(&[m])
                    .observe(t.as_secs_f64());
                if let Some(tenant) = &self.row.tenant {
                    self.st
                        .metrics
                        .tenant_ttft
                        .with_label_values(&[m, tenant])
                        .observe(t.as_secs_f64());
                }
            }
        }
    }

    /// The backend was sent the request but reported no usage (the client left first): the
    /// prompt is charged as estimated, so GPU time spent is neither free nor refunded to fair
    /// share (settling with the estimate keeps the prompt charge admission made).
    pub(crate) fn charge_unreported_work(&mut self) {
        if self.upstream_sent.is_some()
            && self.row.usage_source == UsageSource::None
            && self.prompt_estimate > 0
        {
            self.row.prompt_tokens = self.row.prompt_tokens.max(self.prompt_estimate);
            self.row.usage_source = UsageSource::Estimated;
        }
        if self.upstream_sent.is_some() && self.row.unit != Unit::Tokens && self.row.units == 0 {
            self.row.units = self.units_estimate.unwrap_or(0);
        }
    }

    /// A successful answer of a non-token surface: what it says it served (images in `data`,
    /// seconds of audio), else what the request asked for.
    pub(crate) fn set_answer_units(&mut self, body: &[u8]) {
        if self.row.unit != Unit::Tokens {
            self.row.units = fairgate_relay::answer_units(self.row.unit, body)
                .or(self.units_estimate)
                .unwrap_or(0);
        }
    }

    pub(crate) fn set_usage(&mut self, usage: Usage, source: UsageSource) {
        self.row.prompt_tokens = usage.prompt_tokens;
        self.row.completion_tokens = usage.completion_tokens;
        self.row.cached_tokens = usage.cached_tokens;
        self.row.usage_source = source;
    }

    /// Ends the request with an error response; records the row.
    pub(crate) fn fail(&mut self, err: ApiError) -> Response {
        self.row.status = err.status().as_u16();
        self.row.outcome = err.outcome();
        self.row.error_class = Some(err.class().to_owned());
        if err.outcome() == Outcome::UpstreamError {
            tracing::warn!(request_id = %self.row.id, error = %err, "upstream failure");
        }
        let mut resp = err.into_response();
        // Headers first: `record` moves the row out.
        self.decorate(resp.headers_mut());
        self.record();
        resp
    }

    pub(crate) fn decorate(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(self.row.id.as_str()) {
            h.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
        }
        h.insert(
            HeaderName::from_static(QUEUE_WAIT_HEADER),
            HeaderValue::from(self.row.queue_ms),
        );
    }

    /// Sends the row to the ledger (off-path) and updates metrics. Idempotent.
    pub(crate) fn record(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if self.row.unit == Unit::Tokens {
            self.row.units = self
                .row
                .prompt_tokens
                .saturating_add(self.row.completion_tokens);
        }
        if let Some(a) = self.admitted.take() {
            let usage = Usage {
                prompt_tokens: self.row.prompt_tokens,
                completion_tokens: self.row.completion_tokens,
                cached_tokens: self.row.cached_tokens,
            };
            self.row.cost = a.settle(&usage, self.row.unit, self.row.units);
        }
        self.row.duration_ms = self.elapsed_ms();
        let m = &self.st.metrics;
        let tenant = self.row.tenant.as_deref().unwrap_or("");
        let model = self.row.model.as_deref().unwrap_or("");
        let status = StatusCode::from_u16(self.row.status)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| self.row.status.to_string());
        m.requests
            .with_label_values(&[tenant, model, &status])
            .inc();
        if self.row.prompt_tokens > 0 {
            m.prompt_tokens
                .with_label_values(&[tenant, model])
                .inc_by(self.row.prompt_tokens);
        }
        if self.row.completion_tokens > 0 {
            m.completion_tokens
                .with_label_values(&[tenant, model])
                .inc_by(self.row.completion_tokens);
        }
        if self.row.cost.0 > 0 {
            m.cost_micros
                .with_label_values(&[tenant, model])
                .inc_by(self.row.cost.0);
        }
        if self.row.model.is_some() {
            m.e2e
                .with_label_values(&[model])
                .observe(self.start.elapsed().as_secs_f64());
        }
        if self.upstream_sent.is_some() {
            m.overhead
                .with_label_values(&[model])
                .observe(self.overhead_before.as_secs_f64());
        }
        self.st.telemetry.record(&crate::telemetry::Finished {
            now_ms: now_millis(),
            // Bounded like the metric labels: a model name the client made up counts as
            // `_unknown`.
            model: m.labels().clean(crate::metrics::Kind::Model, model),
            tenant,
            user: self.row.user.as_deref(),
            status: self.row.status,
            prompt_tokens: self.row.prompt_tokens,
            completion_tokens: self.row.completion_tokens,
            cached_tokens: self.row.cached_tokens,
            cost_micros: self.row.cost.0,
            ttft_ms: self.row.ttft_ms,
        });
        if self.suppressed {
            return;
        }
        let row = std::mem::replace(&mut self.row, placeholder_row());
        // Never waits: onto the ledger's bounded queue (in order, so a later admin read that
        // flushes sees the row), or, when it is full or the database is down, into the spill
        // file that is replayed later. The response is never held up by the ledger.
        self.st.ledger.record(row);
    }
}

pub(crate) fn placeholder_row() -> LedgerRow {
    LedgerRow::new(RequestId(String::new()), 0, String::new())
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            // The handler future was dropped: the client disconnected before an answer.
            self.row.outcome = Outcome::Cancelled;
            self.row.error_class = Some("client_closed".to_owned());
            self.charge_unreported_work();
            self.record();
        }
    }
}
