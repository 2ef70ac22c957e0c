//! Two nodes on the same Postgres and Redis materialise at once: no run is written twice or
//! skipped, even when one node's claim expires under it and the other takes the batch over.

use super::crash::{assert_one_run_per_index, runs_in_database};
use super::{MATERIALISE_LIMIT, wait_materialised};
use crate::support::{Mode, TestServer, ndjson, poll_until};

const BATCHES: u32 = 6;
const ITEMS: u32 = 20_000;

#[tokio::test]
async fn two_nodes_materialising_at_once_never_duplicate_or_skip() {
    // A lease shorter than some commits, so claims expire mid-pass and are taken over.
    let node = || {
        TestServer::start_with(Mode::Production, |config| {
            config.materialise_chunk_items = 1_000;
            config.materialise_lease_ms = 100;
        })
    };
    let (a, b) = (node().await, node().await);
    let mut ids = Vec::new();
    for _ in 0..BATCHES {
        ids.push(a.new_batch(ITEMS).await);
    }
    // Half the batches sealed on each node, at the same time.
    let streams = ids.iter().enumerate().map(|(n, id)| {
        let node = if n % 2 == 0 { &a } else { &b };
        node.stream(id, ndjson(0..ITEMS))
    });
    for (status, body) in futures::future::join_all(streams).await {
        assert_eq!(body["sealed"], true, "{status}: {body}");
    }
    let unused = tempfile::tempdir().unwrap();
    for id in &ids {
        wait_materialised(&a, id).await;
        let runs = runs_in_database(Mode::Production, unused.path(), id).await;
        assert_one_run_per_index(&runs, ITEMS);
        poll_until("the queue items are deleted", MATERIALISE_LIMIT, || async {
            a.queue.progress(id).await.unwrap().enqueued == 0
        })
        .await;
    }
}
