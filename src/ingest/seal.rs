//! Sealing: once every index of a batch is enqueued, the batch is sealed with a conditional update.
//! Losing that race to a concurrent request is still success.

use crate::dependency::DependencyError;
use crate::queue::{IndexRange, ItemQueue, Progress};
use crate::store::{Batch, BatchStore, now_millis};

/// At most this many missing ranges are reported.
pub const MAX_MISSING_RANGES: usize = 1000;

#[derive(Debug, Clone)]
pub struct SealOutcome {
    pub sealed: bool,
    pub progress: Progress,
    /// Ranges still missing; empty once sealed.
    pub missing: Vec<IndexRange>,
    /// The batch as it is now, when it did not seal (it may have been aborted meanwhile).
    pub unsealed: Option<Batch>,
}

pub async fn seal_if_complete(
    store: &dyn BatchStore,
    queue: &dyn ItemQueue,
    batch: &Batch,
) -> Result<SealOutcome, DependencyError> {
    let progress = queue.progress(&batch.id).await?;
    let complete = progress.enqueued == u64::from(batch.run_count);
    if complete && store.seal(&batch.id, now_millis()).await? {
        return Ok(SealOutcome {
            sealed: true,
            progress,
            missing: Vec::new(),
            unsealed: None,
        });
    }
    // Not sealed by this call: sealed by a concurrent request, aborted, or incomplete.
    let current = store.batch(&batch.tenant, &batch.id).await?;
    let sealed = current.as_ref().is_some_and(|current| current.sealed);
    let missing = if complete || sealed {
        Vec::new()
    } else {
        queue
            .missing(&batch.id, batch.run_count, MAX_MISSING_RANGES)
            .await?
    };
    Ok(SealOutcome {
        sealed,
        progress,
        missing,
        unsealed: current.filter(|current| !current.sealed),
    })
}
