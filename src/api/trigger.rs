//! trigger.dev's batch reads, so its SDK clients work against Sluice: `GET /api/v2/batches/{id}`
//! (what SDK 4.x `batch.retrieve` calls and validates strictly) and `GET /api/v1/batches/{id}`.
//! Their `status` is one of the SDK's five; a canceled batch reads as `ABORTED`.

use axum::Json;
use axum::extract::State;

use super::auth::Tenant;
use super::batches::{BatchId, rfc3339};
use super::error::ApiError;
use super::state::ApiState;
use crate::protocol::runs::{
    TriggerBatchError, TriggerBatchProcessing, TriggerBatchV1, TriggerBatchV2,
};
use crate::runs::batches::{TriggerView, trigger_view};
use crate::store::Batch;

/// When the batch last changed as far as these reads show: its latest time.
fn updated_at(batch: &Batch) -> String {
    let latest = [batch.sealed_at, batch.completed_at]
        .into_iter()
        .flatten()
        .fold(batch.created_at, i64::max);
    rfc3339(latest)
}

fn errors(view: &TriggerView) -> Vec<TriggerBatchError> {
    view.failed
        .iter()
        .map(|run| {
            let error = run.error.as_ref();
            TriggerBatchError {
                index: run.index,
                task_identifier: run.task.clone(),
                error: error.map(|error| error.message.clone()).unwrap_or_default(),
                error_code: error.map(|error| error.code.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

pub async fn get_batch_v2(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
) -> Result<Json<TriggerBatchV2>, ApiError> {
    let view = trigger_view(&state.ports, &tenant, &id, state.config.seal_timeout_ms).await?;
    let batch = &view.view.batch;
    Ok(Json(TriggerBatchV2 {
        id: batch.id.clone(),
        status: view.sdk_status().as_str().to_owned(),
        idempotency_key: batch.idempotency_key.clone(),
        created_at: rfc3339(batch.created_at),
        updated_at: updated_at(batch),
        run_count: batch.run_count,
        processing: TriggerBatchProcessing {
            completed_at: batch.completed_at.map(rfc3339),
            errors: errors(&view),
        },
        runs: view.run_ids,
    }))
}

pub async fn get_batch_v1(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
) -> Result<Json<TriggerBatchV1>, ApiError> {
    let view = trigger_view(&state.ports, &tenant, &id, state.config.seal_timeout_ms).await?;
    let batch = &view.view.batch;
    let counts = view.view.counts;
    Ok(Json(TriggerBatchV1 {
        id: batch.id.clone(),
        status: view.sdk_status().as_str().to_owned(),
        idempotency_key: batch.idempotency_key.clone(),
        created_at: rfc3339(batch.created_at),
        updated_at: updated_at(batch),
        run_count: batch.run_count,
        successful_run_count: counts.completed,
        failed_run_count: counts.failed,
        errors: errors(&view),
        runs: view.run_ids,
    }))
}
