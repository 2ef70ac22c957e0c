//! Exactly once under crashes: the server is SIGKILLed at several points while it materialises a
//! large batch, and started again on the same backends each time. In the end every index has
//! exactly one run, holding the payload that was accepted for it, and the queue items are gone.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use rstest::rstest;
use serde_json::Value;
use sluice::queue::ItemQueue;
use sluice::queue::adapters::RedisQueue;
use sluice::store::adapters::SqliteStore;

use super::{MATERIALISE_LIMIT, wait_materialised};
use crate::support::{Database, KEY, Mode, ServerProcess, ndjson, poll_until};

const ITEMS: u32 = 200_000;
const CHUNK_ITEMS: u32 = 2_000;

/// The server's environment for `mode`: a short materialising lease, so a restarted server takes
/// over the killed one's batch quickly.
fn server_env(mode: Mode, data_dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SLUICE_DATA_DIR", data_dir.display().to_string()),
        ("SLUICE_API_KEYS", format!("acme:{KEY}")),
        ("SLUICE_MATERIALISE_CHUNK_ITEMS", CHUNK_ITEMS.to_string()),
        ("SLUICE_MATERIALISE_LEASE_MS", "500".into()),
    ];
    if mode == Mode::Production {
        for (name, from) in [
            ("DATABASE_URL", "SLUICE_TEST_DATABASE_URL"),
            ("REDIS_URL", "SLUICE_TEST_REDIS_URL"),
            ("S3_BUCKET", "SLUICE_TEST_S3_BUCKET"),
            ("S3_ENDPOINT", "SLUICE_TEST_S3_ENDPOINT"),
        ] {
            env.push((name, std::env::var(from).expect("run with scripts/test")));
        }
        env.extend([
            ("S3_FORCE_PATH_STYLE", "true".into()),
            ("DATABASE_MAX_CONNECTIONS", "4".into()),
        ]);
    }
    env
}

/// Every run of the batch as `(index, payload)`, read from the database itself.
pub async fn runs_in_database(
    mode: Mode,
    data_dir: &std::path::Path,
    id: &str,
) -> Vec<(i32, Option<Vec<u8>>)> {
    const SQL: &str = "SELECT idx, payload FROM runs WHERE batch_id = $1 ORDER BY idx";
    match Database::at(mode, data_dir).await {
        Database::Sqlite(pool) => sqlx::query_as(SQL).bind(id).fetch_all(&pool).await.unwrap(),
        Database::Postgres(pool) => sqlx::query_as(SQL).bind(id).fetch_all(&pool).await.unwrap(),
    }
}

/// Each index `0..count` has one run whose payload is `{"n": index}`.
pub fn assert_one_run_per_index(runs: &[(i32, Option<Vec<u8>>)], count: u32) {
    assert_eq!(runs.len(), count as usize, "runs written");
    for (expected, (index, payload)) in runs.iter().enumerate() {
        assert_eq!(*index, expected as i32, "runs are exactly the indexes");
        let payload: Value = serde_json::from_slice(payload.as_deref().unwrap()).unwrap();
        assert_eq!(
            payload["n"], expected as u64,
            "the payload of index {index}"
        );
    }
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn a_server_killed_while_materialising_writes_every_run_exactly_once(#[case] mode: Mode) {
    let data_dir = tempfile::tempdir().unwrap();
    let env = server_env(mode, data_dir.path());
    let mut server = ServerProcess::start(&env).await;
    let id = server.new_batch(ITEMS).await;
    let (_, body) = server.stream(&id, ndjson(0..ITEMS)).await;
    assert_eq!(body["sealed"], true, "{body}");
    // Kill once at least this many runs are written: at the seal, after the first chunk, a
    // quarter, half, three quarters, and once all are written (around the queue's deletion).
    let points = [0, CHUNK_ITEMS, ITEMS / 4, ITEMS / 2, ITEMS * 3 / 4, ITEMS];
    let mut previous = 0;
    for point in points {
        let written = Cell::new(0);
        poll_until("runs are written", MATERIALISE_LIMIT, || async {
            let (_, batch) = server.batch(&id).await;
            written.set(batch["materialisedCount"].as_u64().unwrap());
            written.get() >= u64::from(point)
        })
        .await;
        let seen = written.get();
        assert!(seen >= previous, "the checkpoint never goes back");
        previous = seen;
        server.kill().await;
        let restarted = Instant::now();
        server = ServerProcess::start(&env).await;
        let (_, batch) = server.batch(&id).await;
        let kept = batch["materialisedCount"].as_u64().unwrap();
        assert!(
            kept >= seen,
            "{kept} runs after the kill, {seen} seen before it"
        );
        eprintln!(
            "materialise crash ({mode:?}): killed at >= {point} ({seen} runs seen written), \
             {kept} after the restart ({:.2?})",
            restarted.elapsed()
        );
    }
    let batch = wait_materialised(&server, &id).await;
    assert_eq!(batch["counts"]["pending"], ITEMS, "{batch}");
    assert_eq!(batch["status"], "PROCESSING");
    let runs = runs_in_database(mode, data_dir.path(), &id).await;
    assert_one_run_per_index(&runs, ITEMS);
    // The pass that finished deleted the queue items.
    let queue: Arc<dyn ItemQueue> = match mode {
        Mode::Embedded => Arc::new(
            SqliteStore::open(&data_dir.path().join("sluice.db"))
                .await
                .unwrap(),
        ),
        Mode::Production | Mode::ProductionCluster => Arc::new(
            RedisQueue::connect(
                &std::env::var(mode.redis_url_env().expect("a production mode")).unwrap(),
            )
            .await
            .unwrap(),
        ),
    };
    poll_until("the queue items are deleted", MATERIALISE_LIMIT, || async {
        queue.progress(&id).await.unwrap().enqueued == 0
    })
    .await;
    server.kill().await;
}
