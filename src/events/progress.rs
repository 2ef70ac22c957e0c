//! Batch events: a batch whose progress moved gets a `batch` event with its counts at most once
//! per [`PROGRESS_PERIOD`]; a status change gets one at once. The counts are read from the store
//! when the event is made, so one event sums up every change since the last.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{EventKind, Events, NewEvent};
use crate::protocol::wire::RunCounts;
use crate::runs::RunsError;
use crate::runs::batches::{BatchView, ViewPorts, batch_view_over};
use crate::store::{BatchStatus, now_millis};
use crate::tasks::NamedTask;

/// How often a changing batch gets a progress event, at most.
pub const PROGRESS_PERIOD: Duration = Duration::from_millis(250);

/// How long the event that makes a batch final waits after the status change is reported
/// (`Events::batch_status`): every node flushes its journal writer within
/// `SLUICE_JOURNAL_FLUSH_INTERVAL_MS` (100 ms by default), so run events that other nodes queued
/// before the batch turned final are written before it, not dropped after it.
pub const TERMINAL_DELAY: Duration = Duration::from_millis(400);

/// How long a final status seen at a progress tick, but not reported as a status change yet,
/// waits for that report (whose caller queues the batch's last run events first). After this the
/// event is made anyway, so a batch never stays without its final event.
const UNREPORTED_FINAL_DELAY: Duration = Duration::from_secs(5);

/// How long the last event of a batch that stopped changing is remembered (to skip an event
/// that would repeat it).
const FORGET_AFTER: Duration = Duration::from_secs(60);

pub fn is_final(status: BatchStatus) -> bool {
    matches!(
        status,
        BatchStatus::Completed
            | BatchStatus::PartialFailed
            | BatchStatus::Aborted
            | BatchStatus::Canceled
    )
}

/// Batches whose progress or status changed since their last event.
#[derive(Default)]
pub struct ProgressQueue {
    /// Batch id → (tenant, status changed).
    due: Mutex<HashMap<String, (String, bool)>>,
    /// Batch id → tenant: some of its runs turned final, so it may have too.
    maybe_final: Mutex<HashMap<String, String>>,
    status_changed: Notify,
}

impl ProgressQueue {
    pub fn changed(&self, tenant: &str, batch_id: &str, status: bool) {
        {
            let mut due = self.due.lock().expect("never poisoned");
            match due.get_mut(batch_id) {
                Some(entry) => entry.1 |= status,
                None => {
                    due.insert(batch_id.to_owned(), (tenant.to_owned(), status));
                }
            }
        }
        if status {
            self.status_changed.notify_one();
        }
    }

    pub fn runs_turned_final(&self, tenant: &str, batch_id: &str) {
        self.maybe_final
            .lock()
            .expect("never poisoned")
            .insert(batch_id.to_owned(), tenant.to_owned());
        self.status_changed.notify_one();
    }

    fn take_maybe_final(&self) -> Vec<(String, String)> {
        self.maybe_final
            .lock()
            .expect("never poisoned")
            .drain()
            .collect()
    }

    /// Takes the batches due now: every one at a tick, those with a status change otherwise.
    fn take(&self, tick: bool) -> Vec<(String, String, bool)> {
        let mut due = self.due.lock().expect("never poisoned");
        if tick {
            return due
                .drain()
                .map(|(batch, (tenant, status))| (batch, tenant, status))
                .collect();
        }
        let statuses: Vec<String> = due
            .iter()
            .filter(|(_, (_, status))| *status)
            .map(|(batch, _)| batch.clone())
            .collect();
        statuses
            .into_iter()
            .filter_map(|batch| {
                let (tenant, status) = due.remove(&batch)?;
                Some((batch, tenant, status))
            })
            .collect()
    }
}

/// The `data` of a `batch` event.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchEventData {
    pub status: &'static str,
    pub run_count: u32,
    pub enqueued_count: u64,
    pub materialised_count: u32,
    pub counts: RunCounts,
}

impl BatchEventData {
    pub fn of(view: &BatchView) -> Self {
        let counts = view.counts;
        Self {
            status: view.status.as_str(),
            run_count: view.batch.run_count,
            enqueued_count: view.enqueued,
            materialised_count: view.batch.materialised_count,
            counts: RunCounts {
                pending: counts.pending,
                running: counts.claimed,
                claimed: counts.claimed,
                completed: counts.completed,
                failed: counts.failed,
                canceled: counts.canceled,
            },
        }
    }
}

/// Makes the batch events of this node until `stop`; then makes those still due and returns.
pub fn spawn(
    ports: ViewPorts,
    seal_timeout_ms: u64,
    events: Events,
    queue: Arc<ProgressQueue>,
    stop: CancellationToken,
) -> NamedTask {
    let handle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PROGRESS_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last: HashMap<String, (String, Instant)> = HashMap::new();
        let mut finals: HashMap<String, FinalSeen> = HashMap::new();
        let mut reads: HashMap<String, (Instant, Duration)> = HashMap::new();
        loop {
            let tick = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    // Nothing can report a change any more: final events are due now.
                    finals.clear();
                    check_final(&ports, seal_timeout_ms, &queue).await;
                    let due = queue.take(true);
                    let mut now_due = Vec::new();
                    for (batch, tenant, _) in due {
                        now_due.push((batch, tenant, true));
                    }
                    make_events(&ports, seal_timeout_ms, &events, now_due, &mut last, &mut finals, &mut reads, true).await;
                    return;
                }
                () = queue.status_changed.notified() => false,
                _ = ticks.tick() => true,
            };
            check_final(&ports, seal_timeout_ms, &queue).await;
            make_events(
                &ports,
                seal_timeout_ms,
                &events,
                queue.take(tick),
                &mut last,
                &mut finals,
                &mut reads,
                false,
            )
            .await;
            if tick {
                last.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
                reads.retain(|_, (at, _)| at.elapsed() < FORGET_AFTER);
            }
        }
    });
    NamedTask {
        name: "batch-progress",
        handle,
    }
}

/// A batch some of whose runs turned final has its status read (one row): if it is final now,
/// its final event is due as for a reported status change; otherwise its progress is, at the
/// next tick.
async fn check_final(ports: &ViewPorts, seal_timeout_ms: u64, queue: &ProgressQueue) {
    for (batch_id, tenant) in queue.take_maybe_final() {
        let status = match ports.store.batch(&tenant, &batch_id).await {
            Ok(Some(batch)) => batch.effective_status(seal_timeout_ms as i64, now_millis()),
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(batch = %batch_id, %error, "could not read a batch's status for its events");
                BatchStatus::Processing
            }
        };
        queue.changed(&tenant, &batch_id, is_final(status));
    }
}

/// A batch seen final, whose final event waits.
struct FinalSeen {
    seen_at: Instant,
    reported_at: Option<Instant>,
}

impl FinalSeen {
    fn due(&self) -> bool {
        match self.reported_at {
            Some(at) => at.elapsed() >= TERMINAL_DELAY,
            None => self.seen_at.elapsed() >= UNREPORTED_FINAL_DELAY,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn make_events(
    ports: &ViewPorts,
    seal_timeout_ms: u64,
    events: &Events,
    due: Vec<(String, String, bool)>,
    last: &mut HashMap<String, (String, Instant)>,
    finals: &mut HashMap<String, FinalSeen>,
    reads: &mut HashMap<String, (Instant, Duration)>,
    stopping: bool,
) {
    for (batch_id, tenant, status_changed) in due {
        // Counting a big batch's runs by status is not free (about a second for a million runs on
        // Postgres): progress alone is read again only after a pause of four times the last read,
        // so the reads take at most a fifth of a connection. Status changes are never held back.
        if !status_changed
            && !stopping
            && reads
                .get(&batch_id)
                .is_some_and(|(at, cost)| at.elapsed() < (*cost * 4).max(PROGRESS_PERIOD))
        {
            events.progress.changed(&tenant, &batch_id, false);
            continue;
        }
        let started = Instant::now();
        let read = batch_view_over(ports, &tenant, &batch_id, seal_timeout_ms).await;
        reads.insert(batch_id.clone(), (Instant::now(), started.elapsed()));
        let view = match read {
            Ok(view) => view,
            Err(RunsError::BatchNotFound) => continue,
            Err(error) => {
                tracing::warn!(batch = %batch_id, %error, "could not read a batch for its progress event");
                // Tried again at the next tick.
                events.progress.changed(&tenant, &batch_id, status_changed);
                continue;
            }
        };
        let terminal = is_final(view.status);
        if terminal && !stopping {
            let now = Instant::now();
            let seen = finals.entry(batch_id.clone()).or_insert(FinalSeen {
                seen_at: now,
                reported_at: None,
            });
            if status_changed && seen.reported_at.is_none() {
                seen.reported_at = Some(now);
            }
            if !seen.due() {
                // Looked at again at the next tick.
                events.progress.changed(&tenant, &batch_id, false);
                continue;
            }
            finals.remove(&batch_id);
        }
        let data = serde_json::to_string(&BatchEventData::of(&view)).expect("an event serializes");
        if last.get(&batch_id).is_some_and(|(seen, _)| *seen == data) {
            continue;
        }
        last.insert(batch_id.clone(), (data.clone(), Instant::now()));
        events
            .queue(NewEvent {
                batch_id: Arc::from(batch_id.as_str()),
                kind: EventKind::Batch,
                run_status: None,
                terminal,
                data,
                queued_at: Instant::now(),
            })
            .await;
    }
}
