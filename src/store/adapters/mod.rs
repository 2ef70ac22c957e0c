//! The SQL stores: connecting and migrating per database here; [`crate::store::BatchStore`] for
//! both in `sql.rs`, and [`crate::queue::ItemQueue`] for deployments without Redis in
//! `queue/adapters`.

mod copy;
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

/// A write refused because its key is taken (`23505` on Postgres, `SQLITE_CONSTRAINT_PRIMARYKEY` or
/// `_UNIQUE` on SQLite).
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}
