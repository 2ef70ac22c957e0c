//! Reading batches with their runs' progress, listing a tenant's batches, canceling one, and the
//! trigger.dev view of a batch.

use std::sync::Arc;

use super::id::run_id;
use super::{Page, RunsError};
use crate::ingest::batches::{BatchError, find_batch};
use crate::ports::Ports;
use crate::queue::ItemQueue;
use crate::store::runs::{BatchCursor, Canceled, Run, RunCounts, RunStatus, RunStore};
use crate::store::{Batch, BatchStatus, BatchStore, now_millis};

/// Most run ids and errors the trigger.dev view lists.
pub const TRIGGER_MAX_RUNS: u32 = 1000;

impl From<BatchError> for RunsError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::NotFound => Self::BatchNotFound,
            BatchError::Invalid(message) => Self::Invalid(message),
            BatchError::NotPending(status) => Self::BatchFinal(status),
            BatchError::Dependency(error) => Self::Dependency(error),
        }
    }
}

/// A batch as its readers see it: its status as of now, how many indexes are enqueued, and how
/// many of its runs are in each status.
#[derive(Debug, Clone)]
pub struct BatchView {
    pub batch: Batch,
    pub status: BatchStatus,
    pub enqueued: u64,
    pub counts: RunCounts,
}

/// What reading a batch's view takes, for callers that hold no [`Ports`].
#[derive(Clone)]
pub struct ViewPorts {
    pub store: Arc<dyn BatchStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub runs: Arc<dyn RunStore>,
}

impl ViewPorts {
    pub fn of(ports: &Ports) -> Self {
        Self {
            store: ports.store.clone(),
            queue: ports.queue.clone(),
            runs: ports.runs.clone(),
        }
    }
}

/// [`batch_view`] over the three stores it reads.
pub async fn batch_view_over(
    ports: &ViewPorts,
    tenant: &str,
    id: &str,
    seal_timeout_ms: u64,
) -> Result<BatchView, RunsError> {
    let (batch, status) = find_batch(ports.store.as_ref(), tenant, id, seal_timeout_ms).await?;
    view_with(ports.queue.as_ref(), ports.runs.as_ref(), batch, status).await
}

async fn view_of(ports: &Ports, batch: Batch, status: BatchStatus) -> Result<BatchView, RunsError> {
    view_with(ports.queue.as_ref(), ports.runs.as_ref(), batch, status).await
}

async fn view_with(
    queue: &dyn ItemQueue,
    runs: &dyn RunStore,
    batch: Batch,
    status: BatchStatus,
) -> Result<BatchView, RunsError> {
    // A sealed batch has every index enqueued (its queue items go once its runs are written).
    let enqueued = if batch.sealed {
        u64::from(batch.run_count)
    } else {
        queue.progress(&batch.id).await?.enqueued
    };
    let counts = if batch.materialised_count > 0 {
        runs.run_counts(&batch.id).await?
    } else {
        RunCounts::default()
    };
    Ok(BatchView {
        batch,
        status,
        enqueued,
        counts,
    })
}

/// The tenant's batch with its progress.
pub async fn batch_view(
    ports: &Ports,
    tenant: &str,
    id: &str,
    seal_timeout_ms: u64,
) -> Result<BatchView, RunsError> {
    let (batch, status) = find_batch(ports.store.as_ref(), tenant, id, seal_timeout_ms).await?;
    view_of(ports, batch, status).await
}

fn batch_cursor(batch: &Batch) -> String {
    format!("{}_{}", batch.created_at, batch.id)
}

fn parse_batch_cursor(cursor: &str) -> Result<BatchCursor, RunsError> {
    cursor
        .split_once('_')
        .and_then(|(created_at, id)| {
            Some(BatchCursor {
                created_at: created_at.parse().ok()?,
                id: id.to_owned(),
            })
        })
        .filter(|cursor| !cursor.id.contains('\0'))
        .ok_or_else(|| RunsError::Invalid("cursor is not one this server gave out".into()))
}

/// A page of the tenant's batches, newest first, optionally of one stored status.
pub async fn list_batches(
    runs: &dyn RunStore,
    tenant: &str,
    status: Option<&str>,
    cursor: Option<&str>,
    limit: Option<i64>,
    seal_timeout_ms: u64,
) -> Result<Page<(Batch, BatchStatus)>, RunsError> {
    let limit = super::page_limit(limit)?;
    let status = status
        .map(|text| {
            BatchStatus::parse(text)
                .ok_or_else(|| RunsError::Invalid(format!("unknown batch status {text:?}")))
        })
        .transpose()?;
    let after = cursor.map(parse_batch_cursor).transpose()?;
    let batches = runs
        .list_batches(tenant, status, after.as_ref(), limit + 1)
        .await?;
    let page = Page::of_read(batches, limit, batch_cursor);
    let now = now_millis();
    let data = page
        .data
        .into_iter()
        .map(|batch| {
            let status = batch.effective_status(seal_timeout_ms as i64, now);
            (batch, status)
        })
        .collect();
    Ok(Page {
        data,
        next_cursor: page.next_cursor,
    })
}

/// Cancels the tenant's batch: pending runs become `CANCELED`, claimed runs finish, runs not yet
/// written are written canceled. Canceling a canceled batch again changes nothing.
pub async fn cancel_batch(
    ports: &Ports,
    tenant: &str,
    id: &str,
    seal_timeout_ms: u64,
) -> Result<BatchView, RunsError> {
    let (_, status) = find_batch(ports.store.as_ref(), tenant, id, seal_timeout_ms).await?;
    if status == BatchStatus::Aborted {
        return Err(RunsError::BatchFinal(status));
    }
    match ports.runs.cancel_batch(tenant, id, now_millis()).await? {
        Canceled::Canceled(batch) => {
            // One batch event sums up the runs canceled with it (no run event each).
            ports.events.batch_status(tenant, id);
            view_of(ports, batch, BatchStatus::Canceled).await
        }
        Canceled::Final(status) => Err(RunsError::BatchFinal(status)),
        Canceled::NotFound => Err(RunsError::BatchNotFound),
    }
}

/// A batch as trigger.dev's batch API shows it.
#[derive(Debug, Clone)]
pub struct TriggerView {
    pub view: BatchView,
    /// The ids of the first runs written, at most [`TRIGGER_MAX_RUNS`].
    pub run_ids: Vec<String>,
    /// The first failed runs, at most [`TRIGGER_MAX_RUNS`].
    pub failed: Vec<Run>,
}

impl TriggerView {
    /// The status among the five trigger.dev's SDK knows: a canceled batch reads as `ABORTED`.
    pub fn sdk_status(&self) -> BatchStatus {
        match self.view.status {
            BatchStatus::Canceled => BatchStatus::Aborted,
            other => other,
        }
    }
}

pub async fn trigger_view(
    ports: &Ports,
    tenant: &str,
    id: &str,
    seal_timeout_ms: u64,
) -> Result<TriggerView, RunsError> {
    let view = batch_view(ports, tenant, id, seal_timeout_ms).await?;
    let listed = view.batch.materialised_count.min(TRIGGER_MAX_RUNS);
    let run_ids = (0..listed)
        .map(|index| run_id(&view.batch.id, index))
        .collect();
    let failed = if view.counts.failed > 0 {
        ports
            .runs
            .runs(&view.batch.id, Some(RunStatus::Failed), 0, TRIGGER_MAX_RUNS)
            .await?
    } else {
        Vec::new()
    };
    Ok(TriggerView {
        view,
        run_ids,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_cursors_read_back_what_they_were_made_of() {
        let cursor = parse_batch_cursor("1700000000000_batch_abc").unwrap();
        assert_eq!(cursor.created_at, 1_700_000_000_000);
        assert_eq!(cursor.id, "batch_abc");
        for bad in ["", "x_batch", "123", "1_a\0b"] {
            assert!(parse_batch_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
