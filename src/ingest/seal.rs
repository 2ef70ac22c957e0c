//! Sealing: once every index of a batch is enqueued, the batch is sealed with a conditional update.
//! Losing that race to a concurrent request is still success.

use crate::dependency::DependencyError;
use crate::queue::{IndexRange, ItemQueue, Progress};
use crate::store::{Batch, BatchStore, now_millis};

/// At most this many missing ranges are reported.
pub const MAX_MISSING_RANGES: usize = 1000;

#[derive(Debug, Clone)]
pub enum SealOutcome {
    /// Sealed, by this call or by a concurrent one.
    Sealed,
    Unsealed {
        progress: Progress,
        /// Ranges still missing, ascending, at most [`MAX_MISSING_RANGES`].
        missing: Vec<IndexRange>,
        /// The batch as it is now (it may have been aborted meanwhile), if it still exists.
        current: Option<Batch>,
    },
}

/// Seals the batch if every index is taken. `taken_hint` is a count of taken indexes the caller
/// already saw (from its last enqueue); when it shows the batch complete, no progress read is needed.
pub async fn seal_if_complete(
    store: &dyn BatchStore,
    queue: &dyn ItemQueue,
    batch: &Batch,
    taken_hint: Option<u64>,
) -> Result<SealOutcome, DependencyError> {
    let run_count = u64::from(batch.run_count);
    let progress = match taken_hint {
        // Indexes are never untaken, so a complete count stays complete. The failed count is
        // only shown on unsealed answers, which a complete batch does not give.
        Some(taken) if taken >= run_count => Progress {
            enqueued: taken,
            failed: 0,
        },
        _ => queue.progress(&batch.id).await?,
    };
    let complete = progress.enqueued == run_count;
    if complete && store.seal(&batch.id, now_millis()).await? {
        crate::metrics::batch_sealed();
        return Ok(SealOutcome::Sealed);
    }
    // Not sealed by this call: sealed by a concurrent request, aborted, or incomplete.
    let current = store.batch(&batch.tenant, &batch.id).await?;
    if current.as_ref().is_some_and(|current| current.sealed) {
        return Ok(SealOutcome::Sealed);
    }
    let missing = if complete {
        Vec::new()
    } else {
        queue
            .missing(&batch.id, batch.run_count, MAX_MISSING_RANGES)
            .await?
    };
    Ok(SealOutcome::Unsealed {
        progress,
        missing,
        current,
    })
}
