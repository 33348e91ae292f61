//! Tenant and key CRUD. Admin traffic is low, so clarity wins over batching here.
//!
//! Existence checks are folded into single statements (`ON CONFLICT DO NOTHING`,
//! `INSERT ... SELECT ... WHERE EXISTS`) rather than read-then-write transactions: on SQLite a
//! transaction that reads first and writes later can fail with SQLITE_BUSY without waiting,
//! while one statement simply waits its turn for the write lock.

use crate::{Store, StoreError};
use fairgate_types::{now_millis, KeyId, KeyRecord, Tenant};
use sqlx::any::AnyRow;
use sqlx::Row;

const TENANT_COLS: &str = "name, weight, grp, created_at";
const KEY_COLS: &str =
    "id, tenant, user_name, name, models_json, secret_hash, expires_at, enabled, created_at, revoked_at";

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    let name: String = row.try_get("name")?;
    let weight: i64 = row.try_get("weight")?;
    let weight = u32::try_from(weight)
        .map_err(|_| StoreError::Corrupt(format!("tenant `{name}` has weight {weight}")))?;
    Ok(Tenant {
        weight,
        group: row.try_get("grp")?,
        created_at: row.try_get("created_at")?,
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
        id: KeyId(id),
    })
}

fn models_json(k: &KeyRecord) -> Result<Option<String>, StoreError> {
    k.models
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("key `{}` models not encodable: {e}", k.id)))
}

impl Store {
    /// Creates a tenant; `Conflict` if the name is taken.
    pub async fn create_tenant(&self, t: &Tenant) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO tenants (name, weight, grp, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&t.name)
        .bind(i64::from(t.weight))
        .bind(&t.group)
        .bind(t.created_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("tenant `{}`", t.name)));
        }
        Ok(())
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

    /// Sets weight and group of the tenant with `t.name`; `false` if there is none.
    pub async fn update_tenant(&self, t: &Tenant) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE tenants SET weight = $1, grp = $2 WHERE name = $3")
            .bind(i64::from(t.weight))
            .bind(&t.group)
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
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
             WHERE EXISTS (SELECT 1 FROM tenants WHERE name = $11) \
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
    /// expires_at, enabled, revoked_at); tenant and created_at never change. `false` if absent.
    pub async fn update_key(&self, k: &KeyRecord) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE keys SET user_name = $1, name = $2, models_json = $3, secret_hash = $4, \
             expires_at = $5, enabled = $6, revoked_at = $7 WHERE id = $8",
        )
        .bind(&k.user)
        .bind(&k.name)
        .bind(models_json(k)?)
        .bind(&k.secret_hash)
        .bind(k.expires_at)
        .bind(i64::from(k.enabled))
        .bind(k.revoked_at)
        .bind(k.id.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }
}
