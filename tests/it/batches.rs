//! Phase 1, reading batches, auth and tenancy.

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::json;

use crate::support::{KEY, Mode, OTHER_KEY, TestServer, apply, both_modes, every_mode, ndjson};

#[apply(both_modes)]
#[tokio::test]
async fn create_returns_an_unguessable_id_and_run_count(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let (status, body) = server
        .create(json!({ "runCount": 3, "taskIdentifiers": ["t"], "unknown": 1 }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["runCount"], 3);
    assert_eq!(body["isCached"], false);
    let id = body["id"].as_str().unwrap();
    assert!(
        id.starts_with("batch_") && id.len() >= "batch_".len() + 30,
        "{id}"
    );
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let (_, other) = server.create(json!({ "runCount": 3 })).await;
    assert_ne!(other["id"], body["id"]);
}

#[apply(both_modes)]
#[tokio::test]
async fn same_idempotency_key_returns_the_original_batch(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let key = format!("idem-{}", rand::random::<u64>());
    let request = json!({ "runCount": 2, "idempotencyKey": key });
    let (first_status, first) = server.create(request.clone()).await;
    assert_eq!(first_status, StatusCode::ACCEPTED);
    assert_eq!(first["idempotencyKey"], key);
    let (second_status, second) = server.create(request.clone()).await;
    assert_eq!(second_status, StatusCode::OK);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["isCached"], true);
    // Another tenant with the same key gets its own batch.
    let (status, other) = server.create_as(OTHER_KEY, request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["id"], first["id"]);
}

#[apply(both_modes)]
#[tokio::test]
async fn concurrent_duplicate_creates_make_one_batch(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let request =
        json!({ "runCount": 5, "idempotencyKey": format!("race-{}", rand::random::<u64>()) });
    let creates = (0..8).map(|_| server.create(request.clone()));
    let results = futures::future::join_all(creates).await;
    let ids: std::collections::HashSet<_> =
        results.iter().map(|(_, body)| body["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    let new = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(new, 1);
}

#[apply(both_modes)]
#[tokio::test]
async fn invalid_create_requests_get_clear_errors(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.max_items = 100).await;
    for body in [
        json!({ "runCount": 0 }),
        json!({ "runCount": 101 }),
        json!({ "runCount": "3" }),
        json!({}),
    ] {
        let (status, error) = server.create(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["error"]["code"], "INVALID_REQUEST");
    }
    // Only a JSON object is a request: serde would read an array as the fields in order.
    for body in [
        json!([1]),
        json!([3, ["t"]]),
        json!([{ "runCount": 1 }]),
        json!(7),
        json!("x"),
        json!(null),
    ] {
        let (status, error) = server.create(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["error"]["code"], "INVALID_REQUEST", "{body}");
        assert_eq!(
            error["error"]["message"], "request body must be a JSON object",
            "{body}"
        );
    }
    // What the client sent is never echoed unbounded.
    let (status, error) = server
        .create(json!({ "runCount": "9".repeat(100_000) }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.len() <= 512, "{} bytes: {message}", message.len());
    let long_key = "k".repeat(2049);
    let (status, _) = server
        .create(json!({ "runCount": 1, "idempotencyKey": long_key }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Over 128 KiB, sent chunked (no Content-Length).
    let big = format!("{{\"runCount\":1,\"pad\":\"{}\"}}", "x".repeat(130 * 1024));
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = server
        .client
        .post(server.url("/api/v3/batches"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let (status, error) = crate::support::into_parts(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["error"]["code"], "BODY_TOO_LARGE");
}

#[apply(both_modes)]
#[tokio::test]
async fn requests_without_a_valid_key_get_401(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(1).await;
    let no_key = server
        .client
        .post(server.url("/api/v3/batches"))
        .json(&json!({ "runCount": 1 }));
    let wrong_key = server
        .client
        .get(server.url(&format!("/api/v3/batches/{id}")))
        .bearer_auth("nope");
    let stream = server
        .client
        .post(server.url(&format!("/api/v3/batches/{id}/items")))
        .header("content-type", "application/x-ndjson")
        .body(ndjson([0]));
    for request in [no_key, wrong_key, stream] {
        let (status, body) = crate::support::into_parts(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    }
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["enqueuedCount"], 0);
    // The scheme word is case-insensitive.
    let upper = server
        .client
        .get(server.url(&format!("/api/v3/batches/{id}")))
        .header("authorization", format!("BEARER {KEY}"));
    assert_eq!(upper.send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn the_server_keeps_only_the_digests_of_its_api_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sluice::config::Config::embedded(dir.path().to_path_buf());
    config.api_keys = Some("acme:plaintext-key".into());
    let app = sluice::app::App::build(config).await.unwrap();
    assert_eq!(
        app.config.api_keys, None,
        "the plaintext setting is dropped"
    );
    assert_eq!(app.keys.tenant_for("plaintext-key"), Some("acme"));
}

#[apply(both_modes)]
#[tokio::test]
async fn another_tenants_batch_is_not_found(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(1).await;
    let read = server
        .client
        .get(server.url(&format!("/api/v3/batches/{id}")))
        .bearer_auth(OTHER_KEY);
    let stream = server
        .client
        .post(server.url(&format!("/api/v3/batches/{id}/items")))
        .bearer_auth(OTHER_KEY)
        .header("content-type", "application/x-ndjson")
        .body(ndjson([0]));
    for request in [read, stream] {
        let (status, body) = crate::support::into_parts(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "BATCH_NOT_FOUND");
    }
    assert_eq!(server.stored_item(&id, 0).await, None);
    let (status, _) = server.batch("batch_doesnotexist").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[apply(every_mode)]
#[tokio::test]
async fn batch_reads_report_status_counts_and_times(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(3).await;
    let (status, batch) = server.batch(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["status"], "PENDING");
    assert_eq!(batch["sealed"], false);
    assert!(batch.get("sealedAt").is_none());
    server
        .stream(&id, [ndjson([0, 1]), b"oops\n".to_vec()].concat())
        .await;
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["status"], "PROCESSING");
    assert_eq!(batch["sealed"], true);
    assert_eq!(batch["enqueuedCount"], 3);
    // Counts are of runs written; they add up to materialisedCount.
    let batch = crate::runs::wait_materialised(&server, &id).await;
    assert_eq!(batch["enqueuedCount"], 3);
    assert_eq!(
        batch["counts"],
        json!({ "pending": 2, "running": 0, "claimed": 0, "completed": 0, "failed": 1, "canceled": 0 })
    );
    assert!(batch["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(batch["sealedAt"].is_string());
}

// Not on the Cluster too: this server's expiry job aborts every unsealed batch of the shared test
// database older than 1 ms, other tests' batches included; one such server is risk enough.
#[apply(both_modes)]
#[tokio::test]
async fn batch_past_its_seal_timeout_is_aborted(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.seal_timeout_ms = 1).await;
    let id = server.new_batch(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, body) = server.stream(&id, ndjson([0])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "BATCH_NOT_PENDING");
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["status"], "ABORTED");
    assert_eq!(batch["enqueuedCount"], 0);
}

#[apply(every_mode)]
#[tokio::test]
async fn health_reports_every_backend(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    let (status, body) = crate::support::into_parts(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "status": "ok", "database": "ok", "queue": "ok", "payloads": "ok" })
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let (status, body) =
        crate::support::into_parts(server.client.get(server.url("/nope")).send().await.unwrap())
            .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let response = server
        .client
        .delete(server.url("/api/v3/batches"))
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::into_parts(response).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
}

#[apply(both_modes)]
#[tokio::test]
async fn text_postgres_cannot_hold_gets_clear_errors_not_500(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let (status, body) = server
        .create(json!({ "runCount": 1, "idempotencyKey": "a\u{0}b" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");

    for id in ["batch_%00", "batch_%FF"] {
        let (status, body) = server.batch(id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["error"]["code"], "BATCH_NOT_FOUND");
        let (status, body) = server.stream(id, ndjson(0..1)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["error"]["code"], "BATCH_NOT_FOUND");
    }
}
