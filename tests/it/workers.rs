//! Workers: claiming with a lease, heartbeats, completions fenced by lease, retries, the lease
//! sweep and batches turning final, in both modes.
//!
//! Claims take any of the tenant's runs, so every test here runs as a tenant of its own: tests
//! running at once on the same database never claim each other's runs.

mod cli;
mod outage;

use std::time::Duration;

use reqwest::StatusCode;
use rstest_reuse::apply;
use serde_json::{Value, json};
use sluice::config::Config;

use crate::runs::wait_materialised;
use crate::support::{Api, KEY, Mode, OTHER_KEY, TestServer, both_modes, poll_until};

/// A server whose `KEY` belongs to a tenant no other test uses.
pub async fn worker_server(mode: Mode, adjust: impl FnOnce(&mut Config)) -> TestServer {
    worker_server_of(&unique_tenant(), mode, adjust).await
}

pub fn unique_tenant() -> String {
    format!("workers-{:016x}", rand::random::<u64>())
}

/// A server whose `KEY` belongs to `tenant`.
pub async fn worker_server_of(
    tenant: &str,
    mode: Mode,
    adjust: impl FnOnce(&mut Config),
) -> TestServer {
    TestServer::start_with(mode, |config| {
        config.api_keys = Some(format!("{tenant}:{KEY},globex:{OTHER_KEY}"));
        config.lease_sweep_interval_ms = 100;
        adjust(config);
    })
    .await
}

impl Api {
    pub async fn claim(&self, body: Value) -> Vec<Value> {
        let (status, answer) = self.post_json_as(KEY, "/api/v3/runs/claim", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["runs"].as_array().unwrap().clone()
    }

    pub async fn complete(&self, runs: Value) -> Vec<Value> {
        let (status, answer) = self
            .post_json_as(KEY, "/api/v3/runs/complete", json!({ "runs": runs }))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["results"].as_array().unwrap().clone()
    }
}

/// A sealed, materialised batch of `count` items of `task`, the item at each index `i` with
/// payload `{"i": i}` and the given options.
pub async fn batch_of(server: &Api, task: &str, count: u32, options: Value) -> String {
    let lines: Vec<String> = (0..count)
        .map(|index| {
            json!({"index": index, "task": task, "payload": {"i": index}, "options": options})
                .to_string()
        })
        .collect();
    let id = server.new_batch(count).await;
    let (_, body) = server.stream(&id, lines.join("\n")).await;
    assert_eq!(body["sealed"], true, "{body}");
    wait_materialised(server, &id).await;
    id
}

pub fn report(run: &Value, status: &str) -> Value {
    json!({ "id": run["id"], "leaseId": run["leaseId"], "status": status })
}

async fn counts(api: &Api, id: &str) -> Value {
    let (status, batch) = api.batch(id).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    batch["counts"].clone()
}

async fn wait_batch_status(api: &Api, id: &str, want: &str) -> Value {
    let batch = std::cell::RefCell::new(Value::Null);
    poll_until(
        &format!("the batch is {want}"),
        Duration::from_secs(20),
        || async {
            let (_, body) = api.batch(id).await;
            let done = body["status"] == want;
            *batch.borrow_mut() = body;
            done
        },
    )
    .await;
    batch.into_inner()
}

#[apply(both_modes)]
#[tokio::test]
async fn claimed_runs_complete_and_the_batch_completes_with_its_last_run(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let id = batch_of(&server, "email", 5, json!({})).await;

    let runs = server
        .claim(json!({ "tasks": ["email"], "limit": 3, "leaseMs": 60000 }))
        .await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    let indexes: Vec<u64> = runs
        .iter()
        .map(|run| run["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 1, 2], "oldest index first");
    let first = &runs[0];
    assert_eq!(first["batchId"], id);
    assert_eq!(first["task"], "email");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["maxAttempts"], 3);
    assert_eq!(first["payload"], json!({"i": 0}));
    assert!(first["leaseId"].as_str().unwrap().starts_with("lease_"));
    assert!(first["leaseExpiresAt"].is_string());
    assert_eq!(
        counts(&server, &id).await,
        json!({"pending": 2, "claimed": 3, "running": 3, "completed": 0, "failed": 0, "canceled": 0})
    );

    // Another task sees nothing; neither does another tenant.
    assert!(
        server
            .claim(json!({ "tasks": ["sms"], "limit": 10 }))
            .await
            .is_empty()
    );
    let (status, other) = server
        .post_json_as(OTHER_KEY, "/api/v3/runs/claim", json!({ "limit": 10 }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        other["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|run| run["batchId"] != id)
    );

    let mut reports: Vec<Value> = runs.iter().map(|run| report(run, "COMPLETED")).collect();
    reports[1]["output"] = json!({"sent": true});
    let results = server.complete(Value::Array(reports)).await;
    assert!(
        results
            .iter()
            .all(|result| result["ok"] == true && result["status"] == "COMPLETED"),
        "{results:?}"
    );
    let (_, run) = server
        .get(&format!("/api/v3/runs/{}", runs[1]["id"].as_str().unwrap()))
        .await;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["output"], json!({"sent": true}));
    assert!(
        run["completedAt"].is_string() && run["claimedAt"].is_string(),
        "{run}"
    );

    let rest = server.claim(json!({ "limit": 10 })).await;
    assert_eq!(rest.len(), 2);
    let (_, batch) = server.batch(&id).await;
    assert_eq!(
        batch["status"], "PROCESSING",
        "not final while runs are claimed"
    );
    let rest: Vec<Value> = rest.iter().map(|run| report(run, "COMPLETED")).collect();
    server.complete(Value::Array(rest)).await;
    let batch = wait_batch_status(&server, &id, "COMPLETED").await;
    assert_eq!(
        batch["counts"],
        json!({"pending": 0, "claimed": 0, "running": 0, "completed": 5, "failed": 0, "canceled": 0})
    );
    assert!(batch["completedAt"].is_string(), "{batch}");
}

#[apply(both_modes)]
#[tokio::test]
async fn retries_go_back_to_pending_until_max_attempts_then_fail(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let id = batch_of(&server, "flaky", 2, json!({"maxAttempts": 2})).await;
    let runs = server.claim(json!({ "limit": 2 })).await;
    let mut reports = vec![report(&runs[0], "RETRY"), report(&runs[1], "COMPLETED")];
    reports[0]["error"] = json!({"code": "SMTP_DOWN", "message": "try later"});
    reports[0]["retryDelayMs"] = json!(300);
    let results = server.complete(Value::Array(reports)).await;
    assert_eq!(results[0]["status"], "PENDING", "{results:?}");
    assert_eq!(
        counts(&server, &id).await,
        json!({"pending": 1, "claimed": 0, "running": 0, "completed": 1, "failed": 0, "canceled": 0})
    );

    // Not before its delay.
    assert!(server.claim(json!({ "limit": 5 })).await.is_empty());
    let again = server.claim(json!({ "limit": 5, "waitMs": 3000 })).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["index"], 0);
    assert_eq!(again[0]["attempt"], 2);
    assert_ne!(again[0]["leaseId"], runs[0]["leaseId"]);
    assert_eq!(
        again[0]["id"], runs[0]["id"],
        "a run keeps its id across retries"
    );

    let mut last = report(&again[0], "RETRY");
    last["error"] = json!({"message": "still down"});
    let results = server.complete(json!([last])).await;
    assert_eq!(results[0]["status"], "FAILED", "attempts used: {results:?}");
    let batch = wait_batch_status(&server, &id, "PARTIAL_FAILED").await;
    assert_eq!(batch["counts"]["failed"], 1);
    assert_eq!(batch["counts"]["completed"], 1);
    let (_, run) = server
        .get(&format!("/api/v3/runs/{}", runs[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(run["attempt"], 2);
    assert_eq!(run["error"]["code"], "TASK_FAILED");
    assert_eq!(run["error"]["message"], "still down");
}

#[apply(both_modes)]
#[tokio::test]
async fn a_late_report_after_the_lease_expired_and_the_run_was_claimed_again_is_lease_lost(
    mode: Mode,
) {
    let server = worker_server(mode, |_| {}).await;
    let id = batch_of(&server, "slow", 1, json!({})).await;
    // The first worker takes the run and goes silent (as a killed worker does).
    let first = server.claim(json!({ "leaseMs": 1000 })).await;
    assert_eq!(first.len(), 1);
    // The sweep returns it; a second worker takes it with one more attempt.
    let second = server
        .claim(json!({ "leaseMs": 60000, "waitMs": 10000 }))
        .await;
    assert_eq!(second.len(), 1, "the expired run comes back");
    assert_eq!(second[0]["attempt"], 2);

    let mut late = report(&first[0], "COMPLETED");
    late["output"] = json!("from the first worker");
    let results = server.complete(json!([late])).await;
    assert_eq!(results[0]["ok"], false);
    assert_eq!(results[0]["error"]["code"], "LEASE_LOST");
    let (status, beat) = server
        .post_json_as(
            KEY,
            "/api/v3/runs/heartbeat",
            json!({ "runs": [{ "id": first[0]["id"], "leaseId": first[0]["leaseId"] }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(beat["results"][0]["error"]["code"], "LEASE_LOST");

    let mut good = report(&second[0], "COMPLETED");
    good["output"] = json!("from the second worker");
    let results = server.complete(json!([good.clone()])).await;
    assert_eq!(results[0]["ok"], true);
    // The same report again (its first answer lost) is answered the same, and changes nothing.
    let results = server.complete(json!([good])).await;
    assert_eq!(results[0]["ok"], true, "{results:?}");
    let (_, run) = server
        .get(&format!(
            "/api/v3/runs/{}",
            second[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(run["output"], "from the second worker");
    assert_eq!(run["status"], "COMPLETED");
    wait_batch_status(&server, &id, "COMPLETED").await;
}

#[apply(both_modes)]
#[tokio::test]
async fn heartbeats_keep_a_lease_and_exhausted_leases_fail_the_run(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let id = batch_of(&server, "long", 2, json!({"maxAttempts": 1})).await;
    let runs = server.claim(json!({ "limit": 2, "leaseMs": 1000 })).await;
    assert_eq!(runs.len(), 2);
    // Only the first run is kept alive.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, beat) = server
            .post_json_as(
                KEY,
                "/api/v3/runs/heartbeat",
                json!({ "runs": [{ "id": runs[0]["id"], "leaseId": runs[0]["leaseId"] }],
                        "leaseMs": 1000 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{beat}");
        assert_eq!(beat["results"][0]["ok"], true, "{beat}");
        assert!(beat["results"][0]["leaseExpiresAt"].is_string());
    }
    let (_, second) = server
        .get(&format!("/api/v3/runs/{}", runs[1]["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        second["status"], "FAILED",
        "its one attempt expired: {second}"
    );
    assert_eq!(second["error"]["code"], "LEASE_EXPIRED");
    assert_eq!(
        counts(&server, &id).await,
        json!({"pending": 0, "claimed": 1, "running": 1, "completed": 0, "failed": 1, "canceled": 0})
    );
    let (_, first) = server
        .get(&format!("/api/v3/runs/{}", runs[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(first["status"], "CLAIMED");
    let results = server
        .complete(json!([report(&runs[0], "COMPLETED")]))
        .await;
    assert_eq!(results[0]["ok"], true, "{results:?}");
    wait_batch_status(&server, &id, "PARTIAL_FAILED").await;
}

#[apply(both_modes)]
#[tokio::test]
async fn a_small_batch_is_claimed_beside_a_big_one_not_after_it(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let big = batch_of(&server, "t", 2000, json!({})).await;
    let small = batch_of(&server, "t", 10, json!({})).await;
    let runs = server.claim(json!({ "limit": 20 })).await;
    let from_small = runs.iter().filter(|run| run["batchId"] == small).count();
    let from_big = runs.iter().filter(|run| run["batchId"] == big).count();
    assert_eq!((from_small, from_big), (10, 10), "an even share each");
}

#[apply(both_modes)]
#[tokio::test]
async fn bad_worker_calls_are_refused_and_unknown_runs_reported(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    for (path, body, fragment) in [
        ("/api/v3/runs/claim", json!({"limit": 0}), "limit"),
        ("/api/v3/runs/claim", json!({"limit": 1001}), "limit"),
        ("/api/v3/runs/claim", json!({"leaseMs": 10}), "leaseMs"),
        ("/api/v3/runs/claim", json!({"waitMs": 30001}), "waitMs"),
        ("/api/v3/runs/claim", json!({"tasks": []}), "tasks"),
        ("/api/v3/runs/claim", json!({"limt": 3}), "limt"),
        ("/api/v3/runs/complete", json!({"runs": []}), "runs"),
        (
            "/api/v3/runs/complete",
            json!({"runs": [{"id": "run_x", "leaseId": "l", "status": "DONE"}]}),
            "status",
        ),
        (
            "/api/v3/runs/heartbeat",
            json!({"runs": [{"id": "x"}]}),
            "leaseId",
        ),
    ] {
        let (status, answer) = server.post_json_as(KEY, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "INVALID_REQUEST");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(fragment),
            "{answer}"
        );
    }
    let (status, _) = server
        .post_json_as("wrong-key", "/api/v3/runs/claim", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let id = batch_of(&server, "t", 1, json!({})).await;
    let runs = server.claim(json!({})).await;
    let results = server
        .complete(json!([
            {"id": "run_nope", "leaseId": "l", "status": "COMPLETED"},
            {"id": format!("run_{}ffffffff", &id["batch_".len()..]), "leaseId": "l", "status": "COMPLETED"},
            report(&runs[0], "COMPLETED"),
        ]))
        .await;
    assert_eq!(results[0]["error"]["code"], "RUN_NOT_FOUND");
    assert_eq!(results[1]["error"]["code"], "RUN_NOT_FOUND");
    assert_eq!(results[2]["ok"], true);
    // Another tenant cannot report this tenant's run.
    let (_, theirs) = server
        .post_json_as(
            OTHER_KEY,
            "/api/v3/runs/complete",
            json!({"runs": [report(&runs[0], "FAILED")]}),
        )
        .await;
    assert_eq!(theirs["results"][0]["error"]["code"], "RUN_NOT_FOUND");
}

#[apply(both_modes)]
#[tokio::test]
async fn a_waiting_claim_wakes_when_a_batch_is_materialised(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let waiting = {
        let api = Api::new(server.base.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let runs = api.claim(json!({ "limit": 5, "waitMs": 20000 })).await;
            (runs, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = batch_of(&server, "t", 3, json!({})).await;
    let (runs, waited) = waiting.await.unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|run| run["batchId"] == id));
    assert!(
        waited < Duration::from_secs(15),
        "woken, not timed out: {waited:?}"
    );
}

#[apply(both_modes)]
#[tokio::test]
async fn canceling_a_batch_cancels_runs_sent_back_for_a_retry(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let id = batch_of(&server, "t", 3, json!({})).await;
    let runs = server.claim(json!({ "limit": 2 })).await;
    let (status, _) = server
        .post_empty(&format!("/api/v3/batches/{id}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Claimed runs finish: one completes, one asks for a retry, which cannot happen any more.
    let results = server
        .complete(json!([
            report(&runs[0], "COMPLETED"),
            report(&runs[1], "RETRY")
        ]))
        .await;
    assert!(
        results.iter().all(|result| result["ok"] == true),
        "{results:?}"
    );
    assert_eq!(
        counts(&server, &id).await,
        json!({"pending": 0, "claimed": 0, "running": 0, "completed": 1, "failed": 0, "canceled": 2})
    );
    assert!(server.claim(json!({ "limit": 5 })).await.is_empty());
}

/// The last two runs of a batch completed at the same moment through two nodes: the batch turns
/// final (neither node's check may miss the other's run), again and again.
#[tokio::test]
async fn last_runs_completed_on_two_nodes_at_once_finish_the_batch() {
    let tenant = unique_tenant();
    let first = worker_server_of(&tenant, Mode::Production, |_| {}).await;
    let second = worker_server_of(&tenant, Mode::Production, |_| {}).await;
    for round in 0..15 {
        let id = batch_of(&first, "t", 2, json!({})).await;
        let runs = first.claim(json!({ "limit": 2 })).await;
        assert_eq!(runs.len(), 2, "round {round}");
        let (a, b) = tokio::join!(
            first.complete(json!([report(&runs[0], "COMPLETED")])),
            second.complete(json!([report(&runs[1], "FAILED")])),
        );
        assert_eq!(
            (a[0]["ok"].clone(), b[0]["ok"].clone()),
            (json!(true), json!(true))
        );
        let (_, batch) = first.batch(&id).await;
        assert_eq!(batch["status"], "PARTIAL_FAILED", "round {round}: {batch}");
    }
}

#[apply(both_modes)]
#[tokio::test]
async fn a_claim_waits_no_longer_than_the_server_allows(mode: Mode) {
    let server = worker_server(mode, |config| config.claim_wait_max_ms = 200).await;
    let started = std::time::Instant::now();
    let runs = server.claim(json!({ "waitMs": 20000 })).await;
    assert!(runs.is_empty());
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(200)..Duration::from_secs(5)).contains(&waited),
        "{waited:?}"
    );
}
