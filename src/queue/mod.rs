//! Per-index dedup and the item queue: each index of a batch is stored once, atomically with
//! marking it taken.
//!
//! Adapters: Redis (production, one transaction of `HSETNX` per call that also sets the indexes'
//! bits in a per-batch bitmap, every key in the batch's hash slot) and the SQL store
//! (`INSERT … ON CONFLICT DO NOTHING`, with per-chunk counters updated in the same transaction).
//! An adapter must never leave an index marked but its item not stored. `progress` and `missing`
//! read what the adapter keeps per batch for them (a bitmap, chunk counters), not every taken index.

pub mod adapters;
mod ranges;

use async_trait::async_trait;
use bytes::Bytes;

use crate::dependency::DependencyError;

/// One item ready to be stored at its index.
#[derive(Debug, Clone)]
pub struct QueuedItem {
    pub index: u32,
    /// Whether this is a failed item (it still takes its index).
    pub failed: bool,
    /// The item as stored: a JSON object.
    pub body: Bytes,
}

/// What one enqueue call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// In order, whether each item was newly stored.
    pub stored: Vec<bool>,
    /// How many indexes of the batch were taken right after the call, when the adapter learns it
    /// at no extra cost (it saves a progress read before sealing).
    pub taken_after: Option<u64>,
}

/// How far a batch has been filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub enqueued: u64,
    pub failed: u64,
}

/// An inclusive range of indexes.
pub type IndexRange = (u32, u32);

#[async_trait]
pub trait ItemQueue: Send + Sync + 'static {
    /// Stores each item unless its index is already taken, and says, in order, whether each item
    /// was newly stored. Items of one call may share an index: the first one wins.
    async fn enqueue(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Enqueued, DependencyError>;

    async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError>;

    /// Index ranges in `0..run_count` not yet taken, ascending, at most `limit` of them.
    async fn missing(
        &self,
        batch_id: &str,
        run_count: u32,
        limit: usize,
    ) -> Result<Vec<IndexRange>, DependencyError>;

    /// The stored item at an index.
    async fn item(&self, batch_id: &str, index: u32) -> Result<Option<Bytes>, DependencyError>;

    async fn ping(&self) -> Result<(), DependencyError>;

    /// The stored items from `first` on, in index order (`None` where an index holds nothing),
    /// read in one command or statement: up to `last`, or fewer when their bytes would go past
    /// `max_bytes` — the items returned stay within it, but the first one always comes, whatever
    /// its size. Never empty when `first <= last`.
    async fn items_in_range(
        &self,
        batch_id: &str,
        first: u32,
        last: u32,
        max_bytes: u64,
    ) -> Result<Vec<Option<Bytes>>, DependencyError>;

    /// Deletes every item of the batch (once its runs are written).
    async fn delete_batch(&self, batch_id: &str) -> Result<(), DependencyError>;
}
