//! Phase 2: `POST /api/v3/batches/{id}/items`, an NDJSON body streamed into the batch.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::auth::Tenant;
use super::batches::BatchId;
use super::error::ApiError;
use crate::app::AppState;
use crate::ingest::body::{BodyStop, ContentEncoding, body_reads};
use crate::ingest::pipeline::{IngestError, IngestTarget, ingest};
use crate::ingest::seal::{SealOutcome, seal_if_complete};
use crate::ingest::summary::IngestSummary;
use crate::protocol::quote::{bounded, quote};
use crate::protocol::wire::{IngestResponse, RejectedLine};
use crate::store::{Batch, BatchStatus, now_millis};

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-ndjson" | "application/ndjson" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/x-ndjson or application/ndjson, got {}",
            quote(content_type)
        ))),
    }
}

fn content_encoding(headers: &HeaderMap) -> Result<ContentEncoding, ApiError> {
    let raw = headers
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("?"));
    ContentEncoding::parse(raw)
        .ok_or_else(|| ApiError::UnsupportedEncoding(quote(raw.unwrap_or_default())))
}

/// A body announced larger than the wire cap is refused before a byte of it is read.
fn check_declared_length(headers: &HeaderMap, max_encoded_bytes: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_encoded_bytes => {
            Err(ApiError::BodyTooLarge(max_encoded_bytes))
        }
        _ => Ok(()),
    }
}

pub async fn stream_items(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    check_content_type(&parts.headers)?;
    let encoding = content_encoding(&parts.headers)?;
    check_declared_length(&parts.headers, state.config.max_encoded_body_bytes)?;
    // Shed load before any work: a stream turned away here has had nothing read.
    let _permit = state
        .shield
        .admit(state.config.ingest_concurrency)
        .map_err(|overload| {
            crate::metrics::request_shed("overloaded");
            ApiError::Overloaded(overload)
        })?;
    let batch = state.find_batch(&tenant, &id).await?;
    if batch.sealed {
        // Nothing can be added to a sealed batch: answer without reading the body.
        let summary = IngestSummary::default();
        let outcome = sealed_outcome(&batch);
        return Ok(Json(response(&batch, &summary, Some(&outcome))).into_response());
    }
    match state.effective_status(&batch, now_millis()) {
        BatchStatus::Pending => {}
        other => return Err(ApiError::BatchNotPending(other.as_str())),
    }

    let target = IngestTarget {
        batch_id: Arc::from(batch.id.as_str()),
        run_count: batch.run_count,
        queue: state.queue.clone(),
        payloads: state.payloads.clone(),
    };
    let reads = body_reads(body, encoding, state.body_limits(), state.stream_stop());
    let (summary, result) = ingest(reads, &target, state.ingest_limits()).await;
    summary.record_metrics();
    let body_error = match result {
        Ok(()) => None,
        // A backend failed mid-stream: no seal is tried, and the answer still says what this
        // request enqueued before it failed (all of it is kept). So does a failed seal below.
        Err(IngestError::Dependency(error)) => {
            let body = response(&batch, &summary, None);
            return Err(ApiError::StreamFailed(error, Box::new(body)));
        }
        // The items read before the body broke are kept; the batch may even be complete now.
        Err(IngestError::Body(error)) => Some(error),
    };
    let outcome = seal_if_complete(
        state.store.as_ref(),
        state.queue.as_ref(),
        &batch,
        summary.taken_after,
    )
    .await
    .map_err(|error| ApiError::StreamFailed(error, Box::new(response(&batch, &summary, None))))?;
    if let Some(current) = &outcome.unsealed {
        // Aborted while this stream ran: what was read is kept, but the batch will never seal.
        match state.effective_status(current, now_millis()) {
            BatchStatus::Pending => {}
            other => return Err(ApiError::BatchNotPending(other.as_str())),
        }
    }
    let body = response(&batch, &summary, Some(&outcome));
    if let Some(error) = body_error {
        tracing::info!(batch = %batch.id, accepted = summary.accepted, error = %error, "stream ended early");
        return Err(match BodyStop::of(&error) {
            Some(stop) => ApiError::StreamStopped(stop, Box::new(body)),
            None => ApiError::UnreadableBody(bounded(error.to_string())),
        });
    }
    if summary.rejected_total > 0 {
        return Err(ApiError::ItemsRejected(Box::new(body)));
    }
    Ok(Json(body).into_response())
}

fn sealed_outcome(batch: &Batch) -> SealOutcome {
    SealOutcome {
        sealed: true,
        progress: crate::queue::Progress {
            enqueued: u64::from(batch.run_count),
            failed: 0,
        },
        missing: Vec::new(),
        unsealed: None,
    }
}

/// The ingest summary; `outcome` is `None` when no seal could be tried (a backend failed), and the
/// counts of the batch as a whole are then left out.
fn response(
    batch: &Batch,
    summary: &IngestSummary,
    outcome: Option<&SealOutcome>,
) -> IngestResponse {
    let sealed = outcome.is_some_and(|outcome| outcome.sealed);
    let unsealed = outcome.filter(|outcome| !outcome.sealed);
    IngestResponse {
        id: batch.id.clone(),
        items_accepted: summary.accepted,
        items_deduplicated: summary.deduplicated,
        sealed,
        items_failed: summary.failed,
        items_rejected: summary.rejected_total,
        rejected: summary
            .rejected
            .iter()
            .map(|rejection| RejectedLine {
                line: rejection.line,
                index: rejection.index,
                code: rejection.code.as_str().to_owned(),
                message: rejection.message.clone(),
            })
            .collect(),
        enqueued_count: unsealed.map(|outcome| outcome.progress.enqueued),
        expected_count: unsealed.map(|_| batch.run_count),
        missing: unsealed.map(|outcome| outcome.missing.iter().map(|&(a, b)| [a, b]).collect()),
    }
}
