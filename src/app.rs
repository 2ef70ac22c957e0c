//! The running service: backends chosen by configuration, shared state, and the serve loop.

use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::auth::ApiKeys;
use crate::api::error::ApiError;
use crate::config::Config;
use crate::dependency::DependencyError;
use crate::ingest::pipeline::IngestLimits;
use crate::payloads::PayloadStore;
use crate::payloads::adapters::{FsPayloadStore, S3PayloadStore};
use crate::queue::ItemQueue;
use crate::queue::adapters::RedisQueue;
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
}

impl App {
    /// Connects every backend the configuration selects and applies migrations.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let (keys, dev_key) = match (&config.api_keys, config.is_embedded()) {
            (Some(spec), _) => (ApiKeys::parse(spec).map_err(StartError::Config)?, None),
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
            Some(url) => Arc::new(RedisQueue::connect(url).await?),
            None => sql_queue,
        };
        let payloads: Arc<dyn PayloadStore> = match config.s3() {
            Some(settings) => Arc::new(S3PayloadStore::connect(&settings).await),
            None => Arc::new(FsPayloadStore::open(&config.data_dir.join("payloads")).await?),
        };
        Ok(Self {
            config,
            store,
            queue,
            payloads,
            keys,
            dev_key,
        })
    }
}

/// What every handler gets: the app behind one `Arc`.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
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

/// Serves on `listener` until `shutdown` is cancelled, with the periodic jobs alongside.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState(Arc::new(app));
    let jobs = crate::jobs::spawn(state.clone(), shutdown.clone());
    let served = axum::serve(listener, crate::api::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    jobs.await.ok();
    served
}
