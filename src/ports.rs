//! The ports the use cases work through, bundled: the batch store, the item queue, the payload
//! store, the run, work, retention and stats stores, the status writers over them, and the batch
//! events (the journal, its live fan-out, and the handle that reports changes). Adapters behind
//! each are chosen by the wiring (`app.rs`).

use std::sync::Arc;

use tokio::sync::Notify;

use crate::events::live::Hub;
use crate::events::{EventJournal, Events};
use crate::payloads::PayloadStore;
use crate::queue::ItemQueue;
use crate::runs::work::{RunsReady, StatusWriters};
use crate::store::BatchStore;
use crate::store::retention::RetentionStore;
use crate::store::runs::RunStore;
use crate::store::stats::StatsStore;
use crate::store::work::WorkStore;

#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn BatchStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
    pub runs: Arc<dyn RunStore>,
    pub work: Arc<dyn WorkStore>,
    pub retention: Arc<dyn RetentionStore>,
    pub stats: Arc<dyn StatsStore>,
    /// Every status write (claims, heartbeats, completions) goes through these.
    pub status: StatusWriters,
    /// Wakes this node's materialiser when a batch is sealed here.
    pub sealed: SealSignal,
    /// Wakes this node's waiting claims when runs may have become claimable.
    pub runs_ready: RunsReady,
    /// Where changes of batches and runs are reported, for the batches' event streams.
    pub events: Events,
    /// The batches' event journals, which streams replay.
    pub journal: Arc<dyn EventJournal>,
    /// This node's live event streams, by batch.
    pub hub: Arc<Hub>,
}

/// A wake-up for the materialiser: sealing a batch signals it, so the batch's runs start being
/// written at once instead of at the next periodic wake-up. A signal sent while the materialiser
/// is busy is kept (one), never lost.
#[derive(Clone, Default)]
pub struct SealSignal(Arc<Notify>);

impl SealSignal {
    pub fn batch_sealed(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next signal (at once if one came since the last wait).
    pub async fn sealed(&self) {
        self.0.notified().await;
    }
}
