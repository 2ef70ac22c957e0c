//! The server's database opened directly (SQLite file or the tests' Postgres database).

use sluice::store::Millis;

use super::{Mode, TestServer};

/// The server's database, reached beside it: for tests that set up or inspect what the API does
/// not show.
pub enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Database {
    pub async fn of(server: &TestServer, mode: Mode) -> Self {
        Self::at(mode, server.data_dir()).await
    }

    /// The database of a server of `mode` whose data directory is `data_dir`.
    pub async fn at(mode: Mode, data_dir: &std::path::Path) -> Self {
        match mode {
            Mode::Embedded => {
                let path = data_dir.join("sluice.db");
                let url = format!("sqlite://{}", path.display());
                Self::Sqlite(sqlx::SqlitePool::connect(&url).await.unwrap())
            }
            Mode::Production | Mode::ProductionCluster => {
                let url = std::env::var("SLUICE_TEST_DATABASE_URL").unwrap();
                Self::Postgres(sqlx::PgPool::connect(&url).await.unwrap())
            }
        }
    }

    /// The number `sql` (a `SELECT COUNT(*)` with the batch id as `$1`) answers.
    pub async fn count(&self, sql: &str, id: &str) -> i64 {
        let count = match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
            Self::Postgres(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
        };
        count.unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    /// Runs `sql` with the batch id as `$1` and a number of milliseconds as `$2`.
    pub async fn execute(&self, sql: &str, id: &str, millis: Millis) -> u64 {
        let done = match self {
            Self::Sqlite(pool) => sqlx::query(sql)
                .bind(id)
                .bind(millis)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            Self::Postgres(pool) => sqlx::query(sql)
                .bind(id)
                .bind(millis)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
        };
        done.unwrap_or_else(|error| panic!("{sql}: {error}"))
    }
}
