//! Tenant, key and group CRUD. Admin traffic is low, so clarity wins over batching here.
//!
//! Existence checks are folded into single statements (`ON CONFLICT DO NOTHING`,
//! `INSERT ... SELECT ... WHERE EXISTS`) rather than read-then-write transactions: on SQLite a
//! transaction that reads first and writes later can fail with SQLITE_BUSY without waiting,
//! while one statement simply waits its turn for the write lock.
//!
//! Policies are stored as JSON text, NULL for the default policy (so a database written before
//! policies existed needs no backfill). Stored JSON that does not parse is reported as
//! [`StoreError::Corrupt`] naming the tenant or key: silently falling back to "no limits" would
//! lift a budget without anyone noticing.

use crate::{Store, StoreError};
use fairgate_types::{now_millis, Group, KeyId, KeyPolicy, KeyRecord, Tenant, TenantPolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

const TENANT_COLS: &str = "name, weight, grp, created_at, policy_json";
const KEY_COLS: &str = "id, tenant, user_name, name, models_json, secret_hash, expires_at, \
                        enabled, created_at, revoked_at, policy_json";
const GROUP_COLS: &str = "name, weight";

/// How often an upsert retries when a concurrent create or delete of the same name slips in
/// between its insert and its update. Each retry means someone else's write succeeded, so a
/// handful is plenty; running out is reported rather than looping forever.
const UPSERT_ATTEMPTS: usize = 8;

/// `None` (stored as NULL) for the default policy, else its JSON.
fn policy_json<P: Serialize + Default + PartialEq>(
    policy: &P,
    owner: &str,
) -> Result<Option<String>, StoreError> {
    if *policy == P::default() {
        return Ok(None);
    }
    serde_json::to_string(policy)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("{owner} policy not encodable: {e}")))
}

fn policy_from_row<P: DeserializeOwned + Default>(
    row: &AnyRow,
    owner: &str,
) -> Result<P, StoreError> {
    let json: Option<String> = row.try_get("policy_json")?;
    match json {
        None => Ok(P::default()),
        Some(j) => serde_json::from_str(&j)
            .map_err(|e| StoreError::Corrupt(format!("{owner} has unreadable policy: {e}"))),
    }
}

fn weight_from_row(row: &AnyRow, owner: &str) -> Result<u32, StoreError> {
    let weight: i64 = row.try_get("weight")?;
    u32::try_from(weight).map_err(|_| StoreError::Corrupt(format!("{owner} has weight {weight}")))
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    let name: String = row.try_get("name")?;
    let owner = format!("tenant `{name}`");
    Ok(Tenant {
        weight: weight_from_row(row, &owner)?,
        group: row.try_get("grp")?,
        created_at: row.try_get("created_at")?,
        policy: policy_from_row::<TenantPolicy>(row, &owner)?,
        name,
    })
}

fn group_from_row(row: &AnyRow) -> Result<Group, StoreError> {
    let name: String = row.try_get("name")?;
    Ok(Group {
        weight: weight_from_row(row, &format!("group `{name}`"))?,
        name,
    })
}

fn key_from_row(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let models_json: Option<String> = row.try_get("models_json")?;
    let models = models_json
        .map(|j| serde_json::from_str::<Vec<String>>(&j))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("key `{id}` has unreadable models: {e}")))?;
    let enabled: i64 = row.try_get("enabled")?;
    let policy = policy_from_row::<KeyPolicy>(row, &format!("key `{id}`"))?;
    Ok(KeyRecord {
        tenant: row.try_get("tenant")?,
        user: row.try_get("user_name")?,
        name: row.try_get("name")?,
        models,
        secret_hash: row.try_get("secret_hash")?,
        expires_at: row.try_get("expires_at")?,
        enabled: enabled != 0,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        policy,
        id: KeyId(id),
    })
}

fn key_policy_json(k: &KeyRecord) -> Result<Option<String>, StoreError> {
    policy_json(&k.policy, &format!("key `{}`", k.id))
}

fn models_json(k: &KeyRecord) -> Result<Option<String>, StoreError> {
    k.models
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("key `{}` models not encodable: {e}", k.id)))
}

fn tenant_policy_json(t: &Tenant) -> Result<Option<String>, StoreError> {
    policy_json(&t.policy, &format!("tenant `{}`", t.name))
}

impl Store {
    /// Creates a tenant; `Conflict` if the name is taken.
    pub async fn create_tenant(&self, t: &Tenant) -> Result<(), StoreError> {
        if self.insert_tenant(t).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("tenant `{}`", t.name)))
        }
    }

    /// Inserts the tenant unless the name exists; whether it did.
    async fn insert_tenant(&self, t: &Tenant) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO tenants ({TENANT_COLS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING"
        );
        let inserted = sqlx::query(&sql)
            .bind(&t.name)
            .bind(i64::from(t.weight))
            .bind(&t.group)
            .bind(t.created_at)
            .bind(tenant_policy_json(t)?)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(inserted > 0)
    }

    /// Creates the tenant, or sets weight, group and policy of the existing one (keeping its
    /// `created_at`), as a config-file reload wants. `true` if it was created.
    pub async fn upsert_tenant(&self, t: &Tenant) -> Result<bool, StoreError> {
        // Insert-else-update rather than one `ON CONFLICT DO UPDATE`, because only this way
        // tells created from updated identically on both backends. A concurrent delete between
        // the two makes the update miss, and a concurrent create makes the insert miss; either
        // way the next attempt sees the new state.
        for _ in 0..UPSERT_ATTEMPTS {
            if self.insert_tenant(t).await? {
                return Ok(true);
            }
            if self.update_tenant(t).await? {
                return Ok(false);
            }
        }
        Err(StoreError::Conflict(format!(
            "tenant `{}` (created and deleted concurrently {UPSERT_ATTEMPTS} times)",
            t.name
        )))
    }

    pub async fn get_tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE name = $1");
        sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    /// Every tenant, ordered by name (byte order on both backends).
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let sql = format!(
            "SELECT {TENANT_COLS} FROM tenants ORDER BY name{}",
            self.backend.text_order()
        );
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    /// Sets weight, group and policy of the tenant with `t.name` (`created_at` never changes);
    /// `false` if there is none.
    pub async fn update_tenant(&self, t: &Tenant) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE tenants SET weight = $1, grp = $2, policy_json = $3 WHERE name = $4",
        )
        .bind(i64::from(t.weight))
        .bind(&t.group)
        .bind(tenant_policy_json(t)?)
        .bind(&t.name)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Deletes a tenant and, in the same transaction, disables and revokes its keys, so no key
    /// of a deleted tenant can authenticate even if the tenant name is later reused. A key that
    /// was already revoked keeps its original `revoked_at`. Ledger rows are kept for accounting.
    /// `false` if there is no such tenant (and nothing changes).
    pub async fn delete_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Writing first takes SQLite's write lock up front (see the module docs).
        let n = sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE keys SET enabled = 0, revoked_at = COALESCE(revoked_at, $1) WHERE tenant = $2",
        )
        .bind(now_millis())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a new key; `Conflict` if the id exists, `NotFound` if its tenant does not.
    pub async fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        // The tenant check and the insert are one statement, so they cannot be interleaved
        // with a concurrent delete_tenant. (SQLite needs the WHERE before ON CONFLICT to parse
        // an INSERT ... SELECT with an upsert clause; it is there.)
        let sql = format!(
            "INSERT INTO keys ({KEY_COLS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
             WHERE EXISTS (SELECT 1 FROM tenants WHERE name = $12) \
             ON CONFLICT (id) DO NOTHING"
        );
        let inserted = sqlx::query(&sql)
            .bind(k.id.as_str())
            .bind(&k.tenant)
            .bind(&k.user)
            .bind(&k.name)
            .bind(models_json(k)?)
            .bind(&k.secret_hash)
            .bind(k.expires_at)
            .bind(i64::from(k.enabled))
            .bind(k.created_at)
            .bind(k.revoked_at)
            .bind(key_policy_json(k)?)
            .bind(&k.tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if inserted > 0 {
            return Ok(());
        }
        if self.get_key(&k.id).await?.is_some() {
            Err(StoreError::Conflict(format!("key `{}`", k.id)))
        } else {
            Err(StoreError::NotFound(format!("tenant `{}`", k.tenant)))
        }
    }

    pub async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLS} FROM keys WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    /// Keys of one tenant, or of all tenants, oldest first (ties by id).
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let order = format!("ORDER BY created_at, id{}", self.backend.text_order());
        let rows = match tenant {
            Some(t) => {
                let sql = format!("SELECT {KEY_COLS} FROM keys WHERE tenant = $1 {order}");
                sqlx::query(&sql).bind(t).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("SELECT {KEY_COLS} FROM keys {order}");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    /// Writes every mutable field of the key with `k.id` (user, name, models, secret_hash,
    /// expires_at, enabled, revoked_at, policy); tenant and created_at never change. `false` if
    /// absent.
    pub async fn update_key(&self, k: &KeyRecord) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE keys SET user_name = $1, name = $2, models_json = $3, secret_hash = $4, \
             expires_at = $5, enabled = $6, revoked_at = $7, policy_json = $8 WHERE id = $9",
        )
        .bind(&k.user)
        .bind(&k.name)
        .bind(models_json(k)?)
        .bind(&k.secret_hash)
        .bind(k.expires_at)
        .bind(i64::from(k.enabled))
        .bind(k.revoked_at)
        .bind(key_policy_json(k)?)
        .bind(k.id.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Creates the group or sets its weight; `true` if it was created. (Same insert-else-update
    /// as [`Store::upsert_tenant`], for the same reason.)
    pub async fn upsert_group(&self, g: &Group) -> Result<bool, StoreError> {
        for _ in 0..UPSERT_ATTEMPTS {
            let inserted = sqlx::query(
                "INSERT INTO groups (name, weight, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&g.name)
            .bind(i64::from(g.weight))
            .bind(now_millis())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted > 0 {
                return Ok(true);
            }
            let updated = sqlx::query("UPDATE groups SET weight = $1 WHERE name = $2")
                .bind(i64::from(g.weight))
                .bind(&g.name)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if updated > 0 {
                return Ok(false);
            }
        }
        Err(StoreError::Conflict(format!(
            "group `{}` (created and deleted concurrently {UPSERT_ATTEMPTS} times)",
            g.name
        )))
    }

    pub async fn get_group(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let sql = format!("SELECT {GROUP_COLS} FROM groups WHERE name = $1");
        sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(group_from_row)
            .transpose()
    }

    /// Every group, ordered by name (byte order on both backends).
    pub async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        let sql = format!(
            "SELECT {GROUP_COLS} FROM groups ORDER BY name{}",
            self.backend.text_order()
        );
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(group_from_row)
            .collect()
    }

    /// Deletes a group; `false` if there is none. Tenants that name it keep their `group`: the
    /// store does not tie the two together (no foreign keys, see `0001_init.sql`).
    pub async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }
}
