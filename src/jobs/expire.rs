//! Aborts batches left unsealed past `BATCH_SEAL_TIMEOUT_MS`.
//!
//! Requests already treat such a batch as aborted; this job makes the status say so. The update is
//! guarded (`status = 'PENDING' AND NOT sealed`), so any number of nodes may run it at once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{JobPermits, Tick};
use crate::events::Events;
use crate::store::{BatchStore, now_millis};
use crate::tasks::NamedTask;

const LONGEST_PERIOD: Duration = Duration::from_secs(60);

/// A tenth of the timeout, between 100 ms and a minute: a batch is aborted at most that late.
fn period(seal_timeout_ms: u64) -> Duration {
    Duration::from_millis((seal_timeout_ms / 10).max(100)).min(LONGEST_PERIOD)
}

pub fn spawn(
    store: Arc<dyn BatchStore>,
    events: Events,
    seal_timeout_ms: u64,
    permits: &JobPermits,
    shutdown: CancellationToken,
) -> NamedTask {
    let period = period(seal_timeout_ms);
    super::schedule("seal-timeout", period, permits, shutdown, move || {
        let (store, events) = (store.clone(), events.clone());
        async move {
            let created_before = now_millis().saturating_sub(seal_timeout_ms as i64);
            match store.abort_unsealed(created_before).await {
                Ok(aborted) if aborted.is_empty() => Tick::Idle,
                Ok(aborted) => {
                    tracing::info!(
                        aborted = aborted.len(),
                        "aborted batches past their seal timeout"
                    );
                    for (tenant, batch_id) in &aborted {
                        events.batch_status(tenant, batch_id);
                    }
                    Tick::Worked
                }
                Err(error) => {
                    tracing::warn!(error = %error, "could not abort expired batches");
                    Tick::Failed
                }
            }
        }
    })
}
