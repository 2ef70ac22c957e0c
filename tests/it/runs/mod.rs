//! Runs: every sealed batch becomes one run per index; the batch, batch list, runs list, run,
//! payload, cancel and trigger.dev endpoints, in both modes.

pub mod crash;
mod nodes;
mod sdk;

use std::cell::RefCell;
use std::time::Duration;

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{
    Api, Database, KEY, Mode, OTHER_KEY, TestServer, apply, every_mode, into_parts, ndjson,
    poll_until,
};

/// Longest a batch may take to be materialised in these tests (its queue items are deleted
/// `QUEUE_DELETE_GRACE` after the seal).
const MATERIALISE_LIMIT: Duration = Duration::from_secs(90);

impl Api {
    pub async fn get_as(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(KEY, path).await
    }

    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }

    /// Every run of a batch, page by page (`limit` per page).
    pub async fn all_runs(&self, id: &str, query: &str, limit: u32) -> Vec<Value> {
        let mut runs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v3/batches/{id}/runs?limit={limit}{query}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            runs.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return runs,
            }
        }
    }
}

/// Waits until every run of the batch is written; returns the batch.
pub async fn wait_materialised(api: &Api, id: &str) -> Value {
    let batch = RefCell::new(Value::Null);
    poll_until("the batch is materialised", MATERIALISE_LIMIT, || async {
        let (status, body) = api.batch(id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let done = body["materialisedCount"] == body["runCount"];
        *batch.borrow_mut() = body;
        done
    })
    .await;
    batch.into_inner()
}

/// Waits until the batch's queue items are deleted (the end of materialising).
async fn wait_queue_emptied(server: &TestServer, id: &str) {
    poll_until("the queue items are deleted", MATERIALISE_LIMIT, || async {
        server.queue.progress(id).await.unwrap().enqueued == 0
    })
    .await;
}

/// A sealed batch of `lines`, materialised.
async fn materialised_batch(server: &TestServer, run_count: u32, lines: Vec<u8>) -> String {
    let id = server.new_batch(run_count).await;
    let (status, body) = server.stream(&id, lines).await;
    assert_eq!(body["sealed"], true, "{status}: {body}");
    wait_materialised(server, &id).await;
    id
}

/// A run is written only behind its chunk's checkpoint, so the chunk insert expects none to be
/// there. One planted past the checkpoint (as a bug would leave it) makes the chunk fail with a
/// unique violation; the chunk is written again keeping it, and the batch still gets every run
/// once instead of retrying the chunk forever.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn a_run_already_there_past_the_checkpoint_is_kept_and_the_rest_are_written(
    #[case] mode: Mode,
) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(10).await;
    let database = Database::of(&server, mode).await;
    let planted = database
        .execute(
            "INSERT INTO runs (batch_id, idx, tenant, task, payload_type, status, attempt, \
             max_attempts, created_at, updated_at) \
             VALUES ($1, 3, 'acme', 'planted', 'application/json', 'PENDING', 1, 3, $2, $2)",
            &id,
            1,
        )
        .await;
    assert_eq!(planted, 1);
    let (_, body) = server.stream(&id, ndjson(0..10)).await;
    assert_eq!(body["sealed"], true, "{body}");
    let batch = wait_materialised(&server, &id).await;
    assert_eq!(batch["status"], "PROCESSING", "{batch}");
    assert_eq!(batch["counts"]["pending"], 10, "{batch}");
    let runs = server.all_runs(&id, "", 100).await;
    let indexes: Vec<u64> = runs
        .iter()
        .map(|run| run["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..10).collect::<Vec<u64>>());
    let tasks: Vec<&str> = runs
        .iter()
        .map(|run| run["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks[3], "planted", "the run already there is kept");
    assert!(
        tasks
            .iter()
            .enumerate()
            .all(|(i, task)| i == 3 || *task != "planted"),
        "{tasks:?}"
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn a_sealed_batch_becomes_one_run_per_index_and_failed_items_failed_runs(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let lines = [
        r#"{"index":0,"task":"email","payload":{"to":"a"},"options":{"maxAttempts":5,"__x":1}}"#,
        r#"{"index":1,"task":"email"}"#,
        "not json",
        r#"{"index":3,"payload":1}"#,
        r#"{"index":4,"task":"sms","payload":"hi","options":{"payloadType":"text/plain"}}"#,
    ]
    .join("\n");
    let id = server.new_batch(5).await;
    let (_, body) = server.stream(&id, lines).await;
    assert_eq!(body["sealed"], true, "{body}");
    let batch = wait_materialised(&server, &id).await;
    assert_eq!(batch["status"], "PROCESSING", "{batch}");
    assert_eq!(batch["materialisedCount"], 5);
    assert_eq!(batch["enqueuedCount"], 5);
    assert_eq!(
        batch["counts"],
        json!({ "pending": 3, "running": 0, "claimed": 0, "completed": 0, "failed": 2, "canceled": 0 })
    );
    // Queue items go once every run is written; the batch reads the same after.
    wait_queue_emptied(&server, &id).await;
    assert_eq!(server.queue.item(&id, 0).await.unwrap(), None);
    assert_eq!(server.batch(&id).await.1["enqueuedCount"], 5);

    let runs = server.all_runs(&id, "", 2).await;
    let indexes: Vec<u64> = runs
        .iter()
        .map(|run| run["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
    assert!(
        runs.iter().all(|run| run.get("payload").is_none()),
        "{runs:?}"
    );

    let first = &runs[0];
    assert_eq!(first["status"], "PENDING");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["maxAttempts"], 5);
    assert_eq!(first["batchId"], id.as_str());
    let run_id = first["id"].as_str().unwrap();
    assert!(run_id.starts_with("run_"), "{run_id}");
    let (status, run) = server.get(&format!("/api/v3/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["task"], "email");
    assert_eq!(run["payload"], json!({ "to": "a" }));
    assert_eq!(run["payloadType"], "application/json");
    assert_eq!(run["options"], json!({ "maxAttempts": 5 }));
    assert!(run["createdAt"].as_str().unwrap().ends_with('Z'));
    let payload = server
        .client
        .get(server.url(&format!("/api/v3/runs/{run_id}/payload")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(payload.status(), StatusCode::OK);
    assert_eq!(payload.headers()["content-type"], "application/json");
    assert_eq!(payload.text().await.unwrap(), r#"{"to":"a"}"#);

    // No payload: read as absent, and the payload route says so.
    let (_, second) = server
        .get(&format!("/api/v3/runs/{}", runs[1]["id"].as_str().unwrap()))
        .await;
    assert!(second.get("payload").is_none(), "{second}");
    assert_eq!(second["maxAttempts"], 3);
    let (status, body) = server
        .get(&format!(
            "/api/v3/runs/{}/payload",
            runs[1]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("PAYLOAD_NOT_FOUND"))
    );

    for (run, code, line) in [(&runs[2], "INVALID_JSON", 3), (&runs[3], "INVALID_ITEM", 4)] {
        assert_eq!(run["status"], "FAILED", "{run}");
        assert_eq!(run["attempt"], 0);
        assert_eq!(run["error"]["code"], code);
        assert_eq!(run["error"]["line"], line);
        assert!(!run["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(runs[4]["payloadType"], "text/plain");

    let (status, failed) = server
        .get(&format!("/api/v3/batches/{id}/runs?status=FAILED"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let failed: Vec<u64> = failed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["index"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, vec![2, 3]);
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn run_reads_are_the_tenants_own_and_bad_queries_are_400(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = materialised_batch(&server, 3, ndjson(0..3)).await;
    let (_, page) = server.get(&format!("/api/v3/batches/{id}/runs")).await;
    let run_id = page["data"][0]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v3/runs/{run_id}"),
        format!("/api/v3/runs/{run_id}/payload"),
        format!("/api/v3/batches/{id}/runs"),
        format!("/api/v2/batches/{id}"),
        format!("/api/v1/batches/{id}"),
    ] {
        let (status, body) = server.get_as(OTHER_KEY, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    for unknown in [
        "run_nope",
        "run_00000000000000000000000000000000000000ff",
        "batch_x",
        "run_%00",
    ] {
        let (status, body) = server.get(&format!("/api/v3/runs/{unknown}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
        assert_eq!(body["error"]["code"], "RUN_NOT_FOUND");
    }
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "status=RUNNING",
        "cursor=abc",
    ] {
        let (status, body) = server
            .get(&format!("/api/v3/batches/{id}/runs?{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    }
    let (status, _) = server.get("/api/v3/batches/batch_unknown/runs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server
        .get(&format!("/api/v3/batches/{id}/runs?limit=1&cursor=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["index"], 2);
    assert!(body.get("nextCursor").is_none(), "{body}");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn an_offloaded_payload_is_read_from_object_storage(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.offload_threshold_bytes = 64).await;
    let big = "x".repeat(200);
    let lines = format!(
        "{{\"index\":0,\"task\":\"t\",\"payload\":{{\"big\":\"{big}\"}}}}\n{{\"index\":1,\"task\":\"t\",\"payload\":1}}\n"
    );
    let id = materialised_batch(&server, 2, lines.into_bytes()).await;
    let (_, page) = server.get(&format!("/api/v3/batches/{id}/runs")).await;
    let run = &page["data"][0];
    assert_eq!(run["payloadType"], "application/store");
    let url = run["payloadUrl"].as_str().unwrap();
    let (_, read) = server
        .get(&format!("/api/v3/runs/{}", run["id"].as_str().unwrap()))
        .await;
    assert!(read.get("payload").is_none(), "{read}");
    assert_eq!(read["payloadUrl"], url);
    let (status, payload) = server.get(url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(payload, json!({ "big": big }));
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn a_batch_whose_items_all_failed_is_partial_failed_once_written(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = materialised_batch(&server, 2, b"nope\n{\"index\":1}\n".to_vec()).await;
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["status"], "PARTIAL_FAILED", "{batch}");
    assert!(batch["completedAt"].is_string(), "{batch}");
    assert_eq!(batch["counts"]["failed"], 2);
    // Final: it cannot be canceled.
    let (status, body) = server
        .post_empty(&format!("/api/v3/batches/{id}/cancel"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "BATCH_FINAL");
    let (_, v2) = server.get(&format!("/api/v2/batches/{id}")).await;
    assert_eq!(v2["status"], "PARTIAL_FAILED");
    assert!(v2["processing"]["completedAt"].is_string(), "{v2}");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn cancel_cancels_pending_runs_and_stops_an_unsealed_batch(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = materialised_batch(&server, 3, [ndjson(0..2), b"bad\n".to_vec()].concat()).await;
    let (status, batch) = server
        .post_empty(&format!("/api/v3/batches/{id}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["status"], "CANCELED");
    assert!(batch["completedAt"].is_string());
    assert_eq!(
        batch["counts"],
        json!({ "pending": 0, "running": 0, "claimed": 0, "completed": 0, "failed": 1, "canceled": 2 })
    );
    let runs = server.all_runs(&id, "", 100).await;
    let statuses: Vec<&str> = runs
        .iter()
        .map(|run| run["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["CANCELED", "CANCELED", "FAILED"]);
    // Again: nothing changes.
    let (status, again) = server
        .post_empty(&format!("/api/v3/batches/{id}/cancel"))
        .await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("CANCELED"))
    );
    // trigger.dev's SDK knows no CANCELED.
    let (_, v2) = server.get(&format!("/api/v2/batches/{id}")).await;
    assert_eq!(v2["status"], "ABORTED");

    // An unsealed batch: canceled, it takes no more items and never gets runs.
    let open = server.new_batch(2).await;
    server.stream(&open, ndjson([0])).await;
    let (status, batch) = server
        .post_empty(&format!("/api/v3/batches/{open}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(
        (
            batch["sealed"].as_bool(),
            batch["materialisedCount"].as_u64()
        ),
        (Some(false), Some(0))
    );
    let (status, body) = server.stream(&open, ndjson([1])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "BATCH_NOT_PENDING");

    let (status, body) = server
        .post_empty("/api/v3/batches/batch_unknown/cancel")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("BATCH_NOT_FOUND"))
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn batches_are_listed_newest_first_page_by_page(#[case] mode: Mode) {
    // A tenant of this test's own, so other tests' batches do not show.
    let key = format!("key-{}", rand::random::<u64>());
    let tenant = format!("lister-{}", rand::random::<u64>());
    let server = TestServer::start_with(mode, |config| {
        config.api_keys = Some(format!("acme:{KEY},{tenant}:{key}"));
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, body) = server.create_as(&key, json!({ "runCount": 1 })).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(body["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    ids.reverse();
    let mut listed = Vec::new();
    let mut path = "/api/v3/batches?limit=2".to_owned();
    loop {
        let (status, page) = server.get_as(&key, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for batch in page["data"].as_array().unwrap() {
            assert_eq!(batch["status"], "PENDING");
            assert_eq!(batch["materialisedCount"], 0);
            listed.push(batch["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/v3/batches?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(listed, ids);
    let (_, pending) = server
        .get_as(&key, "/api/v3/batches?status=PENDING&limit=1000")
        .await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 5);
    let (_, processing) = server
        .get_as(&key, "/api/v3/batches?status=PROCESSING")
        .await;
    assert_eq!(processing["data"], json!([]));
    for query in ["status=NOPE", "limit=0", "cursor=zzz"] {
        let (status, body) = server
            .get_as(&key, &format!("/api/v3/batches?{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn trigger_dev_batch_reads_have_the_v1_and_v2_shapes(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let (_, created) = server
        .create(json!({ "runCount": 3, "idempotencyKey": format!("k-{}", rand::random::<u64>()) }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, before) = server.get(&format!("/api/v2/batches/{id}")).await;
    assert_eq!(before["status"], "PENDING");
    assert_eq!(before["runs"], json!([]));
    assert_eq!(before["processing"], json!({ "errors": [] }));
    server
        .stream(
            &id,
            [ndjson([0, 2]), b"{\"index\":1,\"task\":7}\n".to_vec()].concat(),
        )
        .await;
    wait_materialised(&server, &id).await;

    let (status, v2) = server.get(&format!("/api/v2/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    let keys: Vec<&str> = v2.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "createdAt",
            "id",
            "idempotencyKey",
            "processing",
            "runCount",
            "runs",
            "status",
            "updatedAt"
        ]
    );
    assert_eq!(v2["status"], "PROCESSING");
    assert_eq!(v2["runCount"], 3);
    assert_eq!(v2["idempotencyKey"], created["idempotencyKey"]);
    assert_eq!(v2["runs"].as_array().unwrap().len(), 3);
    let errors = &v2["processing"]["errors"];
    assert_eq!(errors.as_array().unwrap().len(), 1, "{v2}");
    assert_eq!(errors[0]["index"], 1);
    assert_eq!(errors[0]["errorCode"], "INVALID_ITEM");
    assert_eq!(errors[0]["taskIdentifier"], "");
    assert!(errors[0]["error"].is_string());
    let (_, run) = server
        .get(&format!("/api/v3/runs/{}", v2["runs"][2].as_str().unwrap()))
        .await;
    assert_eq!(run["index"], 2);

    let (status, v1) = server.get(&format!("/api/v1/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["status"], "PROCESSING");
    assert_eq!(v1["runs"], v2["runs"]);
    assert_eq!(v1["successfulRunCount"], 0);
    assert_eq!(v1["failedRunCount"], 1);
    assert_eq!(v1["errors"], v2["processing"]["errors"]);
    for version in ["v1", "v2"] {
        let (status, body) = server
            .get(&format!("/api/{version}/batches/batch_unknown"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
}

/// A line whose payload is a string of `length` characters, two bytes each past the first.
fn sized_line(index: u32, length: usize) -> String {
    format!(
        "{{\"index\":{index},\"task\":\"t\",\"payload\":\"a{}\"}}\n",
        "é".repeat(length.saturating_sub(1))
    )
}

/// The materialiser reads a chunk with one range read bounded in bytes: the read ends before
/// the item that would pass the bound, the first item always comes, and an index holding nothing
/// comes as `None`. The same in SQL, Redis and a Redis Cluster.
#[apply(every_mode)]
#[tokio::test]
async fn a_range_read_stops_before_the_item_that_would_pass_its_byte_bound(#[case] mode: Mode) {
    range_reads_stop_at_their_byte_bound(TestServer::start(mode).await).await;
}

/// Postgres without Redis keeps the items itself, and bounds the read in the database.
#[tokio::test]
async fn a_range_read_from_postgres_stops_before_the_item_that_would_pass_its_byte_bound() {
    let server = TestServer::start_with(Mode::Production, |config| config.redis_url = None).await;
    range_reads_stop_at_their_byte_bound(server).await;
}

async fn range_reads_stop_at_their_byte_bound(server: TestServer) {
    // 40 items (Redis reads them in several groups), sizes going up and down along the range.
    let id = server.new_batch(48).await;
    let lines: String = (0..40)
        .map(|index| sized_line(index, 100 * (index as usize % 4 + 1)))
        .collect();
    let (status, body) = server.stream(&id, lines.into_bytes()).await;
    assert_eq!(body["itemsAccepted"], 40, "{status}: {body}");
    let mut stored = Vec::new();
    for index in 0..40 {
        stored.push(
            server
                .queue
                .item(&id, index)
                .await
                .unwrap()
                .expect("stored"),
        );
    }
    let size = |range: std::ops::Range<usize>| -> u64 {
        stored[range].iter().map(|item| item.len() as u64).sum()
    };
    let read = |first: u32, last: u32, max_bytes: u64| {
        let (queue, id) = (server.queue.clone(), id.clone());
        async move {
            queue
                .items_in_range(&id, first, last, max_bytes)
                .await
                .unwrap()
        }
    };

    let all = read(0, 39, size(0..40)).await;
    assert_eq!(all.len(), 40);
    for (index, item) in all.iter().enumerate() {
        assert_eq!(item.as_ref(), Some(&stored[index]), "index {index}");
    }
    assert_eq!(read(0, 39, size(0..5)).await.len(), 5);
    assert_eq!(read(0, 39, size(0..5) - 1).await.len(), 4);
    assert_eq!(read(2, 39, size(2..33)).await.len(), 31);
    assert_eq!(read(2, 39, size(2..33) + 1).await.len(), 31);
    assert_eq!(read(0, 30, size(0..40)).await.len(), 31);
    // The first item comes whatever its size.
    assert_eq!(read(3, 39, 1).await, vec![Some(stored[3].clone())]);
    // Indexes past the stored ones hold nothing, and cost nothing.
    let tail = read(38, 47, size(38..40)).await;
    assert_eq!(tail.len(), 10);
    assert_eq!(
        tail[..2],
        [Some(stored[38].clone()), Some(stored[39].clone())]
    );
    assert!(tail[2..].iter().all(Option::is_none), "{tail:?}");
    assert_eq!(read(38, 47, size(38..39)).await.len(), 1);
    assert_eq!(read(40, 47, 1).await, vec![None; 8]);
}

/// Chunks cut by their bytes rather than their item count still write every run once, with its
/// payload, in both modes; failed items among them stay failed runs.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn runs_are_written_in_chunks_bounded_by_bytes(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.materialise_chunk_items = 50;
        config.materialise_chunk_bytes = 2048;
    })
    .await;
    let length = |index: u32| (index as usize * 37) % 700 + 1;
    let lines: String = (0..60)
        .map(|index| match index % 13 {
            5 => format!("{{\"index\":{index},\"payload\":1}}\n"),
            _ => sized_line(index, length(index)),
        })
        .collect();
    let id = materialised_batch(&server, 60, lines.into_bytes()).await;
    let runs = server.all_runs(&id, "", 1000).await;
    assert_eq!(runs.len(), 60);
    for (index, listed) in runs.iter().enumerate() {
        let index = index as u32;
        assert_eq!(listed["index"], index);
        let run_id = listed["id"].as_str().unwrap();
        let (status, run) = server.get(&format!("/api/v3/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::OK, "{run}");
        if index % 13 == 5 {
            assert_eq!(run["status"], "FAILED", "{run}");
        } else {
            assert_eq!(run["status"], "PENDING", "{run}");
            let payload = format!("a{}", "é".repeat(length(index) - 1));
            assert_eq!(run["payload"], payload.as_str(), "index {index}");
        }
    }
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn runs_are_written_in_chunks_serial_or_pipelined(
    #[case] mode: Mode,
    #[values(1, 3)] depth: u32,
) {
    let server = TestServer::start_with(mode, |config| {
        config.materialise_chunk_items = 7;
        config.materialise_pipeline_depth = depth;
    })
    .await;
    let id = materialised_batch(&server, 100, ndjson((0..100).rev())).await;
    wait_queue_emptied(&server, &id).await;
    let runs = server.all_runs(&id, "", 1000).await;
    assert_eq!(runs.len(), 100);
    for (index, run) in runs.iter().enumerate() {
        assert_eq!(run["index"], index as u64);
        let item = server.stored_item(&id, index as u32).await.unwrap();
        assert_eq!(item["payload"]["n"], index as u64);
    }
}
