//! The SQL stores. Each type implements both [`crate::store::BatchStore`] and, for deployments
//! without Redis, [`crate::queue::ItemQueue`] (in `queue/adapters`).

pub mod postgres;
mod row;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
