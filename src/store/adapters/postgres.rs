//! Batch metadata in Postgres.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::dependency::{Dependency, DependencyError};

#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
}

impl PostgresStore {
    /// Connects with a pool of `max_connections` and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DependencyError> {
        // Every statement here is short and planned once per connection; compiling one with the
        // JIT costs more than running it (a claim's plan, priced high because it must not sort,
        // spent 50–110 ms in the JIT for a 0.1 ms read). A `jit` set in the URL still wins.
        let options: PgConnectOptions = url.parse()?;
        let options = if options.get_options().is_some_and(|set| set.contains("jit")) {
            options
        } else {
            options.options([("jit", "off")])
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|error| DependencyError::failed(Dependency::Database, error))?;
        Ok(Self { pool })
    }

    /// Postgres serves reads and writes from one pool.
    pub(crate) fn reader(&self) -> &PgPool {
        &self.pool
    }
}
