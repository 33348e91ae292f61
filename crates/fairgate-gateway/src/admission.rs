//! The gateway's admission step: from an authenticated, parsed request to a lease on a
//! backend. Order: budgets, then rate limits, then the fair-share pool (the response cache is
//! checked before all three, in `proxy`). Each step hands back something that must be settled
//! with the real usage; [`Admitted`] carries all of it so the ledger tracker settles it once.
//!
//! Nothing here waits on the database: budgets are seeded from the ledger in the background
//! (at start and whenever the directory reloads), and limits and counters are in memory
//! behind the traits of `fairgate-admission`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairgate_admission::budget::{period_start, BudgetHold, BudgetScope, Budgets, Spend};
use fairgate_admission::limits::{LimitError, LimitGuard, LimitRequest, LimitScope, Limits};
use fairgate_admission::pool::{AdmitError, AdmitRequest};
use fairgate_store::{SpendScope, Store};
use fairgate_types::{
    now_millis, Budget, BudgetPeriod, KeyId, Micros, OnLimit, Price, Priority, Tenant, Unit,
    UnitTokens, Usage,
};
use tokio::time::Instant;

use crate::cache::{CacheSettings, ResponseCache};
use crate::config::Config;
use crate::error::ApiError;
use crate::identity::{Directory, Principal};
use crate::quota::{local_part, FleetHold, FleetQuota, QuotaAsk, QuotaError};
use crate::upstream::{AcquireError, Lease, ModelPool, Route};

/// Shared admission state: limits, budgets and the response cache.
pub struct Admission {
    pub limits: Limits,
    pub budgets: Budgets,
    pub cache: ResponseCache,
    /// With `[cluster]`: limits and budgets held across the fleet in Redis; the local
    /// `limits` and `budgets` then serve only while Redis is down (see [`crate::quota`]).
    pub fleet: Option<Arc<FleetQuota>>,
    /// Budget accounts already seeded from the ledger, by scope, period and period start.
    seeded: Mutex<HashSet<(BudgetScope, BudgetPeriod, i64)>>,
}

/// One request's admission inputs, resolved from the directory and config snapshots.
pub struct Ask<'a> {
    pub principal: &'a Principal,
    pub tenant: &'a Tenant,
    pub group_weight: u32,
    pub price: Price,
    pub priority: Priority,
    /// Prompt estimate + max output tokens.
    pub reservation: u64,
    pub prompt_estimate: u64,
    /// A non-token surface's unit and the amount the request asks for (0 when unknown);
    /// weighed in tokens by `unit_tokens` and priced by `price` on top of the tokens.
    pub unit: Unit,
    pub units: u64,
    pub unit_tokens: UnitTokens,
    pub deadline: Instant,
    pub on_limit: OnLimit,
    pub max_queue: usize,
}

/// Everything an admitted request holds until it ends.
pub struct Admitted {
    pub lease: Lease,
    limit: Option<LimitGuard>,
    budget: Option<BudgetHold>,
    fleet: Option<FleetHold>,
    price: Price,
    unit_tokens: UnitTokens,
    hard_cap: bool,
    prompt_estimate: u64,
}

impl Admission {
    pub fn new(config: &Config) -> Admission {
        Admission {
            limits: Limits::in_process(),
            budgets: Budgets::in_process(),
            cache: ResponseCache::new(CacheSettings {
                ttl: Duration::from_secs(config.cache.ttl_s),
                max_entries: config.cache.max_entries,
                max_bytes: config.cache.max_bytes,
            }),
            fleet: None,
            seeded: Mutex::new(HashSet::new()),
        }
    }

    /// Holds limits and budgets across the fleet through `cluster` (see [`crate::quota`]).
    pub fn with_fleet(mut self, cluster: Option<&Arc<fairgate_cluster::Cluster>>) -> Admission {
        self.fleet = cluster.map(|c| FleetQuota::new(c.clone()));
        self
    }

    /// Loads what the ledger says each budgeted tenant and key spent in the current period,
    /// once per account and period. Runs off the request path (start, directory reloads).
    pub async fn seed_budgets(&self, store: &Store, dir: &Directory) {
        let now = now_millis();
        let mut todo: Vec<(BudgetScope, BudgetPeriod)> = Vec::new();
        for t in dir.tenants() {
            for b in &t.policy.budgets {
                todo.push((BudgetScope::Tenant(t.name.clone()), b.period));
            }
        }
        for k in dir.keys_with_policy() {
            for b in &k.policy.budgets {
                todo.push((BudgetScope::Key(k.id.0.clone()), b.period));
            }
        }
        for (scope, period) in todo {
            let start = period_start(period, now);
            let key = (scope.clone(), period, start);
            if self.seeded_lock().contains(&key) {
                continue;
            }
            let key_id;
            let spend_scope = match &scope {
                BudgetScope::Tenant(t) => SpendScope::Tenant(t),
                BudgetScope::Key(k) => {
                    key_id = KeyId(k.clone());
                    SpendScope::Key(&key_id)
                }
            };
            match store.spend(spend_scope, start).await {
                Ok(s) => {
                    self.budgets
                        .seed(&scope, period, start, Spend::new(s.tokens, s.cost));
                    self.seeded_lock().insert(key);
                }
                Err(e) => {
                    tracing::warn!(%scope, error = %e, "could not load budget spend from the ledger; will retry at the next reload");
                }
            }
        }
    }

    /// Loads every budget account's spend from the ledger again, whatever was seeded before:
    /// with `[cluster]`, once Redis is back after an outage, so the fleet's accounts (which
    /// never drop below what a replica knows) include what was spent while it was down.
    pub async fn reseed_budgets(&self, store: &Store, dir: &Directory) {
        self.seeded_lock().clear();
        self.seed_budgets(store, dir).await;
    }

    fn seeded_lock(&self) -> std::sync::MutexGuard<'_, HashSet<(BudgetScope, BudgetPeriod, i64)>> {
        self.seeded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Budgets, limits, then a fair-share slot. Cancel-safe: a dropped future gives back
    /// whatever it had taken.
    pub async fn admit(
        &self,
        pool: &Arc<ModelPool>,
        ask: Ask<'_>,
        route: &Route<'_>,
    ) -> Result<Admitted, ApiError> {
        let policy = &ask.tenant.policy;
        let key_policy = ask.principal.policy();

        let lines: Vec<(BudgetScope, Budget)> = policy
            .budgets
            .iter()
            .map(|b| (BudgetScope::Tenant(ask.tenant.name.clone()), *b))
            .chain(
                key_policy
                    .budgets
                    .iter()
                    .map(|b| (BudgetScope::Key(ask.principal.key_id().0.clone()), *b)),
            )
            .collect();
        let max_out = ask.reservation.saturating_sub(ask.prompt_estimate);
        // An image, audio or speech request also holds what its units weigh and cost.
        let unit_cost = ask.price.unit_cost(ask.unit, ask.units);
        let reservation = ask
            .reservation
            .saturating_add(ask.unit_tokens.tokens(ask.unit, ask.units));
        let min = Spend::new(
            ask.prompt_estimate.saturating_add(1),
            Micros(
                ask.price
                    .cost(ask.prompt_estimate, 1)
                    .0
                    .saturating_add(unit_cost.0),
            ),
        );
        let est = Spend::new(
            reservation,
            Micros(
                ask.price
                    .cost(ask.prompt_estimate, max_out)
                    .0
                    .saturating_add(unit_cost.0),
            ),
        );
        let mut scopes = Vec::new();
        if !policy.limits.is_empty() {
            scopes.push((LimitScope::Tenant(ask.tenant.name.clone()), policy.limits));
        }
        if !key_policy.limits.is_empty() {
            scopes.push((
                LimitScope::Key(ask.principal.key_id().0.clone()),
                key_policy.limits,
            ));
        }

        // Fleet-wide first: one round trip for budgets and limits together.
        let mut fleet = None;
        if let Some(q) = self.fleet.as_ref() {
            if !lines.is_empty() || !scopes.is_empty() {
                let known = |scope: &BudgetScope, period: BudgetPeriod| {
                    self.budgets
                        .status(scope)
                        .into_iter()
                        .find(|s| s.period == period)
                        .map_or(Spend::ZERO, |s| s.spent)
                };
                let demand = QuotaAsk {
                    budgets: &lines,
                    known: &known,
                    min,
                    est,
                    limits: &scopes,
                    tokens: reservation,
                    deadline: ask.deadline,
                    on_limit: ask.on_limit,
                };
                match q.acquire(demand).await {
                    Ok(hold) => {
                        // The local accounts follow the fleet's, for the admin view and for
                        // checks while Redis is down.
                        let now = now_millis();
                        for (scope, period, spent) in hold.seen() {
                            self.budgets
                                .seed(scope, period, period_start(period, now), spent);
                        }
                        fleet = Some(hold);
                    }
                    Err(QuotaError::Budget(e)) => {
                        return Err(ApiError::BudgetExceeded(e.to_string()))
                    }
                    Err(QuotaError::Limit(e)) => return Err(rate_limited(e)),
                    Err(QuotaError::Unavailable) => {
                        // Budgets are checked locally against the spend last seen; the ledger
                        // brings the outage's usage to the fleet's floors once Redis is back.
                        // Each replica keeps its part of every rate limit until Redis is back.
                        let n = q.members();
                        for (_, l) in scopes.iter_mut() {
                            *l = local_part(*l, n);
                        }
                    }
                }
            }
        }

        let budget = if lines.is_empty() || fleet.is_some() {
            None
        } else {
            Some(
                self.budgets
                    .reserve(&lines, min, est, now_millis())
                    .map_err(|e| ApiError::BudgetExceeded(e.to_string()))?,
            )
        };

        let limit = if scopes.is_empty() || fleet.is_some() {
            None
        } else {
            let req = LimitRequest {
                scopes,
                tokens: reservation,
            };
            Some(
                self.limits
                    .acquire(req, ask.deadline, ask.on_limit)
                    .await
                    .map_err(rate_limited)?,
            )
        };

        let lease = pool
            .acquire(
                AdmitRequest {
                    tenant: &ask.tenant.name,
                    weight: ask.tenant.weight,
                    group: ask.tenant.group.as_deref(),
                    group_weight: ask.group_weight,
                    priority: ask.priority,
                    tokens: reservation,
                    prompt_estimate: ask.prompt_estimate,
                    max_queued: ask.max_queue,
                    deadline: ask.deadline,
                },
                route,
            )
            .await
            .map_err(|e| match e {
                AcquireError::Admit(e) => admit_error(&pool.name, &ask.tenant.name, e),
                AcquireError::NoBackend { retry_after } => no_backend(&pool.name, retry_after),
            })?;
        Ok(Admitted {
            lease,
            limit,
            budget,
            fleet,
            price: ask.price,
            unit_tokens: ask.unit_tokens,
            hard_cap: policy.hard_cap,
            prompt_estimate: ask.prompt_estimate,
        })
    }
}

pub(crate) fn rate_limited(e: LimitError) -> ApiError {
    ApiError::RateLimited {
        message: format!(
            "{e}; {}",
            if e.waited {
                "the request waited for the limit to refill until its wait budget ran out"
            } else {
                "retry after the time in Retry-After"
            }
        ),
        limit: e.limit.as_str(),
        retry_after_s: e.retry_after.as_secs_f64().ceil() as u64,
    }
}

/// 503 for a model none of whose backends can take requests (all ejected or drained).
pub fn no_backend(model: &str, retry_after: Duration) -> ApiError {
    ApiError::NoHealthyBackend {
        model: model.to_owned(),
        detail: "; its backends are failing health checks or drained".to_owned(),
        retry_after_s: retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

fn admit_error(model: &str, tenant: &str, e: AdmitError) -> ApiError {
    let retry_after_s = e.retry_after().as_secs().max(1);
    match e {
        AdmitError::TenantQueueFull { limit, .. } => ApiError::TenantQueueFull {
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            limit,
            retry_after_s,
        },
        AdmitError::PoolFull { queued, .. } => ApiError::PoolFull {
            model: model.to_owned(),
            queued,
            retry_after_s,
        },
        AdmitError::Timeout {
            waited, overloaded, ..
        } => ApiError::QueueTimeout {
            model: model.to_owned(),
            waited_ms: waited.as_millis() as u64,
            overloaded,
            retry_after_s,
        },
    }
}

impl Admitted {
    /// Called as a stream produces tokens: charges fair share for the new completion tokens
    /// and, for a hard-capped budget, checks the answer still fits. `Err` means cut it here.
    pub fn progress(
        &mut self,
        prompt_tokens: Option<u64>,
        completion_so_far: u64,
    ) -> Result<(), String> {
        let charged = self.lease.permit.completion_tokens();
        if completion_so_far > charged {
            self.lease
                .permit
                .add_completion_tokens(completion_so_far - charged);
        }
        if !self.hard_cap || (self.budget.is_none() && self.fleet.is_none()) {
            return Ok(());
        }
        let prompt = prompt_tokens.unwrap_or(self.prompt_estimate);
        let so_far = Spend::new(
            prompt.saturating_add(completion_so_far),
            self.price.cost(prompt, completion_so_far),
        );
        if let Some(hold) = self.budget.as_mut() {
            hold.extend(so_far).map_err(|e| e.to_string())?;
        }
        match self.fleet.as_ref() {
            Some(hold) => hold.extend(so_far).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The request ended with `usage` (and `units` of a non-token surface's `unit`): correct
    /// every charge to it and return its price.
    pub fn settle(mut self, usage: &Usage, unit: Unit, units: u64) -> Micros {
        let cost = Micros(
            self.price
                .cost(usage.prompt_tokens, usage.completion_tokens)
                .0
                .saturating_add(self.price.unit_cost(unit, units).0),
        );
        // Audio is read (input work); images and speech are made (output work).
        let weight = self.unit_tokens.tokens(unit, units);
        let (prompt, completion) = match unit {
            Unit::AudioSeconds => (
                usage.prompt_tokens.saturating_add(weight),
                usage.completion_tokens,
            ),
            _ => (
                usage.prompt_tokens,
                usage.completion_tokens.saturating_add(weight),
            ),
        };
        let tokens = prompt.saturating_add(completion);
        self.lease.permit.settle(prompt, completion);
        if let Some(l) = self.limit.as_mut() {
            l.reconcile(tokens);
        }
        if let Some(b) = self.budget.take() {
            b.settle(Spend::new(tokens, cost));
        }
        if let Some(f) = self.fleet.take() {
            f.settle(Spend::new(tokens, cost));
        }
        cost
    }
}
