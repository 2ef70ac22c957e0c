//! Phase 1 (`POST /api/v3/batches`) and reading a batch (`GET /api/v3/batches/{id}`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::auth::Tenant;
use super::error::ApiError;
use crate::app::AppState;
use crate::protocol::quote::bounded;
use crate::protocol::wire::{BatchResponse, CreateBatchRequest, CreateBatchResponse, RunCounts};
use crate::store::{Batch, Created, Millis, NewBatch, now_millis};

pub const MAX_CREATE_BODY_BYTES: usize = 128 * 1024;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 2048;

/// A JSON object body, with rejections answered in Sluice's error shape.
///
/// Only an object is a request: serde would otherwise read a JSON array as a struct's fields in
/// order, so `[1]` would create a batch of one.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // Content type, size cap and JSON syntax are checked as for any JSON body.
        let Json(raw) = Json::<Box<RawValue>>::from_request(request, state).await?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(ApiError::InvalidRequest(
                "request body must be a JSON object".into(),
            ));
        }
        serde_json::from_str(raw.get())
            .map(Self)
            .map_err(|error| ApiError::InvalidRequest(bounded(format!("invalid request: {error}"))))
    }
}

/// The `{id}` of a batch route. An id that no batch can have — not UTF-8 once percent-decoded, or
/// holding a NUL character, which Postgres text cannot even be asked about — answers 404 like any
/// unknown batch, without reaching the store.
pub struct BatchId(pub String);

impl<S> FromRequestParts<S> for BatchId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) if id.contains('\0') => Err(ApiError::BatchNotFound),
            Ok(Path(id)) => Ok(Self(id)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::BatchNotFound),
            // The route has no `{id}`: a routing bug, not the client's doing.
            Err(rejection) => {
                tracing::error!(%rejection, "batch route without an id");
                Err(ApiError::Internal)
            }
        }
    }
}

/// A new unguessable batch id: 128 random bits, URL-safe.
fn new_batch_id() -> String {
    format!("batch_{:032x}", rand::random::<u128>())
}

/// Checks a Phase 1 request beyond its JSON shape; returns its runCount.
fn validate(request: &CreateBatchRequest, max_items: u32) -> Result<u32, ApiError> {
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
    // Postgres text cannot hold NUL; refusing it here gives both modes the same answer.
    for (name, value) in [
        ("idempotencyKey", &request.idempotency_key),
        ("parentRunId", &request.parent_run_id),
    ] {
        if value.as_deref().is_some_and(|value| value.contains('\0')) {
            return Err(ApiError::InvalidRequest(format!(
                "{name} must not contain NUL characters"
            )));
        }
    }
    Ok(run_count)
}

pub async fn create_batch(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(request): ApiJson<CreateBatchRequest>,
) -> Result<Response, ApiError> {
    let run_count = validate(&request, state.config.max_items)?;
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
    BatchId(id): BatchId,
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

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

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
            assert_eq!(error.code(), "INVALID_REQUEST", "{invalid}");
        }
    }

    async fn status_of(path: &str) -> (StatusCode, String) {
        let app = Router::new().route(
            "/batches/{id}",
            get(|BatchId(id): BatchId| async move { id }),
        );
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ids_no_batch_can_have_are_unknown_batches() {
        assert_eq!(
            status_of("/batches/batch_1").await,
            (StatusCode::OK, "batch_1".to_owned())
        );
        for path in ["/batches/a%00b", "/batches/a%FFb"] {
            let (status, body) = status_of(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(body.contains("BATCH_NOT_FOUND"), "{path}: {body}");
        }
    }
}
