//! Wiring: the backends the configuration selects, and the serve loop that hands them to the HTTP
//! layer and the jobs. It builds things and starts them; it holds no rule of its own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::auth::ApiKeys;
use crate::config::Config;
use crate::dependency::DependencyError;
use crate::events::live::{EventBus, Hub, LiveEvents};
use crate::events::redis::RedisEventBus;
use crate::events::{EventJournal, Events, ProgressQueue};
use crate::payloads::PayloadStore;
use crate::payloads::adapters::{FsPayloadStore, S3PayloadStore};
use crate::ports::Ports;
use crate::ports::SealSignal;
use crate::queue::ItemQueue;
use crate::queue::adapters::{RedisQueue, TwoStepRedisQueue};
use crate::runs::batches::ViewPorts;
use crate::runs::work::{RunsReady, StatusWriters};
use crate::store::BatchStore;
use crate::store::adapters::{PostgresStore, SqliteStore, sqlite};
use crate::store::retention::RetentionStore;
use crate::store::runs::RunStore;
use crate::store::stats::StatsStore;
use crate::store::work::WorkStore;
use crate::tasks::NamedTask;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot start: {0}")]
    Dependency(#[from] DependencyError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// What the SQL store serves: batches, the queue (without Redis), runs, their work (claims and
/// completions), the event journal.
type SqlPorts = (
    Arc<dyn BatchStore>,
    Arc<dyn ItemQueue>,
    Arc<dyn RunStore>,
    Arc<dyn WorkStore>,
    Arc<dyn EventJournal>,
    Arc<dyn RetentionStore>,
    Arc<dyn StatsStore>,
);

/// Every port one SQL store serves, each a handle on the same store.
fn sql_ports<S>(store: Arc<S>) -> SqlPorts
where
    S: BatchStore + ItemQueue + RunStore + WorkStore + EventJournal + RetentionStore + StatsStore,
{
    (
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    )
}

pub struct App {
    pub config: Config,
    pub store: Arc<dyn BatchStore>,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
    pub runs: Arc<dyn RunStore>,
    pub journal: Arc<dyn EventJournal>,
    /// Carries live events between nodes; `None` without Redis (one node, or streams of other
    /// nodes' events read the journal every few seconds).
    pub event_bus: Option<Arc<RedisEventBus>>,
    pub work: Arc<dyn WorkStore>,
    pub retention: Arc<dyn RetentionStore>,
    pub stats: Arc<dyn StatsStore>,
    pub keys: ApiKeys,
    /// The generated key of the embedded mode, when no keys were configured.
    pub dev_key: Option<String>,
    /// Bound at build time (so a bad address stops the start); served by [`serve`].
    pub metrics_listener: Option<TcpListener>,
    /// The embedded store, whose WAL [`serve`] checkpoints in the background.
    embedded: Option<Arc<SqliteStore>>,
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

        let mut embedded = None;
        let (store, sql_queue, runs, work, journal, retention, stats): SqlPorts = match config
            .database_connect_url()
        {
            Some(url) => {
                let store =
                    Arc::new(PostgresStore::connect(&url, config.database_pool_size()).await?);
                sql_ports(store)
            }
            None => {
                tokio::fs::create_dir_all(&config.data_dir).await?;
                let store = Arc::new(SqliteStore::open(&config.data_dir.join("sluice.db")).await?);
                embedded = Some(store.clone());
                sql_ports(store)
            }
        };
        let queue: Arc<dyn ItemQueue> = match &config.redis_url {
            Some(url) if config.bench_two_step_enqueue => {
                Arc::new(TwoStepRedisQueue(RedisQueue::connect(url).await?))
            }
            Some(url) => Arc::new(RedisQueue::connect(url).await?),
            None => sql_queue,
        };
        let event_bus = match &config.redis_url {
            Some(url) => Some(Arc::new(RedisEventBus::connect(url).await?)),
            None => None,
        };
        let payloads: Arc<dyn PayloadStore> = match config.s3() {
            Some(settings) => Arc::new(S3PayloadStore::connect(&settings).await),
            None => Arc::new(FsPayloadStore::open(&config.data_dir.join("payloads")).await?),
        };
        Ok(Self {
            metrics_listener,
            config,
            store,
            queue,
            payloads,
            runs,
            journal,
            event_bus,
            work,
            retention,
            stats,
            keys,
            dev_key,
            embedded,
        })
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
    let mut tasks = Vec::new();
    if let Some(metrics_listener) = app.metrics_listener.take() {
        let metrics = crate::metrics::serve(metrics_listener, shutdown.clone());
        tasks.push(NamedTask {
            name: "metrics-listener",
            handle: tokio::spawn(async move {
                if let Err(error) = metrics.await {
                    tracing::error!(%error, "the metrics listener failed");
                }
            }),
        });
    }
    // The event tasks outlive the others: they stop once nothing can report a change any more,
    // and flush what is still queued.
    let events_stop = CancellationToken::new();
    let mut event_tasks = Vec::new();
    let (journal_queue, journal_queued) =
        tokio::sync::mpsc::channel(crate::events::writer::QUEUE_CAPACITY);
    let progress = Arc::new(ProgressQueue::default());
    let hub = Arc::new(Hub::default());
    let events = Events::new(journal_queue, progress.clone());
    let (status, status_tasks) = StatusWriters::spawn(
        app.work.clone(),
        events.clone(),
        app.config.status_flush(),
        &shutdown,
    );
    let ports = Ports {
        store: app.store,
        queue: app.queue,
        payloads: app.payloads,
        runs: app.runs,
        work: app.work,
        retention: app.retention,
        stats: app.stats,
        status,
        sealed: SealSignal::default(),
        events,
        journal: app.journal,
        hub: hub.clone(),
        runs_ready: RunsReady::default(),
    };
    let live = LiveEvents {
        hub: hub.clone(),
        bus: app.event_bus.clone().map(|bus| bus as Arc<dyn EventBus>),
    };
    event_tasks.push(crate::events::writer::spawn(
        ports.journal.clone(),
        live,
        journal_queued,
        app.config.journal_writer(),
        events_stop.clone(),
    ));
    event_tasks.push(crate::events::progress::spawn(
        ViewPorts::of(&ports),
        app.config.seal_timeout_ms,
        ports.events.clone(),
        progress,
        events_stop.clone(),
    ));
    if let Some(bus) = &app.event_bus {
        // Streams end at shutdown, so the subscription stops with the other jobs.
        tasks.push(bus.spawn_subscriber(hub, shutdown.clone()));
    }
    tasks.extend(crate::jobs::spawn(&app.config, &ports, &shutdown));
    if let Some(sqlite) = app.embedded {
        tasks.push(crate::tasks::every(
            "sqlite-checkpoint",
            sqlite::CHECKPOINT_PERIOD,
            sqlite::CHECKPOINT_PERIOD,
            shutdown.clone(),
            move || {
                let sqlite = sqlite.clone();
                async move { sqlite.checkpoint().await }
            },
        ));
    }
    let grace = Duration::from_millis(app.config.shutdown_grace_ms);
    let api = ApiState::new(app.config, ports, app.keys, shutdown.clone());
    tasks.push(crate::api::rate_limit::forget_idle_tenants_every_minute(
        api.create_limiter.clone(),
        shutdown.clone(),
    ));
    let served = axum::serve(listener, crate::api::router(api))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let served = finish_within(served, async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace + ANSWER_AFTER_STOP).await;
    })
    .await;
    shutdown.cancel();
    crate::tasks::join_all(tasks).await;
    // The status flushers end once the requests holding them are gone, after a final flush.
    crate::tasks::join_all(status_tasks).await;
    // Last: the events of that final flush are written too.
    events_stop.cancel();
    crate::tasks::join_all(event_tasks).await;
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
