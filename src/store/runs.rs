//! Runs in the SQL store: what a sealed batch becomes, one per index, and the materialiser's claim
//! and checkpoint on the batch row.
//!
//! Every state change that can race is a guarded update: a chunk of runs commits only while the
//! pass still holds its claim and the checkpoint is where the pass left it, so two nodes can never
//! both write a chunk, and a chunk's runs and its checkpoint commit together (a crash before the
//! commit leaves neither).

use async_trait::async_trait;
use bytes::Bytes;

use super::{Batch, BatchStatus, Millis};
use crate::dependency::DependencyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Pending,
    Claimed,
    Completed,
    Failed,
    Canceled,
}

impl RunStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Claimed,
        Self::Completed,
        Self::Failed,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Claimed => "CLAIMED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// How many of a batch's runs are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub pending: u64,
    pub claimed: u64,
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
}

impl RunCounts {
    pub fn add(&mut self, status: RunStatus, count: u64) {
        match status {
            RunStatus::Pending => self.pending += count,
            RunStatus::Claimed => self.claimed += count,
            RunStatus::Completed => self.completed += count,
            RunStatus::Failed => self.failed += count,
            RunStatus::Canceled => self.canceled += count,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError {
    pub code: String,
    pub message: String,
    /// The body line of a failed item.
    pub line: Option<u64>,
}

/// A run as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub batch_id: String,
    pub index: u32,
    pub tenant: String,
    pub task: String,
    /// The payload's JSON bytes, or the JSON string of its storage key when offloaded.
    pub payload: Option<Vec<u8>>,
    pub payload_type: String,
    /// A JSON object.
    pub options: Option<String>,
    pub status: RunStatus,
    pub attempt: u32,
    pub max_attempts: u32,
    /// JSON.
    pub output: Option<String>,
    pub error: Option<RunError>,
    pub created_at: Millis,
    pub claimed_at: Option<Millis>,
    pub completed_at: Option<Millis>,
}

/// Runs of consecutive indexes, decoded from the queue, column by column (as the multi-row insert
/// binds them).
#[derive(Debug, Clone, Default)]
pub struct RunChunk {
    pub index: Vec<i32>,
    pub task: Vec<String>,
    /// A slice of the stored item it came from (no copy).
    pub payload: Vec<Option<Bytes>>,
    pub payload_type: Vec<String>,
    pub options: Vec<Option<String>>,
    /// A failed item: its run is `FAILED` at once, attempt 0.
    pub failed: Vec<bool>,
    pub max_attempts: Vec<i32>,
    pub error_code: Vec<Option<String>>,
    pub error_message: Vec<Option<String>>,
    pub error_line: Vec<Option<i64>>,
}

impl RunChunk {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            index: Vec::with_capacity(capacity),
            task: Vec::with_capacity(capacity),
            payload: Vec::with_capacity(capacity),
            payload_type: Vec::with_capacity(capacity),
            options: Vec::with_capacity(capacity),
            failed: Vec::with_capacity(capacity),
            max_attempts: Vec::with_capacity(capacity),
            error_code: Vec::with_capacity(capacity),
            error_message: Vec::with_capacity(capacity),
            error_line: Vec::with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Each run's status as written: a failed item is `FAILED`; a valid one `PENDING`, or
    /// `CANCELED` when its batch was canceled before it was written.
    pub fn statuses(&self, batch_canceled: bool) -> Vec<&'static str> {
        self.failed
            .iter()
            .map(|&failed| match (failed, batch_canceled) {
                (true, _) => RunStatus::Failed.as_str(),
                (false, true) => RunStatus::Canceled.as_str(),
                (false, false) => RunStatus::Pending.as_str(),
            })
            .collect()
    }

    /// Each run's attempt as written: 1, or 0 for a failed item (it never runs).
    pub fn attempts(&self) -> Vec<i32> {
        self.failed
            .iter()
            .map(|&failed| i32::from(!failed))
            .collect()
    }
}

/// A materialising pass's hold on a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialiseClaim {
    pub batch_id: String,
    pub tenant: String,
    pub run_count: u32,
    /// Runs `0..next_index` are written; the pass resumes here.
    pub next_index: u32,
    pub sealed_at: Millis,
    /// The pass's own token: every write of the pass is guarded by it.
    pub token: String,
}

/// What committing a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCommitted {
    /// The runs and the checkpoint are committed.
    Written,
    /// The claim was taken over (it expired) or the checkpoint moved: nothing was written.
    ClaimLost,
}

/// A page position in a tenant's batches, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCursor {
    pub created_at: Millis,
    pub id: String,
}

/// What canceling a batch did.
#[derive(Debug, Clone)]
pub enum Canceled {
    /// Canceled now, or already canceled before: the batch as it is now.
    Canceled(Batch),
    /// The batch is final with another status and stays so.
    Final(BatchStatus),
    NotFound,
}

#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Claims a sealed batch whose runs are not all written (or whose queue items are not deleted
    /// yet), unless another pass holds it until after `now`. Oldest sealed first.
    async fn claim_materialise(
        &self,
        token: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<MaterialiseClaim>, DependencyError>;

    /// Writes `chunk` (the runs from the claim's checkpoint on) and moves the checkpoint past it
    /// in one transaction, if the pass still holds the claim and the checkpoint is at
    /// `chunk.index[0]`. When the last run is written and every run is final already (every item
    /// failed), the batch becomes final too.
    async fn commit_chunk(
        &self,
        claim: &MaterialiseClaim,
        chunk: &RunChunk,
        now: Millis,
        lease_until: Millis,
    ) -> Result<ChunkCommitted, DependencyError>;

    /// Ends a pass. With `items_deleted`, the batch's queue items are gone and it is done;
    /// otherwise the claim is kept until `retry_at`, when any node may take the batch again.
    async fn release_materialise(
        &self,
        claim: &MaterialiseClaim,
        items_deleted: bool,
        now: Millis,
        retry_at: Millis,
    ) -> Result<(), DependencyError>;

    /// Sealed batches whose materialising is not done.
    async fn batches_waiting(&self) -> Result<u64, DependencyError>;

    async fn run_counts(&self, batch_id: &str) -> Result<RunCounts, DependencyError>;

    /// A page of the batch's runs in index order from `from_index`, optionally of one status.
    async fn runs(
        &self,
        batch_id: &str,
        status: Option<RunStatus>,
        from_index: u32,
        limit: u32,
    ) -> Result<Vec<Run>, DependencyError>;

    /// The tenant's run at `index` of a batch.
    async fn run(
        &self,
        tenant: &str,
        batch_id: &str,
        index: u32,
    ) -> Result<Option<Run>, DependencyError>;

    /// A page of the tenant's batches, newest first, after `after`.
    async fn list_batches(
        &self,
        tenant: &str,
        status: Option<BatchStatus>,
        after: Option<&BatchCursor>,
        limit: u32,
    ) -> Result<Vec<Batch>, DependencyError>;

    /// Cancels a batch that is not final: it becomes `CANCELED` and its pending runs too (claimed
    /// runs finish); runs written later are written canceled.
    async fn cancel_batch(
        &self,
        tenant: &str,
        id: &str,
        now: Millis,
    ) -> Result<Canceled, DependencyError>;
}
