//! Backends changed at run time, shared by the replicas of a fleet: what was added, drained,
//! resumed or removed through the admin API or the portal of any replica. A single process
//! does not store them (they live until restart there).

use crate::{Store, StoreError};
use fairgate_types::now_millis;
use sqlx::Row;

/// A backend's run-time state as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeBackend {
    pub model: String,
    pub url: String,
    /// The backend's JSON as the admin API takes it; empty for one the config file declares.
    pub config: String,
    /// `active`, `draining` or `removed`.
    pub state: String,
    pub updated_at: i64,
}

impl Store {
    /// Records a backend's run-time state (and its config when it was added at run time),
    /// replacing what was stored for the same model and URL.
    pub async fn put_runtime_backend(
        &self,
        model: &str,
        url: &str,
        config: Option<&str>,
        state: &str,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        match config {
            Some(c) => {
                sqlx::query(
                    "INSERT INTO runtime_backends (model, url, config, state, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model, url) DO UPDATE \
                     SET config = excluded.config, state = excluded.state, \
                     updated_at = excluded.updated_at",
                )
                .bind(model)
                .bind(url)
                .bind(c)
                .bind(state)
                .bind(now)
                .execute(&self.pool)
                .await?;
            }
            // A state change keeps the stored config (a backend added at run time stays
            // re-creatable by replicas that start later).
            None => {
                sqlx::query(
                    "INSERT INTO runtime_backends (model, url, config, state, updated_at) \
                     VALUES ($1, $2, '', $3, $4) ON CONFLICT (model, url) DO UPDATE \
                     SET state = excluded.state, updated_at = excluded.updated_at",
                )
                .bind(model)
                .bind(url)
                .bind(state)
                .bind(now)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Every stored run-time backend state, by model and URL.
    pub async fn list_runtime_backends(&self) -> Result<Vec<RuntimeBackend>, StoreError> {
        let sql = format!(
            "SELECT model, url, config, state, updated_at FROM runtime_backends \
             ORDER BY model{o}, url{o}",
            o = self.backend.text_order()
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(RuntimeBackend {
                    model: r.try_get("model")?,
                    url: r.try_get("url")?,
                    config: r.try_get("config")?,
                    state: r.try_get("state")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }
}
