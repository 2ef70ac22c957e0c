//! Materialising: a sealed batch becomes exactly `runCount` runs.
//!
//! Any node may run a pass; there is no leader. A pass claims one batch (a guarded update with an
//! expiry, so a dead node's batch is taken over), reads its items in index order from the queue in
//! chunks (one range read each), and writes each chunk as one multi-row insert with the checkpoint
//! in the same transaction, guarded by the claim. Reading and decoding chunk N+1 overlaps the
//! commit of chunk N; commits are strictly in order, one at a time, and the first failure stops
//! the pass (the batch is taken again later, from its checkpoint). Once every run is committed
//! the batch's queue items are deleted — never before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::decode::decode_chunk;
use super::work::RunsReady;
use crate::dependency::DependencyError;
use crate::events::{Events, RunEvent};
use crate::queue::ItemQueue;
use crate::store::runs::{ChunkCommitted, MaterialiseClaim, RunChunk, RunStatus, RunStore};
use crate::store::{Millis, now_millis};

/// How a pass runs.
#[derive(Debug, Clone, Copy)]
pub struct MaterialiseSettings {
    /// Runs written per statement (`SLUICE_MATERIALISE_CHUNK_ITEMS`).
    pub chunk_items: u32,
    /// Stored item bytes read into one chunk at most (`SLUICE_MATERIALISE_CHUNK_BYTES`); a chunk
    /// always holds at least one item.
    pub chunk_bytes: u64,
    /// Chunks in the pipeline, the one committing included (`SLUICE_MATERIALISE_PIPELINE_DEPTH`);
    /// 1 commits each chunk before reading the next.
    pub pipeline_depth: u32,
    /// How long a claim holds a batch without a commit (`SLUICE_MATERIALISE_LEASE_MS`); each
    /// commit renews it.
    pub lease: Duration,
}

/// How soon a batch whose pass failed may be taken again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How long after its seal a batch's queue items are kept. A stream still running at the seal
/// checks the seal before it enqueues (trusting an unsealed answer for at most
/// `ingest::pipeline::SEALED_CHECK_PERIOD`, 1 s), but an enqueue that checked before the seal can
/// land later (it may wait up to 30 s for the SQLite writer; Redis calls time out after 5 s);
/// deleting the items before it lands would let it store them again.
pub const QUEUE_DELETE_GRACE: Duration = Duration::from_secs(35);

#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    #[error(transparent)]
    Dependency(#[from] DependencyError),
    #[error("the chunk reader of batch {0} stopped before its last chunk")]
    ReaderStopped(String),
    /// A read or a commit took longer than the claim's lease: the pass gives the batch up rather
    /// than hold it (and this node's materialiser) while another node could go on.
    #[error("{step} of batch {batch_id} took longer than the claim's lease ({lease:?})")]
    TimedOut {
        step: &'static str,
        batch_id: String,
        lease: Duration,
    },
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// No batch was waiting (or every waiting one is held by another pass).
    Idle,
    /// Every run of the batch is written and its queue items are deleted.
    Done { batch_id: String, runs_written: u32 },
    /// Every run of the batch is written; its queue items are deleted by a later pass, once
    /// [`QUEUE_DELETE_GRACE`] has passed since the seal.
    Written { batch_id: String, runs_written: u32 },
    /// Another pass took the batch over while this one ran; it goes on from the checkpoint.
    ClaimLost { batch_id: String },
}

fn millis(duration: Duration) -> Millis {
    duration.as_millis().try_into().unwrap_or(Millis::MAX)
}

/// Claims the oldest waiting batch and materialises it.
pub async fn materialise_next(
    runs: &Arc<dyn RunStore>,
    queue: &Arc<dyn ItemQueue>,
    events: &Events,
    ready: &RunsReady,
    settings: MaterialiseSettings,
) -> Result<Pass, MaterialiseError> {
    let token = format!("{:032x}", rand::random::<u128>());
    let now = now_millis();
    let Some(claim) = runs
        .claim_materialise(&token, now, now + millis(settings.lease))
        .await?
    else {
        return Ok(Pass::Idle);
    };
    let started_at = claim.next_index;
    let runs_written = claim.run_count - started_at;
    let result = async {
        if write_runs(&claim, runs, queue, events, ready, settings).await?
            == ChunkCommitted::ClaimLost
        {
            return Ok(Pass::ClaimLost {
                batch_id: claim.batch_id.clone(),
            });
        }
        // Every run is written: a batch of failed items only is final now.
        events.batch_status(&claim.tenant, &claim.batch_id);
        let now = now_millis();
        let delete_at = claim.sealed_at + millis(QUEUE_DELETE_GRACE);
        if now < delete_at {
            runs.release_materialise(&claim, false, now, delete_at)
                .await?;
            return Ok(Pass::Written {
                batch_id: claim.batch_id.clone(),
                runs_written,
            });
        }
        queue.delete_batch(&claim.batch_id).await?;
        runs.release_materialise(&claim, true, now, now).await?;
        crate::metrics::batch_materialised();
        Ok::<_, MaterialiseError>(Pass::Done {
            batch_id: claim.batch_id.clone(),
            runs_written,
        })
    }
    .await;
    match result {
        Ok(pass) => Ok(pass),
        Err(error) => {
            let now = now_millis();
            let retry_at = now + millis(RETRY_AFTER_FAILURE);
            // If this fails too, the claim simply expires.
            if let Err(release) = runs.release_materialise(&claim, false, now, retry_at).await {
                tracing::warn!(batch = %claim.batch_id, error = %release, "could not release a failed pass's claim");
            }
            Err(error)
        }
    }
}

/// A committed chunk's failed items are `FAILED` runs already: one `run` event each; and the
/// batch's progress moved.
async fn report_chunk(claim: &MaterialiseClaim, chunk: &RunChunk, events: &Events) {
    for position in (0..chunk.len()).filter(|&position| chunk.failed[position]) {
        let run = RunEvent {
            index: chunk.index[position] as u32,
            status: RunStatus::Failed,
            attempt: 0,
            error: Some((
                chunk.error_code[position].clone().unwrap_or_default(),
                chunk.error_message[position].clone().unwrap_or_default(),
            )),
        };
        events.run_final(&claim.tenant, &claim.batch_id, run).await;
    }
    events.batch_changed(&claim.tenant, &claim.batch_id);
}

/// The last index the chunk starting at `first` may reach: `chunk_items` runs on, or the end.
fn chunk_end(first: u32, run_count: u32, chunk_items: u32) -> u32 {
    first
        .saturating_add(chunk_items.max(1) - 1)
        .min(run_count - 1)
}

type Prepared = Result<RunChunk, MaterialiseError>;

/// Writes the runs from the claim's checkpoint to the end: a reader task reads and decodes chunks
/// ahead while this task commits them in order. A chunk holds one of `pipeline_depth` permits from
/// before it is read until it is committed, so at most that many chunks are in memory, and with
/// depth 1 the next chunk is read only after the previous one committed.
async fn write_runs(
    claim: &MaterialiseClaim,
    runs: &Arc<dyn RunStore>,
    queue: &Arc<dyn ItemQueue>,
    events: &Events,
    ready: &RunsReady,
    settings: MaterialiseSettings,
) -> Result<ChunkCommitted, MaterialiseError> {
    let depth = settings.pipeline_depth.max(1) as usize;
    let permits = Arc::new(Semaphore::new(depth));
    let (chunks, mut prepared) =
        mpsc::channel::<(Prepared, tokio::sync::OwnedSemaphorePermit)>(depth);
    let reader = {
        let queue = queue.clone();
        let batch_id = claim.batch_id.clone();
        let (run_count, lease) = (claim.run_count, settings.lease);
        let mut first = claim.next_index;
        tokio::spawn(async move {
            while first < run_count {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let last = chunk_end(first, run_count, settings.chunk_items);
                let read = tokio::time::timeout(
                    lease,
                    queue.items_in_range(&batch_id, first, last, settings.chunk_bytes),
                );
                // The read may stop short of `last` (the chunk's bytes are bounded): the next
                // chunk starts after what it returned.
                let prepared = match read.await {
                    Ok(Ok(bodies)) if bodies.is_empty() => {
                        Err(MaterialiseError::ReaderStopped(batch_id.clone()))
                    }
                    Ok(read) => read
                        .map(|bodies| decode_chunk(first, &bodies))
                        .map_err(MaterialiseError::from),
                    Err(_) => Err(MaterialiseError::TimedOut {
                        step: "a chunk read",
                        batch_id: batch_id.clone(),
                        lease,
                    }),
                };
                let failed = prepared.is_err();
                if let Ok(chunk) = &prepared {
                    first += chunk.len() as u32;
                }
                if chunks.send((prepared, permit)).await.is_err() || failed {
                    return;
                }
            }
        })
    };
    let committed =
        commit_in_order(claim, runs, events, &mut prepared, ready, settings.lease).await;
    reader.abort();
    committed
}

async fn commit_in_order(
    claim: &MaterialiseClaim,
    runs: &Arc<dyn RunStore>,
    events: &Events,
    prepared: &mut mpsc::Receiver<(Prepared, tokio::sync::OwnedSemaphorePermit)>,
    ready: &RunsReady,
    lease: Duration,
) -> Result<ChunkCommitted, MaterialiseError> {
    let mut next = claim.next_index;
    while let Some((chunk, permit)) = prepared.recv().await {
        let chunk = chunk?;
        let started = Instant::now();
        let now = now_millis();
        let committed = tokio::time::timeout(
            lease,
            runs.commit_chunk(claim, &chunk, now, now + millis(lease)),
        )
        .await
        .map_err(|_| MaterialiseError::TimedOut {
            step: "a chunk commit",
            batch_id: claim.batch_id.clone(),
            lease,
        })??;
        drop(permit);
        if committed == ChunkCommitted::ClaimLost {
            return Ok(committed);
        }
        crate::metrics::chunk_committed(started.elapsed(), chunk.len());
        ready.runs_added();
        next += chunk.len() as u32;
        report_chunk(claim, &chunk, events).await;
    }
    if next != claim.run_count {
        return Err(MaterialiseError::ReaderStopped(claim.batch_id.clone()));
    }
    Ok(ChunkCommitted::Written)
}

#[cfg(test)]
mod tests {
    use super::chunk_end;

    #[test]
    fn a_chunk_ends_after_its_items_or_at_the_last_index() {
        assert_eq!(chunk_end(0, 10, 4), 3);
        assert_eq!(chunk_end(8, 10, 4), 9);
        assert_eq!(chunk_end(9, 10, 4), 9);
        assert_eq!(chunk_end(0, 1, 5000), 0);
        assert_eq!(chunk_end(u32::MAX - 3, u32::MAX, 2), u32::MAX - 2);
        assert_eq!(chunk_end(u32::MAX - 1, u32::MAX, 2), u32::MAX - 1);
    }
}
