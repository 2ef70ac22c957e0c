//! A batch's events: the journal every event stream replays, the batched writer that fills it,
//! the throttled progress of batches, and the live fan-out to this node's streams and to the
//! other nodes.
//!
//! The rest of the code reaches it through one handle, [`Events`] (in [`crate::ports::Ports`]):
//! `run_final` when a run reaches a final status, `batch_changed` when a batch's progress moved,
//! `batch_status` when its status changed. None of them waits for a database write: events are
//! queued for the journal writer (`writer.rs`), which allocates their sequence numbers and
//! commits them in batches, and publishes each one only after its commit. This module never
//! changes a batch or a run; it reports what others changed.

pub mod live;
pub mod progress;
pub mod redis;
pub mod stream;
pub mod writer;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::dependency::DependencyError;
use crate::store::Millis;
use crate::store::runs::RunStatus;

pub use self::progress::ProgressQueue;

/// What an event is about: the `event:` field of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Batch,
    Run,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Run => "run",
        }
    }

    pub fn parse(text: &str) -> Self {
        if text == "run" {
            Self::Run
        } else {
            Self::Batch
        }
    }
}

/// An event waiting for the journal: no sequence number yet.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub batch_id: Arc<str>,
    pub kind: EventKind,
    /// A run event's run status.
    pub run_status: Option<RunStatus>,
    /// A batch event whose status is final: the journal's last event.
    pub terminal: bool,
    /// The event's JSON.
    pub data: String,
    /// When it was queued, for the queue-to-publish delay metric.
    pub queued_at: Instant,
}

/// An event as the journal holds it and the streams send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub batch_id: String,
    pub seq: u64,
    pub kind: EventKind,
    pub run_status: Option<String>,
    pub terminal: bool,
    pub data: String,
}

impl<'de> serde::Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self::parse(&text))
    }
}

/// Where a batch's journal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalEnd {
    /// The last sequence number allocated.
    pub last_seq: u64,
    /// The terminal event is written: nothing follows `last_seq`.
    pub closed: bool,
}

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// A row's `(batch_id, seq)` was taken already: the transaction is rolled back.
    #[error("an event's sequence number was taken already")]
    Conflict,
    #[error(transparent)]
    Dependency(#[from] DependencyError),
}

/// The journal in the SQL store.
#[async_trait]
pub trait EventJournal: Send + Sync + 'static {
    /// Writes `events` in one transaction: per batch, a guarded bump of its counter allocates
    /// consecutive sequence numbers (none once its journal is closed; a terminal event closes
    /// it), then one insert writes every row. Answers, for each event in order, its stored
    /// form, or `None` when its batch's journal was closed (or the batch is gone).
    async fn append(
        &self,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Option<StoredEvent>>, AppendError>;

    /// Writes one event in a transaction of its own. A sequence number found taken (a counter
    /// behind its journal) moves the counter past the journal's last row and allocates again.
    async fn append_one(
        &self,
        event: &NewEvent,
        now: Millis,
    ) -> Result<Option<StoredEvent>, DependencyError>;

    /// The batch's events after `after`, in order, at most `limit`.
    async fn read(
        &self,
        batch_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, DependencyError>;

    async fn end(&self, batch_id: &str) -> Result<JournalEnd, DependencyError>;
}

/// A run that reached a final status, as its `run` event shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEvent {
    pub index: u32,
    pub status: RunStatus,
    pub attempt: u32,
    /// `(code, message)`.
    pub error: Option<(String, String)>,
}

#[derive(Serialize)]
struct RunEventData<'a> {
    id: String,
    index: u32,
    status: &'static str,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorData<'a>>,
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: &'a str,
    message: &'a str,
}

/// The handle the rest of the code reports changes through. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    journal: mpsc::Sender<NewEvent>,
    progress: Arc<ProgressQueue>,
}

impl Events {
    pub fn new(journal: mpsc::Sender<NewEvent>, progress: Arc<ProgressQueue>) -> Self {
        Self { journal, progress }
    }

    /// A handle whose events go nowhere, for code run without the server (benchmarks).
    pub fn unwired() -> Self {
        Self::new(mpsc::channel(1).0, Arc::default())
    }

    /// A run reached a final status (`COMPLETED`, `FAILED`, `CANCELED`): its `run` event is
    /// queued for the journal, and its batch's progress is due. Waits only when the writer's
    /// queue is full (back-pressure), never for the write.
    pub async fn run_final(&self, tenant: &str, batch_id: &str, run: RunEvent) {
        let error = run.error.as_ref().map(|(code, message)| ErrorData {
            code: code.as_str(),
            message: message.as_str(),
        });
        let data = RunEventData {
            id: crate::runs::id::run_id(batch_id, run.index),
            index: run.index,
            status: run.status.as_str(),
            attempt: run.attempt,
            error,
        };
        let event = NewEvent {
            batch_id: Arc::from(batch_id),
            kind: EventKind::Run,
            run_status: Some(run.status),
            terminal: false,
            data: serde_json::to_string(&data).expect("an event serializes"),
            queued_at: Instant::now(),
        };
        self.queue(event).await;
        self.batch_changed(tenant, batch_id);
    }

    /// The batch's progress moved (items enqueued, runs written or finished): a `batch` event
    /// with its counts follows within the progress period (250 ms), one per period at most.
    pub fn batch_changed(&self, tenant: &str, batch_id: &str) {
        self.progress.changed(tenant, batch_id, false);
    }

    /// Some of the batch's runs turned final (after their `run_final` calls): if that made the
    /// batch final, its final event follows as for `batch_status`; otherwise its progress does.
    /// Costs one read of the batch's row, not of its counts.
    pub fn runs_turned_final(&self, tenant: &str, batch_id: &str) {
        self.progress.runs_turned_final(tenant, batch_id);
    }

    /// The batch's status changed (sealed, or final): its `batch` event is made at once. A final
    /// status's event is the journal's last, and it is committed before any stream sends it.
    pub fn batch_status(&self, tenant: &str, batch_id: &str) {
        self.progress.changed(tenant, batch_id, true);
    }

    pub(crate) async fn queue(&self, event: NewEvent) {
        // Fails only once the writer has stopped, after the server stopped serving.
        if self.journal.send(event).await.is_err() {
            crate::metrics::journal_events_dropped("writer_stopped", 1);
        }
    }
}
