//! Phase 1 (`POST /api/v3/batches`) and reading a batch (`GET /api/v3/batches/{id}`).

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};

use super::auth::Tenant;
use super::error::ApiError;
use super::wire::{BatchResponse, CreateBatchRequest, CreateBatchResponse, RunCounts};
use crate::app::AppState;
use crate::store::{Batch, Created, Millis, NewBatch, now_millis};

pub const MAX_CREATE_BODY_BYTES: usize = 128 * 1024;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 2048;

/// `Json` whose rejections are answered in Sluice's error shape.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// A new unguessable batch id: 128 random bits, URL-safe.
fn new_batch_id() -> String {
    format!("batch_{:032x}", rand::random::<u128>())
}

pub async fn create_batch(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(request): ApiJson<CreateBatchRequest>,
) -> Result<Response, ApiError> {
    let max_items = state.config.max_items;
    let run_count = u32::try_from(request.run_count)
        .ok()
        .filter(|count| (1..=max_items).contains(count))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "runCount must be an integer from 1 to {max_items}, got {}",
                request.run_count
            ))
        })?;
    if let Some(key) = &request.idempotency_key
        && key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS
    {
        return Err(ApiError::InvalidRequest(format!(
            "idempotencyKey must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    let created = state
        .store
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
    let (status, batch, is_cached) = match created {
        Created::New(batch) => (StatusCode::ACCEPTED, batch, false),
        Created::Existing(batch) => (StatusCode::OK, batch, true),
    };
    let body = CreateBatchResponse {
        id: batch.id,
        run_count: batch.run_count,
        is_cached,
        idempotency_key: batch.idempotency_key,
    };
    Ok((status, Json(body)).into_response())
}

pub fn rfc3339(millis: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub async fn get_batch(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<BatchResponse>, ApiError> {
    let batch = state.find_batch(&tenant, &id).await?;
    let progress = state.queue.progress(&batch.id).await?;
    let status = state.effective_status(&batch, now_millis());
    let Batch {
        id,
        run_count,
        sealed,
        created_at,
        sealed_at,
        completed_at,
        ..
    } = batch;
    Ok(Json(BatchResponse {
        id,
        status: status.as_str().to_owned(),
        run_count,
        sealed,
        enqueued_count: progress.enqueued,
        created_at: rfc3339(created_at),
        sealed_at: sealed_at.map(rfc3339),
        completed_at: completed_at.map(rfc3339),
        // Runs are not materialised yet: every enqueued item is a pending run, failed items
        // are failed runs.
        counts: RunCounts {
            pending: progress.enqueued - progress.failed,
            running: 0,
            completed: 0,
            failed: progress.failed,
        },
    }))
}
