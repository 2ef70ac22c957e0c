//! Tenant stats: every `SLUICE_STATS_INTERVAL_MS`, recomputes the per-tenant counts of the last
//! `SLUICE_STATS_REFRESH_DAYS` UTC days (today included) from the data and writes only what
//! changed (`crate::store::stats`). A tick with nothing new writes no row; the rows written are in
//! `sluice_stats_rows_written`.
//!
//! Bounded: a tick reads only the batches created and the runs that turned final in those days
//! (both through indexes on their times), however many batches are older. Days before the window
//! keep the counts they had when they left it, so retention deleting a batch later does not erase
//! its history.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{JobPermits, Tick};
use crate::dependency::DependencyError;
use crate::store::now_millis;
use crate::store::stats::{StatsStore, StatsWritten, day_of};
use crate::tasks::NamedTask;

pub fn spawn(
    store: Arc<dyn StatsStore>,
    refresh_days: u32,
    period: Duration,
    permits: &JobPermits,
    shutdown: CancellationToken,
) -> NamedTask {
    super::schedule("stats", period, permits, shutdown, move || {
        let store = store.clone();
        async move {
            match refresh(store.as_ref(), refresh_days).await {
                Ok(written) if written.rows() == 0 => Tick::Idle,
                Ok(_) => Tick::Worked,
                Err(error) => {
                    tracing::warn!(%error, "could not refresh the tenant stats");
                    Tick::Failed
                }
            }
        }
    })
}

/// One refresh of the last `refresh_days` days, today included.
pub async fn refresh(
    store: &dyn StatsStore,
    refresh_days: u32,
) -> Result<StatsWritten, DependencyError> {
    let now = now_millis();
    let today = day_of(now);
    let first = today - i64::from(refresh_days.max(1)) + 1;
    let written = store.refresh_stats(first..=today, now).await?;
    crate::metrics::stats_rows_written(written.rows());
    Ok(written)
}
