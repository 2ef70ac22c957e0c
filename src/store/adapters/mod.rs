//! The SQL stores: connecting and migrating per database here; [`crate::store::BatchStore`] for
//! both in `sql.rs`, and [`crate::queue::ItemQueue`] for deployments without Redis in
//! `queue/adapters`.

mod events;
mod maintenance;
pub mod postgres;
mod row;
mod runs;
mod sql;
pub mod sqlite;
mod work;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
