//! Starts a real Sluice server on 127.0.0.1:0 in either mode and talks HTTP to it.
//!
//! Production mode needs Postgres, Redis (or a Redis Cluster: `Mode::ProductionCluster`) and an
//! S3 server; their addresses come from the environment `scripts/test` sets up. A missing service
//! fails the test loudly: it is never skipped.
//!
//! For fault tests it also runs private Redis, Redis Cluster, Postgres and S3 servers (started,
//! stopped and restarted by the test that owns them, on ports of their own) and the server binary
//! as a child process that a test can kill.
//!
//! - `server`: the server in this process (`TestServer`), its HTTP client (`Api`), the modes.
//! - `bodies`: request bodies (NDJSON lines, chunked, endless, fed through a channel).
//! - `database`: the server's database opened beside it (`Database`).
//! - `services`: private Redis, Redis Cluster, Postgres and S3 servers for fault tests.
//! - `process`: the server binary as a child process (`ServerProcess`).

mod bodies;
mod database;
mod process;
mod server;
mod services;

pub(crate) use self::server::{both_modes, every_mode};
pub use rstest_reuse::apply;

pub use self::bodies::{channel_body, chunked, endless_body, ndjson};
pub use self::database::Database;
pub use self::process::ServerProcess;
pub use self::server::{Api, KEY, Mode, OTHER_KEY, TENANT, TestServer, accepted_item, into_parts};
pub use self::services::{
    PostgresStop, PrivateCluster, PrivatePostgres, PrivateRedis, PrivateS3, poll_until,
};

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `scripts/test`, which starts every service")
    })
}
