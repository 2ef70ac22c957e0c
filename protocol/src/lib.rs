//! Sluice's wire protocol, shared by the server, its clients (`sluice send`, `sluice bench`) and
//! the fuzz target: how an NDJSON body is framed into lines, what each line becomes (the item
//! rules), what an item is stored as, and the JSON bodies of the HTTP API.
//!
//! Pure and synchronous but for the framer's adapter over a stream of reads: no I/O, no backend,
//! nothing from the service. It must never depend on the `sluice` crate.

pub mod framer;
pub mod index_probe;
pub mod item;
pub mod quote;
pub mod runs;
pub mod stored;
pub mod wire;
pub mod work;
