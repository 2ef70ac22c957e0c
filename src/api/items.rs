//! Phase 2: `POST /api/v3/batches/{id}/items`, an NDJSON body streamed into the batch.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::auth::Tenant;
use super::batches::BatchId;
use super::body::{BodyStop, ContentEncoding, body_reads};
use super::error::ApiError;
use super::state::ApiState;
use crate::ingest::batches::{StreamReport, StreamStop, stream_into_batch};
use crate::ingest::seal::SealOutcome;
use crate::protocol::quote::{bounded, quote};
use crate::protocol::wire::{IngestResponse, RejectedLine};

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
    State(state): State<ApiState>,
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
    let reads = body_reads(body, encoding, state.body_limits(), state.stream_stop());
    let report = stream_into_batch(
        &state.ports,
        &tenant,
        &id,
        reads,
        state.ingest_limits(),
        state.config.seal_timeout_ms,
    )
    .await?;
    let body = Box::new(response(&report));
    match report.stop {
        Some(StreamStop::Dependency(error)) => Err(ApiError::StreamFailed(error, body)),
        Some(StreamStop::Body(error)) => {
            tracing::info!(batch = %report.batch.id, accepted = report.summary.accepted, error = %error, "stream ended early");
            Err(match BodyStop::of(&error) {
                Some(stop) => ApiError::StreamStopped(stop, body),
                None => ApiError::UnreadableBody(bounded(error.to_string())),
            })
        }
        None if report.summary.rejected_total > 0 => Err(ApiError::ItemsRejected(body)),
        None => Ok(Json(*body).into_response()),
    }
}

/// The ingest summary of a report. The counts of the batch as a whole are there only when it is
/// not sealed and they are known (not after a backend failed).
fn response(report: &StreamReport) -> IngestResponse {
    let StreamReport {
        batch,
        summary,
        seal,
        ..
    } = report;
    let unsealed = match seal {
        Some(SealOutcome::Unsealed {
            progress, missing, ..
        }) => Some((progress, missing)),
        _ => None,
    };
    IngestResponse {
        id: batch.id.clone(),
        items_accepted: summary.accepted,
        items_deduplicated: summary.deduplicated,
        sealed: matches!(seal, Some(SealOutcome::Sealed)),
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
        enqueued_count: unsealed.map(|(progress, _)| progress.enqueued),
        expected_count: unsealed.map(|_| batch.run_count),
        missing: unsealed.map(|(_, missing)| missing.iter().map(|&(a, b)| [a, b]).collect()),
    }
}
