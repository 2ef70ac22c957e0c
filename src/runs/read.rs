//! Reading runs: a batch's runs page by page in index order, one run, and a run's payload.

use bytes::Bytes;

use super::id::parse_run_id;
use super::{Page, RunsError};
use crate::ingest::batches::find_batch;
use crate::ports::Ports;
use crate::protocol::stored::OFFLOADED_PAYLOAD_TYPE;
use crate::store::runs::{Run, RunStatus};

/// A page of the tenant's batch's runs in index order, optionally of one status. Runs in pages
/// come without their payload (read a run for it).
pub async fn list_runs(
    ports: &Ports,
    tenant: &str,
    batch_id: &str,
    status: Option<&str>,
    cursor: Option<&str>,
    limit: Option<i64>,
    seal_timeout_ms: u64,
) -> Result<Page<Run>, RunsError> {
    let limit = super::page_limit(limit)?;
    let status = status
        .map(|text| {
            RunStatus::parse(text)
                .ok_or_else(|| RunsError::Invalid(format!("unknown run status {text:?}")))
        })
        .transpose()?;
    // The cursor is the index the next page starts at (past the last index: an empty page).
    let from_index = cursor
        .map(|cursor| {
            cursor
                .parse::<u64>()
                .map(|index| u32::try_from(index).unwrap_or(u32::MAX))
                .map_err(|_| RunsError::Invalid("cursor is not one this server gave out".into()))
        })
        .transpose()?
        .unwrap_or(0);
    let (batch, _) = find_batch(ports.store.as_ref(), tenant, batch_id, seal_timeout_ms).await?;
    let runs = ports
        .runs
        .runs(&batch.id, status, from_index, limit + 1)
        .await?;
    Ok(Page::of_read(runs, limit, |last| {
        (last.index + 1).to_string()
    }))
}

/// The tenant's run with this id.
pub async fn find_run(ports: &Ports, tenant: &str, id: &str) -> Result<Run, RunsError> {
    let (batch_id, index) = parse_run_id(id).ok_or(RunsError::RunNotFound)?;
    ports
        .runs
        .run(tenant, &batch_id, index)
        .await?
        .ok_or(RunsError::RunNotFound)
}

/// Whether the run's payload lives in object storage (the run holds its key).
pub fn is_offloaded(run: &Run) -> bool {
    run.payload_type == OFFLOADED_PAYLOAD_TYPE
}

/// Where a run's offloaded payload is read; `None` when its payload is inline.
pub fn offloaded_payload_url(payload_type: &str, run_id: &str) -> Option<String> {
    (payload_type == OFFLOADED_PAYLOAD_TYPE).then(|| format!("/api/v3/runs/{run_id}/payload"))
}

/// The run's payload bytes: its JSON as sent, read from object storage when offloaded.
pub async fn run_payload(ports: &Ports, tenant: &str, id: &str) -> Result<Bytes, RunsError> {
    let run = find_run(ports, tenant, id).await?;
    let payload = run.payload.as_deref().ok_or(RunsError::NoPayload)?;
    if !is_offloaded(&run) {
        return Ok(Bytes::copy_from_slice(payload));
    }
    let key: String = serde_json::from_slice(payload).map_err(|_| RunsError::NoPayload)?;
    ports.payloads.get(&key).await?.ok_or(RunsError::NoPayload)
}
