//! Ledger retention: rows older than the retention period are rolled up into daily aggregates
//! (`ledger_daily`, migration 0005) and deleted, so the database does not grow forever while
//! usage and spend totals stay exact.
//!
//! A rollup batch deletes at most about [`ROLLUP_BATCH`] of the oldest rows past the cut-off
//! with `DELETE ... RETURNING`, sums exactly the rows it deleted per (UTC day, tenant, user,
//! key, model, endpoint, status class) and inserts those sums, all in one transaction: a row is
//! counted in `ledger` or in `ledger_daily`, never both, never neither, even with replicas
//! rolling up at once or a spill replay inserting old rows meanwhile (a replayed row past the
//! cut-off is simply rolled up by the next run). The cut-off is a UTC midnight, so rolled-up
//! data keeps day granularity: a usage query whose bounds fall on UTC midnights (or after the
//! cut-off) is exact; one with a bound inside a rolled-up day counts that whole day or none of
//! it (a day counts when its midnight is inside the range).

use crate::db::Backend;
use crate::{Store, StoreError};
use fairgate_types::{now_millis, UnixMillis};
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinHandle;

pub const DAY_MS: i64 = 86_400_000;
/// Ledger rows per rollup transaction (more only when that many rows share one timestamp).
pub const ROLLUP_BATCH: usize = 5_000;
/// How often the retention task runs, and how soon after start it first does.
pub const ROLLUP_EVERY: Duration = Duration::from_secs(3600);
pub const ROLLUP_FIRST: Duration = Duration::from_secs(60);

/// The UTC midnight at or before `ts`.
pub fn day_of(ts: UnixMillis) -> UnixMillis {
    ts.div_euclid(DAY_MS) * DAY_MS
}

/// Rows with `ts` before this are rolled up: the UTC midnight `days` days before `now`.
/// `None` when `days` is 0 (keep every row).
pub fn retention_cutoff(now: UnixMillis, days: u32) -> Option<UnixMillis> {
    (days > 0).then(|| day_of(now.saturating_sub(i64::from(days).saturating_mul(DAY_MS))))
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    day: i64,
    tenant: Option<String>,
    user: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
    endpoint: String,
    status_class: i64,
}

#[derive(Default)]
struct Sums {
    requests: u64,
    prompt: u64,
    completion: u64,
    cached: u64,
    cost: u64,
}

const DAILY_COLS: &str = "day, tenant, user_name, key_id, model, endpoint, status_class, \
                          requests, prompt_tokens, completion_tokens, cached_tokens, cost";

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Rolls one batch of ledger rows with `ts < cutoff` into `ledger_daily` and deletes them.
    /// Returns how many ledger rows it rolled up (0 when none are left).
    pub async fn roll_up_ledger_batch(
        &self,
        cutoff: UnixMillis,
        max_rows: usize,
    ) -> Result<u64, StoreError> {
        let max_rows = max_rows.max(1);
        // The batch ends before the timestamp of its `max_rows`-th oldest row. Read outside the
        // transaction: on SQLite a read lock upgraded to a write lock fails instead of waiting.
        let nth: Option<i64> =
            sqlx::query_scalar("SELECT ts FROM ledger WHERE ts < $1 ORDER BY ts LIMIT 1 OFFSET $2")
                .bind(cutoff)
                .bind(i64::try_from(max_rows - 1).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await?;
        let upper = match nth {
            None => cutoff,
            Some(t) => {
                let earlier: Option<i64> =
                    sqlx::query_scalar("SELECT ts FROM ledger WHERE ts < $1 LIMIT 1")
                        .bind(t)
                        .fetch_optional(&self.pool)
                        .await?;
                // Every one of the first rows shares `t`: take them all (rare, and bounded by
                // how many requests share one millisecond).
                if earlier.is_some() {
                    t
                } else {
                    t.saturating_add(1).min(cutoff)
                }
            }
        };
        let mut tx = self.pool.begin().await?;
        // Exactly the rows deleted are summed, whatever else happens to the table meanwhile.
        let deleted = sqlx::query(
            "DELETE FROM ledger WHERE ts < $1 RETURNING ts, tenant, user_name, key_id, model, \
             endpoint, status, prompt_tokens, completion_tokens, cached_tokens, cost",
        )
        .bind(upper)
        .fetch_all(&mut *tx)
        .await?;
        if deleted.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut groups: BTreeMap<Group, Sums> = BTreeMap::new();
        for r in &deleted {
            let status: i64 = r.try_get("status")?;
            let g = Group {
                day: day_of(r.try_get("ts")?),
                tenant: r.try_get("tenant")?,
                user: r.try_get("user_name")?,
                key_id: r.try_get("key_id")?,
                model: r.try_get("model")?,
                endpoint: r.try_get("endpoint")?,
                status_class: status / 100,
            };
            let s = groups.entry(g).or_default();
            s.requests += 1;
            s.prompt = s
                .prompt
                .saturating_add(unsigned(r.try_get("prompt_tokens")?));
            s.completion = s
                .completion
                .saturating_add(unsigned(r.try_get("completion_tokens")?));
            s.cached = s
                .cached
                .saturating_add(unsigned(r.try_get("cached_tokens")?));
            s.cost = s.cost.saturating_add(unsigned(r.try_get("cost")?));
        }
        let per = match self.backend {
            // Small statements: SQLite's parameter lookup grows with the square of their count.
            Backend::Sqlite => 8,
            Backend::Postgres => 500,
        };
        let groups: Vec<(Group, Sums)> = groups.into_iter().collect();
        for chunk in groups.chunks(per) {
            let mut sql = format!("INSERT INTO ledger_daily ({DAILY_COLS}) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let b = i * 12;
                let params: Vec<String> = (1..=12).map(|c| format!("${}", b + c)).collect();
                sql.push('(');
                sql.push_str(&params.join(", "));
                sql.push(')');
            }
            let mut q = sqlx::query(&sql);
            for (g, s) in chunk {
                q = q
                    .bind(g.day)
                    .bind(g.tenant.clone())
                    .bind(g.user.clone())
                    .bind(g.key_id.clone())
                    .bind(g.model.clone())
                    .bind(g.endpoint.clone())
                    .bind(g.status_class)
                    .bind(big(s.requests))
                    .bind(big(s.prompt))
                    .bind(big(s.completion))
                    .bind(big(s.cached))
                    .bind(big(s.cost));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(deleted.len() as u64)
    }

    /// Rolls every ledger row with `ts < cutoff` up, in batches of `batch` rows (one
    /// transaction each). Returns how many rows were rolled up.
    pub async fn roll_up_ledger(
        &self,
        cutoff: UnixMillis,
        batch: usize,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.roll_up_ledger_batch(cutoff, batch).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Rows in `ledger_daily` (for tests and operators).
    pub async fn ledger_daily_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_daily")
            .fetch_one(&self.pool)
            .await?;
        Ok(unsigned(n))
    }
}

/// Starts the retention task: shortly after start, then hourly, rolls up rows older than
/// `retention_days` (none when it is 0: returns `None`). Failures are logged and retried at the
/// next run; a run interrupted between batches leaves every row counted exactly once.
pub fn spawn_retention(store: Store, retention_days: u32) -> Option<JoinHandle<()>> {
    spawn_retention_every(store, retention_days, ROLLUP_FIRST, ROLLUP_EVERY)
}

/// [`spawn_retention`] with its own schedule (tests).
pub fn spawn_retention_every(
    store: Store,
    retention_days: u32,
    first: Duration,
    every: Duration,
) -> Option<JoinHandle<()>> {
    if retention_days == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        tokio::time::sleep(first).await;
        loop {
            if let Some(cutoff) = retention_cutoff(now_millis(), retention_days) {
                match store.roll_up_ledger(cutoff, ROLLUP_BATCH).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        rows = n,
                        retention_days,
                        "ledger rows past retention rolled into daily aggregates"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger retention rollup failed; retrying next hour")
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairgate_types::{LedgerRow, RequestId};

    #[tokio::test]
    async fn the_task_rolls_up_only_rows_past_retention() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let now = now_millis();
        let mut old = LedgerRow::new(RequestId::from("old"), now - 40 * DAY_MS, "/v1/x".into());
        old.tenant = Some("t".into());
        old.model = Some("m".into());
        old.prompt_tokens = 5;
        let mut new = old.clone();
        new.id = RequestId::from("new");
        new.ts = now;
        store.insert_ledger_rows(&[old, new]).await.unwrap();
        let before = store.usage(None, None, None).await.unwrap();
        assert!(spawn_retention_every(store.clone(), 0, Duration::ZERO, Duration::ZERO).is_none());
        let task = spawn_retention_every(
            store.clone(),
            30,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )
        .unwrap();
        for _ in 0..1000 {
            if store.ledger_count().await.unwrap() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        assert_eq!(store.ledger_count().await.unwrap(), 1);
        assert_eq!(store.ledger_daily_count().await.unwrap(), 1);
        assert_eq!(store.usage(None, None, None).await.unwrap(), before);
        let left = store.requests(None, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id.as_str(), "new");
    }

    #[test]
    fn days_and_cutoffs() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), DAY_MS);
        assert_eq!(day_of(-1), -DAY_MS);
        assert_eq!(retention_cutoff(10 * DAY_MS + 5, 0), None);
        assert_eq!(retention_cutoff(10 * DAY_MS + 5, 3), Some(7 * DAY_MS));
        assert_eq!(retention_cutoff(10 * DAY_MS, 3), Some(7 * DAY_MS));
    }
}
