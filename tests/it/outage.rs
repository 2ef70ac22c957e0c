//! Outages: a dependency (Redis, Postgres, the S3 server) stopped in the middle of a stream, and
//! the server itself killed with SIGKILL mid-stream.
//!
//! A stopped dependency must end the request with `503` and `Retry-After` within a bounded time
//! (never a 500, never a hang), and once it is back the client's re-stream must seal the batch
//! with every index once. A killed server must lose nothing: restarted on the same backends, the
//! retried stream seals the batch with every index once.
//!
//! Each test stops only services it started itself, on their own ports (`support::Private*`),
//! never the shared ones other tests use. Timings are printed (`-- --nocapture` shows them).
//! `cluster.rs` drives a Redis Cluster master's outage through the same steps ([`Outage`]).

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use reqwest::{Body, StatusCode};
use rstest::rstest;
use serde_json::json;
use sluice::dependency::DependencyError;
use sluice::payloads::PayloadStore;
use sluice::payloads::adapters::{FsPayloadStore, S3PayloadStore, S3Settings};
use sluice::queue::ItemQueue;
use sluice::queue::adapters::RedisQueue;
use sluice::store::adapters::{PostgresStore, SqliteStore};
use sluice::store::runs::RunStore;
use tokio::task::JoinHandle;

use crate::support::{
    KEY, Mode, PostgresStop, PrivatePostgres, PrivateRedis, PrivateS3, ServerProcess, TestServer,
    accepted_item, apply, both_modes, chunked, into_parts, poll_until,
};

/// Items of a batch in the dependency tests; the stream stops its dependency halfway.
const ITEMS: u32 = 2_000;
/// Items of a batch in the SIGKILL tests (about 180 KiB of body).
const KILL_ITEMS: u32 = 1_200;
/// Payload size at which the tests that use the payload store offload an item (every tenth).
const OFFLOAD_THRESHOLD: u32 = 256;
/// Longest a request may take to answer while a dependency is down. Longer is a hang.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// Longest anything else a test waits for (a restart, items landing).
const WAIT_LIMIT: Duration = Duration::from_secs(30);
const CHUNK_BYTES: usize = 16 * 1024;

/// The NDJSON line of an item: every tenth payload is large enough to be offloaded at
/// `OFFLOAD_THRESHOLD`, the rest stay inline.
fn line(index: u32) -> String {
    let pad = if index.is_multiple_of(10) { 300 } else { 60 };
    format!(
        "{{\"index\":{index},\"task\":\"t\",\"payload\":{{\"n\":{index},\"pad\":\"{}\"}}}}\n",
        "p".repeat(pad)
    )
}

fn lines(indexes: std::ops::Range<u32>) -> Vec<u8> {
    indexes.flat_map(|index| line(index).into_bytes()).collect()
}

/// A Phase 2 request whose body the test writes while the request runs, and may leave open.
struct OpenStream {
    body: mpsc::Sender<io::Result<Bytes>>,
    answer: JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl OpenStream {
    fn start(request: reqwest::RequestBuilder) -> Self {
        let (body, chunks) = mpsc::channel(1);
        let answer = tokio::spawn(request.body(Body::wrap_stream(chunks)).send());
        Self { body, answer }
    }

    /// Sends `bytes` as chunks; false once the request is over (the server answered or left).
    async fn write(&mut self, bytes: &[u8]) -> bool {
        write_chunks(&mut self.body, bytes).await
    }

    /// Goes on writing `rest` in the background. With `end_body`, the body ends after `rest`;
    /// otherwise it stays open until the answer came.
    fn write_in_background(self, rest: Vec<u8>, end_body: bool) -> PendingAnswer {
        let mut body = self.body;
        let writer = tokio::spawn(async move {
            write_chunks(&mut body, &rest).await;
            // Returning the sender keeps the body open for as long as this task's output lives.
            (!end_body).then_some(body)
        });
        PendingAnswer {
            answer: self.answer,
            writer,
        }
    }
}

/// A request whose body is still being written.
struct PendingAnswer {
    answer: JoinHandle<reqwest::Result<reqwest::Response>>,
    writer: JoinHandle<Option<mpsc::Sender<io::Result<Bytes>>>>,
}

impl PendingAnswer {
    /// The answer, waited for at most `limit`; an error if none came (or the connection broke).
    async fn within(self, limit: Duration) -> Result<reqwest::Response, String> {
        let answer = tokio::time::timeout(limit, self.answer).await;
        self.writer.abort();
        match answer {
            Err(_) => Err(format!("no answer within {limit:?}")),
            Ok(joined) => joined
                .expect("the request task")
                .map_err(|error| format!("the request failed: {error}")),
        }
    }
}

async fn write_chunks(body: &mut mpsc::Sender<io::Result<Bytes>>, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(CHUNK_BYTES) {
        if body.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
            return false;
        }
    }
    true
}

/// Where the stored items and payloads of a test can be read back, to check them one by one.
struct Stored {
    queue: Arc<dyn ItemQueue>,
    payloads: Arc<dyn PayloadStore>,
    runs: Arc<dyn RunStore>,
}

impl Stored {
    fn of(server: &TestServer) -> Self {
        Self {
            queue: server.queue.clone(),
            payloads: server.payloads.clone(),
            runs: server.runs.clone(),
        }
    }

    /// Every index `0..count` holds the item of its own line, offloaded payloads included.
    async fn assert_every_index_holds_its_item(&self, id: &str, count: u32) {
        let checks = futures::stream::iter(0..count)
            .map(|index| self.payload_number(id, index))
            .buffer_unordered(16);
        let numbers: Vec<(u32, u64)> = checks.collect().await;
        for (index, number) in numbers {
            assert_eq!(number, u64::from(index), "the item at index {index}");
        }
    }

    /// The `n` of the payload stored at `index`, read from the payload store when offloaded.
    async fn payload_number(&self, id: &str, index: u32) -> (u32, u64) {
        let item = accepted_item(self.queue.as_ref(), self.runs.as_ref(), id, index)
            .await
            .unwrap_or_else(|| panic!("index {index} is not stored"));
        let payload = if item["payloadType"] == "application/store" {
            let key = item["payload"].as_str().unwrap();
            let object = self.payloads.get(key).await.unwrap();
            let object = object.unwrap_or_else(|| panic!("payload object {key} is missing"));
            serde_json::from_slice(&object).unwrap()
        } else {
            item["payload"].clone()
        };
        (index, payload["n"].as_u64().expect("a payload with n"))
    }
}

// ---------------------------------------------------------------------------------------------
// A dependency stopped mid-stream
// ---------------------------------------------------------------------------------------------

/// A dependency a test takes down in the middle of a stream, and brings back.
pub(crate) trait Outage {
    /// Takes the dependency down while `batch_id` is being streamed into.
    async fn stop(&mut self, batch_id: &str);

    async fn restart(&mut self);

    /// What was stopped and how, for messages.
    fn name(&self) -> String;
}

/// The private service a test stops and starts again.
enum Service {
    Redis(PrivateRedis),
    /// Redis stopped with SIGSTOP: connections stay open, nothing answers.
    FrozenRedis(PrivateRedis),
    Postgres(PrivatePostgres, PostgresStop),
    S3(PrivateS3),
}

impl Outage for Service {
    async fn stop(&mut self, _batch_id: &str) {
        match self {
            Self::Redis(redis) => redis.kill().await,
            Self::FrozenRedis(redis) => redis.freeze(),
            Self::Postgres(postgres, how) => postgres.stop(*how).await,
            Self::S3(s3) => s3.kill().await,
        }
    }

    async fn restart(&mut self) {
        match self {
            Self::Redis(redis) => redis.restart().await,
            Self::FrozenRedis(redis) => redis.thaw(),
            Self::Postgres(postgres, _) => postgres.restart().await,
            Self::S3(s3) => s3.restart().await,
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Redis(_) => "Redis (SIGKILL)".into(),
            Self::FrozenRedis(_) => "Redis (SIGSTOP)".into(),
            Self::Postgres(_, how) => format!("Postgres ({how:?} stop)"),
            Self::S3(_) => "S3 server (SIGKILL)".into(),
        }
    }
}

/// When the stream that meets the outage can notice it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Noticed {
    /// While the body is still arriving: the answer must come with the body left open.
    MidStream,
    /// Only once the body has ended (the dependency is needed to seal, not to store items).
    AtSeal,
}

/// What requests made while the dependency is down answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DuringOutage {
    /// Phase 1: create a batch.
    pub create: StatusCode,
    /// `GET /api/v3/batches/{id}`.
    pub read: StatusCode,
    pub health: StatusCode,
    /// Phase 2: the whole body streamed again.
    pub stream: StatusCode,
}

/// Streams half a batch, stops `service`, streams the rest, and checks the answer is a timely
/// 503; checks what other requests get during the outage; restarts the service and re-streams
/// the whole body, which must seal the batch with every index once.
pub(crate) async fn stop_mid_stream_then_restream(
    server: &TestServer,
    service: &mut impl Outage,
    noticed: Noticed,
    expected: DuringOutage,
) {
    let name = service.name();
    let id = server.new_batch(ITEMS).await;
    let half = ITEMS / 2;
    let mut stream = OpenStream::start(server.items_request(&id));
    assert!(
        stream.write(&lines(0..half)).await,
        "the first half is sent"
    );
    poll_until("the first half is stored", WAIT_LIMIT, || async {
        enqueued(server, &id).await >= u64::from(half)
    })
    .await;

    service.stop(&id).await;
    let stopped = Instant::now();
    let end_body = noticed == Noticed::AtSeal;
    let answer = stream
        .write_in_background(lines(half..ITEMS), end_body)
        .within(ANSWER_LIMIT)
        .await
        .unwrap_or_else(|error| panic!("{name} down mid-stream: {error}"));
    let answered_after = stopped.elapsed();
    let retry_after = answer.headers().get("retry-after").cloned();
    let (status, body) = into_parts(answer).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
    assert_eq!(body["error"]["code"], "DEPENDENCY_UNAVAILABLE", "{body}");
    assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    // Like every early stop, the answer says what the stream enqueued before the outage.
    assert_eq!(body["sealed"], false, "{name}: {body}");
    let accepted_before = body["itemsAccepted"].as_u64().expect("itemsAccepted");
    assert!(accepted_before >= u64::from(half), "{name}: {body}");

    let (during, slowest) = requests_during_outage(server, &id).await;
    assert_eq!(during, expected, "{name}: answers during the outage");

    service.restart().await;
    let restarted = Instant::now();
    poll_until("/healthz answers 200 again", WAIT_LIMIT, || async {
        health(server).await == StatusCode::OK
    })
    .await;
    let recovered_after = restarted.elapsed();

    let (status, body) = server
        .stream_chunks(&id, chunked(&lines(0..ITEMS), CHUNK_BYTES))
        .await;
    assert_eq!(status, StatusCode::OK, "{name}: re-stream: {body}");
    assert_eq!(body["sealed"], true, "{body}");
    let accepted = body["itemsAccepted"].as_u64().unwrap();
    let deduplicated = body["itemsDeduplicated"].as_u64().unwrap();
    assert_eq!(accepted + deduplicated, u64::from(ITEMS), "{body}");
    assert!(
        deduplicated >= u64::from(half),
        "items stored before the outage are kept: {body}"
    );
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["sealed"], true, "{batch}");
    assert_eq!(batch["status"], "PROCESSING", "{batch}");
    assert_eq!(batch["enqueuedCount"], ITEMS, "{batch}");
    Stored::of(server)
        .assert_every_index_holds_its_item(&id, ITEMS)
        .await;
    eprintln!(
        "outage: {name} stopped after {half} of {ITEMS} items: the stream answered 503 in \
         {answered_after:.2?} ({noticed:?}); during the outage create {}, read {}, healthz {}, \
         stream {} (slowest {slowest:.2?}); healthy {recovered_after:.2?} after restart; \
         re-stream 200 sealed, {accepted} accepted + {deduplicated} deduplicated",
        during.create.as_u16(),
        during.read.as_u16(),
        during.health.as_u16(),
        during.stream.as_u16(),
    );
}

async fn enqueued(server: &TestServer, id: &str) -> u64 {
    let (status, batch) = server.batch(id).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    batch["enqueuedCount"].as_u64().unwrap()
}

pub(crate) async fn health(server: &TestServer) -> StatusCode {
    let response = server.client.get(server.url("/healthz")).send().await;
    response.map_or(StatusCode::BAD_GATEWAY, |response| response.status())
}

/// Phase 1, a read, /healthz and a Phase 2 stream, all at once during the outage; each must be
/// answered within `ANSWER_LIMIT`, and a 503 must carry `Retry-After`.
async fn requests_during_outage(server: &TestServer, id: &str) -> (DuringOutage, Duration) {
    let started = Instant::now();
    let timed = |request: reqwest::RequestBuilder| async move {
        let response = tokio::time::timeout(ANSWER_LIMIT, request.send())
            .await
            .expect("answered during the outage, not hung")
            .expect("answered during the outage");
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
        }
        (status, started.elapsed())
    };
    let create = server
        .client
        .post(server.url("/api/v3/batches"))
        .bearer_auth(KEY)
        .json(&json!({ "runCount": 1 }));
    let read = server
        .client
        .get(server.url(&format!("/api/v3/batches/{id}")))
        .bearer_auth(KEY);
    let healthz = server.client.get(server.url("/healthz"));
    let stream = server.items_request(id).body(lines(0..ITEMS));
    let (create, read, health, stream) =
        tokio::join!(timed(create), timed(read), timed(healthz), timed(stream));
    let slowest = [create.1, read.1, health.1, stream.1]
        .into_iter()
        .max()
        .unwrap();
    let during = DuringOutage {
        create: create.0,
        read: read.0,
        health: health.0,
        stream: stream.0,
    };
    (during, slowest)
}

const OK: StatusCode = StatusCode::OK;
pub(crate) const ACCEPTED: StatusCode = StatusCode::ACCEPTED;
pub(crate) const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

#[tokio::test]
async fn redis_down_mid_stream_answers_503_and_a_restream_seals_the_batch() {
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let server =
        TestServer::start_with(Mode::Production, |config| config.redis_url = Some(url)).await;
    let expected = DuringOutage {
        create: ACCEPTED,
        read: UNAVAILABLE,
        health: UNAVAILABLE,
        stream: UNAVAILABLE,
    };
    let mut service = Service::Redis(redis);
    stop_mid_stream_then_restream(&server, &mut service, Noticed::MidStream, expected).await;
}

/// A Redis that holds connections open but never answers must not hold the request: the
/// response timeout turns it into a 503.
#[tokio::test]
async fn redis_frozen_mid_stream_answers_503_and_a_restream_seals_the_batch() {
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let server =
        TestServer::start_with(Mode::Production, |config| config.redis_url = Some(url)).await;
    let expected = DuringOutage {
        create: ACCEPTED,
        read: UNAVAILABLE,
        health: UNAVAILABLE,
        stream: UNAVAILABLE,
    };
    let mut service = Service::FrozenRedis(redis);
    stop_mid_stream_then_restream(&server, &mut service, Noticed::MidStream, expected).await;
}

/// Without Redis the items go to Postgres, so its outage is met while the body is arriving.
#[rstest]
#[case::fast_stop(PostgresStop::Fast)]
#[case::immediate_stop(PostgresStop::Immediate)]
#[tokio::test]
async fn postgres_down_mid_stream_answers_503_and_a_restream_seals_the_batch(
    #[case] how: PostgresStop,
) {
    let postgres = PrivatePostgres::start().await;
    let url = postgres.url();
    let server = TestServer::start_with(Mode::Production, |config| {
        config.database_url = Some(url);
        config.redis_url = None;
    })
    .await;
    let expected = DuringOutage {
        create: UNAVAILABLE,
        read: UNAVAILABLE,
        health: UNAVAILABLE,
        stream: UNAVAILABLE,
    };
    let mut service = Service::Postgres(postgres, how);
    stop_mid_stream_then_restream(&server, &mut service, Noticed::MidStream, expected).await;
}

/// With Redis holding the items, Postgres is needed again only to seal: the stream stores every
/// item, then answers 503 instead of sealing.
#[tokio::test]
async fn postgres_down_at_seal_answers_503_and_a_restream_seals_the_batch() {
    let postgres = PrivatePostgres::start().await;
    let url = postgres.url();
    let server =
        TestServer::start_with(Mode::Production, |config| config.database_url = Some(url)).await;
    let expected = DuringOutage {
        create: UNAVAILABLE,
        read: UNAVAILABLE,
        health: UNAVAILABLE,
        stream: UNAVAILABLE,
    };
    let mut service = Service::Postgres(postgres, PostgresStop::Fast);
    stop_mid_stream_then_restream(&server, &mut service, Noticed::AtSeal, expected).await;
}

/// A query running when Postgres stops fails with SQLSTATE 57P01 (fast stop: the server ends the
/// session with an error) or a cut connection (immediate stop). Either is an outage the client
/// may retry (503), not a bug (500).
#[rstest]
#[case::fast_stop(PostgresStop::Fast)]
#[case::immediate_stop(PostgresStop::Immediate)]
#[tokio::test]
async fn a_query_cut_by_a_postgres_stop_counts_as_unavailable(#[case] how: PostgresStop) {
    use sqlx::Connection;
    let mut postgres = PrivatePostgres::start().await;
    let url = postgres.url();
    let mut running = sqlx::PgConnection::connect(&url).await.unwrap();
    let query = tokio::spawn(async move {
        sqlx::query("SELECT pg_sleep(60)")
            .execute(&mut running)
            .await
            .map(|_| ())
    });
    let watcher = sqlx::PgPool::connect(&url).await.unwrap();
    poll_until("the query runs", WAIT_LIMIT, || {
        let watcher = &watcher;
        async move {
            let sleeping: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            )
            .fetch_one(watcher)
            .await
            .unwrap();
            sleeping == 1
        }
    })
    .await;
    watcher.close().await;
    postgres.stop(how).await;
    let error = tokio::time::timeout(WAIT_LIMIT, query)
        .await
        .expect("the cut query ends")
        .unwrap()
        .expect_err("the query was cut");
    let shown = format!("{error:?}");
    let error = DependencyError::from(error);
    assert!(error.is_unavailable(), "{how:?} stop: {shown}");
    eprintln!("outage: a query cut by a {how:?} Postgres stop failed with {shown}: {error}");
}

#[tokio::test]
async fn s3_down_mid_stream_answers_503_and_a_restream_seals_the_batch() {
    let s3 = PrivateS3::start().await;
    let endpoint = s3.endpoint();
    let server = TestServer::start_with(Mode::Production, |config| {
        config.s3_endpoint = Some(endpoint);
        config.s3_bucket = Some(PrivateS3::BUCKET.into());
        config.offload_threshold_bytes = OFFLOAD_THRESHOLD;
    })
    .await;
    // Reading a batch needs no payload; streaming offloads every tenth item.
    let expected = DuringOutage {
        create: ACCEPTED,
        read: OK,
        health: UNAVAILABLE,
        stream: UNAVAILABLE,
    };
    let mut service = Service::S3(s3);
    stop_mid_stream_then_restream(&server, &mut service, Noticed::MidStream, expected).await;
}

// ---------------------------------------------------------------------------------------------
// The server killed mid-stream
// ---------------------------------------------------------------------------------------------

/// When, in a stream, the server is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Once this many body bytes were sent and some of their items are stored, while the rest of
    /// the body is being sent.
    AfterBytes(usize),
    /// Once every item is stored, with the body still open: no answer, no seal yet.
    AllStoredBeforeTheAnswer,
}

const KILL_POINTS: [KillPoint; 4] = [
    KillPoint::AfterBytes(4 * 1024),
    KillPoint::AfterBytes(48 * 1024),
    KillPoint::AfterBytes(128 * 1024),
    KillPoint::AllStoredBeforeTheAnswer,
];

/// The server's environment for `mode`: embedded keeps its state in `data_dir`; production uses
/// the shared Postgres, Redis and S3 (only the server is killed, never they).
fn server_env(mode: Mode, data_dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SLUICE_DATA_DIR", data_dir.display().to_string()),
        ("SLUICE_API_KEYS", format!("acme:{KEY}")),
        (
            "BATCH_PAYLOAD_OFFLOAD_THRESHOLD",
            OFFLOAD_THRESHOLD.to_string(),
        ),
    ];
    if let Some(redis_url_env) = mode.redis_url_env() {
        env.extend([
            ("DATABASE_URL", test_env("SLUICE_TEST_DATABASE_URL")),
            ("DATABASE_MAX_CONNECTIONS", "4".into()),
            ("REDIS_URL", test_env(redis_url_env)),
            ("S3_BUCKET", test_env("SLUICE_TEST_S3_BUCKET")),
            ("S3_ENDPOINT", test_env("SLUICE_TEST_S3_ENDPOINT")),
            ("S3_FORCE_PATH_STYLE", "true".into()),
        ]);
    }
    env
}

fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `scripts/test`"))
}

/// The backends of `mode`, opened by the test itself to read what the server stored.
async fn stored_for(mode: Mode, data_dir: &std::path::Path) -> Stored {
    match mode {
        Mode::Embedded => {
            let store = Arc::new(
                SqliteStore::open(&data_dir.join("sluice.db"))
                    .await
                    .unwrap(),
            );
            Stored {
                queue: store.clone(),
                payloads: Arc::new(
                    FsPayloadStore::open(&data_dir.join("payloads"))
                        .await
                        .unwrap(),
                ),
                runs: store,
            }
        }
        Mode::Production | Mode::ProductionCluster => Stored {
            queue: Arc::new(
                RedisQueue::connect(&test_env(mode.redis_url_env().expect("a production mode")))
                    .await
                    .unwrap(),
            ),
            payloads: Arc::new(
                S3PayloadStore::connect(&S3Settings {
                    bucket: test_env("SLUICE_TEST_S3_BUCKET"),
                    endpoint: Some(test_env("SLUICE_TEST_S3_ENDPOINT")),
                    region: None,
                    force_path_style: true,
                })
                .await,
            ),
            runs: Arc::new(
                PostgresStore::connect(&test_env("SLUICE_TEST_DATABASE_URL"), 2)
                    .await
                    .unwrap(),
            ),
        },
    }
}

#[apply(both_modes)]
#[tokio::test]
async fn a_server_killed_mid_stream_loses_nothing_once_the_stream_is_retried(#[case] mode: Mode) {
    let data_dir = tempfile::tempdir().unwrap();
    let env = server_env(mode, data_dir.path());
    let body = lines(0..KILL_ITEMS);
    let mut server = ServerProcess::start(&env).await;
    let stored = stored_for(mode, data_dir.path()).await;
    for point in KILL_POINTS {
        let id = server.new_batch(KILL_ITEMS).await;
        let mut stream = OpenStream::start(server.items_request(&id));
        let sent = match point {
            KillPoint::AfterBytes(bytes) => &body[..bytes],
            KillPoint::AllStoredBeforeTheAnswer => &body[..],
        };
        assert!(stream.write(sent).await);
        let at_least = match point {
            KillPoint::AfterBytes(_) => 1,
            KillPoint::AllStoredBeforeTheAnswer => u64::from(KILL_ITEMS),
        };
        // What the server reports stored before the kill must all be there after it.
        let seen = Cell::new(0);
        poll_until("items of the sent bytes are stored", WAIT_LIMIT, || async {
            let (_, batch) = server.batch(&id).await;
            seen.set(batch["enqueuedCount"].as_u64().unwrap());
            seen.get() >= at_least
        })
        .await;
        let seen = seen.get();
        let rest = body[sent.len()..].to_vec();
        let cut = stream.write_in_background(rest, false);
        server.kill().await;
        let cut = cut.within(WAIT_LIMIT).await;
        assert!(cut.is_err(), "a killed server answers nothing: {cut:?}");

        let restarting = Instant::now();
        server = ServerProcess::start(&env).await;
        let restart_took = restarting.elapsed();
        let (status, before) = server.batch(&id).await;
        assert_eq!(status, StatusCode::OK, "{before}");
        assert_eq!(before["sealed"], false, "{point:?}: {before}");
        let kept = before["enqueuedCount"].as_u64().unwrap();
        assert!(
            (seen..=u64::from(KILL_ITEMS)).contains(&kept),
            "{point:?}: {kept} stored after the kill, {seen} seen stored before it"
        );

        let (status, after) = server.stream(&id, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{point:?}: {after}");
        assert_eq!(after["sealed"], true, "{after}");
        assert_eq!(after["itemsDeduplicated"], kept, "{point:?}: {after}");
        assert_eq!(
            after["itemsAccepted"],
            u64::from(KILL_ITEMS) - kept,
            "{after}"
        );
        let (_, batch) = server.batch(&id).await;
        assert_eq!(batch["enqueuedCount"], KILL_ITEMS, "{batch}");
        stored
            .assert_every_index_holds_its_item(&id, KILL_ITEMS)
            .await;
        eprintln!(
            "outage: {mode:?} server SIGKILLed at {point:?}: {seen} items seen stored before the \
             kill, {kept} of {KILL_ITEMS} stored after it, restart took {restart_took:.2?}, the \
             retried stream sealed with {} accepted + {kept} deduplicated",
            u64::from(KILL_ITEMS) - kept
        );
    }
    server.kill().await;
}
