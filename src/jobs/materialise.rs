//! The materialiser of this node: a worker that writes the runs of sealed batches, one batch after
//! another, whenever it is woken — by a seal on this node (at once) or by the periodic wake-up
//! (the fallback that finds batches sealed elsewhere, or left behind by a node that died).
//!
//! Any number of nodes run it at once: each pass claims its batch with a guarded update
//! (`crate::runs::materialise`), so no batch is written by two nodes.
//!
//! The wake-up is a periodic job like the others; the worker is not (it works whenever a batch is
//! sealed) and takes no job permit: its connections are bounded by its pipeline depth.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{JobPermits, Tick};
use crate::events::Events;
use crate::ports::Ports;
use crate::queue::ItemQueue;
use crate::runs::materialise::{MaterialiseSettings, Pass, materialise_next};
use crate::runs::work::RunsReady;
use crate::store::runs::RunStore;
use crate::tasks::NamedTask;

/// How often the materialiser looks for waiting batches without being signalled.
const WAKE_PERIOD: Duration = Duration::from_secs(1);

/// The materialiser and its wake-up, over the runs store, the item queue, the seal signal, the
/// events and the signal that wakes waiting claims.
pub fn spawn(
    ports: &Ports,
    settings: MaterialiseSettings,
    permits: &JobPermits,
    shutdown: CancellationToken,
) -> Vec<NamedTask> {
    let (runs, queue, signal, events, ready) = (
        ports.runs.clone(),
        ports.queue.clone(),
        ports.sealed.clone(),
        ports.events.clone(),
        ports.runs_ready.clone(),
    );
    let wake = super::schedule(
        "materialise-wake",
        WAKE_PERIOD,
        permits,
        shutdown.clone(),
        {
            let (runs, signal) = (runs.clone(), signal.clone());
            move || {
                let (runs, signal) = (runs.clone(), signal.clone());
                async move {
                    match runs.batches_waiting().await {
                        Ok(waiting) => {
                            crate::metrics::batches_waiting(waiting);
                            if waiting == 0 {
                                return Tick::Idle;
                            }
                            signal.batch_sealed();
                            Tick::Worked
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not count the batches waiting for runs");
                            Tick::Failed
                        }
                    }
                }
            }
        },
    );
    let worker = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = signal.sealed() => {}
            }
            tokio::select! {
                biased;
                // A pass cut here loses nothing: its chunk either committed with its checkpoint
                // or not at all, and its claim expires for another pass to go on.
                () = shutdown.cancelled() => return,
                () = materialise_waiting(&runs, &queue, &events, &ready, settings) => {}
            }
        }
    });
    vec![
        wake,
        NamedTask {
            name: "materialiser",
            handle: worker,
        },
    ]
}

/// Materialises waiting batches until none is left or a pass fails (retried at a later wake-up).
async fn materialise_waiting(
    runs: &Arc<dyn RunStore>,
    queue: &Arc<dyn ItemQueue>,
    events: &Events,
    ready: &RunsReady,
    settings: MaterialiseSettings,
) {
    loop {
        match materialise_next(runs, queue, events, ready, settings).await {
            Ok(Pass::Idle) => return,
            Ok(Pass::Done {
                batch_id,
                runs_written,
            }) => tracing::info!(batch = %batch_id, runs_written, "batch materialised"),
            Ok(Pass::Written {
                batch_id,
                runs_written,
            }) => tracing::info!(
                batch = %batch_id,
                runs_written,
                "batch materialised; its queue items go once no stream can still write them"
            ),
            Ok(Pass::ClaimLost { batch_id }) => {
                tracing::info!(batch = %batch_id, "another node took the batch over")
            }
            Err(error) => {
                tracing::warn!(%error, "materialising stopped; the batch is retried from its checkpoint");
                return;
            }
        }
    }
}
