//! The ingest use cases, as plain functions over the ports: create a batch, look one up, and stream
//! items into one and seal it. They return domain results and errors; the HTTP layer maps them to
//! answers in one place and holds no rule of its own.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

use super::pipeline::{IngestError, IngestLimits, IngestTarget, ingest};
use super::seal::{SealOutcome, seal_if_complete};
use super::summary::IngestSummary;
use crate::dependency::DependencyError;
use crate::ports::Ports;
use crate::protocol::wire::CreateBatchRequest;
use crate::store::{Batch, BatchStatus, BatchStore, Created, NewBatch, now_millis};

pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 2048;

/// Why a use case did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("no batch with this id")]
    NotFound,
    #[error("batch is {} and accepts no more items", .0.as_str())]
    NotPending(BatchStatus),
    #[error(transparent)]
    Dependency(#[from] DependencyError),
}

/// A new unguessable batch id: 128 random bits, URL-safe.
fn new_batch_id() -> String {
    format!("batch_{:032x}", rand::random::<u128>())
}

/// Checks a Phase 1 request beyond its JSON shape; returns its runCount.
fn validate(request: &CreateBatchRequest, max_items: u32) -> Result<u32, BatchError> {
    let run_count = u32::try_from(request.run_count)
        .ok()
        .filter(|count| (1..=max_items).contains(count))
        .ok_or_else(|| {
            BatchError::Invalid(format!(
                "runCount must be an integer from 1 to {max_items}, got {}",
                request.run_count
            ))
        })?;
    if let Some(key) = &request.idempotency_key
        && key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS
    {
        return Err(BatchError::Invalid(format!(
            "idempotencyKey must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    // Postgres text cannot hold NUL; refusing it here gives both modes the same answer.
    for (name, value) in [
        ("idempotencyKey", &request.idempotency_key),
        ("parentRunId", &request.parent_run_id),
    ] {
        if value.as_deref().is_some_and(|value| value.contains('\0')) {
            return Err(BatchError::Invalid(format!(
                "{name} must not contain NUL characters"
            )));
        }
    }
    Ok(run_count)
}

/// Phase 1: creates the tenant's batch, or finds the one an earlier request with the same
/// idempotency key created.
pub async fn create_batch(
    store: &dyn BatchStore,
    tenant: String,
    request: CreateBatchRequest,
    max_items: u32,
) -> Result<Created, BatchError> {
    let run_count = validate(&request, max_items)?;
    let created = store
        .create_batch(NewBatch {
            id: new_batch_id(),
            tenant,
            run_count,
            idempotency_key: request.idempotency_key,
            task_identifiers: request.task_identifiers.unwrap_or_default(),
            parent_run_id: request.parent_run_id,
            resume_parent_on_completion: request.resume_parent_on_completion.unwrap_or(false),
            created_at: now_millis(),
        })
        .await?;
    Ok(created)
}

/// The tenant's batch (another tenant's is not found) and its status as of now.
pub async fn find_batch(
    store: &dyn BatchStore,
    tenant: &str,
    id: &str,
    seal_timeout_ms: u64,
) -> Result<(Batch, BatchStatus), BatchError> {
    let batch = store.batch(tenant, id).await?.ok_or(BatchError::NotFound)?;
    let status = batch.effective_status(seal_timeout_ms as i64, now_millis());
    Ok((batch, status))
}

/// What streaming into a batch did.
#[derive(Debug)]
pub struct StreamReport {
    pub batch: Batch,
    pub summary: IngestSummary,
    /// Whether the batch is sealed now; `None` when no seal could be tried (a backend failed).
    pub seal: Option<SealOutcome>,
    /// Why the stream stopped before its end, if it did. Everything enqueued before is kept.
    pub stop: Option<StreamStop>,
}

#[derive(Debug)]
pub enum StreamStop {
    /// The body could not be read further: a limit, a cut connection, shutdown, bad encoding.
    Body(io::Error),
    /// A backend failed mid-stream or at the seal.
    Dependency(DependencyError),
}

/// Phase 2: streams `reads` into the tenant's batch, then seals it if every index is taken.
///
/// A sealed batch takes nothing more (nothing is read); a batch that is not accepting items —
/// also one aborted while this stream ran — is [`BatchError::NotPending`].
pub async fn stream_into_batch(
    ports: &Ports,
    tenant: &str,
    id: &str,
    reads: impl Stream<Item = io::Result<Bytes>> + Send + Unpin,
    limits: IngestLimits,
    seal_timeout_ms: u64,
) -> Result<StreamReport, BatchError> {
    let (batch, status) = find_batch(ports.store.as_ref(), tenant, id, seal_timeout_ms).await?;
    if batch.sealed {
        return Ok(StreamReport {
            batch,
            summary: IngestSummary::default(),
            seal: Some(SealOutcome::Sealed),
            stop: None,
        });
    }
    accepting(status)?;

    let target = IngestTarget {
        batch_id: Arc::from(batch.id.as_str()),
        tenant: Arc::from(tenant),
        run_count: batch.run_count,
        queue: ports.queue.clone(),
        payloads: ports.payloads.clone(),
        store: ports.store.clone(),
        open_until: std::sync::Mutex::new(None),
        events: ports.events.clone(),
    };
    let (summary, result) = ingest(reads, &target, limits).await;
    summary.record_metrics();
    let mut stop = match result {
        Ok(()) => None,
        // The items read before the body broke are kept; the batch may even be complete now.
        Err(IngestError::Body(error)) => Some(StreamStop::Body(error)),
        Err(IngestError::Dependency(error)) => {
            return Ok(StreamReport {
                batch,
                summary,
                seal: None,
                stop: Some(StreamStop::Dependency(error)),
            });
        }
    };
    let seal = match seal_if_complete(
        ports.store.as_ref(),
        ports.queue.as_ref(),
        &batch,
        summary.taken_after,
    )
    .await
    {
        Ok(seal) => {
            if matches!(seal, SealOutcome::Sealed) {
                // This node starts writing the batch's runs now, not at the next wake-up.
                ports.sealed.batch_sealed();
                ports.events.batch_status(tenant, &batch.id);
            }
            Some(seal)
        }
        Err(error) => {
            match &stop {
                // The body's own stop is the answer the client acts on (shutting down: retry
                // elsewhere; a limit: fix the body); the seal is tried again by that retry.
                Some(StreamStop::Body(body)) => tracing::warn!(
                    batch = %batch.id, %error, stopped = %body,
                    "the seal check after a stopped stream failed"
                ),
                _ => stop = Some(StreamStop::Dependency(error)),
            }
            None
        }
    };
    if let Some(SealOutcome::Unsealed {
        current: Some(current),
        ..
    }) = &seal
    {
        // Aborted while this stream ran: what was read is kept, but the batch will never seal.
        accepting(current.effective_status(seal_timeout_ms as i64, now_millis()))?;
    }
    Ok(StreamReport {
        batch,
        summary,
        seal,
        stop,
    })
}

fn accepting(status: BatchStatus) -> Result<(), BatchError> {
    match status {
        BatchStatus::Pending => Ok(()),
        other => Err(BatchError::NotPending(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> CreateBatchRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn create_requests_are_checked_beyond_their_shape() {
        let valid = request(serde_json::json!({ "runCount": 3, "idempotencyKey": "k" }));
        assert_eq!(validate(&valid, 10).unwrap(), 3);
        for invalid in [
            serde_json::json!({ "runCount": 0 }),
            serde_json::json!({ "runCount": 11 }),
            serde_json::json!({ "runCount": 1, "idempotencyKey": "k".repeat(2049) }),
            serde_json::json!({ "runCount": 1, "idempotencyKey": "a\0b" }),
            serde_json::json!({ "runCount": 1, "parentRunId": "\0" }),
        ] {
            let error = validate(&request(invalid.clone()), 10).unwrap_err();
            assert!(matches!(error, BatchError::Invalid(_)), "{invalid}");
        }
    }
}
