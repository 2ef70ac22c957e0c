//! The dashboard (`GET /`), in headless Chromium (the Debian package, driven by `playwright-core`
//! from npm under `tests/dashboard`; `scripts/test` installs both): it lists a batch, its
//! "completed" bar moves while a worker completes runs, and a failed run's error is shown.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{KEY, Mode, TestServer, apply, both_modes};
use crate::workers::report;

#[apply(both_modes)]
#[tokio::test]
async fn the_dashboard_page_is_served_without_a_key(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let response = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("/api/v3/batches"), "the page reads the API");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );
}

/// Completes the batch's runs in steps, one failed, while the page watches.
async fn complete_slowly(server: &TestServer, task: &str, runs: usize) {
    let claimed = server
        .claim(json!({ "tasks": [task], "limit": runs, "waitMs": 5000 }))
        .await;
    assert_eq!(claimed.len(), runs, "{claimed:?}");
    for step in claimed.chunks(runs / 5) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let reports: Vec<Value> = step
            .iter()
            .map(|run| {
                if run["index"] == 7 {
                    let mut failed = report(run, "FAILED");
                    failed["error"] = json!({ "code": "BOOM", "message": "the disk is full" });
                    failed
                } else {
                    report(run, "COMPLETED")
                }
            })
            .collect();
        server.complete(json!(reports)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_batch_progress_live_and_its_failed_runs() {
    const RUNS: usize = 20;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run the tests with `scripts/test`"
    );
    let server = TestServer::start(Mode::Embedded).await;
    let task = format!("dashboard-{:016x}", rand::random::<u64>());
    let id = server.new_batch(RUNS as u32).await;
    let body: Vec<u8> = (0..RUNS)
        .flat_map(|index| format!("{{\"index\":{index},\"task\":\"{task}\"}}\n").into_bytes())
        .collect();
    let (_, sealed) = server.stream(&id, body).await;
    assert_eq!(sealed["sealed"], true, "{sealed}");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut browser = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .arg(&server.base)
        .arg(KEY)
        .arg(&id)
        .arg(&screenshot)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the page lists the batch within a minute")
        .unwrap();
    if ready.as_deref() != Some("ready") {
        panic!("the page did not list the batch: {ready:?}");
    }
    complete_slowly(&server, &task, RUNS).await;
    let seen = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the page sees the batch end")
        .unwrap()
        .expect("the script prints what it saw");
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert!(seen.get("error").is_none(), "{seen}");
    assert_eq!(seen["listed"], true, "{seen}");
    assert_eq!(seen["keyKept"], true, "{seen}");
    let widths: Vec<f64> = seen["widths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|width| width.as_f64().unwrap())
        .collect();
    // The bar moved in steps while runs completed, never back.
    assert!(widths.len() >= 3, "{seen}");
    assert!(widths.windows(2).all(|pair| pair[0] < pair[1]), "{seen}");
    assert_eq!(*widths.last().unwrap(), 95.0, "19 of 20 completed: {seen}");
    assert_eq!(
        seen["statuses"].as_array().unwrap().last().unwrap(),
        "PARTIAL_FAILED"
    );
    assert_eq!(seen["failedError"], "BOOM: the disk is full", "{seen}");
    assert_eq!(seen["failedRows"], 1, "{seen}");
    assert_eq!(seen["consoleErrors"], json!([]), "{seen}");
    assert!(screenshot.is_file());
    browser.wait().await.unwrap();
}
