//! Every knob of the server: its environment name, default and validation, in one place.
//!
//! Names match SPEC §5, `.env.example` and the README. An invalid value stops the server at start
//! with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::payloads::adapters::S3Settings;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address.
    #[arg(
        long = "listen",
        env = "SLUICE_LISTEN",
        value_name = "SLUICE_LISTEN",
        default_value = "127.0.0.1:3030"
    )]
    pub listen: SocketAddr,

    /// Embedded mode: the SQLite file and payload directory live here.
    #[arg(
        long = "data-dir",
        env = "SLUICE_DATA_DIR",
        value_name = "SLUICE_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// `postgres://…` selects Postgres; unset, the embedded SQLite store is used.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL"
    )]
    pub database_url: Option<String>,

    /// Pool size floor; the URL's `pool_max_conns` raises it.
    #[arg(long = "database-max-connections", env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS",
          default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,

    /// `redis://…` (or comma-separated Cluster nodes) for dedup + queue; unset, the SQL store.
    #[arg(long = "redis-url", env = "REDIS_URL", value_name = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Object storage bucket for offloaded payloads; unset, files under the data directory.
    #[arg(long = "s3-bucket", env = "S3_BUCKET", value_name = "S3_BUCKET")]
    pub s3_bucket: Option<String>,

    #[arg(long = "s3-endpoint", env = "S3_ENDPOINT", value_name = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    #[arg(long = "s3-region", env = "S3_REGION", value_name = "S3_REGION")]
    pub s3_region: Option<String>,

    #[arg(long = "s3-force-path-style", env = "S3_FORCE_PATH_STYLE", value_name = "S3_FORCE_PATH_STYLE",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,

    /// Items in flight per request; `1` processes items strictly one after another.
    #[arg(long = "ingest-concurrency", env = "STREAMING_BATCH_INGEST_CONCURRENCY", value_name = "STREAMING_BATCH_INGEST_CONCURRENCY",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ingest_concurrency: u32,

    /// Most items one dedup/enqueue call carries; `1` is one queue round trip per item.
    #[arg(long = "enqueue-batch-max-items", env = "SLUICE_ENQUEUE_BATCH_MAX_ITEMS", value_name = "SLUICE_ENQUEUE_BATCH_MAX_ITEMS",
          default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub enqueue_batch_max_items: u32,

    /// Maximum bytes of one NDJSON line.
    #[arg(long = "item-max-bytes", env = "STREAMING_BATCH_ITEM_MAXIMUM_SIZE", value_name = "STREAMING_BATCH_ITEM_MAXIMUM_SIZE",
          default_value_t = 3_145_728, value_parser = clap::value_parser!(u32).range(16..))]
    pub item_max_bytes: u32,

    /// Payload bytes at which a payload goes to object storage.
    #[arg(long = "offload-threshold", env = "BATCH_PAYLOAD_OFFLOAD_THRESHOLD", value_name = "BATCH_PAYLOAD_OFFLOAD_THRESHOLD",
          default_value_t = 524_288, value_parser = clap::value_parser!(u32).range(1..))]
    pub offload_threshold_bytes: u32,

    /// Largest `runCount` a batch may have.
    #[arg(long = "max-items", env = "STREAMING_BATCH_MAX_ITEMS", value_name = "STREAMING_BATCH_MAX_ITEMS",
          default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=2_000_000_000))]
    pub max_items: u32,

    /// Unsealed batches are aborted this long after creation.
    #[arg(long = "seal-timeout-ms", env = "BATCH_SEAL_TIMEOUT_MS", value_name = "BATCH_SEAL_TIMEOUT_MS",
          default_value_t = 1_800_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub seal_timeout_ms: u64,

    /// Comma-separated `tenant:key` pairs. Embedded mode without it generates a dev key.
    #[arg(
        long = "api-keys",
        env = "SLUICE_API_KEYS",
        value_name = "SLUICE_API_KEYS",
        hide_env_values = true
    )]
    pub api_keys: Option<String>,
}

impl Config {
    /// The embedded defaults with a given data directory: what `cargo run` with no configuration
    /// gives, and the base of the tests' configurations.
    pub fn embedded(data_dir: PathBuf) -> Self {
        Self {
            listen: ([127, 0, 0, 1], 3030).into(),
            data_dir,
            database_url: None,
            database_max_connections: 20,
            redis_url: None,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            ingest_concurrency: 10,
            enqueue_batch_max_items: 512,
            item_max_bytes: 3_145_728,
            offload_threshold_bytes: 524_288,
            max_items: 1_000_000,
            seal_timeout_ms: 1_800_000,
            api_keys: None,
        }
    }

    /// Embedded mode is the one without an external database.
    pub fn is_embedded(&self) -> bool {
        self.database_url.is_none()
    }

    /// The pool size: the configured floor, raised to the URL's `pool_max_conns` if larger.
    pub fn database_pool_size(&self) -> u32 {
        let from_url = self
            .database_url
            .as_deref()
            .and_then(|url| url.split_once('?'))
            .into_iter()
            .flat_map(|(_, query)| query.split('&'))
            .find_map(|pair| pair.strip_prefix("pool_max_conns="))
            .and_then(|value| value.parse::<u32>().ok())
            .unwrap_or(0);
        self.database_max_connections.max(from_url)
    }

    /// The database URL without parameters meant for Sluice rather than the driver.
    pub fn database_connect_url(&self) -> Option<String> {
        let url = self.database_url.as_deref()?;
        let Some((base, query)) = url.split_once('?') else {
            return Some(url.to_owned());
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.starts_with("pool_max_conns="))
            .collect();
        Some(if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        })
    }

    pub fn s3(&self) -> Option<S3Settings> {
        Some(S3Settings {
            bucket: self.s3_bucket.clone()?,
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            force_path_style: self.s3_force_path_style,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_is_the_larger_of_floor_and_url() {
        let mut config = Config::embedded("d".into());
        config.database_url = Some("postgres://h/db?pool_max_conns=50&sslmode=disable".into());
        assert_eq!(config.database_pool_size(), 50);
        assert_eq!(
            config.database_connect_url().as_deref(),
            Some("postgres://h/db?sslmode=disable")
        );
        config.database_url = Some("postgres://h/db?pool_max_conns=5".into());
        assert_eq!(config.database_pool_size(), 20);
        assert_eq!(
            config.database_connect_url().as_deref(),
            Some("postgres://h/db")
        );
    }
}
