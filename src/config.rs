//! Every knob of the server: its environment name, default and validation, in one place.
//!
//! Names match `.env.example` and the README's configuration table. An invalid value stops the server at start
//! with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::flusher::FlushSettings;
use crate::jobs::retention::RetentionSettings;
use crate::payloads::adapters::S3Settings;
use crate::queue::adapters::redis::Topology;
use crate::runs::materialise::MaterialiseSettings;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

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

    /// `redis://…` (one server) or `redis+cluster://host:port[,host:port…]` (Redis Cluster) for
    /// dedup + queue; unset, the SQL store.
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

    /// Phase 2 streams served at once by this node; beyond it a stream is answered 503 before
    /// its body is read.
    #[arg(long = "max-streams", env = "SLUICE_MAX_STREAMS", value_name = "SLUICE_MAX_STREAMS",
          default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,

    /// Items in flight at once across every stream of this node. Each stream reserves
    /// STREAMING_BATCH_INGEST_CONCURRENCY of them for its whole life; a stream that cannot is
    /// answered 503 before its body is read.
    #[arg(long = "max-items-in-flight", env = "SLUICE_MAX_ITEMS_IN_FLIGHT", value_name = "SLUICE_MAX_ITEMS_IN_FLIGHT",
          default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_items_in_flight: u32,

    /// Phase 1 requests per second per tenant on this node (token bucket); 0 turns the limit off.
    #[arg(
        long = "create-rate-per-second",
        env = "SLUICE_CREATE_RATE_PER_SECOND",
        value_name = "SLUICE_CREATE_RATE_PER_SECOND",
        default_value_t = 100
    )]
    pub create_rate_per_second: u32,

    /// Phase 1 requests a tenant may make at once before the rate applies (bucket size, >= 1).
    #[arg(long = "create-rate-burst", env = "SLUICE_CREATE_RATE_BURST", value_name = "SLUICE_CREATE_RATE_BURST",
          default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_rate_burst: u32,

    /// Most bytes a Phase 2 body may have on the wire (before decompression); beyond it, 413.
    #[arg(long = "max-encoded-body-bytes", env = "SLUICE_MAX_ENCODED_BODY_BYTES", value_name = "SLUICE_MAX_ENCODED_BODY_BYTES",
          default_value_t = 2 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_encoded_body_bytes: u64,

    /// Most bytes a Phase 2 body may have after decompression; beyond it, 413.
    #[arg(long = "max-body-bytes", env = "SLUICE_MAX_BODY_BYTES", value_name = "SLUICE_MAX_BODY_BYTES",
          default_value_t = 2 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes: u64,

    /// A Phase 2 body that sends nothing for this long is cut off (408), keeping what it sent.
    #[arg(long = "body-idle-timeout-ms", env = "SLUICE_BODY_IDLE_TIMEOUT_MS", value_name = "SLUICE_BODY_IDLE_TIMEOUT_MS",
          default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_idle_timeout_ms: u64,

    // Lingering close: after an answer given before a Phase 2 body's end, the rest is read and
    // thrown away, so a client that writes its whole body before reading sees the answer rather
    // than a reset. 4 MiB is about what the kernel's socket buffers hold in flight on a fast link;
    // 5 s is nginx's `lingering_timeout` (its wait for each read) and well under its 30 s
    // `lingering_time` (the whole): a body already on its way arrives within both, and a client
    // sending more learns from the reset anyway. 64 drains of at most 4 MiB per 5 s bound the
    // node's thrown-away reads near 50 MiB/s, a small share of one core, so 503s stay cheap.
    /// After an early answer, most bytes of the unread body read and discarded before closing.
    #[arg(long = "linger-max-bytes", env = "SLUICE_LINGER_MAX_BYTES", value_name = "SLUICE_LINGER_MAX_BYTES",
          default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub linger_max_bytes: u64,

    /// After an early answer, most milliseconds spent reading the unread body before closing.
    #[arg(long = "linger-time-ms", env = "SLUICE_LINGER_TIME_MS", value_name = "SLUICE_LINGER_TIME_MS",
          default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub linger_time_ms: u64,

    /// Connections lingering at once on this node; beyond it a connection closes at once after
    /// its early answer. 0 turns lingering off.
    #[arg(
        long = "linger-max-connections",
        env = "SLUICE_LINGER_MAX_CONNECTIONS",
        value_name = "SLUICE_LINGER_MAX_CONNECTIONS",
        default_value_t = 64
    )]
    pub linger_max_connections: u32,

    /// On SIGTERM/SIGINT, how long in-flight requests may go on before streams are stopped.
    #[arg(
        long = "shutdown-grace-ms",
        env = "SLUICE_SHUTDOWN_GRACE_MS",
        value_name = "SLUICE_SHUTDOWN_GRACE_MS",
        default_value_t = 30_000
    )]
    pub shutdown_grace_ms: u64,

    /// Address of the Prometheus `/metrics` listener; unset: no metrics listener.
    #[arg(
        long = "metrics-listen",
        env = "SLUICE_METRICS_LISTEN",
        value_name = "SLUICE_METRICS_LISTEN"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long = "log-format", env = "SLUICE_LOG_FORMAT", value_name = "SLUICE_LOG_FORMAT",
          value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Runs written per statement when a sealed batch is materialised. What a pass holds is about
    /// `chunk × depth` runs, whatever the batch's size.
    #[arg(long = "materialise-chunk-items", env = "SLUICE_MATERIALISE_CHUNK_ITEMS", value_name = "SLUICE_MATERIALISE_CHUNK_ITEMS",
          default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub materialise_chunk_items: u32,

    /// Stored item bytes read into one chunk at most: a chunk ends before the item that would go
    /// past it (but holds at least one item), so big items make smaller chunks and a pass holds
    /// about `chunk bytes × depth`, whatever its items' sizes.
    #[arg(long = "materialise-chunk-bytes", env = "SLUICE_MATERIALISE_CHUNK_BYTES", value_name = "SLUICE_MATERIALISE_CHUNK_BYTES",
          default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub materialise_chunk_bytes: u64,

    /// Chunks in the materialiser's pipeline, the one committing included; `1` commits each
    /// chunk before reading the next.
    #[arg(long = "materialise-pipeline-depth", env = "SLUICE_MATERIALISE_PIPELINE_DEPTH", value_name = "SLUICE_MATERIALISE_PIPELINE_DEPTH",
          default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub materialise_pipeline_depth: u32,

    /// How long a materialising node holds a batch without committing a chunk before another
    /// node may take it over.
    #[arg(long = "materialise-lease-ms", env = "SLUICE_MATERIALISE_LEASE_MS", value_name = "SLUICE_MATERIALISE_LEASE_MS",
          default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub materialise_lease_ms: u64,

    /// Events waiting for the journal that start a flush at once (each flush is one insert).
    #[arg(long = "journal-flush-max-events", env = "SLUICE_JOURNAL_FLUSH_MAX_EVENTS", value_name = "SLUICE_JOURNAL_FLUSH_MAX_EVENTS",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub journal_flush_max_events: u32,

    /// Longest an event waits for its journal flush, in milliseconds.
    #[arg(long = "journal-flush-interval-ms", env = "SLUICE_JOURNAL_FLUSH_INTERVAL_MS", value_name = "SLUICE_JOURNAL_FLUSH_INTERVAL_MS",
          default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub journal_flush_interval_ms: u64,

    /// Event streams (GET /api/v3/batches/{id}/events) a tenant may have open on this node;
    /// beyond, 429.
    #[arg(long = "max-event-streams-per-tenant", env = "SLUICE_MAX_EVENT_STREAMS_PER_TENANT", value_name = "SLUICE_MAX_EVENT_STREAMS_PER_TENANT",
          default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_event_streams_per_tenant: u32,

    /// Longest an event stream stays open, in milliseconds; then it ends and the client resumes
    /// with `Last-Event-ID` (an `EventSource` does so by itself), possibly on another node, so
    /// long-lived streams spread again over the nodes. `0`: a stream stays open until its batch
    /// is final.
    #[arg(
        long = "event-stream-max-ms",
        env = "SLUICE_EVENT_STREAM_MAX_MS",
        value_name = "SLUICE_EVENT_STREAM_MAX_MS",
        default_value_t = 600_000
    )]
    pub event_stream_max_ms: u64,

    /// Status writes (claims, heartbeats, completions) grouped into one transaction; `1` writes
    /// each on its own.
    #[arg(long = "status-flush-max-items", env = "SLUICE_STATUS_FLUSH_MAX_ITEMS", value_name = "SLUICE_STATUS_FLUSH_MAX_ITEMS",
          default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub status_flush_max_items: u32,

    /// Longest a status write waits for its group to fill while the flusher is busy (writes were
    /// waiting when its last write ended); at idle a write goes at once.
    #[arg(long = "status-flush-interval-ms", env = "SLUICE_STATUS_FLUSH_INTERVAL_MS", value_name = "SLUICE_STATUS_FLUSH_INTERVAL_MS",
          default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub status_flush_interval_ms: u64,

    /// Longest a claim waits for runs, whatever `waitMs` it asks (keep it under the idle timeout
    /// of any proxy in front of Sluice).
    #[arg(long = "claim-wait-max-ms", env = "SLUICE_CLAIM_WAIT_MAX_MS", value_name = "SLUICE_CLAIM_WAIT_MAX_MS",
          default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=30_000))]
    pub claim_wait_max_ms: u64,

    /// How often runs whose lease expired are returned to pending (or failed).
    #[arg(long = "lease-sweep-interval-ms", env = "SLUICE_LEASE_SWEEP_INTERVAL_MS", value_name = "SLUICE_LEASE_SWEEP_INTERVAL_MS",
          default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub lease_sweep_interval_ms: u64,

    /// Database connections the periodic jobs may hold at once, together (a semaphore every job
    /// tick takes a permit of); must be below the pool size, so requests always keep the rest.
    #[arg(long = "job-max-connections", env = "SLUICE_JOB_MAX_CONNECTIONS", value_name = "SLUICE_JOB_MAX_CONNECTIONS",
          default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub job_max_connections: u32,

    /// Final batches are deleted (runs, queue items, payload objects, then the batch) this many
    /// seconds after they turned final.
    #[arg(long = "retention-seconds", env = "SLUICE_RETENTION_SECONDS", value_name = "SLUICE_RETENTION_SECONDS",
          default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(1..=3_153_600_000))]
    pub retention_seconds: u64,

    /// How often the retention job looks for final batches past the horizon.
    #[arg(long = "retention-interval-ms", env = "SLUICE_RETENTION_INTERVAL_MS", value_name = "SLUICE_RETENTION_INTERVAL_MS",
          default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub retention_interval_ms: u64,

    /// Most rows (runs, queue items, batches) and payload objects one retention tick deletes;
    /// the rest waits for the next tick.
    #[arg(long = "retention-max-rows-per-tick", env = "SLUICE_RETENTION_MAX_ROWS_PER_TICK", value_name = "SLUICE_RETENTION_MAX_ROWS_PER_TICK",
          default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_max_rows_per_tick: u32,

    /// Most rows one retention statement deletes (each statement commits on its own).
    #[arg(long = "retention-rows-per-statement", env = "SLUICE_RETENTION_ROWS_PER_STATEMENT", value_name = "SLUICE_RETENTION_ROWS_PER_STATEMENT",
          default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub retention_rows_per_statement: u32,

    /// How often the per-tenant daily stats are refreshed.
    #[arg(long = "stats-interval-ms", env = "SLUICE_STATS_INTERVAL_MS", value_name = "SLUICE_STATS_INTERVAL_MS",
          default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub stats_interval_ms: u64,

    /// UTC days (today included) the stats refresh recomputes; older days keep the counts they
    /// had when they left this window.
    #[arg(long = "stats-refresh-days", env = "SLUICE_STATS_REFRESH_DAYS", value_name = "SLUICE_STATS_REFRESH_DAYS",
          default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub stats_refresh_days: u32,

    /// Benchmark reference only: enqueue each item as a per-item path does, one dedup command
    /// (`SADD`) and then one store command (`HSET`), two round trips per item, not atomic. Needs
    /// REDIS_URL; never for real traffic.
    #[arg(long = "bench-two-step-enqueue", env = "SLUICE_BENCH_TWO_STEP_ENQUEUE", value_name = "SLUICE_BENCH_TWO_STEP_ENQUEUE",
          default_value_t = false, action = clap::ArgAction::Set, hide = true)]
    pub bench_two_step_enqueue: bool,

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
            max_streams: 100,
            max_items_in_flight: 1_000,
            create_rate_per_second: 100,
            create_rate_burst: 200,
            max_encoded_body_bytes: 2 << 30,
            max_body_bytes: 2 << 30,
            body_idle_timeout_ms: 30_000,
            linger_max_bytes: 4 << 20,
            linger_time_ms: 5_000,
            linger_max_connections: 64,
            shutdown_grace_ms: 30_000,
            metrics_listen: None,
            log_format: LogFormat::Text,
            materialise_chunk_items: 5_000,
            materialise_chunk_bytes: 16 * 1024 * 1024,
            materialise_pipeline_depth: 2,
            materialise_lease_ms: 30_000,
            journal_flush_max_events: 16,
            journal_flush_interval_ms: 100,
            max_event_streams_per_tenant: 100,
            event_stream_max_ms: 600_000,
            status_flush_max_items: 1_000,
            status_flush_interval_ms: 5,
            claim_wait_max_ms: 30_000,
            lease_sweep_interval_ms: 1_000,
            job_max_connections: 2,
            retention_seconds: 604_800,
            retention_interval_ms: 60_000,
            retention_max_rows_per_tick: 100_000,
            retention_rows_per_statement: 5_000,
            stats_interval_ms: 60_000,
            stats_refresh_days: 2,
            bench_two_step_enqueue: false,
            api_keys: None,
        }
    }

    /// Checks what a single value's parser cannot: limits that must agree with each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_items_in_flight < self.ingest_concurrency {
            return Err(format!(
                "SLUICE_MAX_ITEMS_IN_FLIGHT ({}) must be at least STREAMING_BATCH_INGEST_CONCURRENCY ({}): \
                 every stream reserves that many",
                self.max_items_in_flight, self.ingest_concurrency
            ));
        }
        if self.bench_two_step_enqueue && self.redis_url.is_none() {
            return Err("SLUICE_BENCH_TWO_STEP_ENQUEUE needs REDIS_URL".into());
        }
        if let Some(url) = &self.redis_url {
            Topology::from_url(url)?;
        }
        if self.job_max_connections >= self.database_pool_size() {
            return Err(format!(
                "SLUICE_JOB_MAX_CONNECTIONS ({}) must be below the database pool size ({}): \
                 requests keep the rest of the pool",
                self.job_max_connections,
                self.database_pool_size()
            ));
        }
        Ok(())
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

    pub fn journal_writer(&self) -> crate::events::writer::WriterSettings {
        crate::events::writer::WriterSettings {
            flush_max_events: self.journal_flush_max_events as usize,
            flush_interval: std::time::Duration::from_millis(self.journal_flush_interval_ms),
        }
    }

    pub fn materialise(&self) -> MaterialiseSettings {
        MaterialiseSettings {
            chunk_items: self.materialise_chunk_items,
            chunk_bytes: self.materialise_chunk_bytes,
            pipeline_depth: self.materialise_pipeline_depth,
            lease: std::time::Duration::from_millis(self.materialise_lease_ms),
        }
    }

    /// The status flushers' settings. Their queue holds a few groups, and at least two calls of
    /// the most runs a call may report, so a full call is never turned away from an idle server.
    pub fn status_flush(&self) -> FlushSettings {
        let max_items = self.status_flush_max_items as usize;
        FlushSettings {
            max_items,
            interval: std::time::Duration::from_millis(self.status_flush_interval_ms),
            capacity: (4 * max_items).max(2 * crate::protocol::work::MAX_RUNS_PER_CALL),
            shutdown_grace: std::time::Duration::from_millis(self.shutdown_grace_ms),
        }
    }

    pub fn retention(&self) -> RetentionSettings {
        RetentionSettings {
            retention: std::time::Duration::from_secs(self.retention_seconds),
            seal_timeout: std::time::Duration::from_millis(self.seal_timeout_ms),
            interval: std::time::Duration::from_millis(self.retention_interval_ms),
            max_rows_per_tick: self.retention_max_rows_per_tick,
            rows_per_statement: self.retention_rows_per_statement,
        }
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
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn embedded_config_is_the_command_line_default() {
        // Run with a clean environment for Sluice's variables: `cargo test` does not set them.
        let parsed = Defaults::try_parse_from(["sluice"])
            .expect("defaults parse")
            .config;
        let embedded = Config::embedded("./data".into());
        assert_eq!(format!("{parsed:?}"), format!("{embedded:?}"));
    }

    #[test]
    fn items_in_flight_must_cover_one_stream() {
        let mut config = Config::embedded("d".into());
        config.ingest_concurrency = 50;
        config.max_items_in_flight = 49;
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("SLUICE_MAX_ITEMS_IN_FLIGHT")
        );
        config.max_items_in_flight = 50;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_comma_in_a_plain_redis_url_stops_the_start() {
        let mut config = Config::embedded("d".into());
        config.redis_url = Some("redis://a:7101,redis://b:7102".into());
        let error = config.validate().unwrap_err();
        assert!(
            error.contains("REDIS_URL") && error.contains("redis+cluster://"),
            "{error}"
        );
        config.redis_url = Some("redis+cluster://a:7101,b:7102".into());
        assert!(config.validate().is_ok());
    }

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
