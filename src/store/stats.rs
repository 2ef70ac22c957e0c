//! Per-tenant daily stats in the SQL store: batches created, their items, runs completed and runs
//! failed per UTC day, kept in `tenant_stats` and refreshed in place.
//!
//! A refresh recomputes a range of days from the data and writes only what changed: an upsert
//! whose update applies only where a count differs, and an anti-join prune of the range's rows no
//! data backs any more. Refreshing twice with no change in between writes nothing; any number of
//! nodes may refresh at once, as every write sets counts computed from the data (never adds).

use std::ops::RangeInclusive;

use async_trait::async_trait;

use super::Millis;
use crate::dependency::DependencyError;

/// A UTC day: days since the Unix epoch.
pub type Day = i64;

pub const MILLIS_PER_DAY: Millis = 86_400_000;

/// The UTC day a time falls in.
pub fn day_of(at: Millis) -> Day {
    at.div_euclid(MILLIS_PER_DAY)
}

/// One tenant's counts for one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayStats {
    pub day: Day,
    /// Batches created that day.
    pub batches: u64,
    /// Items of the batches created that day that were sealed (a sealed batch holds exactly its
    /// `runCount` items).
    pub items: u64,
    /// Runs that completed that day.
    pub runs_completed: u64,
    /// Runs that turned `FAILED` that day (failed items, used attempts, expired leases).
    pub runs_failed: u64,
}

/// Rows one refresh wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsWritten {
    /// Rows inserted or updated (an update that would change nothing is not made).
    pub upserted: u64,
    /// Rows deleted because no data backs them any more.
    pub pruned: u64,
}

impl StatsWritten {
    pub fn rows(self) -> u64 {
        self.upserted + self.pruned
    }
}

#[async_trait]
pub trait StatsStore: Send + Sync + 'static {
    /// Recomputes every tenant's stats for `days` from the data and writes the differences.
    async fn refresh_stats(
        &self,
        days: RangeInclusive<Day>,
        now: Millis,
    ) -> Result<StatsWritten, DependencyError>;

    /// The tenant's stored stats for `days`, newest first; days without a row are left out.
    async fn tenant_stats(
        &self,
        tenant: &str,
        days: RangeInclusive<Day>,
    ) -> Result<Vec<DayStats>, DependencyError>;
}
