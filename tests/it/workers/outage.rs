//! Postgres stopped (as in a crash) while workers report completions: calls answer `503` with
//! `Retry-After`, the server's memory stays bounded, and after the restart every completion that
//! was acknowledged is there; the workers' retries complete the rest.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{batch_of, report};
use crate::support::{
    KEY, PostgresStop, PrivatePostgres, ServerProcess, into_parts, poll_until, required_env,
};

const RUNS: u32 = 3_000;
/// Runs per complete call.
const PER_CALL: usize = 10;
/// Pause of a worker after each acknowledged call, so the outage meets calls still to make.
const PACE: Duration = Duration::from_millis(50);
const WORKERS: usize = 8;

/// What the completing workers saw.
#[derive(Default)]
struct Seen {
    acknowledged: HashSet<String>,
    unavailable: u64,
}

#[tokio::test]
async fn postgres_crashing_under_completions_loses_no_acknowledged_status() {
    let mut postgres = PrivatePostgres::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[
        ("DATABASE_URL", postgres.url()),
        ("REDIS_URL", required_env("SLUICE_TEST_REDIS_URL")),
        ("SLUICE_API_KEYS", format!("acme:{KEY}")),
        ("SLUICE_DATA_DIR", data_dir.path().display().to_string()),
    ])
    .await;
    let id = batch_of(&server, "t", RUNS, json!({})).await;
    let mut claimed = Vec::new();
    while claimed.len() < RUNS as usize {
        let runs = server
            .claim(json!({ "limit": 1000, "leaseMs": 600000 }))
            .await;
        assert!(!runs.is_empty());
        claimed.extend(runs);
    }

    let queue = Arc::new(Mutex::new(
        claimed
            .chunks(PER_CALL)
            .map(<[Value]>::to_vec)
            .collect::<Vec<_>>(),
    ));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, seen) = (queue.clone(), seen.clone());
            let api = crate::support::Api::new(server.base.clone());
            tokio::spawn(async move {
                loop {
                    let Some(group) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let reports: Vec<Value> =
                        group.iter().map(|run| report(run, "COMPLETED")).collect();
                    let response = api
                        .client
                        .post(api.url("/api/v3/runs/complete"))
                        .bearer_auth(KEY)
                        .json(&json!({ "runs": reports }))
                        .send()
                        .await;
                    let Ok(response) = response else {
                        queue.lock().unwrap().insert(0, group);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let retry_after = response.headers().get("retry-after").cloned();
                    let (status, body) = into_parts(response).await;
                    match status {
                        StatusCode::OK => {
                            {
                                let mut seen = seen.lock().unwrap();
                                for result in body["results"].as_array().unwrap() {
                                    assert_eq!(result["ok"], true, "{result}");
                                    seen.acknowledged
                                        .insert(result["id"].as_str().unwrap().to_owned());
                                }
                            }
                            tokio::time::sleep(PACE).await;
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert!(retry_after.is_some(), "503 without Retry-After: {body}");
                            assert_eq!(body["error"]["code"], "DEPENDENCY_UNAVAILABLE", "{body}");
                            seen.lock().unwrap().unavailable += 1;
                            queue.lock().unwrap().insert(0, group);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("complete answered {other}: {body}"),
                    }
                }
            })
        })
        .collect();

    // A third of the runs acknowledged, then Postgres crashes.
    poll_until(
        "a third of the runs acknowledged",
        Duration::from_secs(60),
        || async { seen.lock().unwrap().acknowledged.len() >= RUNS as usize / 3 },
    )
    .await;
    let before = server.memory("VmRSS");
    postgres.stop(PostgresStop::Immediate).await;
    let acknowledged_before_crash = seen.lock().unwrap().acknowledged.len();
    let outage = Instant::now();
    let mut peak = before;
    while outage.elapsed() < Duration::from_secs(6) {
        peak = peak.max(server.memory("VmRSS"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = seen.lock().unwrap().unavailable;
    assert!(during > 0, "no 503 while Postgres was down");
    assert!(
        peak < before + (64 << 20),
        "the server grew from {} to {} MiB during the outage",
        before >> 20,
        peak >> 20
    );
    postgres.restart().await;
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(120), worker)
            .await
            .expect("the workers finish once Postgres is back")
            .unwrap();
    }

    // Every acknowledged completion survived the crash; the batch completed.
    let acknowledged = seen.lock().unwrap().acknowledged.clone();
    assert_eq!(acknowledged.len(), RUNS as usize);
    let mut completed = 0;
    for run in &claimed {
        let (status, body) = server
            .get(&format!("/api/v3/runs/{}", run["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "COMPLETED", "{body}");
        completed += 1;
    }
    assert_eq!(completed, RUNS);
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["status"], "COMPLETED", "{batch}");
    println!(
        "{acknowledged_before_crash} acknowledged before the crash, {during} answers 503 during it; RSS {} → peak {} MiB",
        before >> 20,
        peak >> 20
    );
}
