//! The running service: backends chosen by configuration, shared state, and the serve loop.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::admission::LoadShield;
use crate::api::auth::ApiKeys;
use crate::api::error::ApiError;
use crate::api::rate_limit::CreateRateLimiter;
use crate::config::Config;
use crate::dependency::DependencyError;
use crate::ingest::body::{BodyLimits, StopSignal};
use crate::ingest::pipeline::IngestLimits;
use crate::payloads::PayloadStore;
use crate::payloads::adapters::{FsPayloadStore, S3PayloadStore};
use crate::queue::ItemQueue;
use crate::queue::adapters::{RedisQueue, TwoStepRedisQueue};
use crate::store::adapters::{PostgresStore, SqliteStore};
use crate::store::{Batch, BatchStatus, BatchStore, Millis};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot start: {0}")]
    Dependency(#[from] DependencyError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

pub struct App {
    pub config: Config,
    pub store: Arc<dyn BatchStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
    pub keys: ApiKeys,
    /// The generated key of the embedded mode, when no keys were configured.
    pub dev_key: Option<String>,
    pub shield: LoadShield,
    pub create_limiter: CreateRateLimiter,
    /// Bound at build time (so a bad address stops the start); served by [`serve`].
    pub metrics_listener: Option<TcpListener>,
}

impl App {
    /// Connects every backend the configuration selects and applies migrations.
    pub async fn build(mut config: Config) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        // Only the keys' digests are kept: the plaintext setting is dropped here.
        let (keys, dev_key) = match (config.api_keys.take(), config.is_embedded()) {
            (Some(spec), _) => (ApiKeys::parse(&spec).map_err(StartError::Config)?, None),
            (None, true) => {
                let (keys, key) = ApiKeys::load_or_create_dev_key(&config.data_dir)?;
                (keys, Some(key))
            }
            (None, false) => {
                return Err(StartError::Config(
                    "SLUICE_API_KEYS must be set when DATABASE_URL is set".into(),
                ));
            }
        };

        let (store, sql_queue): (Arc<dyn BatchStore>, Arc<dyn ItemQueue>) = match config
            .database_connect_url()
        {
            Some(url) => {
                let store =
                    Arc::new(PostgresStore::connect(&url, config.database_pool_size()).await?);
                (store.clone(), store)
            }
            None => {
                tokio::fs::create_dir_all(&config.data_dir).await?;
                let store = Arc::new(SqliteStore::open(&config.data_dir.join("sluice.db")).await?);
                (store.clone(), store)
            }
        };
        let queue: Arc<dyn ItemQueue> = match &config.redis_url {
            Some(url) if config.bench_two_step_enqueue => {
                Arc::new(TwoStepRedisQueue(RedisQueue::connect(url).await?))
            }
            Some(url) => Arc::new(RedisQueue::connect(url).await?),
            None => sql_queue,
        };
        let payloads: Arc<dyn PayloadStore> = match config.s3() {
            Some(settings) => Arc::new(S3PayloadStore::connect(&settings).await),
            None => Arc::new(FsPayloadStore::open(&config.data_dir.join("payloads")).await?),
        };
        Ok(Self {
            shield: LoadShield::new(config.max_streams, config.max_items_in_flight),
            create_limiter: CreateRateLimiter::new(
                config.create_rate_per_second,
                config.create_rate_burst,
            ),
            metrics_listener,
            config,
            store,
            queue,
            payloads,
            keys,
            dev_key,
        })
    }
}

/// What every handler gets: the app behind one `Arc`, and the server's shutdown token.
#[derive(Clone)]
pub struct AppState {
    app: Arc<App>,
    shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl AppState {
    pub fn ingest_limits(&self) -> IngestLimits {
        IngestLimits {
            concurrency: self.config.ingest_concurrency as usize,
            max_items_per_enqueue: self.config.enqueue_batch_max_items as usize,
            max_line_bytes: self.config.item_max_bytes as usize,
            offload_threshold_bytes: self.config.offload_threshold_bytes as usize,
        }
    }

    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_encoded_bytes: self.config.max_encoded_body_bytes,
            max_decoded_bytes: self.config.max_body_bytes,
            idle_timeout: Duration::from_millis(self.config.body_idle_timeout_ms),
        }
    }

    /// Resolves when streams must stop reading: the shutdown grace period has passed.
    pub fn stream_stop(&self) -> StopSignal {
        let shutdown = self.shutdown.clone();
        let grace = self.shutdown_grace();
        Box::pin(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        })
    }

    fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.config.shutdown_grace_ms)
    }

    /// The tenant's batch, or 404 (also for another tenant's batch).
    pub async fn find_batch(&self, tenant: &str, id: &str) -> Result<Batch, ApiError> {
        self.store
            .batch(tenant, id)
            .await?
            .ok_or(ApiError::BatchNotFound)
    }

    /// The batch's status, counting an unsealed batch past its seal timeout as aborted.
    pub fn effective_status(&self, batch: &Batch, now: Millis) -> BatchStatus {
        if batch.is_expired(self.config.seal_timeout_ms as i64, now) {
            BatchStatus::Aborted
        } else {
            batch.status
        }
    }
}

/// How long streams stopped at the end of the grace period get to send their answers.
const ANSWER_AFTER_STOP: Duration = Duration::from_secs(5);

/// Serves on `listener` until `shutdown` is cancelled, with the periodic jobs (and the metrics
/// listener, if configured) alongside.
///
/// On shutdown: no new connections are accepted; requests in flight go on for up to
/// `SLUICE_SHUTDOWN_GRACE_MS`; streams still running then stop reading their bodies and answer
/// `503` (every item they enqueued is kept, so the client's retry completes the batch).
pub async fn serve(
    mut app: App,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = app.metrics_listener.take().map(|metrics_listener| {
        tokio::spawn(crate::metrics::serve(metrics_listener, shutdown.clone()))
    });
    let state = AppState {
        app: Arc::new(app),
        shutdown: shutdown.clone(),
    };
    let grace = state.shutdown_grace();
    let jobs = crate::jobs::spawn(state.clone(), shutdown.clone());
    let served = axum::serve(listener, crate::api::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let served = finish_within(served, async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace + ANSWER_AFTER_STOP).await;
    })
    .await;
    shutdown.cancel();
    jobs.await.ok();
    if let Some(metrics) = metrics {
        metrics.await.ok();
    }
    served
}

/// Runs `served` to its end, or until `deadline`: then connections still open are dropped.
async fn finish_within(
    served: impl Future<Output = std::io::Result<()>>,
    deadline: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::select! {
        result = served => result,
        () = deadline => {
            tracing::warn!("connections still open after the shutdown grace period were dropped");
            Ok(())
        }
    }
}
