//! Sluice: streams very large NDJSON batches over HTTP and lands each item exactly once.
//!
//! The binary (`main.rs`) only wires these modules together; tests and benchmarks use the same
//! code through this crate.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dependency;
pub mod events;
pub mod flusher;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod payloads;
pub mod ports;
/// The wire protocol: framing, item rules, stored shapes, API bodies (the `sluice-protocol` crate).
pub use sluice_protocol as protocol;
pub mod queue;
pub mod runs;
pub mod store;
pub mod tasks;
