//! Watching a batch: its journal after a given sequence number, then its live events, with no gap
//! and no duplicate between the two, until the event that made the batch final.
//!
//! The seam: the stream subscribes to the live channel *before* it reads the journal, so an
//! event committed during the read is in one or the other (or both). Every event carries its
//! sequence number, and the stream only ever sends `last + 1`: a live event at or below `last`
//! is a duplicate and skipped; one beyond `last + 1` (an event published by another node first,
//! a lagging channel, a lost pub/sub message) makes the stream read the journal from `last`,
//! where every published event already is (publish after commit). A stream that hears nothing
//! for [`IDLE_READ`] reads the journal too, so a lost message delays an event by that much at
//! most.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::live::{Hub, Subscription};
use super::{EventJournal, EventKind, StoredEvent};
use crate::dependency::DependencyError;
use crate::ingest::batches::{BatchError, find_batch};
use crate::store::BatchStore;

/// Events read from the journal at a time.
const PAGE: u32 = 500;
/// Pause before a failed journal read is tried again.
const READ_RETRY: Duration = Duration::from_millis(500);
/// How long a stream waits for a live event before it reads the journal.
pub const IDLE_READ: Duration = Duration::from_secs(5);

/// Which `run` events a stream sends (`?runs=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunFilter {
    None,
    Failed,
    #[default]
    All,
}

impl RunFilter {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" => Self::None,
            "failed" => Self::Failed,
            "all" => Self::All,
            _ => return None,
        })
    }

    fn sends(self, event: &StoredEvent) -> bool {
        match (event.kind, self) {
            (EventKind::Batch, _) | (EventKind::Run, Self::All) => true,
            (EventKind::Run, Self::None) => false,
            (EventKind::Run, Self::Failed) => event.run_status.as_deref() == Some("FAILED"),
        }
    }
}

/// What a stream needs.
pub struct Watch {
    pub store: Arc<dyn BatchStore>,
    pub journal: Arc<dyn EventJournal>,
    pub hub: Arc<Hub>,
    pub seal_timeout_ms: u64,
    /// Ends the stream (the server is stopping; the client reconnects elsewhere).
    pub stop: CancellationToken,
}

/// The tenant's batch's events after `after`, then live, until the terminal event.
pub async fn watch_batch(
    watch: Watch,
    tenant: &str,
    batch_id: &str,
    after: u64,
    filter: RunFilter,
) -> Result<impl Stream<Item = Arc<StoredEvent>> + Send + 'static, BatchError> {
    let (batch, _) = find_batch(
        watch.store.as_ref(),
        tenant,
        batch_id,
        watch.seal_timeout_ms,
    )
    .await?;
    let subscription = watch.hub.subscribe(&batch.id);
    let state = Tail {
        batch_id: batch.id,
        journal: watch.journal,
        subscription,
        last: after,
        backlog: VecDeque::new(),
        journal_has_more: true,
        done: false,
        filter,
        stop: watch.stop,
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    }))
}

struct Tail {
    batch_id: String,
    journal: Arc<dyn EventJournal>,
    subscription: Subscription,
    /// The last sequence number sent (or passed over by the filter).
    last: u64,
    /// Events after `last`, in order, gap-free.
    backlog: VecDeque<Arc<StoredEvent>>,
    /// The last journal read filled a page: read again before waiting.
    journal_has_more: bool,
    done: bool,
    filter: RunFilter,
    stop: CancellationToken,
}

impl Tail {
    async fn next(&mut self) -> Option<Arc<StoredEvent>> {
        loop {
            if self.done || self.stop.is_cancelled() {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                self.last = event.seq;
                self.done = event.terminal;
                if self.filter.sends(&event) {
                    return Some(event);
                }
                continue;
            }
            if self.journal_has_more {
                if let Err(error) = self.read_journal().await {
                    // The store is busy or down: the stream waits and reads again, so many
                    // streams reading at once slow down rather than all end.
                    tracing::warn!(batch = %self.batch_id, %error, "an event stream could not read the journal; it reads again");
                    tokio::select! {
                        () = self.stop.cancelled() => return None,
                        () = tokio::time::sleep(READ_RETRY) => {}
                    }
                }
                continue;
            }
            let received = tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                received = self.subscription.receiver().recv() => received,
                () = tokio::time::sleep(IDLE_READ) => {
                    self.journal_has_more = true;
                    continue;
                }
            };
            match received {
                Ok(event) if event.seq <= self.last => {}
                Ok(event) if event.seq == self.last + 1 => self.backlog.push_back(event),
                // A gap, or events dropped for a lagging stream: the journal has them.
                Ok(_) | Err(RecvError::Lagged(_)) => self.journal_has_more = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    async fn read_journal(&mut self) -> Result<(), DependencyError> {
        let events = self.journal.read(&self.batch_id, self.last, PAGE).await?;
        self.journal_has_more = events.len() == PAGE as usize;
        if events.is_empty() {
            // Nothing after `last`: if the journal is closed, nothing ever will be.
            let end = self.journal.end(&self.batch_id).await?;
            self.done = end.closed && end.last_seq <= self.last;
        }
        self.backlog.extend(events.into_iter().map(Arc::new));
        Ok(())
    }
}
