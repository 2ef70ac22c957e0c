//! The journal writer: the one task per node that writes events, in batches.
//!
//! A flush starts when `SLUICE_JOURNAL_FLUSH_MAX_EVENTS` events wait, when the oldest waiting one
//! has waited `SLUICE_JOURNAL_FLUSH_INTERVAL_MS`, when a terminal event (a batch turned final)
//! arrives, and at shutdown. It takes every event waiting then (up to [`MAX_FLUSH_EVENTS`]) and
//! writes them in one transaction with one insert. If a row's sequence number is found taken,
//! that transaction is rolled back and every event is written on its own, so one bad row never
//! drops the rest.
//!
//! Publish after commit: an event is handed to the streams (this node's and, through the bus,
//! the other nodes') only once its row is committed, so a stream never sends an event a
//! reconnect could not find in the journal, and the terminal event is durable before any stream
//! ends on it. A crash between the commit and the publish loses only the live hand-off; streams
//! read the journal again when they see a gap or wait too long (`stream.rs`).
//!
//! A failed write (the store is down) is retried with the same events, and meanwhile the queue
//! in front of the writer fills and `Events::run_final` waits: back-pressure, not a growing buffer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::live::LiveEvents;
use super::{AppendError, EventJournal, NewEvent, StoredEvent};
use crate::store::now_millis;
use crate::tasks::NamedTask;

/// Most events one flush writes.
pub const MAX_FLUSH_EVENTS: usize = 512;
/// Events queued in front of the writer; beyond, producers wait.
pub const QUEUE_CAPACITY: usize = 8192;
/// Pause before a failed flush is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// `SLUICE_JOURNAL_FLUSH_MAX_EVENTS`.
    pub flush_max_events: usize,
    /// `SLUICE_JOURNAL_FLUSH_INTERVAL_MS`.
    pub flush_interval: Duration,
}

/// Runs the writer until `stop` is cancelled; then flushes every event still queued and returns.
pub fn spawn(
    journal: Arc<dyn EventJournal>,
    live: LiveEvents,
    mut queue: mpsc::Receiver<NewEvent>,
    settings: WriterSettings,
    stop: CancellationToken,
) -> NamedTask {
    let handle = tokio::spawn(async move {
        let threshold = settings.flush_max_events.clamp(1, MAX_FLUSH_EVENTS);
        let mut waiting: Vec<NewEvent> = Vec::with_capacity(threshold);
        let mut stopping = false;
        loop {
            // Wait for the first event, then for the flush to be due.
            if waiting.is_empty() && !stopping {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => stopping = true,
                    event = queue.recv() => match event {
                        Some(event) => waiting.push(event),
                        None => stopping = true,
                    },
                }
            }
            let due_at = tokio::time::Instant::now() + settings.flush_interval;
            while !stopping
                && waiting.len() < threshold
                && !waiting.iter().any(|event| event.terminal)
            {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => stopping = true,
                    event = queue.recv() => match event {
                        Some(event) => waiting.push(event),
                        None => stopping = true,
                    },
                    () = tokio::time::sleep_until(due_at) => break,
                }
            }
            // Whatever else is waiting goes in the same flush.
            while waiting.len() < MAX_FLUSH_EVENTS {
                match queue.try_recv() {
                    Ok(event) => waiting.push(event),
                    Err(_) => break,
                }
            }
            if stopping {
                queue.close();
                while let Some(event) = queue.recv().await {
                    waiting.push(event);
                }
                for part in waiting.chunks(MAX_FLUSH_EVENTS) {
                    flush(journal.as_ref(), &live, part, true, &stop).await;
                }
                return;
            }
            if !waiting.is_empty() {
                flush(journal.as_ref(), &live, &waiting, false, &stop).await;
                waiting.clear();
            }
        }
    });
    NamedTask {
        name: "journal-writer",
        handle,
    }
}

/// Writes `events` (retrying while the store is unavailable; at shutdown, once: a flush retrying
/// when `stop` comes tries once more and then drops them, so a store that is gone never holds the
/// shutdown) and publishes what was committed.
async fn flush(
    journal: &dyn EventJournal,
    live: &LiveEvents,
    events: &[NewEvent],
    last: bool,
    stop: &CancellationToken,
) {
    if events.is_empty() {
        return;
    }
    let started = Instant::now();
    let stored = loop {
        match journal.append(events, now_millis()).await {
            Ok(stored) => {
                crate::metrics::journal_insert_statements(1);
                break stored;
            }
            Err(AppendError::Conflict) => {
                tracing::warn!(
                    events = events.len(),
                    "an event's sequence number was taken; writing this flush's events one by one"
                );
                break one_by_one(journal, events).await;
            }
            Err(AppendError::Dependency(error)) => {
                tracing::warn!(%error, events = events.len(), "could not write events to the journal");
                if last || stop.is_cancelled() {
                    crate::metrics::journal_events_dropped("store_failed", events.len() as u64);
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
    };
    crate::metrics::journal_flushed(started.elapsed());
    let mut committed = Vec::with_capacity(stored.len());
    for (event, stored) in events.iter().zip(stored) {
        match stored {
            Some(stored) => {
                crate::metrics::journal_rows_written(event.kind.as_str(), 1);
                crate::metrics::event_publish_delay(event.queued_at.elapsed());
                committed.push(Arc::new(stored));
            }
            None => crate::metrics::journal_events_dropped("journal_closed", 1),
        }
    }
    live.publish(committed).await;
}

async fn one_by_one(journal: &dyn EventJournal, events: &[NewEvent]) -> Vec<Option<StoredEvent>> {
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        crate::metrics::journal_insert_statements(1);
        match journal.append_one(event, now_millis()).await {
            Ok(row) => stored.push(row),
            Err(error) => {
                tracing::warn!(batch = %event.batch_id, %error, "could not write an event to the journal");
                stored.push(None);
            }
        }
    }
    stored
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::dependency::DependencyError;
    use crate::events::live::Hub;
    use crate::events::{EventKind, JournalEnd};
    use crate::store::Millis;

    /// A journal that numbers events per batch and remembers each append's size.
    #[derive(Default)]
    struct Recorded {
        appends: Mutex<Vec<usize>>,
        next: Mutex<u64>,
        /// Every append fails as if the database were gone.
        down: bool,
    }

    #[async_trait]
    impl EventJournal for Recorded {
        async fn append(
            &self,
            events: &[NewEvent],
            _now: Millis,
        ) -> Result<Vec<Option<StoredEvent>>, AppendError> {
            self.appends.lock().unwrap().push(events.len());
            if self.down {
                return Err(AppendError::Dependency(DependencyError::unavailable(
                    crate::dependency::Dependency::Database,
                    "down",
                )));
            }
            let mut next = self.next.lock().unwrap();
            Ok(events
                .iter()
                .map(|event| {
                    *next += 1;
                    Some(StoredEvent {
                        batch_id: event.batch_id.to_string(),
                        seq: *next,
                        kind: event.kind,
                        run_status: None,
                        terminal: event.terminal,
                        data: event.data.clone(),
                    })
                })
                .collect())
        }

        async fn append_one(
            &self,
            _event: &NewEvent,
            _now: Millis,
        ) -> Result<Option<StoredEvent>, DependencyError> {
            unreachable!("no conflict here")
        }

        async fn read(&self, _: &str, _: u64, _: u32) -> Result<Vec<StoredEvent>, DependencyError> {
            Ok(Vec::new())
        }

        async fn end(&self, _: &str) -> Result<JournalEnd, DependencyError> {
            Ok(JournalEnd::default())
        }
    }

    fn event(terminal: bool) -> NewEvent {
        NewEvent {
            batch_id: Arc::from("batch_a"),
            kind: EventKind::Batch,
            run_status: None,
            terminal,
            data: "{}".into(),
            queued_at: Instant::now(),
        }
    }

    /// A writer over `journal` publishing to `hub`, flushing at `flush_max_events` or 100 ms.
    fn start(
        journal: Arc<Recorded>,
        hub: Arc<Hub>,
        flush_max_events: usize,
    ) -> (mpsc::Sender<NewEvent>, CancellationToken, NamedTask) {
        let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
        let stop = CancellationToken::new();
        let settings = WriterSettings {
            flush_max_events,
            flush_interval: Duration::from_millis(100),
        };
        let live = LiveEvents { hub, bus: None };
        let task = spawn(journal, live, queued, settings, stop.clone());
        (queue, stop, task)
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_on_size_on_time_on_a_terminal_event_and_at_stop() {
        let journal = Arc::new(Recorded::default());
        let hub = Arc::new(Hub::default());
        let mut watching = hub.subscribe("batch_a");
        let (queue, stop, task) = start(journal.clone(), hub, 16);
        let appends = || journal.appends.lock().unwrap().clone();

        // Size: 16 waiting start a flush at once.
        for _ in 0..16 {
            queue.send(event(false)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(appends(), vec![16]);
        // Time: one event waits the interval, no longer.
        queue.send(event(false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert_eq!(appends(), vec![16]);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(appends(), vec![16, 1]);
        // Lifecycle: a terminal event is written at once, with what waits before it.
        queue.send(event(false)).await.unwrap();
        queue.send(event(true)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(appends(), vec![16, 1, 2]);
        // Stop: what is queued is written before the writer ends.
        queue.send(event(false)).await.unwrap();
        stop.cancel();
        task.handle.await.unwrap();
        assert_eq!(appends(), vec![16, 1, 2, 1]);
        // Every committed event was published, in order.
        let mut seqs = Vec::new();
        while let Ok(event) = watching.receiver().try_recv() {
            seqs.push(event.seq);
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_retrying_against_a_store_that_is_gone_ends_at_stop() {
        let journal = Arc::new(Recorded {
            down: true,
            ..Recorded::default()
        });
        let (queue, stop, task) = start(journal.clone(), Arc::new(Hub::default()), 1);
        queue.send(event(false)).await.unwrap();
        // The flush retries every RETRY_AFTER while the store is down.
        tokio::time::sleep(RETRY_AFTER * 4 + Duration::from_millis(1)).await;
        let tries = journal.appends.lock().unwrap().len();
        assert!(tries >= 4, "{tries} tries");
        queue.send(event(false)).await.unwrap();
        let stopped = tokio::time::Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task.handle)
            .await
            .expect("the writer ended after stop")
            .unwrap();
        assert!(stopped.elapsed() < RETRY_AFTER, "{:?}", stopped.elapsed());
    }
}
