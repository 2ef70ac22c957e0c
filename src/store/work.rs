//! Work on runs in the SQL store: claiming with a lease, heartbeats, completions and the sweep of
//! expired leases.
//!
//! Every method takes a group of requests and writes them in one transaction (the status flusher,
//! `crate::flusher`, gathers them). Every write is fenced: a heartbeat or completion applies only to
//! a run that is `CLAIMED` under the lease it names, so a late or repeated report never overwrites a
//! newer state. A batch turns final in the same transaction as the write that makes its last run
//! final, exactly once however the last writes race (the batch row is locked before the check).

use async_trait::async_trait;

use super::Millis;
use super::runs::RunStatus;
use crate::dependency::DependencyError;

/// One claim call: up to `limit` of the tenant's pending runs, of `tasks` when given.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub tenant: String,
    pub tasks: Option<Vec<String>>,
    pub limit: u32,
    pub lease_id: String,
    pub lease_until: Millis,
}

/// A run as its claimer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRun {
    pub batch_id: String,
    pub index: u32,
    pub task: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload_type: String,
    /// The payload's JSON bytes, or the JSON string of its storage key when offloaded.
    pub payload: Option<Vec<u8>>,
    pub options: Option<String>,
}

/// How a worker says a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    /// Back to `PENDING` after a delay, unless the run has used its attempts (then `FAILED`).
    Retry,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Retry => "RETRY",
        }
    }
}

/// A run's reference as a worker names it, scoped to its tenant, with the lease it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedRun {
    pub tenant: String,
    pub batch_id: String,
    pub index: u32,
    pub lease_id: String,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub run: LeasedRun,
    pub outcome: Outcome,
    /// JSON.
    pub output: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// For a retry: not claimed again before this long.
    pub retry_delay_ms: i64,
}

/// What a fenced write did to one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced<T> {
    /// Written; the run's new state.
    Applied(T),
    /// The run is not `CLAIMED` under this lease any more: the lease expired and the run went back
    /// (or was claimed again), or it was already reported.
    LeaseLost,
    RunNotFound,
}

/// A completion written: the run's status and attempt after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub status: RunStatus,
    pub attempt: u32,
    /// Written by this call; `false` for a report repeated under the same lease, which an
    /// earlier call wrote.
    pub written: bool,
}

#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub run: LeasedRun,
    pub lease_until: Millis,
}

/// What one sweep of expired leases did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Runs back to `PENDING` for another attempt.
    pub returned: u64,
    /// Runs `FAILED` with `LEASE_EXPIRED`, their attempts used.
    pub failed: u64,
    /// Those failed runs: `(tenant, batch id, index, attempt)`.
    pub failed_runs: Vec<(String, String, u32, u32)>,
    /// Batches with a run returned to `PENDING`: `(tenant, batch id)`.
    pub returned_in: Vec<(String, String)>,
}

#[async_trait]
pub trait WorkStore: Send + Sync + 'static {
    /// Claims runs for each request, in one transaction: each request's runs are its own (no run
    /// is given twice), taken fairly across the tenant's batches, oldest index first within one.
    async fn claim(
        &self,
        requests: &[ClaimRequest],
        now: Millis,
    ) -> Result<Vec<Vec<ClaimedRun>>, DependencyError>;

    /// Extends the leases, fenced.
    async fn heartbeat(
        &self,
        beats: &[Heartbeat],
        now: Millis,
    ) -> Result<Vec<Fenced<Millis>>, DependencyError>;

    /// Writes the completions, fenced; batches whose last run turns final turn final too.
    async fn complete(
        &self,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Fenced<Completed>>, DependencyError>;

    /// Returns up to `limit` runs whose lease expired before `now`: to `PENDING` with one more
    /// attempt, or `FAILED` (`LEASE_EXPIRED`) when their attempts are used.
    async fn sweep_expired_leases(&self, now: Millis, limit: u32)
    -> Result<Swept, DependencyError>;

    /// Whether the store takes writes (used while a flusher is failing).
    async fn probe(&self) -> Result<(), DependencyError>;
}
