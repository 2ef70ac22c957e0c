//! Phase 1 (`POST /api/v3/batches`), reading a batch (`GET /api/v3/batches/{id}`), listing a
//! tenant's batches (`GET /api/v3/batches`) and canceling one (`POST …/{id}/cancel`).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::auth::Tenant;
use super::error::ApiError;
use super::state::ApiState;
use crate::ingest::batches as ingest;
use crate::protocol::quote::{bounded, quote};
use crate::protocol::runs::{BatchSummary, Page};
use crate::protocol::wire::{BatchResponse, CreateBatchRequest, CreateBatchResponse, RunCounts};
use crate::runs::batches::{self as runs, BatchView};
use crate::store::{Created, Millis};

pub const MAX_CREATE_BODY_BYTES: usize = 128 * 1024;

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

pub async fn create_batch(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    ApiJson(request): ApiJson<CreateBatchRequest>,
) -> Result<Response, ApiError> {
    let created = ingest::create_batch(
        state.ports.store.as_ref(),
        tenant,
        request,
        state.config.max_items,
    )
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
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
) -> Result<Json<BatchResponse>, ApiError> {
    let view = runs::batch_view(&state.ports, &tenant, &id, state.config.seal_timeout_ms).await?;
    Ok(Json(batch_response(view)))
}

/// `POST /api/v3/batches/{id}/cancel`: the batch as it is once canceled.
pub async fn cancel_batch(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
) -> Result<Json<BatchResponse>, ApiError> {
    let view = runs::cancel_batch(&state.ports, &tenant, &id, state.config.seal_timeout_ms).await?;
    Ok(Json(batch_response(view)))
}

pub fn batch_response(view: BatchView) -> BatchResponse {
    let BatchView {
        batch,
        status,
        enqueued,
        counts,
    } = view;
    BatchResponse {
        id: batch.id,
        status: status.as_str().to_owned(),
        run_count: batch.run_count,
        sealed: batch.sealed,
        enqueued_count: enqueued,
        created_at: rfc3339(batch.created_at),
        sealed_at: batch.sealed_at.map(rfc3339),
        completed_at: batch.completed_at.map(rfc3339),
        materialised_count: batch.materialised_count,
        counts: RunCounts {
            pending: counts.pending,
            running: counts.claimed,
            completed: counts.completed,
            failed: counts.failed,
            claimed: counts.claimed,
            canceled: counts.canceled,
        },
    }
}

/// The query of a list: `status`, `cursor` and `limit`, all optional.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

impl ListQuery {
    pub fn limit(&self) -> Result<Option<i64>, ApiError> {
        self.limit
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::InvalidRequest(format!(
                        "limit must be an integer, got {}",
                        quote(text)
                    ))
                })
            })
            .transpose()
    }
}

/// `GET /api/v3/batches`: the tenant's batches, newest first.
pub async fn list_batches(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page<BatchSummary>>, ApiError> {
    let Query(query) = query?;
    let page = runs::list_batches(
        state.ports.runs.as_ref(),
        &tenant,
        query.status.as_deref(),
        query.cursor.as_deref(),
        query.limit()?,
        state.config.seal_timeout_ms,
    )
    .await?;
    Ok(Json(Page {
        data: page
            .data
            .into_iter()
            .map(|(batch, status)| BatchSummary {
                id: batch.id,
                status: status.as_str().to_owned(),
                run_count: batch.run_count,
                sealed: batch.sealed,
                materialised_count: batch.materialised_count,
                idempotency_key: batch.idempotency_key,
                created_at: rfc3339(batch.created_at),
                sealed_at: batch.sealed_at.map(rfc3339),
                completed_at: batch.completed_at.map(rfc3339),
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

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
