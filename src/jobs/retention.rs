//! Retention: final batches (`COMPLETED`, `PARTIAL_FAILED`, `ABORTED`, `CANCELED`) that turned
//! final more than `SLUICE_RETENTION_SECONDS` ago are deleted: their runs, journal events, queue
//! items and payload objects, and last the batch row, so a batch half deleted when a tick stops
//! (its budget spent, a dependency down, the node gone) is found again and finished later.
//!
//! An `ABORTED` batch has no `completed_at` (the seal-timeout job does not set one): its age counts
//! from `created_at` plus the seal timeout, the latest it can have been aborted.
//!
//! Bounded: a tick deletes at most `SLUICE_RETENTION_MAX_ROWS_PER_TICK` rows and objects, in
//! statements of at most `SLUICE_RETENTION_ROWS_PER_STATEMENT` rows, each committed on its own,
//! never one large transaction. On many nodes at once: each batch is held by one node's token
//! (`crate::store::retention`), and the others skip it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{JobPermits, Tick};
use crate::dependency::DependencyError;
use crate::payloads::{PayloadStore, batch_prefix};
use crate::queue::ItemQueue;
use crate::store::retention::{ExpiredBatch, Horizon, RetentionStore};
use crate::store::{Millis, now_millis};
use crate::tasks::NamedTask;

/// Batches held per statement; each is finished (or released) before the next group is held.
const HOLD_GROUP: u32 = 16;
/// How long a hold lasts if its node never finishes nor releases it (it died).
const HOLD_LEASE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// How long a batch is kept after it turned final.
    pub retention: Duration,
    pub seal_timeout: Duration,
    pub interval: Duration,
    pub max_rows_per_tick: u32,
    pub rows_per_statement: u32,
}

impl RetentionSettings {
    fn horizon(&self, now: Millis) -> Horizon {
        let final_before = now.saturating_sub(self.retention.as_millis() as Millis);
        Horizon {
            final_before,
            aborted_created_before: final_before
                .saturating_sub(self.seal_timeout.as_millis() as Millis),
        }
    }
}

/// The ports retention deletes through.
#[derive(Clone)]
pub struct Deleters {
    pub store: Arc<dyn RetentionStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
}

/// What one tick deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub batches: u64,
    pub runs: u64,
    pub events: u64,
    pub objects: u64,
}

pub fn spawn(
    deleters: Deleters,
    settings: RetentionSettings,
    permits: &JobPermits,
    shutdown: CancellationToken,
) -> NamedTask {
    super::schedule(
        "retention",
        settings.interval,
        permits,
        shutdown,
        move || {
            let deleters = deleters.clone();
            async move {
                let mut deleted = Deleted::default();
                let result = delete_expired(&deleters, settings, &mut deleted).await;
                crate::metrics::retention_deleted("batches", deleted.batches);
                crate::metrics::retention_deleted("runs", deleted.runs);
                crate::metrics::retention_deleted("events", deleted.events);
                crate::metrics::retention_deleted("objects", deleted.objects);
                if deleted.batches > 0 {
                    tracing::info!(?deleted, "deleted batches past the retention horizon");
                }
                match result {
                    Err(error) => {
                        tracing::warn!(%error, ?deleted, "retention stopped; the next tick goes on");
                        Tick::Failed
                    }
                    Ok(()) if deleted == Deleted::default() => Tick::Idle,
                    Ok(()) => Tick::Worked,
                }
            }
        },
    )
}

/// One tick: holds expired batches a group at a time and deletes them until none is left or the
/// budget is spent. A batch not finished is released for the next tick, on any node.
pub async fn delete_expired(
    deleters: &Deleters,
    settings: RetentionSettings,
    deleted: &mut Deleted,
) -> Result<(), DependencyError> {
    let token = format!("retention_{:016x}", rand::random::<u64>());
    let mut budget = Budget(u64::from(settings.max_rows_per_tick));
    while budget.left() > 0 {
        let now = now_millis();
        let held = deleters
            .store
            .hold_expired(
                &token,
                settings.horizon(now),
                now,
                now + HOLD_LEASE.as_millis() as Millis,
                HOLD_GROUP.min(budget.left().min(u64::from(u32::MAX)) as u32),
            )
            .await?;
        if held.is_empty() {
            return Ok(());
        }
        let mut held = held.into_iter();
        while let Some(batch) = held.next() {
            let result = if budget.left() > 0 {
                delete_batch(deleters, &batch, &token, settings, &mut budget, deleted).await
            } else {
                Ok(false)
            };
            let finished = match result {
                Ok(finished) => finished,
                Err(error) => {
                    release_all(deleters, std::iter::once(batch).chain(held), &token).await;
                    return Err(error);
                }
            };
            if !finished {
                deleters.store.release(&batch.id, &token).await?;
            }
        }
    }
    Ok(())
}

/// Rows and objects a tick may still delete.
struct Budget(u64);

impl Budget {
    fn left(&self) -> u64 {
        self.0
    }

    /// How many the next statement may delete.
    fn next(&self, per_statement: u32) -> u32 {
        self.0.min(u64::from(per_statement)) as u32
    }

    fn spend(&mut self, count: u64) {
        self.0 = self.0.saturating_sub(count);
    }
}

/// Deletes one held batch, in order: runs, events, queue items, payload objects, the batch row.
/// Returns whether the batch is gone (else the budget ran out first).
async fn delete_batch(
    deleters: &Deleters,
    batch: &ExpiredBatch,
    token: &str,
    settings: RetentionSettings,
    budget: &mut Budget,
    deleted: &mut Deleted,
) -> Result<bool, DependencyError> {
    let store = &deleters.store;
    if !drain(
        budget,
        settings.rows_per_statement,
        &mut deleted.runs,
        |limit| store.delete_runs(&batch.id, limit),
    )
    .await?
    {
        return Ok(false);
    }
    if !drain(
        budget,
        settings.rows_per_statement,
        &mut deleted.events,
        |limit| store.delete_events(&batch.id, limit),
    )
    .await?
    {
        return Ok(false);
    }
    // Queue items are deleted once the runs are written, so only a batch never sealed still has
    // them; the adapter deletes them in bounded statements (SQL) or one UNLINK (Redis).
    deleters.queue.delete_batch(&batch.id).await?;
    let prefix = batch_prefix(&batch.id);
    if !drain(
        budget,
        settings.rows_per_statement,
        &mut deleted.objects,
        |limit| deleters.payloads.delete_prefix(&prefix, limit),
    )
    .await?
    {
        return Ok(false);
    }
    if budget.left() == 0 {
        return Ok(false);
    }
    if store.delete_batch(&batch.id, token).await? {
        budget.spend(1);
        deleted.batches += 1;
    }
    Ok(true)
}

/// Calls `delete` (one statement of at most `limit` rows) until it deletes fewer than asked
/// (nothing is left: true) or the budget is spent (false).
async fn drain<F, Fut>(
    budget: &mut Budget,
    per_statement: u32,
    count: &mut u64,
    mut delete: F,
) -> Result<bool, DependencyError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64, DependencyError>>,
{
    loop {
        let limit = budget.next(per_statement);
        if limit == 0 {
            return Ok(false);
        }
        let removed = delete(limit).await?;
        budget.spend(removed);
        *count += removed;
        if removed < u64::from(limit) {
            return Ok(true);
        }
    }
}

/// Releases what a failed tick still holds, so another tick need not wait for the hold to expire.
async fn release_all(
    deleters: &Deleters,
    batches: impl Iterator<Item = ExpiredBatch>,
    token: &str,
) {
    for batch in batches {
        if let Err(error) = deleters.store.release(&batch.id, token).await {
            tracing::warn!(%error, batch = %batch.id, "could not release a batch held for retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_batches_age_from_their_creation_plus_the_seal_timeout() {
        let settings = RetentionSettings {
            retention: Duration::from_secs(100),
            seal_timeout: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            max_rows_per_tick: 10,
            rows_per_statement: 5,
        };
        let horizon = settings.horizon(1_000_000);
        assert_eq!(horizon.final_before, 900_000);
        assert_eq!(horizon.aborted_created_before, 890_000);
    }

    #[tokio::test]
    async fn draining_stops_when_nothing_is_left_or_the_budget_is_spent() {
        let mut budget = Budget(12);
        let mut count = 0;
        let mut left = 7u64;
        let done = drain(&mut budget, 5, &mut count, |limit| {
            let removed = left.min(u64::from(limit));
            left -= removed;
            async move { Ok(removed) }
        })
        .await
        .unwrap();
        assert!(done);
        assert_eq!((count, budget.left()), (7, 5));

        let mut left = 100u64;
        let done = drain(&mut budget, 5, &mut count, |limit| {
            assert!(limit <= 5, "a statement's rows are bounded");
            let removed = left.min(u64::from(limit));
            left -= removed;
            async move { Ok(removed) }
        })
        .await
        .unwrap();
        assert!(!done, "the budget ran out first");
        assert_eq!((count, budget.left()), (12, 0));
    }
}
