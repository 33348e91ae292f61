//! The admin API under `/admin/v1`: tenants, keys, usage and ledger rows, as JSON.
//!
//! Every route requires `Authorization: Bearer <admin token>` (compared in constant time); with
//! no token configured the whole API answers 401, so a forgotten token never means an open
//! API. Handlers are thin: validation here, persistence in the store, and after every change
//! the in-memory key directory is rebuilt so the change applies to the next request.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use fairgate_types::{now_millis, KeyId, KeyRecord, Tenant, UnixMillis};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::identity::{mint_key, mint_secret_for};
use crate::server::AppState;

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
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
        .route("/keys/{id}/rotate", post(rotate_key))
        .route("/usage", get(usage))
        .route("/requests", get(requests))
        .fallback(|req: Request| async move {
            ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        .layer(middleware::from_fn_with_state(state, require_admin))
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

/// After every change: the directory, the pools' weights and the budget accounts follow.
async fn reload(st: &AppState) -> Result<(), ApiError> {
    crate::server::refresh_directory(st)
        .await
        .map_err(ApiError::from)
}

fn valid_name(kind: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::AdminBadRequest(format!(
            "{kind} `{name}` is invalid: use 1-64 characters from A-Z a-z 0-9 - _ . @"
        )))
    }
}

const MAX_WEIGHT: u32 = 1_000_000;

fn valid_weight(w: u32) -> Result<u32, ApiError> {
    if (1..=MAX_WEIGHT).contains(&w) {
        Ok(w)
    } else {
        Err(ApiError::AdminBadRequest(format!(
            "weight must be between 1 and {MAX_WEIGHT}, got {w}"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    group: Option<String>,
}

fn one() -> u32 {
    1
}

async fn create_tenant(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewTenant = parse(&body)?;
    valid_name("tenant name", &req.name)?;
    if let Some(g) = &req.group {
        valid_name("group", g)?;
    }
    let tenant = Tenant {
        name: req.name,
        weight: valid_weight(req.weight)?,
        group: req.group,
        created_at: now_millis(),
        policy: Default::default(),
    };
    st.store.create_tenant(&tenant).await?;
    reload(&st).await?;
    tracing::info!(tenant = %tenant.name, weight = tenant.weight, "tenant created");
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

/// PATCH body: absent fields stay; `"group": null` clears the group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default, with = "double_option")]
    group: Option<Option<String>>,
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
    let mut t = st
        .store
        .get_tenant(&name)
        .await?
        .ok_or_else(|| ApiError::AdminNotFound(format!("tenant `{name}`")))?;
    let before = (t.weight, t.group.clone());
    if let Some(w) = patch.weight {
        t.weight = valid_weight(w)?;
    }
    if let Some(g) = patch.group {
        if let Some(g) = &g {
            valid_name("group", g)?;
        }
        t.group = g;
    }
    if !st.store.update_tenant(&t).await? {
        return Err(ApiError::AdminNotFound(format!("tenant `{name}`")));
    }
    reload(&st).await?;
    tracing::info!(tenant = %name, ?before, after = ?(t.weight, &t.group), "tenant updated");
    Ok(Json(t))
}

async fn delete_tenant(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !st.store.delete_tenant(&name).await? {
        return Err(ApiError::AdminNotFound(format!("tenant `{name}`")));
    }
    reload(&st).await?;
    tracing::info!(tenant = %name, "tenant deleted; its keys are revoked");
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
        }
    }
}

fn check_models(st: &AppState, models: &Option<Vec<String>>) -> Result<(), ApiError> {
    if let Some(ms) = models {
        for m in ms {
            if st.upstreams.get(m).is_none() {
                return Err(ApiError::AdminBadRequest(format!(
                    "model `{m}` is not served by this gateway"
                )));
            }
        }
    }
    Ok(())
}

async fn create_key(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewKeyReq = parse(&body)?;
    if req.name.is_empty() || req.name.len() > 128 {
        return Err(ApiError::AdminBadRequest(
            "key name must be 1-128 characters".into(),
        ));
    }
    if let Some(u) = &req.user {
        valid_name("user", u)?;
    }
    check_models(&st, &req.models)?;
    if st.store.get_tenant(&req.tenant).await?.is_none() {
        return Err(ApiError::AdminNotFound(format!("tenant `{}`", req.tenant)));
    }
    let minted = mint_key();
    let rec = KeyRecord {
        id: minted.id.clone(),
        tenant: req.tenant,
        user: req.user,
        name: req.name,
        models: req.models,
        secret_hash: minted.secret_hash.clone(),
        expires_at: req.expires_at,
        enabled: true,
        created_at: now_millis(),
        revoked_at: None,
        policy: Default::default(),
    };
    st.store.insert_key(&rec).await?;
    reload(&st).await?;
    tracing::info!(key_id = %rec.id, tenant = %rec.tenant, "key created");
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

async fn load_key(st: &AppState, id: &str) -> Result<KeyRecord, ApiError> {
    st.store
        .get_key(&KeyId(id.to_owned()))
        .await?
        .ok_or_else(|| ApiError::AdminNotFound(format!("key `{id}`")))
}

async fn get_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::of(load_key(&st, &id).await?, None)))
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
}

async fn update_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<KeyView>, ApiError> {
    let patch: KeyPatch = parse(&body)?;
    let mut k = load_key(&st, &id).await?;
    if let Some(n) = patch.name {
        k.name = n;
    }
    if let Some(e) = patch.enabled {
        if e && k.revoked_at.is_some() {
            return Err(ApiError::AdminBadRequest(
                "a revoked key cannot be enabled again; create a new key".into(),
            ));
        }
        k.enabled = e;
    }
    if let Some(m) = patch.models {
        check_models(&st, &m)?;
        k.models = m;
    }
    if let Some(e) = patch.expires_at {
        k.expires_at = e;
    }
    st.store.update_key(&k).await?;
    reload(&st).await?;
    Ok(Json(KeyView::of(k, None)))
}

async fn revoke_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let mut k = load_key(&st, &id).await?;
    if k.revoked_at.is_none() {
        k.revoked_at = Some(now_millis());
    }
    k.enabled = false;
    st.store.update_key(&k).await?;
    reload(&st).await?;
    tracing::info!(key_id = %k.id, "key revoked");
    Ok(Json(KeyView::of(k, None)))
}

async fn rotate_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let mut k = load_key(&st, &id).await?;
    if k.revoked_at.is_some() {
        return Err(ApiError::AdminConflict(format!(
            "key `{id}` is revoked and cannot be rotated; a revoked key"
        )));
    }
    let minted = mint_secret_for(k.id.clone());
    k.secret_hash = minted.secret_hash.clone();
    st.store.update_key(&k).await?;
    reload(&st).await?;
    tracing::info!(key_id = %k.id, "key rotated");
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

async fn flush_ledger(st: &AppState) -> Result<(), ApiError> {
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
