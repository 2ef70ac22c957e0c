//! The tenant's daily stats: `GET /api/v3/stats?days=N`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::auth::Tenant;
use super::error::ApiError;
use super::state::ApiState;
use crate::protocol::quote::quote;
use crate::protocol::runs::{DayStatsBody, StatsResponse};
use crate::runs::stats;
use crate::store::stats::MILLIS_PER_DAY;

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    pub days: Option<String>,
}

pub async fn get_stats(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsResponse>, ApiError> {
    let Query(query) = query?;
    let days = query
        .days
        .as_deref()
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                ApiError::InvalidRequest(format!("days must be an integer, got {}", quote(text)))
            })
        })
        .transpose()?;
    let days = stats::days(days)?;
    let data = stats::tenant_stats(&state.ports, &tenant, days)
        .await?
        .into_iter()
        .map(|day| DayStatsBody {
            day: utc_date(day.day),
            batches: day.batches,
            items: day.items,
            runs_completed: day.runs_completed,
            runs_failed: day.runs_failed,
        })
        .collect();
    Ok(Json(StatsResponse { data }))
}

/// `YYYY-MM-DD` of a day counted from the Unix epoch.
fn utc_date(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * MILLIS_PER_DAY)
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(20_422), "2025-11-30");
    }
}
