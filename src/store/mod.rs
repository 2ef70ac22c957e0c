//! Batch metadata in the SQL store: creation with idempotency, lookup, sealing, expiry.
//!
//! Adapters: Postgres (production) and SQLite (embedded). The store never holds items; those live in
//! the queue.

pub mod adapters;
pub mod retention;
pub mod runs;
pub mod stats;
pub mod work;

use async_trait::async_trait;

use crate::dependency::DependencyError;

/// Milliseconds since the Unix epoch, the store's one time unit.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    Pending,
    Processing,
    Completed,
    PartialFailed,
    Aborted,
    /// Canceled by the tenant (`POST /api/v3/batches/{id}/cancel`); final.
    Canceled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::PartialFailed => "PARTIAL_FAILED",
            Self::Aborted => "ABORTED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PENDING" => Self::Pending,
            "PROCESSING" => Self::Processing,
            "COMPLETED" => Self::Completed,
            "PARTIAL_FAILED" => Self::PartialFailed,
            "ABORTED" => Self::Aborted,
            "CANCELED" => Self::Canceled,
            _ => return None,
        })
    }
}

/// A batch as Phase 1 creates it.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: String,
    pub tenant: String,
    pub run_count: u32,
    pub idempotency_key: Option<String>,
    pub task_identifiers: Vec<String>,
    pub parent_run_id: Option<String>,
    pub resume_parent_on_completion: bool,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub tenant: String,
    pub run_count: u32,
    pub status: BatchStatus,
    pub sealed: bool,
    pub idempotency_key: Option<String>,
    pub created_at: Millis,
    pub sealed_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    /// Runs `0..materialised_count` are written (the materialiser's checkpoint).
    pub materialised_count: u32,
}

impl Batch {
    /// An unsealed batch older than the seal timeout is as good as aborted, even before the
    /// expiry job has marked it.
    pub fn is_expired(&self, seal_timeout_ms: i64, now: Millis) -> bool {
        self.status == BatchStatus::Aborted
            || (!self.sealed && now.saturating_sub(self.created_at) > seal_timeout_ms)
    }

    /// The batch's status, counting an unsealed batch past its seal timeout as aborted.
    pub fn effective_status(&self, seal_timeout_ms: i64, now: Millis) -> BatchStatus {
        if self.is_expired(seal_timeout_ms, now) {
            BatchStatus::Aborted
        } else {
            self.status
        }
    }
}

/// Result of Phase 1: a new batch, or the one an earlier request with the same key created.
#[derive(Debug, Clone)]
pub enum Created {
    New(Batch),
    Existing(Batch),
}

#[async_trait]
pub trait BatchStore: Send + Sync + 'static {
    /// Creates the batch, or returns the tenant's batch with the same idempotency key.
    async fn create_batch(&self, batch: NewBatch) -> Result<Created, DependencyError>;

    /// The tenant's batch with this id, if any.
    async fn batch(&self, tenant: &str, id: &str) -> Result<Option<Batch>, DependencyError>;

    /// Seals a pending batch. Returns whether this call sealed it; `false` when it was already
    /// sealed or is no longer pending.
    async fn seal(&self, id: &str, now: Millis) -> Result<bool, DependencyError>;

    /// Marks pending batches created before `created_before` as aborted; returns them as
    /// `(tenant, id)`.
    async fn abort_unsealed(
        &self,
        created_before: Millis,
    ) -> Result<Vec<(String, String)>, DependencyError>;

    async fn ping(&self) -> Result<(), DependencyError>;
}
