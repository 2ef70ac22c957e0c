//! Retention in the SQL store: final batches past the horizon, held by one node at a time while
//! their rows are deleted in bounded statements, the batch row last.
//!
//! A node holds a batch through a guarded update (`FOR UPDATE SKIP LOCKED` on Postgres) with a
//! token of its own and a lease, so two nodes never work on the same batch; a hold left by a node
//! that died expires and is taken over. Every delete is idempotent, so work repeated after a
//! takeover changes nothing twice.

use async_trait::async_trait;

use super::Millis;
use crate::dependency::DependencyError;

/// Which final batches are past the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Batches that turned final (`completed_at`) before this.
    pub final_before: Millis,
    /// `ABORTED` batches without `completed_at` (the seal-timeout job does not set it) created
    /// before this: the horizon less the seal timeout, so their age counts from when they were
    /// aborted at the latest.
    pub aborted_created_before: Millis,
}

/// A batch held for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredBatch {
    pub id: String,
    pub tenant: String,
}

#[async_trait]
pub trait RetentionStore: Send + Sync + 'static {
    /// Holds up to `limit` final batches past `horizon` under `token` until `lease_until`, among
    /// those no other node holds at `now`. A batch still being materialised (canceled before all
    /// its runs were written) is left until it is not.
    async fn hold_expired(
        &self,
        token: &str,
        horizon: Horizon,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ExpiredBatch>, DependencyError>;

    /// Deletes up to `limit` of the batch's runs in one statement; returns how many.
    async fn delete_runs(&self, batch_id: &str, limit: u32) -> Result<u64, DependencyError>;

    /// Deletes up to `limit` of the batch's journal events in one statement; returns how many.
    ///
    /// The hook for the batch event journal: this branch has no `batch_events` table yet, so
    /// there is nothing to delete; when the journal lands, its rows are deleted here.
    async fn delete_events(&self, batch_id: &str, limit: u32) -> Result<u64, DependencyError>;

    /// Deletes the batch row, if `token` still holds it; returns whether it did.
    async fn delete_batch(&self, batch_id: &str, token: &str) -> Result<bool, DependencyError>;

    /// Gives up the hold (the tick's budget ran out, or a step failed): any node's next tick
    /// takes the batch up where this one stopped.
    async fn release(&self, batch_id: &str, token: &str) -> Result<(), DependencyError>;
}
