//! Ingest: the use cases of Phase 1 and Phase 2 (`batches`) and the streaming pipeline under them
//! (offload, dedup-enqueue, sealing). Framing and the item rules are the protocol crate's
//! (`crate::protocol`); reading an HTTP body is the HTTP layer's. Nothing here knows HTTP.
//!
//! It must never buffer a whole body, never drop an accepted item on a later error, and never hold
//! more than the configured number of items in flight.

pub mod batches;
pub mod pipeline;
pub mod seal;
pub mod summary;
