//! The ports the use cases work through, bundled: the batch store, the item queue and the
//! payload store. Adapters behind each are chosen by the wiring (`app.rs`).

use std::sync::Arc;

use tokio::sync::Notify;

use crate::payloads::PayloadStore;
use crate::queue::ItemQueue;
use crate::store::BatchStore;
use crate::store::runs::RunStore;

#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn BatchStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
    pub runs: Arc<dyn RunStore>,
    /// Wakes this node's materialiser when a batch is sealed here.
    pub sealed: SealSignal,
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
