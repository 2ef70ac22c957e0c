//! The streaming pipeline: body decoding, NDJSON framing, item decoding, offload, enqueue, sealing.
//!
//! It must never buffer a whole body, never drop an accepted item on a later error, and never hold
//! more than the configured number of items in flight.

pub mod body;
pub mod framer;
pub mod index_probe;
pub mod item;
pub mod pipeline;
pub mod quote;
pub mod seal;
pub mod stored;
pub mod summary;
