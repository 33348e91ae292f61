//! Live telemetry for the portal, from in-process rolling windows: what this replica served in
//! the last hour, without Prometheus or Grafana.
//!
//! - Per model, in 10-second buckets: requests, server errors, prompt/completion/cached tokens,
//!   spend, a time-to-first-token histogram, and the queue depth sampled every second.
//! - Per user and per tenant, in 1-minute buckets: requests, tokens, spend, and (per user) a
//!   TTFT histogram, for the top lists and for each person's view of their own requests.
//!
//! Every finished request adds to the current buckets ([`Telemetry::record`], one short lock,
//! no allocation except the first time a name is seen in a bucket); buckets older than the
//! window are reused in place. Memory is bounded: at most [`MAX_PEOPLE`] distinct users and
//! tenants per minute bucket, the rest counted under [`OTHERS`]. Under `[cluster]` each
//! replica keeps its own windows (the fleet's view is Prometheus's).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// Width of a model bucket.
pub const MODEL_BUCKET_MS: i64 = 10_000;
/// Model buckets kept: one hour.
pub const MODEL_BUCKETS: usize = 360;
/// Width of a user or tenant bucket.
pub const PEOPLE_BUCKET_MS: i64 = 60_000;
/// People buckets kept: one hour.
pub const PEOPLE_BUCKETS: usize = 60;
/// Distinct users (and, separately, tenants) kept per minute bucket; more are summed under
/// [`OTHERS`].
pub const MAX_PEOPLE: usize = 2_000;
/// The name the overflow is counted under.
pub const OTHERS: &str = "(others)";

/// Upper bounds (ms) of the TTFT histogram's buckets; one more bucket holds the rest.
const TTFT_BOUNDS_MS: [u32; 22] = [
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500,
    10_000, 15_000, 30_000, 60_000,
];

/// A TTFT histogram with fixed bounds: adding and merging are cheap, and quantiles are
/// interpolated inside the bucket (as Prometheus's `histogram_quantile` does).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct TtftHist([u32; TTFT_BOUNDS_MS.len() + 1]);

impl TtftHist {
    pub fn observe(&mut self, ms: u64) {
        let i = TTFT_BOUNDS_MS.partition_point(|&b| u64::from(b) < ms);
        self.0[i] = self.0[i].saturating_add(1);
    }

    pub fn merge(&mut self, o: &TtftHist) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a = a.saturating_add(b);
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile in ms; `None` without observations. Values past the last bound read as
    /// that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * n as f64;
        let mut seen = 0u64;
        for (i, &c) in self.0.iter().enumerate() {
            let c = u64::from(c);
            if c > 0 && (seen + c) as f64 >= rank {
                let lo = if i == 0 {
                    0.0
                } else {
                    f64::from(TTFT_BOUNDS_MS[i - 1])
                };
                let Some(&hi) = TTFT_BOUNDS_MS.get(i) else {
                    return Some(lo);
                };
                let within = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lo + (f64::from(hi) - lo) * within);
            }
            seen += c;
        }
        Some(f64::from(TTFT_BOUNDS_MS[TTFT_BOUNDS_MS.len() - 1]))
    }
}

/// One model's numbers in one bucket.
#[derive(Clone, Default, Debug)]
struct ModelSlot {
    requests: u64,
    errors: u64,
    prompt: u64,
    completion: u64,
    cached: u64,
    cost: u64,
    ttft: TtftHist,
    queue_sum: u64,
    queue_max: u64,
    queue_samples: u32,
}

impl ModelSlot {
    fn merge(&mut self, o: &ModelSlot) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.prompt += o.prompt;
        self.completion += o.completion;
        self.cached += o.cached;
        self.cost += o.cost;
        self.ttft.merge(&o.ttft);
        self.queue_sum += o.queue_sum;
        self.queue_max = self.queue_max.max(o.queue_max);
        self.queue_samples += o.queue_samples;
    }
}

/// One user's or tenant's numbers in one minute.
#[derive(Clone, Default, Debug)]
struct PersonSlot {
    requests: u64,
    prompt: u64,
    completion: u64,
    cost: u64,
    ttft: TtftHist,
}

impl PersonSlot {
    fn add(&mut self, e: &Finished<'_>) {
        self.requests += 1;
        self.prompt += e.prompt_tokens;
        self.completion += e.completion_tokens;
        self.cost += e.cost_micros;
        if let Some(t) = e.ttft_ms {
            self.ttft.observe(t);
        }
    }

    fn merge(&mut self, o: &PersonSlot) {
        self.requests += o.requests;
        self.prompt += o.prompt;
        self.completion += o.completion;
        self.cost += o.cost;
        self.ttft.merge(&o.ttft);
    }
}

#[derive(Default)]
struct People {
    users: HashMap<String, PersonSlot>,
    tenants: HashMap<String, PersonSlot>,
}

/// A ring of `n` buckets of `width` ms, each tagged with the bucket number it holds, so a
/// stale slot is recognised and reset when its turn comes again.
struct Ring<T> {
    width: i64,
    slots: Vec<(i64, T)>,
}

impl<T: Default> Ring<T> {
    fn new(width: i64, n: usize) -> Ring<T> {
        Ring {
            width,
            slots: (0..n).map(|_| (i64::MIN, T::default())).collect(),
        }
    }

    fn index(&self, bucket: i64) -> usize {
        bucket.rem_euclid(self.slots.len() as i64) as usize
    }

    /// The bucket holding `now_ms`, emptied first when it held an older one.
    fn current(&mut self, now_ms: i64, reset: impl FnOnce(&mut T)) -> &mut T {
        let b = now_ms.div_euclid(self.width);
        let i = self.index(b);
        let slot = &mut self.slots[i];
        if slot.0 != b {
            slot.0 = b;
            reset(&mut slot.1);
        }
        &mut slot.1
    }

    /// The bucket numbered `b`, if the ring still holds it.
    fn get(&self, b: i64) -> Option<&T> {
        let slot = &self.slots[self.index(b)];
        (slot.0 == b).then_some(&slot.1)
    }
}

struct Windows {
    models: Ring<HashMap<String, ModelSlot>>,
    people: Ring<People>,
}

/// What one finished request contributes (from its ledger row).
#[derive(Clone, Copy, Debug)]
pub struct Finished<'a> {
    pub now_ms: i64,
    /// The model's metric label (a configured model, or `unknown`).
    pub model: &'a str,
    pub tenant: &'a str,
    pub user: Option<&'a str>,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
    pub ttft_ms: Option<u64>,
}

/// The rolling windows; see the module documentation.
pub struct Telemetry {
    inner: Mutex<Windows>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            inner: Mutex::new(Windows {
                models: Ring::new(MODEL_BUCKET_MS, MODEL_BUCKETS),
                people: Ring::new(PEOPLE_BUCKET_MS, PEOPLE_BUCKETS),
            }),
        }
    }
}

/// Adds `e` to `map[name]`, or to [`OTHERS`] once the map is full.
fn person<'m>(map: &'m mut HashMap<String, PersonSlot>, name: &str) -> &'m mut PersonSlot {
    let name = if map.contains_key(name) || map.len() < MAX_PEOPLE {
        name
    } else {
        OTHERS
    };
    if !map.contains_key(name) {
        map.insert(name.to_owned(), PersonSlot::default());
    }
    map.get_mut(name).expect("inserted above")
}

/// A point of a model's series: one step of the window.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ModelPoint {
    /// Start of the step, Unix ms.
    pub t: i64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub tokens_in_per_s: f64,
    pub tokens_out_per_s: f64,
    /// Mean of the once-a-second samples of the fair queue's depth; `None` when none was taken.
    pub queue_depth: Option<f64>,
    pub queue_max: u64,
    /// Prompt tokens served from the backends' prefix cache, of all prompt tokens.
    pub cache_hit_rate: Option<f64>,
}

/// One model over the window.
#[derive(Serialize, Debug, Clone)]
pub struct ModelSeries {
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micros: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub cache_hit_rate: Option<f64>,
    pub points: Vec<ModelPoint>,
}

/// A user or tenant in a top list.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Top {
    pub name: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

/// A point of one person's own series (one minute).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PersonPoint {
    pub t: i64,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
}

/// Everything the operator's telemetry page shows.
#[derive(Serialize, Debug, Clone)]
pub struct Overview {
    /// Window start and end, Unix ms (end is the end of the current bucket).
    pub since: i64,
    pub until: i64,
    pub step_ms: i64,
    pub models: Vec<ModelSeries>,
    pub top_users_by_tokens: Vec<Top>,
    pub top_users_by_spend: Vec<Top>,
    pub top_tenants_by_tokens: Vec<Top>,
    pub top_tenants_by_spend: Vec<Top>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Telemetry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // The windows are only counters: a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one finished request.
    pub fn record(&self, e: &Finished<'_>) {
        let mut w = self.lock();
        if !e.model.is_empty() {
            let models = w.models.current(e.now_ms, HashMap::clear);
            let slot = match models.get_mut(e.model) {
                Some(s) => s,
                None => models.entry(e.model.to_owned()).or_default(),
            };
            slot.requests += 1;
            if e.status >= 500 {
                slot.errors += 1;
            }
            slot.prompt += e.prompt_tokens;
            slot.completion += e.completion_tokens;
            slot.cached += e.cached_tokens;
            slot.cost += e.cost_micros;
            if let Some(t) = e.ttft_ms {
                slot.ttft.observe(t);
            }
        }
        let people = w.people.current(e.now_ms, |p| {
            p.users.clear();
            p.tenants.clear();
        });
        if let Some(u) = e.user {
            person(&mut people.users, u).add(e);
        }
        if !e.tenant.is_empty() {
            person(&mut people.tenants, e.tenant).add(e);
        }
    }

    /// Adds one sample of a model's queue depth (taken once a second).
    pub fn sample_queue(&self, now_ms: i64, model: &str, queued: u64) {
        let mut w = self.lock();
        let models = w.models.current(now_ms, HashMap::clear);
        let slot = match models.get_mut(model) {
            Some(s) => s,
            None => models.entry(model.to_owned()).or_default(),
        };
        slot.queue_sum += queued;
        slot.queue_max = slot.queue_max.max(queued);
        slot.queue_samples += 1;
    }

    /// The last `span_ms` (at most an hour) up to `now_ms`, in steps of `step_ms` (a multiple
    /// of the 10-second bucket), with the `top` first users and tenants. `models` lists models
    /// to show even without traffic.
    pub fn overview(
        &self,
        now_ms: i64,
        span_ms: i64,
        step_ms: i64,
        top: usize,
        models: &[&str],
    ) -> Overview {
        let width = MODEL_BUCKET_MS;
        let span = span_ms.clamp(width, width * MODEL_BUCKETS as i64);
        let per_step = (step_ms / width).max(1);
        let step = per_step * width;
        let last = now_ms.div_euclid(width);
        // Whole steps ending with the current bucket.
        let steps = (span / step).max(1);
        let first = last - steps * per_step + 1;
        let w = self.lock();
        let mut names: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
        for b in first..=last {
            if let Some(map) = w.models.get(b) {
                for k in map.keys() {
                    if !names.contains(k) {
                        names.push(k.clone());
                    }
                }
            }
        }
        names.sort();
        let series = names
            .into_iter()
            .map(|name| {
                let mut total = ModelSlot::default();
                let points = (0..steps)
                    .map(|s| {
                        let from = first + s * per_step;
                        let mut acc = ModelSlot::default();
                        for b in from..from + per_step {
                            if let Some(slot) = w.models.get(b).and_then(|m| m.get(&name)) {
                                acc.merge(slot);
                            }
                        }
                        total.merge(&acc);
                        let secs = step as f64 / 1000.0;
                        ModelPoint {
                            t: from * width,
                            requests_per_s: acc.requests as f64 / secs,
                            errors_per_s: acc.errors as f64 / secs,
                            ttft_p50_ms: acc.ttft.quantile(0.5),
                            ttft_p95_ms: acc.ttft.quantile(0.95),
                            tokens_in_per_s: acc.prompt as f64 / secs,
                            tokens_out_per_s: acc.completion as f64 / secs,
                            queue_depth: (acc.queue_samples > 0)
                                .then(|| acc.queue_sum as f64 / f64::from(acc.queue_samples)),
                            queue_max: acc.queue_max,
                            cache_hit_rate: ratio(acc.cached, acc.prompt),
                        }
                    })
                    .collect();
                ModelSeries {
                    model: name,
                    requests: total.requests,
                    errors: total.errors,
                    tokens_in: total.prompt,
                    tokens_out: total.completion,
                    cost_micros: total.cost,
                    ttft_p50_ms: total.ttft.quantile(0.5),
                    ttft_p95_ms: total.ttft.quantile(0.95),
                    cache_hit_rate: ratio(total.cached, total.prompt),
                    points,
                }
            })
            .collect();
        // People: every minute bucket that overlaps the window.
        let plast = now_ms.div_euclid(PEOPLE_BUCKET_MS);
        let pfirst = (first * width).div_euclid(PEOPLE_BUCKET_MS);
        let mut users: HashMap<&str, PersonSlot> = HashMap::new();
        let mut tenants: HashMap<&str, PersonSlot> = HashMap::new();
        for b in pfirst..=plast {
            if let Some(p) = w.people.get(b) {
                for (k, v) in &p.users {
                    users.entry(k.as_str()).or_default().merge(v);
                }
                for (k, v) in &p.tenants {
                    tenants.entry(k.as_str()).or_default().merge(v);
                }
            }
        }
        let tops = |m: &HashMap<&str, PersonSlot>, by_spend: bool| -> Vec<Top> {
            let mut v: Vec<Top> = m
                .iter()
                .map(|(k, s)| Top {
                    name: (*k).to_owned(),
                    requests: s.requests,
                    tokens: s.prompt + s.completion,
                    cost_micros: s.cost,
                })
                .filter(|t| !by_spend || t.cost_micros > 0)
                .collect();
            v.sort_by(|a, b| {
                let (x, y) = if by_spend {
                    (a.cost_micros, b.cost_micros)
                } else {
                    (a.tokens, b.tokens)
                };
                y.cmp(&x).then_with(|| a.name.cmp(&b.name))
            });
            v.truncate(top);
            v
        };
        Overview {
            since: first * width,
            until: (last + 1) * width,
            step_ms: step,
            models: series,
            top_users_by_tokens: tops(&users, false),
            top_users_by_spend: tops(&users, true),
            top_tenants_by_tokens: tops(&tenants, false),
            top_tenants_by_spend: tops(&tenants, true),
        }
    }

    /// One user's minutes over the last hour up to `now_ms`, oldest first.
    pub fn person(&self, now_ms: i64, user: &str) -> Vec<PersonPoint> {
        let last = now_ms.div_euclid(PEOPLE_BUCKET_MS);
        let w = self.lock();
        (last - PEOPLE_BUCKETS as i64 + 1..=last)
            .map(|b| {
                let s = w
                    .people
                    .get(b)
                    .and_then(|p| p.users.get(user))
                    .cloned()
                    .unwrap_or_default();
                PersonPoint {
                    t: b * PEOPLE_BUCKET_MS,
                    requests: s.requests,
                    tokens_in: s.prompt,
                    tokens_out: s.completion,
                    ttft_p50_ms: s.ttft.quantile(0.5),
                    ttft_p95_ms: s.ttft.quantile(0.95),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(now_ms: i64, model: &str, user: &str, ttft: u64, status: u16) -> Finished<'static> {
        Finished {
            now_ms,
            model: Box::leak(model.to_owned().into_boxed_str()),
            tenant: "t1",
            user: Some(Box::leak(user.to_owned().into_boxed_str())),
            status,
            prompt_tokens: 100,
            completion_tokens: 10,
            cached_tokens: 40,
            cost_micros: 7,
            ttft_ms: Some(ttft),
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut h = TtftHist::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..100 {
            h.observe(40); // (30, 50]
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((30.0..=50.0).contains(&p50), "{p50}");
        h.observe(1_000_000);
        assert_eq!(h.quantile(1.0), Some(60_000.0));
        let mut g = TtftHist::default();
        g.merge(&h);
        assert_eq!(g.count(), 101);
    }

    #[test]
    fn a_model_series_adds_up_per_step() {
        let t = Telemetry::default();
        let now = 1_000_000_000_000i64;
        for i in 0..30 {
            t.record(&req(now - 1000 * i, "m", "a@x", 100, 200));
        }
        t.record(&req(now, "m", "b@x", 2000, 502));
        t.sample_queue(now, "m", 4);
        t.sample_queue(now, "m", 2);
        let o = t.overview(now, 3_600_000, 60_000, 10, &["m", "idle"]);
        assert_eq!(o.models.len(), 2);
        let idle = &o.models[0];
        assert_eq!(idle.model, "idle");
        assert_eq!(idle.requests, 0);
        assert_eq!(idle.points.len(), 60);
        let m = &o.models[1];
        assert_eq!(m.requests, 31);
        assert_eq!(m.errors, 1);
        assert_eq!(m.tokens_in, 3100);
        assert_eq!(m.cache_hit_rate, Some(0.4));
        let per_step: f64 = m.points.iter().map(|p| p.requests_per_s * 60.0).sum();
        assert!((per_step - 31.0).abs() < 1e-9, "{per_step}");
        let last = m.points.last().unwrap();
        assert_eq!(last.queue_depth, Some(3.0));
        assert_eq!(last.queue_max, 4);
        assert!(o.until > now && o.since <= now - 3_600_000 + 60_000);
        assert_eq!(o.top_users_by_tokens[0].name, "a@x");
        assert_eq!(o.top_users_by_tokens[0].tokens, 30 * 110);
        assert_eq!(o.top_tenants_by_spend[0].cost_micros, 31 * 7);
    }

    #[test]
    fn old_buckets_fall_out_of_the_window() {
        let t = Telemetry::default();
        let now = 1_000_000_000_000i64;
        t.record(&req(now - 2 * 3_600_000, "m", "a@x", 100, 200));
        t.record(&req(now, "m", "a@x", 100, 200));
        let o = t.overview(now, 3_600_000, 10_000, 10, &[]);
        assert_eq!(o.models[0].requests, 1);
        assert_eq!(o.top_users_by_tokens[0].requests, 1);
        // The same slot is reused for the later bucket, not added to.
        let p = t.person(now, "a@x");
        assert_eq!(p.iter().map(|x| x.requests).sum::<u64>(), 1);
    }

    #[test]
    fn a_person_sees_their_own_minutes() {
        let t = Telemetry::default();
        let now = 1_000_000_000_000i64;
        t.record(&req(now - 120_000, "m", "a@x", 80, 200));
        t.record(&req(now, "m", "a@x", 300, 200));
        t.record(&req(now, "m", "b@x", 5, 200));
        let p = t.person(now, "a@x");
        assert_eq!(p.len(), PEOPLE_BUCKETS);
        assert_eq!(p.iter().map(|x| x.requests).sum::<u64>(), 2);
        let last = p.last().unwrap();
        assert_eq!(last.tokens_out, 10);
        assert!(last.ttft_p50_ms.unwrap() > 200.0);
        assert!(p[p.len() - 3].ttft_p50_ms.unwrap() < 100.0);
        assert!(t.person(now, "nobody").iter().all(|x| x.requests == 0));
    }

    #[test]
    fn distinct_people_are_bounded() {
        let t = Telemetry::default();
        let now = 1_000_000_000_000i64;
        for i in 0..MAX_PEOPLE + 50 {
            t.record(&req(now, "m", &format!("u{i}"), 10, 200));
        }
        let o = t.overview(now, 60_000, 60_000, MAX_PEOPLE + 10, &[]);
        assert_eq!(o.top_users_by_tokens.len(), MAX_PEOPLE + 1);
        let others = o
            .top_users_by_tokens
            .iter()
            .find(|u| u.name == OTHERS)
            .unwrap();
        assert_eq!(others.requests, 50);
    }
}
