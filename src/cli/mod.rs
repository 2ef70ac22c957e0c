//! Client subcommands that talk to a running Sluice server over HTTP, sharing the wire types of
//! `api::wire`.

pub mod bench;
pub mod send;
pub mod work;
