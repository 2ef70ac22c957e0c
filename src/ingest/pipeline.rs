//! Runs one Phase 2 body through the pipeline:
//!
//! ```text
//! body → frames (lazy) → decode → offload (buffer_unordered(concurrency)) → enqueue (micro-batched)
//! ```
//!
//! A line is decoded as it is framed (the framer lends it only until the next one); only an item
//! whose payload is offloaded keeps a slice of the read, for the payload store.
//!
//! Items that are ready together are enqueued in one queue call: one round trip for many items,
//! each item still deduplicated on its own. With a concurrency of 1 every item is read, offloaded
//! and enqueued before the next line is read.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};

use super::summary::IngestSummary;
use crate::dependency::DependencyError;
use crate::events::Events;
use crate::metrics;
use crate::payloads::{PayloadStore, payload_key};
use crate::protocol::framer::{Frame, FrameKind, map_frames};
use crate::protocol::item::{Decoded, LineCode, LineRules, Rejection, decode_frame};
use crate::protocol::stored::{OFFLOADED_PAYLOAD_TYPE, StoredFailure, StoredItem, to_json};
use crate::queue::{Enqueued, ItemQueue, QueuedItem};
use crate::store::BatchStore;

/// Most item bytes one enqueue call carries (one item is always let through).
const MAX_BYTES_PER_ENQUEUE: usize = 1 << 20;
/// Enqueue calls of several items in flight at once: one is sent while the next is prepared.
const ENQUEUES_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub concurrency: usize,
    /// Most items one queue call carries; 1 makes one queue round trip per item.
    pub max_items_per_enqueue: usize,
    pub max_line_bytes: usize,
    pub offload_threshold_bytes: usize,
}

/// Why a stream stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body could not be read or decoded (cut connection, corrupt gzip, …).
    #[error("request body could not be read: {0}")]
    Body(std::io::Error),
    #[error(transparent)]
    Dependency(#[from] DependencyError),
}

/// The backends a stream writes to.
pub struct IngestTarget {
    pub batch_id: Arc<str>,
    pub tenant: Arc<str>,
    pub run_count: u32,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
    /// Read before enqueuing (at most every [`SEALED_CHECK_PERIOD`]): a batch sealed meanwhile
    /// takes nothing more.
    pub store: Arc<dyn BatchStore>,
    /// Until when the last read of the batch found it unsealed and is trusted.
    pub open_until: std::sync::Mutex<Option<Instant>>,
    /// Told after each enqueue, for the batch's progress events.
    pub events: Events,
}

/// How long a read that found the batch unsealed is trusted. Far below the delay before a sealed
/// batch's queue items are deleted (`runs::materialise::QUEUE_DELETE_GRACE`), so an enqueue that
/// trusted it lands long before that deletion, never after it; and one read per stream per second
/// costs nothing next to the enqueues.
pub const SEALED_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Enqueues `items`, unless the batch was sealed since the stream began: then every index is
/// taken and each item is a duplicate. Checked first because a sealed batch's queue items are
/// deleted once its runs are written, and an enqueue after that would store them again.
async fn enqueue_unless_sealed(
    target: &IngestTarget,
    items: &[QueuedItem],
) -> Result<Enqueued, DependencyError> {
    let trusted = *target.open_until.lock().expect("never poisoned");
    if trusted.is_none_or(|until| Instant::now() >= until) {
        let read_at = Instant::now();
        let batch = target.store.batch(&target.tenant, &target.batch_id).await?;
        if batch.is_some_and(|batch| batch.sealed) {
            return Ok(Enqueued {
                stored: vec![false; items.len()],
                taken_after: None,
            });
        }
        *target.open_until.lock().expect("never poisoned") = Some(read_at + SEALED_CHECK_PERIOD);
    }
    let enqueued = target.queue.enqueue(&target.batch_id, items).await?;
    target
        .events
        .batch_changed(&target.tenant, &target.batch_id);
    Ok(enqueued)
}

/// What one line turned into once its payload (if large) is offloaded.
enum Step {
    Enqueue(Enqueue),
    Reject(Rejection),
}

/// An item to store.
struct Enqueue {
    item: QueuedItem,
    /// The code of its failure, if it is a failed item.
    failure: Option<LineCode>,
    /// The key its payload was offloaded to, if it was.
    offloaded: Option<String>,
}

/// Streams `body` into the batch. The summary counts everything enqueued before any error, so a
/// caller can report it either way.
pub async fn ingest(
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    target: &IngestTarget,
    limits: IngestLimits,
) -> (IngestSummary, Result<(), IngestError>) {
    let mut summary = IngestSummary::default();
    let result = run(body, target, limits, &mut summary).await;
    (summary, result)
}

async fn run(
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    target: &IngestTarget,
    limits: IngestLimits,
    summary: &mut IngestSummary,
) -> Result<(), IngestError> {
    let rules = LineRules {
        run_count: target.run_count,
        max_line_bytes: limits.max_line_bytes,
    };
    let mut emit_position = 0;
    let steps = map_frames(body, limits.max_line_bytes, move |frame| {
        let prepared = prepare(frame, emit_position, rules, limits, &target.batch_id);
        emit_position += 1;
        prepared
    })
    .map(|prepared| async move {
        let prepared = prepared.map_err(IngestError::Body)?;
        offload(prepared, target).await
    })
    .buffer_unordered(limits.concurrency.max(1));
    // With a concurrency of 1 each item is enqueued before the next line is read.
    let sequential = limits.concurrency <= 1;
    let max_items = if sequential {
        1
    } else {
        limits.max_items_per_enqueue.max(1)
    };
    // One item per call (the per-item path) keeps as many calls in flight as items; grouped
    // calls keep one in flight while the next group is prepared.
    let in_flight = match (sequential, max_items) {
        (true, _) => 1,
        (false, 1) => limits.concurrency,
        (false, _) => ENQUEUES_IN_FLIGHT,
    };
    let enqueued = ready_batches(steps, max_items)
        .map(|steps| enqueue_batch(steps, target))
        .buffered(in_flight);
    let mut enqueued = std::pin::pin!(enqueued);
    while let Some(batch) = enqueued.next().await {
        for rejection in batch.rejections {
            summary.record_rejection(rejection);
        }
        for (failure, newly_stored) in batch.stored {
            summary.record_enqueued(failure, newly_stored);
        }
        summary.record_taken(batch.taken_after);
        if let Some(error) = batch.error {
            return Err(error);
        }
    }
    Ok(())
}

/// Groups the items that are ready together, without waiting for more: the first of a group is
/// awaited, the rest taken only if already prepared.
fn ready_batches<S>(steps: S, max_items: usize) -> impl Stream<Item = Vec<S::Item>>
where
    S: Stream<Item = Result<Step, IngestError>> + Unpin,
{
    futures::stream::unfold(steps, move |mut steps| async move {
        let first = steps.next().await?;
        let mut bytes = step_bytes(&first);
        let mut ready = vec![first];
        while ready.len() < max_items && bytes < MAX_BYTES_PER_ENQUEUE {
            match steps.next().now_or_never() {
                Some(Some(step)) => {
                    bytes += step_bytes(&step);
                    ready.push(step);
                }
                _ => break,
            }
        }
        Some((ready, steps))
    })
}

fn step_bytes(step: &Result<Step, IngestError>) -> usize {
    match step {
        Ok(Step::Enqueue(enqueue)) => enqueue.item.body.len(),
        _ => 0,
    }
}

/// What one enqueue call did: (failure code, newly stored) per item, and why the stream must stop.
struct EnqueuedBatch {
    stored: Vec<(Option<LineCode>, bool)>,
    taken_after: Option<u64>,
    rejections: Vec<Rejection>,
    error: Option<IngestError>,
}

async fn enqueue_batch(
    steps: Vec<Result<Step, IngestError>>,
    target: &IngestTarget,
) -> EnqueuedBatch {
    let mut items = Vec::with_capacity(steps.len());
    let mut failures = Vec::with_capacity(steps.len());
    let mut offloaded = Vec::new();
    let mut rejections = Vec::new();
    let mut error = None;
    for step in steps {
        match step {
            Ok(Step::Enqueue(enqueue)) => {
                if let Some(key) = enqueue.offloaded {
                    offloaded.push((items.len(), key));
                }
                items.push(enqueue.item);
                failures.push(enqueue.failure);
            }
            Ok(Step::Reject(rejection)) => rejections.push(rejection),
            Err(stopped) => error = Some(stopped),
        }
    }
    // Items prepared before an error are still enqueued: nothing read is thrown away.
    let mut taken_after = None;
    let stored = if items.is_empty() {
        Vec::new()
    } else {
        match enqueue_unless_sealed(target, &items).await {
            Ok(enqueued) => {
                taken_after = enqueued.taken_after;
                let lost = offloaded
                    .into_iter()
                    .filter(|&(position, _)| !enqueued.stored[position])
                    .map(|(position, key)| (items[position].index, key));
                discard_lost_payloads(lost, target).await;
                failures.into_iter().zip(enqueued.stored).collect()
            }
            Err(failed) => {
                error = Some(failed.into());
                Vec::new()
            }
        }
    };
    EnqueuedBatch {
        stored,
        taken_after,
        rejections,
        error,
    }
}

/// A line decoded, before any I/O.
enum Prepared {
    Ready(Step),
    /// A valid item whose payload goes to the payload store first; `item` already refers to it.
    Offload {
        key: String,
        payload: Bytes,
        item: QueuedItem,
    },
}

/// Decodes one frame into what to enqueue; a large payload is set aside for the payload store.
fn prepare(
    frame: Frame<'_>,
    emit_position: u64,
    rules: LineRules,
    limits: IngestLimits,
    batch_id: &str,
) -> Prepared {
    let (index, body, failure) = match decode_frame(&frame, emit_position, rules) {
        Decoded::Rejected(rejection) => return Prepared::Ready(Step::Reject(rejection)),
        Decoded::Failed { index, failure } => {
            let body = to_json(&StoredFailure::new(&failure, frame.line_number));
            (index, body, Some(failure.code))
        }
        Decoded::Valid {
            index,
            task,
            payload,
            payload_type,
            options,
        } => {
            let mut item = StoredItem {
                task: &task,
                payload,
                payload_type: &payload_type,
                options: options.as_ref(),
            };
            let offload = payload.filter(|raw| raw.get().len() >= limits.offload_threshold_bytes);
            if let (Some(raw), FrameKind::Line(line)) = (offload, frame.kind) {
                let key = payload_key(batch_id, index, raw.get().as_bytes());
                let reference =
                    serde_json::value::to_raw_value(&key).expect("a string always serialises");
                item.payload = Some(&reference);
                item.payload_type = OFFLOADED_PAYLOAD_TYPE;
                let body = Bytes::from(to_json(&item));
                return Prepared::Offload {
                    // The payload's bytes are a slice of the read: no copy on the way out.
                    payload: line.share(raw.get().as_bytes()),
                    item: QueuedItem {
                        index,
                        failed: false,
                        body,
                    },
                    key,
                };
            }
            (index, to_json(&item), None)
        }
    };
    let item = QueuedItem {
        index,
        failed: failure.is_some(),
        body: Bytes::from(body),
    };
    Prepared::Ready(Step::Enqueue(Enqueue {
        item,
        failure,
        offloaded: None,
    }))
}

/// Stores an offloaded payload; what to enqueue once it is stored.
async fn offload(prepared: Prepared, target: &IngestTarget) -> Result<Step, IngestError> {
    match prepared {
        Prepared::Ready(step) => Ok(step),
        Prepared::Offload { key, payload, item } => {
            let started = Instant::now();
            target.payloads.put(&key, payload).await?;
            metrics::offload_latency(started.elapsed());
            Ok(Step::Enqueue(Enqueue {
                item,
                failure: None,
                offloaded: Some(key),
            }))
        }
    }
}

/// The payload reference of a stored item, if its payload was offloaded.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredReference {
    payload: Option<serde_json::Value>,
    payload_type: Option<String>,
}

/// Removes the payload objects of offloaded items that lost their index to an earlier item
/// (`(index, key)` pairs), unless the winner refers to the same object: the same payload streamed
/// again has the same key, and that object is the winner's.
///
/// A failure here is logged, not answered: the dedup already decided, and an object left behind
/// is only unreferenced garbage under the batch's prefix, which nothing reads.
async fn discard_lost_payloads(lost: impl Iterator<Item = (u32, String)>, target: &IngestTarget) {
    let discards = lost.map(|(index, key)| async move {
        let winner = target.queue.item(&target.batch_id, index).await?;
        let winner_key = winner
            .and_then(|body| serde_json::from_slice::<StoredReference>(&body).ok())
            .filter(|stored| stored.payload_type.as_deref() == Some(OFFLOADED_PAYLOAD_TYPE))
            .and_then(|stored| stored.payload);
        if winner_key.as_ref().and_then(|key| key.as_str()) != Some(key.as_str()) {
            target.payloads.delete(&key).await?;
            metrics::offloaded_payload_discarded();
        }
        Ok::<_, DependencyError>(())
    });
    for result in futures::future::join_all(discards).await {
        if let Err(error) = result {
            tracing::warn!(batch = %target.batch_id, %error, "a deduplicated item's payload object could not be removed");
        }
    }
}
