//! The tenant's daily stats (`GET /api/v3/stats`): what the stats job keeps, one entry per UTC
//! day of the range asked for, newest first, a day with no row counting zero.

use crate::ports::Ports;
use crate::runs::RunsError;
use crate::store::now_millis;
use crate::store::stats::{DayStats, day_of};

/// Most days one read covers: a year, leap day included.
pub const MAX_DAYS: u32 = 366;
/// Days covered when the client does not say.
pub const DEFAULT_DAYS: u32 = 30;

/// A number of days: `1..=MAX_DAYS`, the default when absent.
pub fn days(days: Option<i64>) -> Result<u32, RunsError> {
    match days {
        None => Ok(DEFAULT_DAYS),
        Some(days) if (1..=i64::from(MAX_DAYS)).contains(&days) => Ok(days as u32),
        Some(days) => Err(RunsError::Invalid(format!(
            "days must be an integer from 1 to {MAX_DAYS}, got {days}"
        ))),
    }
}

/// The last `days` UTC days, today included, newest first.
pub async fn tenant_stats(
    ports: &Ports,
    tenant: &str,
    days: u32,
) -> Result<Vec<DayStats>, RunsError> {
    let today = day_of(now_millis());
    let first = today - i64::from(days) + 1;
    let stored = ports.stats.tenant_stats(tenant, first..=today).await?;
    Ok(every_day(stored, first, today))
}

/// One entry per day from `last` down to `first`: the stored row (newest first), or zeros.
fn every_day(stored: Vec<DayStats>, first: i64, last: i64) -> Vec<DayStats> {
    let mut stored = stored.into_iter().peekable();
    (first..=last)
        .rev()
        .map(|day| match stored.next_if(|row| row.day == day) {
            Some(row) => row,
            None => DayStats {
                day,
                ..DayStats::default()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_day_of_the_range_is_listed_newest_first_with_zeros_where_no_row_is() {
        let row = |day, batches| DayStats {
            day,
            batches,
            ..DayStats::default()
        };
        let listed = every_day(vec![row(12, 3), row(10, 1)], 9, 12);
        let summary: Vec<(i64, u64)> = listed.iter().map(|d| (d.day, d.batches)).collect();
        assert_eq!(summary, vec![(12, 3), (11, 0), (10, 1), (9, 0)]);
    }

    #[test]
    fn days_are_bounded() {
        assert_eq!(days(None).unwrap(), DEFAULT_DAYS);
        assert_eq!(days(Some(366)).unwrap(), 366);
        assert!(days(Some(0)).is_err());
        assert!(days(Some(367)).is_err());
    }
}
