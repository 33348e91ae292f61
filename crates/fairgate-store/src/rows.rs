//! Ledger SQL: chunked idempotent inserts, usage and spend sums, and request listings.

use crate::db::Backend;
use crate::{Store, StoreError};
use fairgate_types::{
    KeyId, LedgerRow, Micros, Outcome, Priority, RequestId, Unit, UnixMillis, UsageRow, UsageSource,
};
use sqlx::any::AnyRow;
use sqlx::Row;

const LEDGER_COLS: [&str; 26] = [
    "id",
    "ts",
    "tenant",
    "user_name",
    "key_id",
    "model",
    "backend",
    "endpoint",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reserved_tokens",
    "usage_source",
    "status",
    "outcome",
    "error_class",
    "queue_ms",
    "ttft_ms",
    "duration_ms",
    "cost",
    "cache_hit",
    "priority",
    "attempts",
    "unit",
    "units",
];

/// Bind parameters per statement: SQLite allows 32766 (SQLITE_MAX_VARIABLE_NUMBER since 3.32;
/// the bundled SQLite is newer), PostgreSQL 65535. Every chunk size below stays far under both.
const MAX_BIND_PARAMS: usize = 32_766;
const SQLITE_ROWS_PER_INSERT: usize = 64;
const POSTGRES_ROWS_PER_INSERT: usize = 500;
const _: () = assert!(
    SQLITE_ROWS_PER_INSERT * LEDGER_COLS.len() <= MAX_BIND_PARAMS
        && POSTGRES_ROWS_PER_INSERT * LEDGER_COLS.len() <= MAX_BIND_PARAMS
);

impl Backend {
    /// Rows per multi-row INSERT. SQLite once got `$N` placeholders, which it resolves by
    /// scanning a list, so statements had to stay at 4 rows; with anonymous `?` (see
    /// [`insert_sql`]) 64-row statements commit ~45% more rows per second than 4-row ones
    /// (`cargo bench -p fairgate-store --bench ledger`: 21.9k → 31.9k rows/s, same run), and
    /// 256 rows gain nothing more. PostgreSQL pays a round trip per statement, so it gets
    /// large ones.
    fn rows_per_insert(self) -> usize {
        match self {
            Backend::Sqlite => SQLITE_ROWS_PER_INSERT,
            Backend::Postgres => POSTGRES_ROWS_PER_INSERT,
        }
    }
}

/// Token counts are `u64` but stored as BIGINT. Nothing real reaches 2^63; clamping instead of
/// failing keeps one absurd row from failing its whole batch forever.
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Ledger text comes from clients; PostgreSQL rejects NUL in text, so replace it on both
/// backends (keeping results identical) rather than let one row fail its batch forever.
pub(crate) fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

pub(crate) fn opt_text(s: Option<&str>) -> Option<String> {
    s.map(text)
}

fn unsigned(row: &AnyRow, col: &str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("ledger {col} is {v}")))
}

fn ledger_from_row(row: &AnyRow) -> Result<LedgerRow, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |what: String| StoreError::Corrupt(format!("ledger row {id}: {what}"));
    let usage_source: String = row.try_get("usage_source")?;
    let usage_source = UsageSource::parse(&usage_source)
        .ok_or_else(|| corrupt(format!("unknown usage_source `{usage_source}`")))?;
    let outcome: String = row.try_get("outcome")?;
    let outcome =
        Outcome::parse(&outcome).ok_or_else(|| corrupt(format!("unknown outcome `{outcome}`")))?;
    let status: i64 = row.try_get("status")?;
    let status = u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?;
    let stream: i64 = row.try_get("stream")?;
    let ttft_ms: Option<i64> = row.try_get("ttft_ms")?;
    let ttft_ms = ttft_ms
        .map(|v| u64::try_from(v).map_err(|_| corrupt(format!("ttft_ms {v}"))))
        .transpose()?;
    let key_id: Option<String> = row.try_get("key_id")?;
    let cache_hit: i64 = row.try_get("cache_hit")?;
    let priority: String = row.try_get("priority")?;
    let priority = Priority::parse(&priority)
        .ok_or_else(|| corrupt(format!("unknown priority `{priority}`")))?;
    let unit: String = row.try_get("unit")?;
    let unit = Unit::parse(&unit).ok_or_else(|| corrupt(format!("unknown unit `{unit}`")))?;
    Ok(LedgerRow {
        ts: row.try_get("ts")?,
        tenant: row.try_get("tenant")?,
        user: row.try_get("user_name")?,
        key_id: key_id.map(KeyId),
        model: row.try_get("model")?,
        backend: row.try_get("backend")?,
        endpoint: row.try_get("endpoint")?,
        stream: stream != 0,
        prompt_tokens: unsigned(row, "prompt_tokens")?,
        completion_tokens: unsigned(row, "completion_tokens")?,
        cached_tokens: unsigned(row, "cached_tokens")?,
        reserved_tokens: unsigned(row, "reserved_tokens")?,
        usage_source,
        status,
        outcome,
        error_class: row.try_get("error_class")?,
        queue_ms: unsigned(row, "queue_ms")?,
        ttft_ms,
        duration_ms: unsigned(row, "duration_ms")?,
        cost: Micros(unsigned(row, "cost")?),
        cache_hit: cache_hit != 0,
        priority,
        attempts: u32::try_from(unsigned(row, "attempts")?).unwrap_or(u32::MAX),
        unit,
        units: unsigned(row, "units")?,
        id: RequestId(id),
    })
}

/// `INSERT INTO ledger (...) VALUES ($1..$26), ($27..$52), ... ON CONFLICT (id) DO NOTHING`;
/// SQLite gets anonymous `?` placeholders, bound in order: it resolves `$N` (and `?N`) through
/// a list it scans for every placeholder, which made a statement's cost grow with the square
/// of its parameters, while `?` is numbered as it is parsed.
fn insert_sql(rows: usize, backend: Backend) -> String {
    let cols = LEDGER_COLS.len();
    let mut sql = format!("INSERT INTO ledger ({}) VALUES ", LEDGER_COLS.join(", "));
    sql.reserve(rows * cols * 6);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    // Idempotence: a batch retried after an ambiguous failure (commit sent, reply lost), or a
    // spill file replayed twice, never counts a request twice.
    sql.push_str(" ON CONFLICT (id) DO NOTHING");
    sql
}

/// Whose spend [`Store::spend`] sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendScope<'a> {
    /// Every ledger row of the tenant, whichever key made it.
    Tenant(&'a str),
    Key(&'a KeyId),
}

/// Tokens and money spent, as budgets count them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    /// Prompt plus completion tokens.
    pub tokens: u64,
    pub cost: Micros,
}

/// One line of the usage export: a (tenant, user, model) and its totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserUsage {
    pub tenant: String,
    pub user: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Micros,
}

/// Sums of BIGINT columns are split as `SUM(v / 2^32)` and `SUM(v % 2^32)` and joined in Rust.
/// A plain SUM overflows on both backends (an error, not a wrap) once the total passes
/// `i64::MAX`, which one clamped absurd row plus any other row does; a budget check that errors
/// forever for that tenant is worse than a saturated total. Each half stays below `i64::MAX`
/// for up to 2^31 rows, and values are never negative (everything is written through `big`).
const SPLIT: i64 = 1 << 32;

pub(crate) fn split_sum(col: &str) -> String {
    // SUM over BIGINT is NUMERIC on PostgreSQL, which Any cannot read; cast it back. COALESCE
    // turns the NULL of an empty sum into 0.
    format!(
        "CAST(COALESCE(SUM({col} / {SPLIT}), 0) AS BIGINT) AS {col}_hi, \
         CAST(COALESCE(SUM({col} % {SPLIT}), 0) AS BIGINT) AS {col}_lo"
    )
}

/// Joins the halves of [`split_sum`], saturating at `u64::MAX`.
pub(crate) fn joined_sum(row: &AnyRow, col: &str) -> Result<u64, StoreError> {
    let hi = unsigned(row, &format!("{col}_hi"))?;
    let lo = unsigned(row, &format!("{col}_lo"))?;
    let total = u128::from(hi) * (SPLIT as u128) + u128::from(lo);
    Ok(u64::try_from(total).unwrap_or(u64::MAX))
}

impl Store {
    /// Inserts ledger rows in one transaction, as multi-row INSERTs in chunks that stay well
    /// under both backends' bind-parameter limits (SQLite 32766, PostgreSQL 65535). Rows whose
    /// id is already stored are skipped, so retrying a batch is safe.
    pub async fn insert_ledger_rows(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let per = self.backend.rows_per_insert();
        for chunk in rows.chunks(per) {
            let sql = insert_sql(chunk.len(), self.backend);
            // Full chunks always have the same text, so they are worth a cached prepared
            // statement; the odd-sized tail of a batch is not.
            let mut q = sqlx::query(&sql).persistent(chunk.len() == per);
            for r in chunk {
                q = q
                    .bind(text(r.id.as_str()))
                    .bind(r.ts)
                    .bind(opt_text(r.tenant.as_deref()))
                    .bind(opt_text(r.user.as_deref()))
                    .bind(opt_text(r.key_id.as_ref().map(KeyId::as_str)))
                    .bind(opt_text(r.model.as_deref()))
                    .bind(opt_text(r.backend.as_deref()))
                    .bind(text(&r.endpoint))
                    .bind(i64::from(r.stream))
                    .bind(big(r.prompt_tokens))
                    .bind(big(r.completion_tokens))
                    .bind(big(r.cached_tokens))
                    .bind(big(r.reserved_tokens))
                    .bind(r.usage_source.as_str())
                    .bind(i64::from(r.status))
                    .bind(r.outcome.as_str())
                    .bind(opt_text(r.error_class.as_deref()))
                    .bind(big(r.queue_ms))
                    .bind(r.ttft_ms.map(big))
                    .bind(big(r.duration_ms))
                    .bind(big(r.cost.0))
                    .bind(i64::from(r.cache_hit))
                    .bind(r.priority.as_str())
                    .bind(i64::from(r.attempts))
                    .bind(r.unit.as_str())
                    .bind(big(r.units));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Token sums per (tenant, model) over rows with both set, optionally for one tenant and a
    /// time window (`since` inclusive, `until` exclusive), ordered by tenant then model. Rows
    /// rolled up by retention count too (a rolled-up day counts when its UTC midnight is in
    /// the window; see [`crate::retention`]).
    pub async fn usage(
        &self,
        tenant: Option<&str>,
        since: Option<UnixMillis>,
        until: Option<UnixMillis>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        // The same filters on both tables (distinct placeholders: repeating one is not
        // portable across the two drivers).
        let mut filter = |time_col: &str| {
            let mut f = String::from(" WHERE tenant IS NOT NULL AND model IS NOT NULL");
            if tenant.is_some() {
                f.push_str(&format!(" AND tenant = ${}", next()));
            }
            if since.is_some() {
                f.push_str(&format!(" AND {time_col} >= ${}", next()));
            }
            if until.is_some() {
                f.push_str(&format!(" AND {time_col} < ${}", next()));
            }
            f
        };
        let live = filter("ts");
        let rolled = filter("day");
        let c = self.backend.text_order();
        // SUM over BIGINT is NUMERIC on PostgreSQL, which Any cannot read; cast it back.
        let sql = format!(
            "SELECT tenant, model, CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
             CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens FROM ( \
             SELECT tenant, model, CAST(1 AS BIGINT) AS requests, prompt_tokens, \
             completion_tokens, cached_tokens FROM ledger{live} \
             UNION ALL SELECT tenant, model, requests, prompt_tokens, completion_tokens, \
             cached_tokens FROM ledger_daily{rolled}) u \
             GROUP BY tenant, model ORDER BY tenant{c}, model{c}"
        );
        let mut q = sqlx::query(&sql);
        for _ in 0..2 {
            if let Some(t) = tenant {
                q = q.bind(t);
            }
            if let Some(s) = since {
                q = q.bind(s);
            }
            if let Some(u) = until {
                q = q.bind(u);
            }
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let prompt_tokens = unsigned(row, "prompt_tokens")?;
                let completion_tokens = unsigned(row, "completion_tokens")?;
                Ok(UsageRow {
                    tenant: row.try_get("tenant")?,
                    model: row.try_get("model")?,
                    requests: unsigned(row, "requests")?,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens: unsigned(row, "cached_tokens")?,
                    total_tokens: prompt_tokens.saturating_add(completion_tokens),
                })
            })
            .collect()
    }

    /// Totals per (tenant, user, model) of every row in `[since, until)` (absent tenant, user
    /// or model read as ""), optionally of one tenant, ordered by those three: what the usage
    /// export prints. Includes rolled-up days like [`Store::usage`].
    pub async fn usage_by_user(
        &self,
        tenant: Option<&str>,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<UserUsage>, StoreError> {
        let (live, rolled) = if tenant.is_some() {
            (
                " WHERE tenant = $1 AND ts >= $2 AND ts < $3",
                " WHERE tenant = $4 AND day >= $5 AND day < $6",
            )
        } else {
            (
                " WHERE ts >= $1 AND ts < $2",
                " WHERE day >= $3 AND day < $4",
            )
        };
        let c = self.backend.text_order();
        let sql = format!(
            "SELECT t, u, m, CAST(SUM(requests) AS BIGINT) AS requests, {}, {}, {} FROM ( \
             SELECT COALESCE(tenant, '') AS t, COALESCE(user_name, '') AS u, \
             COALESCE(model, '') AS m, CAST(1 AS BIGINT) AS requests, prompt_tokens, \
             completion_tokens, cost FROM ledger{live} \
             UNION ALL SELECT COALESCE(tenant, ''), COALESCE(user_name, ''), COALESCE(model, ''), \
             requests, prompt_tokens, completion_tokens, cost FROM ledger_daily{rolled}) x \
             GROUP BY t, u, m ORDER BY t{c}, u{c}, m{c}",
            split_sum("prompt_tokens"),
            split_sum("completion_tokens"),
            split_sum("cost"),
        );
        let mut q = sqlx::query(&sql);
        for _ in 0..2 {
            if let Some(t) = tenant {
                q = q.bind(t);
            }
            q = q.bind(since).bind(until);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(UserUsage {
                    tenant: row.try_get("t")?,
                    user: row.try_get("u")?,
                    model: row.try_get("m")?,
                    requests: unsigned(row, "requests")?,
                    prompt_tokens: joined_sum(row, "prompt_tokens")?,
                    completion_tokens: joined_sum(row, "completion_tokens")?,
                    cost: Micros(joined_sum(row, "cost")?),
                })
            })
            .collect()
    }

    /// The newest `limit` ledger rows (by ts, then id, descending), optionally of one tenant.
    pub async fn requests(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let cols = LEDGER_COLS.join(", ");
        let c = self.backend.text_order();
        let rows = match tenant {
            Some(t) => {
                let sql = format!(
                    "SELECT {cols} FROM ledger WHERE tenant = $1 \
                     ORDER BY ts DESC, id{c} DESC LIMIT $2"
                );
                sqlx::query(&sql)
                    .bind(t)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql =
                    format!("SELECT {cols} FROM ledger ORDER BY ts DESC, id{c} DESC LIMIT $1");
                sqlx::query(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(ledger_from_row).collect()
    }

    /// Tokens (prompt + completion) and cost of the scope's ledger rows with `ts >= since`,
    /// saturating at `u64::MAX`. Every row counts, whatever its outcome and including cache
    /// hits: what a request is charged is decided when its row is written, not here.
    pub async fn spend(
        &self,
        scope: SpendScope<'_>,
        since: UnixMillis,
    ) -> Result<Spend, StoreError> {
        let (col, value) = match scope {
            SpendScope::Tenant(t) => ("tenant", t),
            SpendScope::Key(k) => ("key_id", k.as_str()),
        };
        // Served by the (tenant, ts) and (key_id, ts) indexes and their `ledger_daily`
        // counterparts; rolled-up days count when their UTC midnight is at or after `since`.
        let sql = format!(
            "SELECT {}, {}, {} FROM ( \
             SELECT prompt_tokens, completion_tokens, cost FROM ledger \
             WHERE {col} = $1 AND ts >= $2 \
             UNION ALL SELECT prompt_tokens, completion_tokens, cost FROM ledger_daily \
             WHERE {col} = $3 AND day >= $4) u",
            split_sum("prompt_tokens"),
            split_sum("completion_tokens"),
            split_sum("cost"),
        );
        let row = sqlx::query(&sql)
            .bind(value)
            .bind(since)
            .bind(value)
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
        Ok(Spend {
            tokens: joined_sum(&row, "prompt_tokens")?
                .saturating_add(joined_sum(&row, "completion_tokens")?),
            cost: Micros(joined_sum(&row, "cost")?),
        })
    }

    /// Number of ledger rows stored.
    pub async fn ledger_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("ledger count {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_placeholders_in_order() {
        let sql = insert_sql(2, Backend::Postgres);
        assert!(sql.contains("($1, $2, "));
        assert!(sql.contains("$26), ($27, "));
        assert!(sql.ends_with("$52) ON CONFLICT (id) DO NOTHING"));
        let sql = insert_sql(2, Backend::Sqlite);
        assert!(sql.contains("VALUES (?, ?, "));
        assert_eq!(sql.matches('?').count(), 2 * LEDGER_COLS.len());
    }

    #[test]
    fn clamping_and_nul_replacement() {
        assert_eq!(big(u64::MAX), i64::MAX);
        assert_eq!(big(7), 7);
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert_eq!(text("plain"), "plain");
    }

    #[test]
    fn split_sums_name_their_halves() {
        assert_eq!(
            split_sum("cost"),
            "CAST(COALESCE(SUM(cost / 4294967296), 0) AS BIGINT) AS cost_hi, \
             CAST(COALESCE(SUM(cost % 4294967296), 0) AS BIGINT) AS cost_lo"
        );
    }
}
