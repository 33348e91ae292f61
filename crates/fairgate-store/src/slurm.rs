//! Slurm jobs (`slurm_jobs`, migration 0007) and the SU (service unit) report over them.
//!
//! A job is charged for the time it ran: `gpus` × hours × `su_per_gpu_hour`, per UTC day. Each
//! job-day is split among tenants in proportion to the tokens (prompt + completion) the job's
//! backend served each of them inside that day's part of the job's run, as the ledger records
//! them (`ledger.backend` is the backend's name, `slurm-<jobid>`). A job-day that served no
//! token goes to [`IDLE_TENANT`] whole: the allocation was paid for all the same.
//!
//! Rows are matched by backend name alone, not also by model: a LoRA adapter's requests are
//! recorded under the adapter's name, and they ran on the job as much as the base model's.
//!
//! Only live ledger rows count. `ledger_daily` (migration 0005) keeps no backend, so once
//! retention has rolled a day up its tokens can no longer be told apart by job, and a job-day
//! older than `ledger.retention_days` reports as idle: SU reports cover the ledger's retention
//! window only.

use std::collections::BTreeMap;

use crate::retention::DAY_MS;
use crate::rows::{big, joined_sum, opt_text, split_sum, text};
use crate::{Store, StoreError};
use fairgate_types::{now_millis, utc_day, SlurmJobRow, SuLine, UnixMillis, IDLE_TENANT};
use sqlx::any::AnyRow;
use sqlx::Row;

const JOB_COLS: &str = "job_id, model, backend, nodes, gpus, gpu_type, su_per_gpu_hour, \
                        submitted_at, started_at, ended_at, state, reason";

const HOUR_MS: f64 = 3_600_000.0;

fn job_from_row(row: &AnyRow) -> Result<SlurmJobRow, StoreError> {
    let job_id: String = row.try_get("job_id")?;
    let count = |col: &str| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(col)?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("slurm job {job_id}: {col} {v}")))
    };
    Ok(SlurmJobRow {
        model: row.try_get("model")?,
        backend: row.try_get("backend")?,
        nodes: row.try_get("nodes")?,
        gpus: count("gpus")?,
        gpu_type: row.try_get("gpu_type")?,
        su_per_gpu_hour_micros: count("su_per_gpu_hour")?,
        submitted_at: row.try_get("submitted_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
        job_id,
    })
}

impl Store {
    /// Records a job, replacing every field of the stored one with the same `job_id`.
    pub async fn upsert_slurm_job(&self, j: &SlurmJobRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO slurm_jobs ({JOB_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (job_id) DO UPDATE SET model = excluded.model, \
             backend = excluded.backend, nodes = excluded.nodes, gpus = excluded.gpus, \
             gpu_type = excluded.gpu_type, su_per_gpu_hour = excluded.su_per_gpu_hour, \
             submitted_at = excluded.submitted_at, started_at = excluded.started_at, \
             ended_at = excluded.ended_at, state = excluded.state, reason = excluded.reason"
        );
        sqlx::query(&sql)
            .bind(text(&j.job_id))
            .bind(text(&j.model))
            .bind(text(&j.backend))
            .bind(text(&j.nodes))
            .bind(big(j.gpus))
            .bind(opt_text(j.gpu_type.as_deref()))
            .bind(big(j.su_per_gpu_hour_micros))
            .bind(j.submitted_at)
            .bind(j.started_at)
            .bind(j.ended_at)
            .bind(text(&j.state))
            .bind(opt_text(j.reason.as_deref()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Jobs whose run (`started_at` to `ended_at`, or to now while running) overlaps
    /// `[since, until)`, and jobs that never started and were submitted in it; by
    /// `submitted_at`, then `job_id`.
    pub async fn slurm_jobs(
        &self,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<SlurmJobRow>, StoreError> {
        self.slurm_jobs_at(since, until, now_millis()).await
    }

    async fn slurm_jobs_at(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<SlurmJobRow>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM slurm_jobs WHERE \
             (started_at IS NOT NULL AND started_at < $1 AND COALESCE(ended_at, $2) > $3) \
             OR (started_at IS NULL AND submitted_at >= $4 AND submitted_at < $5) \
             ORDER BY submitted_at, job_id{}",
            self.backend.text_order()
        );
        sqlx::query(&sql)
            .bind(until)
            .bind(now)
            .bind(since)
            .bind(since)
            .bind(until)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    /// The SU report over `[since, until)` with running jobs charged up to `now`: one line per
    /// (UTC day, job, tenant), sorted by day, model, job id and tenant (see the module docs
    /// for how a job-day is split).
    pub async fn su_report(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<SuLine>, StoreError> {
        let jobs: Vec<SlurmJobRow> = self
            .slurm_jobs_at(since, until, now)
            .await?
            .into_iter()
            .filter(|j| j.started_at.is_some())
            .collect();
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self.job_tokens(since, until, now).await?;
        let mut lines = Vec::new();
        for job in &jobs {
            let Some(started) = job.started_at else {
                continue;
            };
            let from = started.max(since);
            let to = job.ended_at.unwrap_or(now).min(until);
            let mut day = from.div_euclid(DAY_MS) * DAY_MS;
            while day < to {
                let next = day.saturating_add(DAY_MS);
                let overlap = to.min(next) - from.max(day);
                if overlap > 0 {
                    let served = tokens
                        .get(&(job.job_id.clone(), day))
                        .map(Vec::as_slice)
                        .unwrap_or(&[]);
                    job_day(job, day, overlap, served, &mut lines);
                }
                day = next;
            }
        }
        lines.sort_by(|a, b| {
            (&a.day, &a.model, &a.job_id, &a.tenant).cmp(&(&b.day, &b.model, &b.job_id, &b.tenant))
        });
        Ok(lines)
    }

    /// Tokens per (job, UTC midnight) and tenant, of ledger rows in `[since, until)` that a
    /// job's backend served while the job ran (to `now` while it runs): one `GROUP BY`.
    async fn job_tokens(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        now: UnixMillis,
    ) -> Result<BTreeMap<(String, UnixMillis), Vec<(String, u64)>>, StoreError> {
        // Served by the ledger's ts index; `slurm_jobs` is small and indexed by backend.
        let sql = format!(
            "SELECT j.job_id AS job_id, l.tenant AS tenant, l.ts / {DAY_MS} AS d, {}, {} \
             FROM ledger l JOIN slurm_jobs j ON l.backend = j.backend \
             WHERE l.ts >= $1 AND l.ts < $2 AND l.tenant IS NOT NULL \
             AND j.started_at IS NOT NULL AND l.ts >= j.started_at \
             AND l.ts < COALESCE(j.ended_at, $3) \
             GROUP BY j.job_id, l.tenant, l.ts / {DAY_MS}",
            split_sum("prompt_tokens"),
            split_sum("completion_tokens"),
        );
        let rows = sqlx::query(&sql)
            .bind(since)
            .bind(until)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        let mut out: BTreeMap<(String, UnixMillis), Vec<(String, u64)>> = BTreeMap::new();
        for r in &rows {
            let n =
                joined_sum(r, "prompt_tokens")?.saturating_add(joined_sum(r, "completion_tokens")?);
            if n == 0 {
                continue;
            }
            let d: i64 = r.try_get("d")?;
            out.entry((r.try_get("job_id")?, d.saturating_mul(DAY_MS)))
                .or_default()
                .push((r.try_get("tenant")?, n));
        }
        Ok(out)
    }
}

/// The lines of one job-day: `overlap` ms of the job's run fell on the UTC day starting at
/// `day`, and `served` is what its backend served each tenant in them.
fn job_day(
    job: &SlurmJobRow,
    day: UnixMillis,
    overlap: i64,
    served: &[(String, u64)],
    lines: &mut Vec<SuLine>,
) {
    // GPU-milliseconds, and micro-SU-milliseconds, as integers: exact before the one division.
    let gpu_ms = u128::from(overlap.unsigned_abs()) * u128::from(job.gpus);
    let gpu_hours = gpu_ms as f64 / HOUR_MS;
    let sus = (gpu_ms * u128::from(job.su_per_gpu_hour_micros)) as f64 / (HOUR_MS * 1e6);
    let line = |tenant: &str, tokens: u64, share: f64| SuLine {
        day: utc_day(day),
        tenant: tenant.to_owned(),
        model: job.model.clone(),
        job_id: job.job_id.clone(),
        gpu_hours: gpu_hours * share,
        sus: sus * share,
        tokens,
        share,
    };
    let total: u128 = served.iter().map(|(_, n)| u128::from(*n)).sum();
    if total == 0 {
        lines.push(line(IDLE_TENANT, 0, 1.0));
        return;
    }
    for (tenant, n) in served {
        lines.push(line(tenant, *n, *n as f64 / total as f64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(gpus: u64, su: f64) -> SlurmJobRow {
        SlurmJobRow {
            job_id: "7".into(),
            model: "m".into(),
            backend: "slurm-7".into(),
            nodes: "n1,n2".into(),
            gpus,
            gpu_type: None,
            su_per_gpu_hour_micros: fairgate_types::micro_sus(su),
            submitted_at: 0,
            started_at: Some(0),
            ended_at: None,
            state: "RUNNING".into(),
            reason: None,
        }
    }

    #[test]
    fn a_job_day_splits_by_tokens_and_idle_takes_all() {
        let mut lines = Vec::new();
        // 6 hours of 8 GPUs at 108.6 SU: 48 GPU-hours, 5212.8 SUs.
        let served = vec![("a".to_owned(), 100), ("b".to_owned(), 300)];
        job_day(&job(8, 108.6), 0, 6 * 3_600_000, &served, &mut lines);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].day, "1970-01-01");
        assert_eq!((lines[0].share, lines[1].share), (0.25, 0.75));
        assert!((lines[0].sus - 1303.2).abs() < 1e-9, "{lines:?}");
        assert!((lines[0].sus + lines[1].sus - 5212.8).abs() < 1e-9);
        assert!((lines[0].gpu_hours + lines[1].gpu_hours - 48.0).abs() < 1e-12);

        let mut idle = Vec::new();
        job_day(&job(2, 50.0), DAY_MS, 3_600_000, &[], &mut idle);
        assert_eq!(idle.len(), 1);
        assert_eq!(idle[0].tenant, IDLE_TENANT);
        assert_eq!(
            (
                idle[0].gpu_hours,
                idle[0].sus,
                idle[0].tokens,
                idle[0].share
            ),
            (2.0, 100.0, 0, 1.0)
        );
        assert_eq!(idle[0].day, "1970-01-02");
    }
}
