//! Runs: a batch's runs (`GET /api/v3/batches/{id}/runs`), one run (`GET /api/v3/runs/{id}`) and
//! its payload (`GET /api/v3/runs/{id}/payload`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use super::auth::Tenant;
use super::batches::{BatchId, ListQuery, rfc3339};
use super::error::ApiError;
use super::state::ApiState;
use crate::protocol::runs::{Page, RunErrorBody, RunResponse};
use crate::runs::id::run_id;
use crate::runs::read::{self, offloaded_payload_url};
use crate::store::runs::Run;

/// The `{id}` of a run route. A string no run id can be is an unknown run.
pub struct RunId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RunId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(_) => Err(ApiError::RunNotFound),
        }
    }
}

/// Stored JSON text back as raw JSON; text that is not JSON (never written by Sluice) is left out.
pub fn raw_json(text: Option<&[u8]>) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(text?).ok()?;
    RawValue::from_string(text.to_owned()).ok()
}

/// A run's body. With `with_payload`, an inline payload is included; an offloaded one is always
/// given as the URL it is read from.
pub fn run_response(run: Run, with_payload: bool) -> RunResponse {
    let id = run_id(&run.batch_id, run.index);
    let payload_url = offloaded_payload_url(&run.payload_type, &id);
    let payload = (with_payload && payload_url.is_none())
        .then(|| raw_json(run.payload.as_deref()))
        .flatten();
    RunResponse {
        id,
        batch_id: run.batch_id,
        index: run.index,
        task: run.task,
        status: run.status.as_str().to_owned(),
        attempt: run.attempt,
        max_attempts: run.max_attempts,
        payload_type: run.payload_type,
        payload,
        payload_url,
        options: raw_json(run.options.as_deref().map(str::as_bytes)),
        output: raw_json(run.output.as_deref().map(str::as_bytes)),
        error: run.error.map(|error| RunErrorBody {
            code: error.code,
            message: error.message,
            line: error.line,
        }),
        created_at: rfc3339(run.created_at),
        claimed_at: run.claimed_at.map(rfc3339),
        completed_at: run.completed_at.map(rfc3339),
    }
}

pub async fn list_runs(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page<RunResponse>>, ApiError> {
    let Query(query) = query?;
    let page = read::list_runs(
        &state.ports,
        &tenant,
        &id,
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
            .map(|run| run_response(run, false))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

pub async fn get_run(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    RunId(id): RunId,
) -> Result<Json<RunResponse>, ApiError> {
    let run = read::find_run(&state.ports, &tenant, &id).await?;
    Ok(Json(run_response(run, true)))
}

/// The payload's JSON bytes as the item carried them.
pub async fn get_run_payload(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    RunId(id): RunId,
) -> Result<Response, ApiError> {
    let payload = read::run_payload(&state.ports, &tenant, &id).await?;
    let mut response = payload.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
