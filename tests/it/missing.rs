//! Unsealed answers: the `missing` ranges and counts of a batch streamed with gaps, and sealing it
//! by re-streaming exactly those ranges. Every case runs in both modes and on the SQL queue in
//! Postgres (production without Redis); production also checks the Redis bitmap behind them, and
//! the SQL stores the migration that counts items stored before the chunk counters.

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{Value, json};
use sluice::queue::ItemQueue;
use sluice::store::adapters::{PostgresStore, SqliteStore};
use sqlx::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use crate::support::{Mode, TestServer, ndjson};

/// Where the queue lives.
#[derive(Debug, Clone, Copy)]
enum Queue {
    /// Embedded: SQLite.
    Embedded,
    /// Production: Redis.
    Production,
    /// Production without Redis: the SQL queue in Postgres.
    Postgres,
}

impl Queue {
    async fn start(self) -> TestServer {
        match self {
            Self::Embedded => TestServer::start(Mode::Embedded).await,
            Self::Production => TestServer::start(Mode::Production).await,
            Self::Postgres => {
                TestServer::start_with(Mode::Production, |config| config.redis_url = None).await
            }
        }
    }
}

/// Missing ranges the slow, obvious way, as the API writes them.
fn expected_missing(taken: &BTreeSet<u32>, run_count: u32, limit: usize) -> Value {
    let mut ranges: Vec<[u32; 2]> = Vec::new();
    for index in (0..run_count).filter(|index| !taken.contains(index)) {
        match ranges.last_mut() {
            Some([_, last]) if *last + 1 == index => *last = index,
            _ => ranges.push([index, index]),
        }
    }
    ranges.truncate(limit);
    json!(ranges)
}

/// Lines for every index in the answer's `missing` ranges.
fn lines_for(missing: &Value) -> Vec<u8> {
    let ranges = missing.as_array().expect("missing ranges");
    ndjson(ranges.iter().flat_map(|range| {
        let (first, last) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
        first as u32..=last as u32
    }))
}

fn assert_unsealed(body: &Value, enqueued: usize, run_count: u32, missing: &Value) {
    assert_eq!(body["sealed"], false, "{body}");
    assert_eq!(body["enqueuedCount"], enqueued as u64, "{body}");
    assert_eq!(body["expectedCount"], run_count, "{body}");
    assert_eq!(&body["missing"], missing, "{body}");
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = std::env::var("SLUICE_TEST_REDIS_URL").expect("SLUICE_TEST_REDIS_URL is set");
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answers")
}

#[rstest]
#[case::embedded(Queue::Embedded)]
#[case::production(Queue::Production)]
#[case::postgres_queue(Queue::Postgres)]
#[tokio::test]
async fn gaps_anywhere_are_reported_exactly_and_streaming_them_seals(#[case] queue: Queue) {
    let server = queue.start().await;
    let run_count = 20_000;
    let id = server.new_batch(run_count).await;
    let holes = (0..10) // head
        .chain(4_000..8_500) // a whole chunk of 4096 and parts of both its neighbours
        .chain(12_280..12_300) // across a chunk boundary (12 288)
        .chain([15_999, 16_000]) // across a byte of the bitmap
        .chain((0..run_count).filter(|index| index % 211 == 100)) // single holes
        .chain(19_990..run_count); // tail
    let holes: BTreeSet<u32> = holes.collect();
    let taken: BTreeSet<u32> = (0..run_count).filter(|i| !holes.contains(i)).collect();
    // Index 17 is a line that is not JSON: a failed item, which takes its index all the same.
    let mut body = b"{\"index\":17,\"task\":\"t\"\n".to_vec();
    body.extend(ndjson(taken.iter().copied().filter(|&index| index != 17)));

    let (status, answer) = server.stream(&id, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let missing = expected_missing(&taken, run_count, 1000);
    assert!(missing.as_array().unwrap().len() < 1000);
    assert_unsealed(&answer, taken.len(), run_count, &missing);
    let progress = server.queue.progress(&id).await.unwrap();
    assert_eq!(
        (progress.enqueued, progress.failed),
        (taken.len() as u64, 1)
    );
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["enqueuedCount"], taken.len() as u64);

    // An empty body asks again without sending anything.
    let (_, again) = server.stream(&id, Vec::new()).await;
    assert_unsealed(&again, taken.len(), run_count, &missing);

    let (status, sealed) = server.stream(&id, lines_for(&missing)).await;
    assert_eq!(status, StatusCode::OK, "{sealed}");
    assert_eq!(sealed["sealed"], true, "{sealed}");
    assert_eq!(sealed["itemsAccepted"], holes.len() as u64);
    assert_eq!(sealed["itemsDeduplicated"], 0);
}

#[rstest]
#[case::embedded(Queue::Embedded)]
#[case::production(Queue::Production)]
#[case::postgres_queue(Queue::Postgres)]
#[tokio::test]
async fn more_than_a_thousand_gaps_are_reported_a_thousand_at_a_time(#[case] queue: Queue) {
    let server = queue.start().await;
    let run_count = 20_000;
    let id = server.new_batch(run_count).await;
    // Every third index missing: 6 667 gaps.
    let mut taken: BTreeSet<u32> = (0..run_count).filter(|index| index % 3 != 1).collect();
    let (_, mut answer) = server.stream(&id, ndjson(taken.iter().copied())).await;
    let mut rounds = 0;
    while answer["sealed"] == false {
        let missing = expected_missing(&taken, run_count, 1000);
        assert_unsealed(&answer, taken.len(), run_count, &missing);
        // What `sluice send` does: stream exactly the ranges the answer lists.
        let (status, next) = server.stream(&id, lines_for(&missing)).await;
        assert_eq!(status, StatusCode::OK, "{next}");
        assert_eq!(
            next["itemsAccepted"],
            1000.min(run_count as usize - taken.len())
        );
        taken.extend(
            missing
                .as_array()
                .unwrap()
                .iter()
                .map(|range| range[0].as_u64().unwrap() as u32),
        );
        answer = next;
        rounds += 1;
    }
    assert_eq!(rounds, 7, "{answer}");
    assert_eq!(taken.len(), run_count as usize);
}

#[rstest]
#[case::embedded(Queue::Embedded)]
#[case::production(Queue::Production)]
#[case::postgres_queue(Queue::Postgres)]
#[tokio::test]
async fn concurrent_streams_with_gaps_count_each_index_once(#[case] queue: Queue) {
    let server = queue.start().await;
    let run_count = 10_000;
    let id = server.new_batch(run_count).await;
    let taken: BTreeSet<u32> = (0..run_count).filter(|index| index % 7 != 3).collect();
    let body = ndjson(taken.iter().copied());
    let streams =
        (0..4).map(|n| server.stream_chunks(&id, crate::support::chunked(&body, 4_000 + 997 * n)));
    for (status, answer) in futures::future::join_all(streams).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, answer) = server.stream(&id, Vec::new()).await;
    let missing = expected_missing(&taken, run_count, 1000);
    assert_unsealed(&answer, taken.len(), run_count, &missing);
}

/// The invariant `missing` rests on in Redis: bit i of `sluice:{id}:taken` is set exactly when
/// index i is taken, in the same transaction.
#[tokio::test]
async fn every_enqueued_index_has_its_bit_in_the_taken_bitmap() {
    let server = TestServer::start(Mode::Production).await;
    let id = server.new_batch(240).await;
    // Single indexes, a duplicate, and a run long enough to be set 64 bits at a time.
    let indexes = [0, 3, 9, 10, 3, 17].into_iter().chain(100..230);
    let (_, answer) = server.stream(&id, ndjson(indexes)).await;
    assert_eq!(answer["itemsDeduplicated"], 1, "{answer}");
    assert_eq!(
        answer["missing"],
        json!([[1, 2], [4, 8], [11, 16], [18, 99], [230, 239]])
    );

    let mut redis = redis().await;
    let key = format!("sluice:{{{id}}}:taken");
    let bitmap: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    // Bit 0 is the most significant bit of byte 0.
    let mut expected = vec![0b1001_0000, 0b0110_0000, 0b0100_0000];
    expected.extend([0; 9]); // indexes 24..96
    expected.push(0b0000_1111); // 100..104
    expected.extend([0xFF; 15]); // 104..224
    expected.push(0b1111_1100); // 224..230
    assert_eq!(bitmap, expected);
    let (bits, stored): (u64, u64) = redis::pipe()
        .cmd("BITCOUNT")
        .arg(&key)
        .cmd("HLEN")
        .arg(format!("sluice:{{{id}}}:items"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!((bits, stored), (135, 135));
}

/// A batch streamed partly by an earlier version has items without bits: they are marked before
/// the answer, so they are not reported missing.
#[tokio::test]
async fn indexes_stored_without_bits_are_not_reported_missing() {
    let server = TestServer::start(Mode::Production).await;
    let id = server.new_batch(100).await;
    let mut redis = redis().await;
    let items_key = format!("sluice:{{{id}}}:items");
    let mut earlier = redis::cmd("HSET");
    earlier.arg(&items_key);
    for index in 0..50 {
        earlier.arg(index).arg(r#"{"task":"t","payload":{}}"#);
    }
    let _: () = earlier.query_async(&mut redis).await.unwrap();

    let (_, answer) = server.stream(&id, ndjson(60..70)).await;
    assert_unsealed(&answer, 60, 100, &json!([[50, 59], [70, 99]]));
    let bits: u64 = redis::cmd("BITCOUNT")
        .arg(format!("sluice:{{{id}}}:taken"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(bits, 60);
}

/// Applies the migrations before the chunk counters (0001 only) to a fresh database.
async fn migrate_to_before_the_counters<DB>(pool: &sqlx::Pool<DB>, folder: &str)
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    let earlier = tempfile::tempdir().unwrap();
    let name = "0001_batches.sql";
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    std::fs::copy(from.join(name), earlier.path().join(name)).unwrap();
    sqlx::migrate::Migrator::new(earlier.path())
        .await
        .unwrap()
        .run(pool)
        .await
        .unwrap();
}

/// Items of batch `id` as an earlier version stored them: 0..10 000 but every seventh, every
/// hundredth one failed; `body` is the SQL of an empty item body.
fn earlier_items(id: &str, body: &str) -> String {
    format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) \
         INSERT INTO batch_items (batch_id, idx, failed, body) \
         SELECT '{id}', i, i % 100 = 0, {body} FROM n WHERE i % 7 <> 3"
    )
}

async fn assert_counted_as_before(queue: &dyn ItemQueue, id: &str) {
    let taken: BTreeSet<u32> = (0..10_000).filter(|index| index % 7 != 3).collect();
    let failed = taken.iter().filter(|&&index| index % 100 == 0).count() as u64;
    let progress = queue.progress(id).await.unwrap();
    assert_eq!(
        (progress.enqueued, progress.failed),
        (taken.len() as u64, failed)
    );
    let missing = queue.missing(id, 10_000, 1000).await.unwrap();
    let missing: Vec<[u32; 2]> = missing.into_iter().map(|(a, b)| [a, b]).collect();
    assert_eq!(json!(missing), expected_missing(&taken, 10_000, 1000));
}

#[tokio::test]
async fn the_counters_migration_counts_items_stored_before_it_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    migrate_to_before_the_counters(&pool, "sqlite").await;
    sqlx::raw_sql(&earlier_items("batch_old", "x''"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert_counted_as_before(&store, "batch_old").await;
}

#[tokio::test]
async fn the_counters_migration_counts_items_stored_before_it_postgres() {
    let url = std::env::var("SLUICE_TEST_DATABASE_URL").expect("SLUICE_TEST_DATABASE_URL is set");
    let server = PgPool::connect(&url).await.unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let database = format!("sluice_it_counters_{nanos}");
    sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
        .execute(&server)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let fresh = format!("{base}/{database}");
    let pool = PgPool::connect(&fresh).await.unwrap();
    migrate_to_before_the_counters(&pool, "postgres").await;
    sqlx::raw_sql(&earlier_items("batch_old", "'\\x'::bytea"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = PostgresStore::connect(&fresh, 2).await.unwrap();
    assert_counted_as_before(&store, "batch_old").await;
    drop(store);
    sqlx::raw_sql(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&server)
        .await
        .unwrap();
}
