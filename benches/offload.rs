//! Latency-bound offload: with a payload store that takes a fixed 10 ms per object, `n` items at
//! concurrency `c` should take within 10% of the ideal `ceil(n/c) × 10 ms`.
//!
//! Two store models run side by side:
//! - `exact`: the target's store, exactly 10 ms per object and nothing else (a thread sleep on the
//!   blocking pool, which is precise to tens of microseconds; payloads kept in memory);
//! - `tokio+files`: `tokio::time::sleep(10 ms)` (about 11.1 ms on tokio's 1 ms timer wheel), then
//!   a real write through `FsPayloadStore`: what a real, fast store adds on top.
//!
//! `cargo bench --bench offload`; with `SLUICE_BENCH_REDIS_URL` set the Redis queue is measured
//! too. The real pipeline (`ingest::pipeline::ingest`) reads an in-memory NDJSON body whose every
//! payload is over the offload threshold; payloads go through [`DelayedPayloads`] to files, items to
//! SQLite (and Redis). Every run checks that each item was offloaded and landed in the queue.
//!
//! Besides the efficiency (ideal / median) it prints where the time went, so a miss can be pinned
//! on the store or on the pipeline: how long one offload really took and how much of it was the
//! delay (a 10 ms sleep overshoots on tokio's 1 ms timer), the pipeline's efficiency against that
//! real latency, and how long a freed offload slot stayed empty before the next item took it.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sluice::dependency::DependencyError;
use sluice::ingest::pipeline::{IngestLimits, IngestTarget, ingest};
use sluice::payloads::PayloadStore;
use sluice::payloads::adapters::FsPayloadStore;
use sluice::queue::adapters::RedisQueue;
use sluice::queue::{Enqueued, IndexRange, ItemQueue, Progress, QueuedItem};
use sluice::store::adapters::SqliteStore;
use tokio_util::io::ReaderStream;

/// What every offload costs on top of the real store: a latency-bound object store.
const OFFLOAD_DELAY: Duration = Duration::from_millis(10);
/// (items, concurrency) of each scenario the target names.
const SCENARIOS: [(usize, usize); 4] = [(150, 1), (150, 10), (150, 50), (10_000, 100)];
/// Measured runs per scenario; the median is what counts.
const RUNS: usize = 5;
const TARGET_EFFICIENCY: f64 = 0.90;
/// Every payload is bigger than this, so every item is offloaded.
const OFFLOAD_THRESHOLD_BYTES: usize = 64;
const PAYLOAD_CHARS: usize = 200;
/// The server's defaults.
const MAX_ITEMS_PER_ENQUEUE: usize = 512;
const MAX_LINE_BYTES: usize = 3_145_728;

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// When one offload started, finished its delay, and finished writing.
#[derive(Debug, Clone, Copy)]
struct PutTiming {
    started: Instant,
    slept: Instant,
    finished: Instant,
}

/// How [`DelayedPayloads`] spends its time on each object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreModel {
    /// Exactly [`OFFLOAD_DELAY`], payload kept in memory.
    Exact,
    /// `tokio::time::sleep(OFFLOAD_DELAY)`, then a write to files.
    TokioSleepThenFiles,
}

impl StoreModel {
    fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::TokioSleepThenFiles => "tokio+files",
        }
    }
}

/// A payload store that takes [`OFFLOAD_DELAY`] per object, as its model says.
struct DelayedPayloads {
    model: StoreModel,
    files: FsPayloadStore,
    memory: Mutex<std::collections::HashMap<String, Bytes>>,
    puts: Mutex<Vec<PutTiming>>,
}

impl DelayedPayloads {
    fn take_puts(&self) -> Vec<PutTiming> {
        std::mem::take(&mut self.puts.lock().expect("never poisoned"))
    }
}

#[async_trait]
impl PayloadStore for DelayedPayloads {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), DependencyError> {
        let started = Instant::now();
        match self.model {
            StoreModel::Exact => {
                tokio::task::spawn_blocking(|| std::thread::sleep(OFFLOAD_DELAY))
                    .await
                    .expect("a sleep does not panic");
            }
            StoreModel::TokioSleepThenFiles => tokio::time::sleep(OFFLOAD_DELAY).await,
        }
        let slept = Instant::now();
        match self.model {
            StoreModel::Exact => {
                self.memory
                    .lock()
                    .expect("never poisoned")
                    .insert(key.to_owned(), body);
            }
            StoreModel::TokioSleepThenFiles => self.files.put(key, body).await?,
        }
        let timing = PutTiming {
            started,
            slept,
            finished: Instant::now(),
        };
        self.puts.lock().expect("never poisoned").push(timing);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, DependencyError> {
        match self.model {
            StoreModel::Exact => Ok(self
                .memory
                .lock()
                .expect("never poisoned")
                .get(key)
                .cloned()),
            StoreModel::TokioSleepThenFiles => self.files.get(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), DependencyError> {
        match self.model {
            StoreModel::Exact => {
                self.memory.lock().expect("never poisoned").remove(key);
                Ok(())
            }
            StoreModel::TokioSleepThenFiles => self.files.delete(key).await,
        }
    }

    async fn delete_prefix(&self, prefix: &str, limit: u32) -> Result<u64, DependencyError> {
        match self.model {
            StoreModel::Exact => {
                let mut memory = self.memory.lock().expect("never poisoned");
                let keys: Vec<String> = memory
                    .keys()
                    .filter(|key| key.starts_with(prefix))
                    .take(limit as usize)
                    .cloned()
                    .collect();
                for key in &keys {
                    memory.remove(key);
                }
                Ok(keys.len() as u64)
            }
            StoreModel::TokioSleepThenFiles => self.files.delete_prefix(prefix, limit).await,
        }
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        self.files.ping().await
    }
}

/// A queue that times each enqueue call of the queue it wraps.
struct TimedQueue {
    queue: Arc<dyn ItemQueue>,
    enqueues: Mutex<Vec<Duration>>,
}

impl TimedQueue {
    fn new(queue: Arc<dyn ItemQueue>) -> Self {
        Self {
            queue,
            enqueues: Mutex::new(Vec::new()),
        }
    }

    fn take_enqueues(&self) -> Vec<Duration> {
        std::mem::take(&mut self.enqueues.lock().expect("never poisoned"))
    }
}

#[async_trait]
impl ItemQueue for TimedQueue {
    async fn enqueue(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Enqueued, DependencyError> {
        let started = Instant::now();
        let stored = self.queue.enqueue(batch_id, items).await?;
        let took = started.elapsed();
        self.enqueues.lock().expect("never poisoned").push(took);
        Ok(stored)
    }

    async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError> {
        self.queue.progress(batch_id).await
    }

    async fn missing(
        &self,
        batch_id: &str,
        run_count: u32,
        limit: usize,
    ) -> Result<Vec<IndexRange>, DependencyError> {
        self.queue.missing(batch_id, run_count, limit).await
    }

    async fn item(&self, batch_id: &str, index: u32) -> Result<Option<Bytes>, DependencyError> {
        self.queue.item(batch_id, index).await
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        self.queue.ping().await
    }

    async fn items_in_range(
        &self,
        batch_id: &str,
        first: u32,
        last: u32,
        max_bytes: u64,
    ) -> Result<Vec<Option<Bytes>>, DependencyError> {
        self.queue
            .items_in_range(batch_id, first, last, max_bytes)
            .await
    }

    async fn delete_batch(&self, batch_id: &str) -> Result<(), DependencyError> {
        self.queue.delete_batch(batch_id).await
    }
}

/// One queue backend under test, with what it needs to clean up after a run.
struct Backend {
    name: &'static str,
    queue: Arc<TimedQueue>,
    /// The batch store each enqueue checks the seal in (it holds no bench batch: never sealed).
    store: Arc<SqliteStore>,
    /// Set for Redis, whose batch keys never expire on their own.
    redis: Option<redis::Client>,
}

/// Everything one scenario runs against.
struct Bench {
    payloads: Arc<DelayedPayloads>,
    payload_root: PathBuf,
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    /// Mean duration of one offload: the delay plus the file write.
    put: Duration,
    /// Mean duration of the delay alone.
    sleep: Duration,
    /// Offload time over the time `min(c, n)` slots were open: 1.0 is never an idle slot.
    occupancy: f64,
    /// Mean time from an offload's end to the start of the one that takes its slot.
    refill: Duration,
    /// From the start of the run to the first offload.
    head: Duration,
    /// From the end of the last offload to the end of the run (the last enqueue).
    tail: Duration,
    enqueue_calls: usize,
    /// Mean duration of one enqueue call.
    enqueue: Duration,
}

fn ndjson_body(items: usize) -> Vec<u8> {
    let payload = "x".repeat(PAYLOAD_CHARS);
    let mut body = Vec::with_capacity(items * (PAYLOAD_CHARS + 64));
    for index in 0..items {
        body.extend_from_slice(
            format!(
                "{{\"index\":{index},\"task\":\"offload-bench\",\"payload\":{{\"data\":\"{payload}\"}}}}\n"
            )
            .as_bytes(),
        );
    }
    body
}

/// `ceil(n/c)` rounds of an offload that takes `per_offload`.
fn ideal(items: usize, concurrency: usize, per_offload: Duration) -> Duration {
    per_offload * items.div_ceil(concurrency) as u32
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn mean(durations: impl ExactSizeIterator<Item = Duration>) -> Duration {
    let count = durations.len().max(1) as u32;
    durations.sum::<Duration>() / count
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

/// How long freed offload slots stayed empty: the k-th slot freed is the one the (c+k)-th offload
/// takes, as `buffer_unordered` refills slots in the order they free up.
fn mean_refill(puts: &[PutTiming], slots: usize) -> Duration {
    let mut starts: Vec<Instant> = puts.iter().map(|put| put.started).collect();
    let mut frees: Vec<Instant> = puts.iter().map(|put| put.finished).collect();
    starts.sort();
    frees.sort();
    mean(
        starts[slots..]
            .iter()
            .zip(&frees)
            .map(|(start, freed)| start.saturating_duration_since(*freed)),
    )
}

impl Bench {
    /// Streams a body of `items` offloaded items into a fresh batch; checks every item landed.
    async fn run_once(
        &self,
        backend: &Backend,
        items: usize,
        concurrency: usize,
    ) -> BenchResult<Run> {
        let body = ndjson_body(items);
        let batch_id = format!("bench-offload-{:016x}", rand::random::<u64>());
        let target = IngestTarget {
            batch_id: batch_id.as_str().into(),
            tenant: "bench".into(),
            run_count: items as u32,
            queue: backend.queue.clone(),
            payloads: self.payloads.clone(),
            store: backend.store.clone(),
            open_until: std::sync::Mutex::new(None),
            events: sluice::events::Events::unwired(),
        };
        let limits = IngestLimits {
            concurrency,
            max_items_per_enqueue: MAX_ITEMS_PER_ENQUEUE,
            max_line_bytes: MAX_LINE_BYTES,
            offload_threshold_bytes: OFFLOAD_THRESHOLD_BYTES,
        };
        self.payloads.take_puts();
        backend.queue.take_enqueues();

        let started = Instant::now();
        // Read in 64 KiB pieces, as the server reads a decompressed body.
        let reads = ReaderStream::with_capacity(body.as_slice(), 64 * 1024);
        let (summary, result) = ingest(reads, &target, limits).await;
        let finished = Instant::now();

        result?;
        let puts = self.payloads.take_puts();
        let enqueues = backend.queue.take_enqueues();
        let progress = backend.queue.progress(&batch_id).await?;
        assert_eq!(summary.accepted, items as u64, "every item newly stored");
        assert_eq!(progress.enqueued, items as u64, "every item in the queue");
        assert_eq!(puts.len(), items, "every payload offloaded");
        self.clean_up(backend, &batch_id).await?;

        let wall = finished - started;
        let slots = concurrency.min(items);
        let busy: Duration = puts.iter().map(|put| put.finished - put.started).sum();
        let first_put = puts.iter().map(|put| put.started).min().expect("n > 0");
        let last_put = puts.iter().map(|put| put.finished).max().expect("n > 0");
        Ok(Run {
            wall,
            put: mean(puts.iter().map(|put| put.finished - put.started)),
            sleep: mean(puts.iter().map(|put| put.slept - put.started)),
            occupancy: busy.as_secs_f64() / (wall.as_secs_f64() * slots as f64),
            refill: mean_refill(&puts, slots),
            head: first_put - started,
            tail: finished - last_put,
            enqueue_calls: enqueues.len(),
            enqueue: mean(enqueues.into_iter()),
        })
    }

    /// Removes a run's payload files and, in Redis, its keys, so repeated runs do not pile up.
    async fn clean_up(&self, backend: &Backend, batch_id: &str) -> BenchResult<()> {
        match self.payloads.model {
            StoreModel::Exact => self.payloads.memory.lock().expect("never poisoned").clear(),
            StoreModel::TokioSleepThenFiles => {
                tokio::fs::remove_dir_all(self.payload_root.join("batches").join(batch_id)).await?
            }
        }
        if let Some(client) = &backend.redis {
            let mut connection = client.get_multiplexed_async_connection().await?;
            let _: () = redis::cmd("DEL")
                .arg(format!("sluice:{{{batch_id}}}:items"))
                .arg(format!("sluice:{{{batch_id}}}:failed"))
                .query_async(&mut connection)
                .await?;
        }
        Ok(())
    }

    async fn run_scenarios(&self, backend: &Backend) -> BenchResult<()> {
        // Warms the file system, the database and the connection pool.
        self.run_once(backend, 200, 50).await?;
        println!(
            "\nstore: {}, queue: {}, {RUNS} runs per scenario (put = mean offload: delay + file write; \
             vs put = ideal at the measured put / median; refill = mean time a freed slot sat empty)",
            self.payloads.model.name(),
            backend.name
        );
        println!(
            "{:>6} {:>4} {:>9} {:>10} {:>8} {:>11} {:>7} {:>9} {:>7} {:>10} {:>9}",
            "n",
            "c",
            "ideal ms",
            "median ms",
            "min ms",
            "efficiency",
            "put ms",
            "sleep ms",
            "vs put",
            "refill ms",
            "enqueues"
        );
        for (items, concurrency) in SCENARIOS {
            let mut runs = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                runs.push(self.run_once(backend, items, concurrency).await?);
            }
            report(
                self.payloads.model.name(),
                backend.name,
                items,
                concurrency,
                &runs,
            );
        }
        Ok(())
    }
}

/// Prints one scenario as a table row and as a JSON line: medians over the runs.
fn report(store: &str, queue: &str, items: usize, concurrency: usize, runs: &[Run]) {
    let of = |metric: fn(&Run) -> Duration| median(runs.iter().map(metric).collect());
    let wall = of(|run| run.wall);
    let min_wall = runs.iter().map(|run| run.wall).min().expect("RUNS > 0");
    let put = of(|run| run.put);
    let sleep = of(|run| run.sleep);
    let refill = of(|run| run.refill);
    let ideal_ms = millis(ideal(items, concurrency, OFFLOAD_DELAY));
    let efficiency = ideal_ms / millis(wall);
    let pipeline_efficiency = millis(ideal(items, concurrency, put)) / millis(wall);
    let enqueue_calls = median(runs.iter().map(|run| run.enqueue_calls).collect());
    println!(
        "{:>6} {:>4} {:>9.1} {:>10.1} {:>8.1} {:>10.1}% {:>7.2} {:>9.2} {:>6.1}% {:>10.3} {:>9}",
        items,
        concurrency,
        ideal_ms,
        millis(wall),
        millis(min_wall),
        efficiency * 100.0,
        millis(put),
        millis(sleep),
        pipeline_efficiency * 100.0,
        millis(refill),
        enqueue_calls,
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "offload",
            "store": store,
            "queue": queue,
            "n": items,
            "c": concurrency,
            "runs": runs.len(),
            "ideal_ms": ideal_ms,
            "median_ms": millis(wall),
            "min_ms": millis(min_wall),
            "efficiency": efficiency,
            "meets_target": efficiency >= TARGET_EFFICIENCY,
            "put_ms": millis(put),
            "sleep_ms": millis(sleep),
            "pipeline_efficiency": pipeline_efficiency,
            "slot_occupancy": median(runs.iter().map(|run| run.occupancy).collect()),
            "refill_ms": millis(refill),
            "head_ms": millis(of(|run| run.head)),
            "tail_ms": millis(of(|run| run.tail)),
            "enqueue_calls": enqueue_calls,
            "enqueue_ms": millis(of(|run| run.enqueue)),
        })
    );
}

/// How long `tokio::time::sleep(OFFLOAD_DELAY)` really takes here: one at a time, and 100 at once.
async fn measure_sleep() {
    let mut alone = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        tokio::time::sleep(OFFLOAD_DELAY).await;
        alone.push(started.elapsed());
    }
    let started = Instant::now();
    let together: Vec<Duration> = futures::future::join_all((0..100).map(|_| async move {
        tokio::time::sleep(OFFLOAD_DELAY).await;
        started.elapsed()
    }))
    .await;
    let alone_median = median(alone.clone());
    let alone_mean = mean(alone.iter().copied());
    let together_max = *together.iter().max().expect("100 sleeps");
    println!(
        "tokio sleep({} ms): alone median {:.2} ms, mean {:.2} ms (+{:.1}%), max {:.2} ms; \
         100 at once: all done after {:.2} ms",
        OFFLOAD_DELAY.as_millis(),
        millis(alone_median),
        millis(alone_mean),
        (alone_mean.as_secs_f64() / OFFLOAD_DELAY.as_secs_f64() - 1.0) * 100.0,
        millis(*alone.iter().max().expect("50 sleeps")),
        millis(together_max),
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "offload_sleep",
            "delay_ms": millis(OFFLOAD_DELAY),
            "alone_median_ms": millis(alone_median),
            "alone_mean_ms": millis(alone_mean),
            "hundred_at_once_ms": millis(together_max),
        })
    );
}

/// Where the payload files and the SQLite database go: RAM-backed `/dev/shm` when there is one. The
/// object store under test is the 10 ms delay; on a slow or shared disk the file writes behind it
/// (a `mkdir`, a write and a rename per payload) would measure the disk instead.
fn scratch_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

async fn connect_backends(scratch: &Path) -> BenchResult<Vec<Backend>> {
    let sqlite = Arc::new(SqliteStore::open(&scratch.join("sluice.db")).await?);
    let mut backends = vec![Backend {
        name: "sqlite",
        queue: Arc::new(TimedQueue::new(sqlite.clone())),
        store: sqlite.clone(),
        redis: None,
    }];
    if let Ok(url) = std::env::var("SLUICE_BENCH_REDIS_URL") {
        let queue = RedisQueue::connect(&url).await?;
        backends.push(Backend {
            name: "redis",
            queue: Arc::new(TimedQueue::new(Arc::new(queue))),
            store: sqlite.clone(),
            // Clean-up talks to one node; a Cluster's keys are left behind.
            redis: if url.contains(',') {
                None
            } else {
                Some(redis::Client::open(url.as_str())?)
            },
        });
    }
    Ok(backends)
}

fn main() -> BenchResult<()> {
    // The server's runtime: multi-threaded, one worker per core.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let scratch = tempfile::Builder::new()
            .prefix("sluice-offload-bench")
            .tempdir_in(scratch_parent())?;
        println!("files and SQLite under {}", scratch.path().display());
        let payload_root = scratch.path().join("payloads");
        measure_sleep().await;
        let backends = connect_backends(scratch.path()).await?;
        for model in [StoreModel::Exact, StoreModel::TokioSleepThenFiles] {
            let bench = Bench {
                payloads: Arc::new(DelayedPayloads {
                    model,
                    files: FsPayloadStore::open(&payload_root).await?,
                    memory: Mutex::new(std::collections::HashMap::new()),
                    puts: Mutex::new(Vec::new()),
                }),
                payload_root: payload_root.clone(),
            };
            for backend in &backends {
                bench.run_scenarios(backend).await?;
            }
        }
        Ok(())
    })
}
