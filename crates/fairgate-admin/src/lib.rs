//! The admin API under `/admin/v1`: tenants, groups, keys and their policies, usage and ledger
//! rows, live scheduler and budget state, Slurm jobs and their SU report, and config reload,
//! as JSON.
//!
//! Every route requires `Authorization: Bearer <admin token>` (compared in constant time); with
//! no token configured the whole API answers 401, so a forgotten token never means an open
//! API. Handlers are thin: validation here, persistence in the store, and after every change
//! the in-memory key directory is rebuilt so the change applies to the next request.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use fairgate_admission::budget::{next_period_start, period_start, BudgetScope, Spend};
use fairgate_admission::fair::Mode;
use fairgate_types::{
    now_millis, Budget, Group, KeyId, KeyPolicy, KeyRecord, Tenant, TenantPolicy, UnixMillis,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use fairgate_control::validate::valid_name;
use fairgate_control::{groups, keys, tenants, users};
use fairgate_gateway::error::ApiError;
use fairgate_gateway::state::AppState;

pub mod backends;
mod slurm;

/// The admin API's routes with their state, to be nested under `/admin/v1`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/tenants/{name}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route("/keys", get(list_keys).post(create_key))
        .route(
            "/keys/{id}",
            get(get_key).patch(update_key).delete(revoke_key),
        )
        .route("/tenants/{name}/budgets", get(tenant_budgets))
        .route("/groups", get(list_groups))
        .route(
            "/groups/{name}",
            get(get_group).put(put_group).delete(delete_group),
        )
        .route("/keys/{id}/rotate", post(rotate_key))
        .route("/usage", get(usage))
        .route("/requests", get(requests))
        .route("/scheduler", get(scheduler))
        .route("/cluster", get(cluster))
        .route("/reload", post(reload_config))
        .route("/users", get(list_users).post(create_user))
        .route("/audit", get(list_audit))
        .route("/users/{id}", axum::routing::patch(update_user))
        .route("/backends", get(backends::list_all))
        .route(
            "/models/{model}/backends",
            get(backends::list).post(backends::add),
        )
        .route("/models/{model}/backends/drain", post(backends::drain))
        .route("/models/{model}/backends/resume", post(backends::resume))
        .route("/models/{model}/backends/remove", post(backends::remove))
        .route("/slurm/su", get(slurm::su_report))
        .route("/slurm/jobs", get(slurm::jobs))
        .route("/slurm", get(slurm::status))
        .fallback(|req: Request| async move {
            ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        // Inside the token check: only an admin's body is read, and never past the limit.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            fairgate_gateway::limits::admin_body,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .layer(middleware::map_response(
            fairgate_gateway::error::rejections_as_openai,
        ))
        .with_state(state)
}

async fn require_admin(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = st.config.admin_token.as_deref() else {
        return ApiError::AdminUnauthorized(
            "disabled: no admin token is configured (set FAIRGATE_ADMIN_TOKEN)",
        )
        .into_response();
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        return ApiError::AdminUnauthorized("missing or wrong admin token").into_response();
    }
    next.run(req).await
}

/// Parses a JSON body with an OpenAI-shaped 400 that names the field on failure.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::AdminBadRequest(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::AdminBadRequest(format!("field `{path}`: {inner}"))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    policy: Option<TenantPolicy>,
}

fn one() -> u32 {
    1
}

async fn create_tenant(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewTenant = parse(&body)?;
    let tenant = tenants::create_tenant(
        &st,
        ADMIN_ACTOR,
        tenants::NewTenant {
            name: req.name,
            weight: req.weight,
            group: req.group,
            policy: req.policy.unwrap_or_default(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(tenant)).into_response())
}

#[derive(Serialize)]
struct List<T> {
    data: Vec<T>,
}

async fn list_tenants(State(st): State<Arc<AppState>>) -> Result<Json<List<Tenant>>, ApiError> {
    Ok(Json(List {
        data: st.store.list_tenants().await?,
    }))
}

async fn get_tenant(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    st.store
        .get_tenant(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::AdminNotFound(format!("tenant `{name}`")))
}

/// PATCH body: absent fields stay; `"group": null` clears the group; `policy` replaces the
/// whole policy and `"policy": null` resets it to the default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default, with = "double_option")]
    group: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    policy: Option<Option<TenantPolicy>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

async fn update_tenant(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Tenant>, ApiError> {
    let patch: TenantPatch = parse(&body)?;
    let change = tenants::TenantChange {
        weight: patch.weight,
        group: patch.group,
        policy: patch.policy.map(Option::unwrap_or_default),
    };
    Ok(Json(
        tenants::update_tenant(&st, ADMIN_ACTOR, &name, change).await?,
    ))
}

async fn delete_tenant(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    tenants::delete_tenant(&st, ADMIN_ACTOR, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyReq {
    tenant: String,
    name: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    /// Unix milliseconds.
    #[serde(default)]
    expires_at: Option<UnixMillis>,
    #[serde(default)]
    policy: Option<KeyPolicy>,
}

/// A key as the admin API shows it; `key` only in the one response that mints a secret.
#[derive(Serialize)]
struct KeyView {
    id: KeyId,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    tenant: String,
    user: Option<String>,
    name: String,
    models: Option<Vec<String>>,
    expires_at: Option<UnixMillis>,
    enabled: bool,
    created_at: UnixMillis,
    revoked_at: Option<UnixMillis>,
    policy: KeyPolicy,
}

impl KeyView {
    fn of(k: KeyRecord, secret: Option<String>) -> KeyView {
        KeyView {
            id: k.id,
            key: secret,
            tenant: k.tenant,
            user: k.user,
            name: k.name,
            models: k.models,
            expires_at: k.expires_at,
            enabled: k.enabled,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            policy: k.policy,
        }
    }
}

async fn create_key(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewKeyReq = parse(&body)?;
    let (rec, minted) = keys::create_key(
        &st,
        ADMIN_ACTOR,
        keys::NewKey {
            tenant: req.tenant,
            name: req.name,
            user: req.user,
            models: req.models,
            expires_at: req.expires_at,
            policy: req.policy.unwrap_or_default(),
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyView::of(rec, Some(minted.expose().to_owned()))),
    )
        .into_response())
}

#[derive(Deserialize)]
struct TenantFilter {
    tenant: Option<String>,
}

async fn list_keys(
    State(st): State<Arc<AppState>>,
    Query(q): Query<TenantFilter>,
) -> Result<Json<List<KeyView>>, ApiError> {
    let keys = st.store.list_keys(q.tenant.as_deref()).await?;
    Ok(Json(List {
        data: keys.into_iter().map(|k| KeyView::of(k, None)).collect(),
    }))
}

async fn get_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::of(keys::load_key(&st, &id).await?, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, with = "double_option")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, with = "double_option")]
    expires_at: Option<Option<UnixMillis>>,
    /// Replaces the whole policy; `null` resets it to the default.
    #[serde(default, with = "double_option")]
    policy: Option<Option<KeyPolicy>>,
}

async fn update_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<KeyView>, ApiError> {
    let patch: KeyPatch = parse(&body)?;
    let change = keys::KeyChange {
        name: patch.name,
        enabled: patch.enabled,
        models: patch.models,
        expires_at: patch.expires_at,
        policy: patch.policy.map(Option::unwrap_or_default),
    };
    let k = keys::update_key(&st, ADMIN_ACTOR, &id, change).await?;
    Ok(Json(KeyView::of(k, None)))
}

async fn revoke_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let k = keys::revoke_key(&st, ADMIN_ACTOR, &id).await?;
    Ok(Json(KeyView::of(k, None)))
}

async fn rotate_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let (k, minted) = keys::rotate_key(&st, ADMIN_ACTOR, &id).await?;
    Ok(Json(KeyView::of(k, Some(minted.expose().to_owned()))))
}

#[derive(Deserialize)]
struct UsageQuery {
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Accepts unix milliseconds or an RFC 3339 timestamp.
fn parse_time(field: &str, s: &str) -> Result<UnixMillis, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::AdminBadRequest(format!(
                "`{field}` must be unix milliseconds or an RFC 3339 time like 2026-01-31T00:00:00Z, got `{s}`"
            ))
        })
}

pub(crate) async fn flush_ledger(st: &AppState) -> Result<(), ApiError> {
    // Finished requests enqueue their rows before their responses complete, so a flush
    // issued now is ordered after them (unless the queue was full; see `Tracker::record`).
    st.ledger
        .flush()
        .await
        .map_err(|e| ApiError::Internal(format!("ledger flush failed: {e}")))
}

async fn usage(
    State(st): State<Arc<AppState>>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<List<fairgate_types::UsageRow>>, ApiError> {
    let since = q
        .since
        .as_deref()
        .map(|s| parse_time("since", s))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|s| parse_time("until", s))
        .transpose()?;
    flush_ledger(&st).await?;
    Ok(Json(List {
        data: st.store.usage(q.tenant.as_deref(), since, until).await?,
    }))
}

#[derive(Deserialize)]
struct RequestsQuery {
    tenant: Option<String>,
    limit: Option<u32>,
}

async fn requests(
    State(st): State<Arc<AppState>>,
    Query(q): Query<RequestsQuery>,
) -> Result<Json<List<fairgate_types::LedgerRow>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    flush_ledger(&st).await?;
    Ok(Json(List {
        data: st.store.requests(q.tenant.as_deref(), limit).await?,
    }))
}

async fn list_groups(State(st): State<Arc<AppState>>) -> Result<Json<List<Group>>, ApiError> {
    Ok(Json(List {
        data: st.store.list_groups().await?,
    }))
}

async fn get_group(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    st.store
        .get_group(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::AdminNotFound(format!("group `{name}`")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    weight: u32,
}

/// Creates the group or sets its weight. Tenants name groups freely; a group without a row
/// weighs 1.
async fn put_group(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Group>, ApiError> {
    valid_name("group", &name)?;
    let req: GroupBody = parse(&body)?;
    Ok(Json(
        groups::set_group(&st, ADMIN_ACTOR, &name, req.weight).await?,
    ))
}

async fn delete_group(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    groups::delete_group(&st, ADMIN_ACTOR, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SchedulerQuery {
    model: Option<String>,
}

#[derive(Serialize)]
struct SchedulerView {
    models: Vec<PoolView>,
}

#[derive(Serialize)]
struct PoolView {
    model: String,
    mode: &'static str,
    max_in_flight: usize,
    max_tokens_in_flight: Option<u64>,
    in_flight: usize,
    tokens_in_flight: u64,
    queued: usize,
    /// Slots kept for tenants below their fair share now.
    headroom: usize,
    tenants: Vec<SchedTenantView>,
    /// With `[cluster]`: every live replica's part of this model (its lease, what it has in
    /// flight and queued, per tenant), as published once a heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<Vec<fairgate_gateway::fleet::ReplicaState>>,
}

#[derive(Serialize)]
struct SchedTenantView {
    tenant: String,
    group: Option<String>,
    weight: u64,
    group_weight: u64,
    /// Virtual counter, in weighted cost units.
    counter: f64,
    queued: usize,
    in_flight: usize,
    /// Raw cost served since the gateway started.
    service_total: u64,
    service_last_minute: u64,
    share_last_minute: f64,
}

fn pool_view(pool: &fairgate_gateway::upstream::ModelPool) -> PoolView {
    let s = pool.fair.state();
    let mut tenants: Vec<SchedTenantView> = s
        .tenants
        .into_iter()
        .map(|t| SchedTenantView {
            tenant: t.view.name.to_string(),
            group: t.view.group.as_deref().map(str::to_owned),
            weight: t.view.weight,
            group_weight: t.view.group_weight,
            counter: t.view.counter,
            queued: t.view.queued,
            in_flight: t.view.in_flight,
            service_total: t.view.service,
            service_last_minute: t.service_last_minute,
            share_last_minute: t.share_last_minute,
        })
        .collect();
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    PoolView {
        model: pool.name.clone(),
        mode: match s.mode {
            Mode::Fair => "fair",
            Mode::Fifo => "fifo",
        },
        max_in_flight: s.max_in_flight,
        max_tokens_in_flight: s.max_tokens_in_flight,
        in_flight: s.in_flight,
        tokens_in_flight: s.tokens_in_flight,
        queued: s.queued,
        headroom: s.headroom,
        tenants,
        fleet: None,
    }
}

/// Live fair-share state of every model pool (or of `?model=`).
async fn scheduler(
    State(st): State<Arc<AppState>>,
    Query(q): Query<SchedulerQuery>,
) -> Result<Json<SchedulerView>, ApiError> {
    let pools: Vec<&Arc<fairgate_gateway::upstream::ModelPool>> = match q.model {
        Some(m) => vec![st
            .upstreams
            .get(&m)
            .ok_or_else(|| ApiError::AdminNotFound(format!("model `{m}`")))?],
        None => st.upstreams.pools.iter().collect(),
    };
    let mut models = Vec::with_capacity(pools.len());
    for pool in pools {
        let mut view = pool_view(pool);
        if let Some(c) = &st.cluster {
            view.fleet = fairgate_gateway::fleet::fleet_state(&pool.name, c)
                .await
                .ok();
        }
        models.push(view);
    }
    Ok(Json(SchedulerView { models }))
}

/// `GET /admin/v1/cluster`: this replica and the live members it sees.
#[derive(Serialize)]
struct ClusterView {
    /// `false` without `[cluster]` (one process).
    enabled: bool,
    member: Option<String>,
    redis_up: bool,
    members: Vec<fairgate_cluster::Member>,
}

async fn cluster(State(st): State<Arc<AppState>>) -> Json<ClusterView> {
    Json(match &st.cluster {
        Some(c) => ClusterView {
            enabled: true,
            member: Some(c.member_id().to_owned()),
            redis_up: c.redis_up(),
            members: c.members(),
        },
        None => ClusterView {
            enabled: false,
            member: None,
            redis_up: false,
            members: Vec::new(),
        },
    })
}

/// One budget line: the cap from the live policy, usage from the budget accounts.
#[derive(Serialize)]
struct BudgetLine {
    period: fairgate_types::BudgetPeriod,
    tokens_cap: Option<u64>,
    cost_cap: Option<fairgate_types::Micros>,
    spent_tokens: u64,
    spent_cost: u64,
    reserved_tokens: u64,
    reserved_cost: u64,
    /// Unix ms.
    period_start: i64,
    /// Unix ms.
    resets_at: i64,
}

/// With `[cluster]` the usage is the fleet's, read from Redis (this replica's view while Redis
/// does not answer).
async fn budget_lines(st: &AppState, scope: BudgetScope, budgets: &[Budget]) -> Vec<BudgetLine> {
    let now = now_millis();
    let status = st.admission.budgets.status_at(&scope, now);
    let mut lines = Vec::with_capacity(budgets.len());
    for b in budgets {
        let s = status.iter().find(|s| s.period == b.period);
        let start = s.map_or_else(|| period_start(b.period, now), |s| s.period_start);
        let local = (
            s.map_or(Spend::ZERO, |s| s.spent),
            s.map_or(Spend::ZERO, |s| s.reserved),
        );
        let (spent, reserved) = match &st.admission.fleet {
            Some(q) => q.status(&scope, b.period).await.unwrap_or(local),
            None => local,
        };
        lines.push(BudgetLine {
            period: b.period,
            tokens_cap: b.tokens,
            cost_cap: b.cost,
            spent_tokens: spent.tokens,
            spent_cost: spent.cost.0,
            reserved_tokens: reserved.tokens,
            reserved_cost: reserved.cost.0,
            period_start: start,
            resets_at: s.map_or_else(|| next_period_start(b.period, start), |s| s.resets_at),
        });
    }
    lines
}

#[derive(Serialize)]
struct TenantBudgets {
    tenant: Vec<BudgetLine>,
    keys: BTreeMap<String, Vec<BudgetLine>>,
}

/// Budget status of a tenant and of each of its keys that has budgets of its own.
async fn tenant_budgets(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<TenantBudgets>, ApiError> {
    let t = st
        .store
        .get_tenant(&name)
        .await?
        .ok_or_else(|| ApiError::AdminNotFound(format!("tenant `{name}`")))?;
    let keys = st.store.list_keys(Some(&name)).await?;
    let mut by_key = BTreeMap::new();
    for k in keys.into_iter().filter(|k| !k.policy.budgets.is_empty()) {
        let lines = budget_lines(&st, BudgetScope::Key(k.id.0.clone()), &k.policy.budgets).await;
        by_key.insert(k.id.0, lines);
    }
    Ok(Json(TenantBudgets {
        tenant: budget_lines(&st, BudgetScope::Tenant(t.name.clone()), &t.policy.budgets).await,
        keys: by_key,
    }))
}

/// Re-reads the config file (or, without one, the defaults and `FAIRGATE_*` variables) and
/// applies its live parts, as SIGHUP does. A config that does not load changes nothing.
async fn reload_config(
    State(st): State<Arc<AppState>>,
) -> Result<Json<fairgate_control::reload::ReloadReport>, ApiError> {
    let report = fairgate_control::reload::reload_config(&st, ADMIN_ACTOR).await;
    report
        .map(Json)
        .map_err(|e| match e.downcast::<fairgate_store::StoreError>() {
            Ok(store) => ApiError::from(store),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "config reload refused");
                ApiError::AdminBadRequest(format!("config reload failed: {e:#}"))
            }
        })
}

// ---- portal accounts --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    #[serde(default)]
    name: Option<String>,
    /// Local password; leave out for accounts that only sign in through SSO.
    #[serde(default)]
    password: Option<fairgate_types::Secret>,
    #[serde(default)]
    role: fairgate_types::Role,
    #[serde(default)]
    tenant: Option<String>,
}

async fn create_user(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewUser = parse(&body)?;
    let user = users::create_user(
        &st,
        ADMIN_ACTOR,
        users::NewUser {
            email: req.email,
            name: req.name,
            password: req.password,
            role: req.role,
            tenant: req.tenant,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn list_users(
    State(st): State<Arc<AppState>>,
    Query(f): Query<TenantFilter>,
) -> Result<Json<List<fairgate_types::User>>, ApiError> {
    Ok(Json(List {
        data: st.store.list_users(f.tenant.as_deref()).await?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    role: Option<fairgate_types::Role>,
    #[serde(default, with = "double_option")]
    tenant: Option<Option<String>>,
    #[serde(default)]
    password: Option<fairgate_types::Secret>,
    #[serde(default)]
    disabled: Option<bool>,
}

async fn update_user(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<fairgate_types::User>, ApiError> {
    let patch: UserPatch = parse(&body)?;
    let change = users::UserChange {
        role: patch.role,
        tenant: patch.tenant,
        password: patch.password,
        disabled: patch.disabled,
    };
    Ok(Json(
        users::update_user(&st, ADMIN_ACTOR, &id, change).await?,
    ))
}

/// Who the admin API acts as in the audit log: the bearer token is one shared identity.
pub const ADMIN_ACTOR: &str = "admin-token";

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default = "default_audit_limit")]
    limit: u32,
    /// Only entries older than this (unix ms), for paging.
    before: Option<UnixMillis>,
}

fn default_audit_limit() -> u32 {
    100
}

/// `GET /admin/v1/audit`: administrative changes, newest first.
async fn list_audit(
    State(st): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<List<fairgate_types::AuditEntry>>, ApiError> {
    Ok(Json(List {
        data: st.store.list_audit(q.limit.min(10_000), q.before).await?,
    }))
}
