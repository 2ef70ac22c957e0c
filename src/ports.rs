//! The ports the use cases work through, bundled: the batch store, the item queue and the
//! payload store. Adapters behind each are chosen by the wiring (`app.rs`).

use std::sync::Arc;

use crate::payloads::PayloadStore;
use crate::queue::ItemQueue;
use crate::store::BatchStore;

#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn BatchStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
}
