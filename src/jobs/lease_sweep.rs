//! Returns runs whose lease expired: back to `PENDING` with one more attempt, or `FAILED`
//! (`LEASE_EXPIRED`) when their attempts are used.
//!
//! Each tick sweeps in bounded groups (`FOR UPDATE SKIP LOCKED` on Postgres), so any number of
//! nodes may run it at once and none waits for another; a tick stops after a few groups so a huge
//! backlog never holds a connection for long (the next tick goes on).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{JobPermits, Tick};
use crate::events::{Events, RunEvent};
use crate::runs::work::RunsReady;
use crate::store::now_millis;
use crate::store::runs::RunStatus;
use crate::store::work::{Swept, WorkStore};
use crate::tasks::NamedTask;

/// Runs returned per transaction.
const SWEEP_GROUP: u32 = 1_000;
/// Groups per tick at most.
const GROUPS_PER_TICK: u32 = 10;

pub fn spawn(
    work: Arc<dyn WorkStore>,
    ready: RunsReady,
    events: Events,
    period: Duration,
    permits: &JobPermits,
    shutdown: CancellationToken,
) -> NamedTask {
    super::schedule("lease-sweep", period, permits, shutdown, move || {
        let (work, ready, events) = (work.clone(), ready.clone(), events.clone());
        async move {
            let mut outcome = Tick::Idle;
            for _ in 0..GROUPS_PER_TICK {
                match work.sweep_expired_leases(now_millis(), SWEEP_GROUP).await {
                    Ok(swept) => {
                        crate::metrics::leases_expired(swept.returned, swept.failed);
                        report_swept(&events, &swept).await;
                        if swept.returned > 0 {
                            ready.runs_added();
                        }
                        if swept.returned + swept.failed > 0 {
                            outcome = Tick::Worked;
                        }
                        if swept.returned + swept.failed < u64::from(SWEEP_GROUP) {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not sweep expired leases");
                        return Tick::Failed;
                    }
                }
            }
            outcome
        }
    })
}

/// A `run` event for each run the sweep failed, then each batch touched (one may have turned
/// final with its last run).
async fn report_swept(events: &Events, swept: &Swept) {
    let mut finished = std::collections::BTreeSet::new();
    for (tenant, batch_id, index, attempt) in &swept.failed_runs {
        let run = RunEvent {
            index: *index,
            status: RunStatus::Failed,
            attempt: *attempt,
            error: Some((
                "LEASE_EXPIRED".into(),
                "the lease expired before the run was reported".into(),
            )),
        };
        events.run_final(tenant, batch_id, run).await;
        finished.insert((tenant, batch_id));
    }
    for (tenant, batch_id) in finished {
        events.runs_turned_final(tenant, batch_id);
    }
    for (tenant, batch_id) in &swept.returned_in {
        events.batch_changed(tenant, batch_id);
    }
}
