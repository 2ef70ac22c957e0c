//! Batch metadata in SQLite, the embedded default.
//!
//! SQLite takes one writer at a time, so Sluice gives it exactly one: every write goes through a
//! pool of one connection, where writers queue without ever meeting SQLite's busy lock (whose
//! retry sleeps, up to 100 ms each, made the tail latency). Reads go through a separate pool of
//! read-only connections, which in WAL mode never wait for the writer.
//!
//! Checkpoints (copying the WAL back into the database file, with its fsyncs) are not left to the
//! writer, where SQLite would run one inside whichever commit crossed the WAL's size threshold and
//! make that request wait: a connection of their own runs a passive checkpoint every second
//! ([`SqliteStore::checkpoint`], scheduled by the wiring), beside the writer, never blocking it.
//!
//! Durability (`journal_mode = WAL`, `synchronous = NORMAL`): a commit is in the WAL file before it
//! is acknowledged, so everything acknowledged survives a crash of the process. The WAL is synced
//! to disk at checkpoints, not at every commit, so a power cut or kernel crash can lose the last
//! commits before the most recent checkpoint (the database itself stays consistent). Production
//! mode (Postgres) syncs every commit.

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::dependency::{Dependency, DependencyError};

/// Read-only connections; reads are short, so a few serve many requests.
const READERS: u32 = 4;
/// Page cache of each connection, in KiB (SQLite's default is 2 MiB).
const CACHE_KIB: i64 = 4 * 1024;

#[derive(Clone)]
pub struct SqliteStore {
    /// The one writer connection: every statement that writes goes here.
    pub(crate) pool: SqlitePool,
    /// Read-only connections for statements that only read.
    pub(crate) reader: SqlitePool,
    /// The connection that runs checkpoints.
    checkpointer: SqlitePool,
}

/// How often the WAL is checkpointed.
pub const CHECKPOINT_PERIOD: Duration = Duration::from_secs(1);

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, DependencyError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            // A WAL that grew during a large stream is cut back to this once it is checkpointed.
            .pragma("journal_size_limit", (64 << 20).to_string())
            // Only another process could hold the lock: wait for it rather than fail.
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|error| DependencyError::failed(Dependency::Database, error))?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            pool,
            reader,
            checkpointer,
        })
    }

    /// Copies what it can of the WAL into the database without waiting for readers or the writer
    /// (`PASSIVE`); run every [`CHECKPOINT_PERIOD`].
    pub async fn checkpoint(&self) {
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.checkpointer)
            .await
        {
            tracing::warn!(%error, "SQLite checkpoint failed");
        }
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}
