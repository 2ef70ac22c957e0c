//! The streaming pipeline: body decoding, offload, enqueue, sealing. Framing and the item rules
//! are the protocol crate's (`crate::protocol`).
//!
//! It must never buffer a whole body, never drop an accepted item on a later error, and never hold
//! more than the configured number of items in flight.

pub mod body;
pub mod pipeline;
pub mod seal;
pub mod summary;
