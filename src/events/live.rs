//! Live fan-out: committed events handed to the streams open on this node (one broadcast channel
//! per batch with subscribers), and to the other nodes through the bus (Redis pub/sub), whose
//! messages come back into this node's channels.
//!
//! Delivery here is a hint, never the record: a stream that lags, or sees a gap in the sequence
//! numbers, reads the journal (`stream.rs`). So a full channel or a lost pub/sub message delays
//! an event, and loses none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::StoredEvent;

/// Events a lagging subscriber may be behind before it must read the journal. A batch's channel
/// holds each event once for all its subscribers, so this costs per batch, not per stream; it
/// is several flushes (at most 512 events each) deep, so that a burst does not send every stream
/// of a popular batch to the journal at once.
const CHANNEL_CAPACITY: usize = 4096;

/// The other nodes.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Sends committed events to every other node (best effort: they read the journal anyway).
    async fn publish(&self, events: &[Arc<StoredEvent>]);
}

/// This node's subscribers, by batch.
#[derive(Default)]
pub struct Hub {
    batches: Mutex<HashMap<String, broadcast::Sender<Arc<StoredEvent>>>>,
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>, batch_id: &str) -> Subscription {
        let mut batches = self.batches.lock().expect("never poisoned");
        let receiver = batches
            .entry(batch_id.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Subscription {
            hub: self.clone(),
            batch_id: batch_id.to_owned(),
            receiver: Some(receiver),
        }
    }

    /// Hands `event` to the streams of its batch open on this node, if any.
    pub fn deliver(&self, event: Arc<StoredEvent>) {
        let batches = self.batches.lock().expect("never poisoned");
        if let Some(sender) = batches.get(&event.batch_id) {
            // No receiver left: the last subscription is being dropped and removes the entry.
            sender.send(event).ok();
        }
    }

    /// Batches with a subscriber on this node.
    pub fn batches(&self) -> usize {
        self.batches.lock().expect("never poisoned").len()
    }
}

/// A stream's hold on its batch's channel; the channel goes with its last subscription.
pub struct Subscription {
    hub: Arc<Hub>,
    batch_id: String,
    receiver: Option<broadcast::Receiver<Arc<StoredEvent>>>,
}

impl Subscription {
    pub fn receiver(&mut self) -> &mut broadcast::Receiver<Arc<StoredEvent>> {
        self.receiver.as_mut().expect("held until drop")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut batches = self.hub.batches.lock().expect("never poisoned");
        self.receiver = None;
        if batches
            .get(&self.batch_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            batches.remove(&self.batch_id);
        }
    }
}

/// Where committed events go: this node's streams, then the other nodes.
#[derive(Clone)]
pub struct LiveEvents {
    pub hub: Arc<Hub>,
    pub bus: Option<Arc<dyn EventBus>>,
}

impl LiveEvents {
    pub async fn publish(&self, events: Vec<Arc<StoredEvent>>) {
        if events.is_empty() {
            return;
        }
        for event in &events {
            self.hub.deliver(event.clone());
        }
        if let Some(bus) = &self.bus {
            bus.publish(&events).await;
        }
    }
}
