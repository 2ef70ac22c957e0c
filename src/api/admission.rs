//! Overload protection decided before any work is queued: a node serves at most so many Phase 2
//! streams and so many items in flight at once, and turns the rest away with `503` + `Retry-After`
//! before reading their bodies. A client retrying later (or on another node) loses nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;

/// The node-wide bounds on Phase 2 work.
pub struct LoadShield {
    streams: Arc<Semaphore>,
    items: Arc<Semaphore>,
}

/// Which bound turned a stream away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    Streams,
    ItemsInFlight,
    /// A worker call found this node's queue of status writes (claims, heartbeats or
    /// completions) full.
    StatusWrites,
}

impl Overload {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streams => "streams",
            Self::ItemsInFlight => "items in flight",
            Self::StatusWrites => "status writes queued",
        }
    }
}

/// A stream's admission: holds its share of both bounds until dropped.
pub struct StreamPermit {
    _stream: OwnedSemaphorePermit,
    items: OwnedSemaphorePermit,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        metrics::streams_in_flight(-1.0);
        metrics::item_slots_in_use(-f64::from(self.items.num_permits() as u32));
    }
}

impl LoadShield {
    pub fn new(max_streams: u32, max_items_in_flight: u32) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(max_streams as usize)),
            items: Arc::new(Semaphore::new(max_items_in_flight as usize)),
        }
    }

    /// Admits one stream that keeps up to `items` items in flight, or says which bound is full.
    pub fn admit(&self, items: u32) -> Result<StreamPermit, Overload> {
        let stream = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Overload::Streams)?;
        let items = self
            .items
            .clone()
            .try_acquire_many_owned(items)
            .map_err(|_| Overload::ItemsInFlight)?;
        metrics::streams_in_flight(1.0);
        metrics::item_slots_in_use(f64::from(items.num_permits() as u32));
        Ok(StreamPermit {
            _stream: stream,
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_beyond_either_bound_are_turned_away_until_one_ends() {
        let shield = LoadShield::new(2, 25);
        let first = shield.admit(10).unwrap();
        let second = shield.admit(10).unwrap();
        assert_eq!(shield.admit(1).err(), Some(Overload::Streams));
        drop(second);
        assert_eq!(shield.admit(20).err(), Some(Overload::ItemsInFlight));
        let third = shield.admit(15).unwrap();
        drop((first, third));
        assert!(shield.admit(25).is_ok());
    }
}
