//! `/admin/v1/slurm`: the Slurm jobs that served models, and the SU (service unit) report that
//! splits each job-day's SUs among tenants by the tokens the job served them (the split is the
//! store's, `Store::su_report`).
//!
//! Both take `?since=YYYY-MM-DD&until=YYYY-MM-DD`, UTC days, `since` inclusive and `until`
//! exclusive; each defaults to this month's bound, as the portal's usage export does.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{Datelike, Months, NaiveDate};
use serde::{Deserialize, Serialize};

use fairgate_gateway::error::ApiError;
use fairgate_gateway::state::AppState;
use fairgate_types::{now_millis, su_totals, SlurmJobRow, SuLine, SuTotal, UnixMillis};

use super::flush_ledger;

#[derive(Deserialize)]
pub(super) struct RangeQuery {
    since: Option<String>,
    until: Option<String>,
}

/// The first day of this month and of the next (UTC).
fn this_month() -> (NaiveDate, NaiveDate) {
    let today = chrono::Utc::now().date_naive();
    let first = today.with_day(1).unwrap_or(today);
    (
        first,
        first.checked_add_months(Months::new(1)).unwrap_or(first),
    )
}

fn parse_day(field: &str, s: Option<&str>, default: NaiveDate) -> Result<NaiveDate, ApiError> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
            ApiError::AdminBadRequest(format!(
                "`{field}` must be a date like 2026-01-31, got `{s}`"
            ))
        }),
    }
}

/// `[since, until)` of the query, checked.
fn range(q: &RangeQuery) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let (first, next) = this_month();
    let since = parse_day("since", q.since.as_deref(), first)?;
    let until = parse_day("until", q.until.as_deref(), next)?;
    if until <= since {
        return Err(ApiError::AdminBadRequest(
            "`until` must be after `since`".into(),
        ));
    }
    Ok((since, until))
}

fn midnight(d: NaiveDate) -> UnixMillis {
    d.and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
}

#[derive(Serialize)]
pub(super) struct SuReport {
    since: String,
    until: String,
    /// Per (UTC day, job, tenant), by day, model, job id and tenant.
    lines: Vec<SuLine>,
    /// Per tenant (`(idle)` included), by tenant.
    totals: Vec<SuTotal>,
}

/// `GET /admin/v1/slurm/su`: the SU report. The ledger is flushed first, so requests that
/// have just finished count.
pub(super) async fn su_report(
    State(st): State<Arc<AppState>>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<SuReport>, ApiError> {
    let (since, until) = range(&q)?;
    flush_ledger(&st).await?;
    let lines = st
        .store
        .su_report(midnight(since), midnight(until), now_millis())
        .await?;
    Ok(Json(SuReport {
        since: since.to_string(),
        until: until.to_string(),
        totals: su_totals(&lines),
        lines,
    }))
}

#[derive(Serialize)]
pub(super) struct Jobs {
    since: String,
    until: String,
    data: Vec<SlurmJobRow>,
}

/// `GET /admin/v1/slurm/jobs`: the jobs that ran in the range (or were submitted in it and
/// never ran).
pub(super) async fn jobs(
    State(st): State<Arc<AppState>>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Jobs>, ApiError> {
    let (since, until) = range(&q)?;
    Ok(Json(Jobs {
        since: since.to_string(),
        until: until.to_string(),
        data: st
            .store
            .slurm_jobs(midnight(since), midnight(until))
            .await?,
    }))
}

/// `GET /admin/v1/slurm`: the provisioner's models and jobs (the leader's, under
/// `[cluster]`); `{"models": []}` when no model is served from Slurm.
pub(super) async fn status(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(
        fairgate_slurm::status(&st)
            .await
            .unwrap_or_else(|| serde_json::json!({ "models": [] })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_default_to_this_month_and_are_checked() {
        let q = |since: Option<&str>, until: Option<&str>| RangeQuery {
            since: since.map(Into::into),
            until: until.map(Into::into),
        };
        let (a, b) = range(&q(None, None)).unwrap();
        assert_eq!((a.day(), b.day()), (1, 1));
        assert!(b > a);
        let (a, b) = range(&q(Some("2025-03-10"), Some("2025-03-12"))).unwrap();
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("2025-03-10".into(), "2025-03-12".into())
        );
        assert_eq!(midnight(a), 1_741_564_800_000);
        assert!(range(&q(Some("2025-03-10"), Some("2025-03-10"))).is_err());
        assert!(range(&q(Some("yesterday"), None)).is_err());
        assert!(range(&q(None, Some("2025-13-01"))).is_err());
    }
}
