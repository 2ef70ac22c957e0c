//! Observability: Prometheus `/metrics` on its own listener, and JSON logs carrying the request id.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{KEY, Mode, TestServer, ndjson};

/// The value of one sample line (`name{labels} value`) of a Prometheus text page; 0 when absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(server: &TestServer) -> String {
    let address = server.metrics_addr.expect("metrics listener configured");
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_items_by_outcome_bytes_and_seals() {
    let server = TestServer::start_with(Mode::Embedded, |config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    // The recorder is process-wide and other tests run alongside: compare before and after.
    let before = scrape(&server).await;

    let id = server.new_batch(4).await;
    let mut body = ndjson(0..3);
    body.extend_from_slice(b"{\"index\":3,\"task\":\"t\",\"payload\":\n"); // not JSON: failed item
    body.extend_from_slice(b"{\"index\":9,\"task\":\"t\"}\n"); // out of range: rejected
    let (status, response) = server.stream(&id, body.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{response}");
    assert_eq!(response["sealed"], true);
    let (status, _) = server.stream(&id, ndjson(0..1)).await;
    assert_eq!(status, StatusCode::OK);

    let after = scrape(&server).await;
    let grew = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(
        grew(r#"sluice_items_total{outcome="accepted"}"#) >= 3.0,
        "{after}"
    );
    assert!(
        grew(r#"sluice_items_total{outcome="failed"}"#) >= 1.0,
        "{after}"
    );
    assert!(
        grew(r#"sluice_items_total{outcome="rejected"}"#) >= 1.0,
        "{after}"
    );
    assert!(
        grew(r#"sluice_item_errors_total{outcome="failed",code="INVALID_JSON"}"#) >= 1.0,
        "{after}"
    );
    assert!(
        grew(r#"sluice_item_errors_total{outcome="rejected",code="INDEX_OUT_OF_RANGE"}"#) >= 1.0,
        "{after}"
    );
    assert!(grew("sluice_batches_sealed_total") >= 1.0, "{after}");
    assert!(
        grew(r#"sluice_body_bytes_total{kind="wire"}"#) >= body.len() as f64,
        "{after}"
    );
    assert!(
        grew(
            r#"sluice_http_requests_total{route="/api/v3/batches/{id}/items",method="POST",status="422"}"#
        ) >= 1.0,
        "{after}"
    );
    assert!(
        grew(r#"sluice_http_requests_total{route="/api/v3/batches",method="POST",status="202"}"#)
            >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("sluice_http_request_duration_seconds_bucket"),
        "{after}"
    );
    assert!(after.contains("sluice_streams_in_flight"), "{after}");
}

#[tokio::test]
async fn json_logs_carry_the_request_id_of_each_request() {
    let data_dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env_clear()
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_DATA_DIR", data_dir.path())
        .env("SLUICE_API_KEYS", format!("acme:{KEY}"))
        .env("SLUICE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut answered = false;
    for _ in 0..200 {
        if let Ok(response) = client
            .get(format!("{base}/api/v3/batches/batch_unknown"))
            .bearer_auth(KEY)
            .header("x-request-id", "req-observability-1")
            .send()
            .await
        {
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            assert_eq!(response.headers()["x-request-id"], "req-observability-1");
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the server never answered");

    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let entry: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("every log line is JSON: {line}"));
            if entry["span"]["request_id"] == "req-observability-1" {
                return entry;
            }
        }
        panic!("the server's output ended without the request's log line");
    })
    .await
    .expect("a log line for the request");
    assert_eq!(found["span"]["path"], "/api/v3/batches/batch_unknown");
    assert!(found["fields"]["status"].is_number(), "{found}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let server = crate::support::ServerProcess::start(&[
        ("SLUICE_API_KEYS", format!("acme:{KEY}")),
        (
            "SLUICE_DATA_DIR",
            tempfile::tempdir().unwrap().keep().display().to_string(),
        ),
    ])
    .await;
    let response = server
        .client
        .get(server.url("/api/v3/batches/batch_unknown"))
        .bearer_auth(KEY)
        .header("x-request-id", "req-plain-text")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let lines = server
        .log_until(|line| line.contains("req-plain-text"))
        .await;
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
    }
    assert!(lines.iter().any(|line| line.contains("Sluice listening")));
}
