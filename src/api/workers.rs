//! The worker API: claiming runs with a lease (`POST /api/v3/runs/claim`), extending leases
//! (`/heartbeat`) and reporting results (`/complete`). Answers come after the writes committed.

use axum::Json;
use axum::extract::State;
use serde_json::value::RawValue;

use super::auth::Tenant;
use super::batches::{ApiJson, rfc3339};
use super::error::ApiError;
use super::runs::raw_json;
use super::state::ApiState;
use crate::protocol::work::{
    ClaimRequest, ClaimResponse, ClaimedRun, CompleteRequest, CompleteResponse, CompleteResult,
    HeartbeatRequest, HeartbeatResponse, HeartbeatResult, RunResultError,
};
use crate::runs::id::run_id;
use crate::runs::read::offloaded_payload_url;
use crate::runs::work::{self, Claim, Report, RunRef};
use crate::store::work::Fenced;

/// A complete call carries up to 1000 outputs of up to 1 MiB each in principle; its body is capped
/// here, so one call holds at most this much memory.
pub const MAX_COMPLETE_BODY_BYTES: usize = 16 << 20;

fn lease_lost() -> RunResultError {
    RunResultError {
        code: "LEASE_LOST".into(),
        message: "the run is not claimed under this lease any more".into(),
    }
}

fn run_not_found() -> RunResultError {
    RunResultError {
        code: "RUN_NOT_FOUND".into(),
        message: "no run with this id".into(),
    }
}

pub async fn claim(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let claimed = work::claim(
        &state.ports,
        &tenant,
        Claim {
            tasks: request.tasks,
            limit: request.limit,
            lease_ms: request.lease_ms,
            wait_ms: request.wait_ms,
        },
        state.config.claim_wait_max_ms,
    )
    .await?;
    let lease_expires_at = rfc3339(claimed.lease_expires_at);
    let runs = claimed
        .runs
        .into_iter()
        .map(|run| {
            let id = run_id(&run.batch_id, run.index);
            let payload_url = offloaded_payload_url(&run.payload_type, &id);
            let payload = payload_url
                .is_none()
                .then(|| raw_json(run.payload.as_deref()))
                .flatten();
            ClaimedRun {
                options: raw_json(run.options.as_deref().map(str::as_bytes)),
                id,
                batch_id: run.batch_id,
                index: run.index,
                task: run.task,
                attempt: run.attempt,
                max_attempts: run.max_attempts,
                payload_type: run.payload_type,
                payload,
                payload_url,
                lease_id: claimed.lease_id.clone(),
                lease_expires_at: lease_expires_at.clone(),
            }
        })
        .collect();
    Ok(Json(ClaimResponse { runs }))
}

pub async fn heartbeat(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let runs: Vec<RunRef> = request
        .runs
        .into_iter()
        .map(|run| RunRef {
            id: run.id,
            lease_id: run.lease_id,
        })
        .collect();
    let results = work::heartbeat(&state.ports, &tenant, &runs, request.lease_ms).await?;
    let results = runs
        .into_iter()
        .zip(results)
        .map(|(run, result)| match result {
            Fenced::Applied(until) => HeartbeatResult {
                id: run.id,
                ok: true,
                lease_expires_at: Some(rfc3339(until)),
                error: None,
            },
            Fenced::LeaseLost => HeartbeatResult {
                id: run.id,
                ok: false,
                lease_expires_at: None,
                error: Some(lease_lost()),
            },
            Fenced::RunNotFound => HeartbeatResult {
                id: run.id,
                ok: false,
                lease_expires_at: None,
                error: Some(run_not_found()),
            },
        })
        .collect();
    Ok(Json(HeartbeatResponse { results }))
}

pub async fn complete(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    ApiJson(request): ApiJson<CompleteRequest>,
) -> Result<Json<CompleteResponse>, ApiError> {
    let reports: Vec<Report> = request
        .runs
        .into_iter()
        .map(|report| Report {
            run: RunRef {
                id: report.id,
                lease_id: report.lease_id,
            },
            status: report.status,
            output: report
                .output
                .map(|output| RawValue::get(&output).to_owned()),
            error_code: report.error.as_ref().and_then(|error| error.code.clone()),
            error_message: report.error.map(|error| error.message),
            retry_delay_ms: report.retry_delay_ms,
        })
        .collect();
    let results = work::complete(&state.ports, &tenant, &reports).await?;
    let results = reports
        .into_iter()
        .zip(results)
        .map(|(report, result)| match result {
            Fenced::Applied(done) => CompleteResult {
                id: report.run.id,
                ok: true,
                status: Some(done.status.as_str().to_owned()),
                error: None,
            },
            Fenced::LeaseLost => CompleteResult {
                id: report.run.id,
                ok: false,
                status: None,
                error: Some(lease_lost()),
            },
            Fenced::RunNotFound => CompleteResult {
                id: report.run.id,
                ok: false,
                status: None,
                error: Some(run_not_found()),
            },
        })
        .collect();
    Ok(Json(CompleteResponse { results }))
}
