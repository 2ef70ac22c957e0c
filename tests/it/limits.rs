//! Overload and limits: the load shield, the Phase 1 rate limit, the byte caps (zip bomb included)
//! and the idle body timeout. Whatever a limit cuts off, the items read before it stay enqueued.

use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{
    Mode, OTHER_KEY, TestServer, apply, both_modes, channel_body, endless_body, into_parts, ndjson,
};

/// Every index in `indexes` is stored exactly as streamed.
async fn assert_stored(server: &TestServer, id: &str, indexes: std::ops::Range<u32>) {
    for index in indexes {
        let item = server.stored_item(id, index).await;
        assert_eq!(
            item.as_ref().map(|item| &item["payload"]["n"]),
            Some(&json!(index)),
            "index {index} of {id}: {item:?}"
        );
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[rstest]
#[case::streams(1, 1_000, "streams")]
#[case::items_in_flight(100, 15, "items in flight")]
#[tokio::test]
async fn a_stream_beyond_the_node_bounds_is_503_before_its_body_is_read(
    #[case] max_streams: u32,
    #[case] max_items_in_flight: u32,
    #[case] bound: &str,
) {
    let server = TestServer::start_with(Mode::Embedded, |config| {
        config.max_streams = max_streams;
        config.max_items_in_flight = max_items_in_flight;
        config.ingest_concurrency = 10;
    })
    .await;
    let id = server.new_batch(4).await;
    let (first_sender, first_body) = channel_body();
    first_sender.send(ndjson(0..2)).await.unwrap();
    let first = tokio::spawn(server.items_request(&id).body(first_body).send());
    // Let the first stream be admitted and read its items.
    server.wait_for_enqueued(&id, 2).await;

    // Its body never ends: a 503 proves the server answered without reading it.
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        server
            .items_request(&id)
            .body(endless_body(ndjson(2..4)))
            .send(),
    )
    .await
    .expect("turned away at once")
    .unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "OVERLOADED");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(bound),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Once the first stream ends, its slot is free again.
    drop(first_sender);
    let (status, body) = into_parts(first.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.stream(&id, ndjson(2..4)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sealed"], true);
}

/// Phase 1 for one item, answered whole (headers included).
async fn create_one(server: &TestServer) -> reqwest::Response {
    server
        .client
        .post(server.url("/api/v3/batches"))
        .bearer_auth(crate::support::KEY)
        .json(&json!({ "runCount": 1 }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_over_its_create_rate_gets_429_and_others_do_not() {
    let server = TestServer::start_with(Mode::Embedded, |config| {
        config.create_rate_per_second = 1;
        config.create_rate_burst = 2;
    })
    .await;
    for remaining in ["1", "0"] {
        let response = create_one(&server).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["x-ratelimit-limit"], "2");
        assert_eq!(response.headers()["x-ratelimit-remaining"], remaining);
    }
    let response = create_one(&server).await;
    let headers = response.headers().clone();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "RATE_LIMITED");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");

    let (status, body) = server.create_as(OTHER_KEY, json!({ "runCount": 1 })).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "another tenant has its own bucket: {body}"
    );
}

#[apply(both_modes)]
#[tokio::test]
async fn a_body_over_the_wire_cap_is_413_and_keeps_what_came_before(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.max_encoded_body_bytes = 4096;
        config.ingest_concurrency = 1;
    })
    .await;
    let id = server.new_batch(200).await;
    let body = ndjson(0..200);
    // A chunked body gives no length up front: the cap trips while reading.
    let (status, response) = server
        .stream_chunks(&id, crate::support::chunked(&body, 100))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");
    assert_eq!(error_code(&response), "BODY_TOO_LARGE");
    let accepted = response["itemsAccepted"].as_u64().unwrap() as u32;
    // Every whole line of the chunks within the cap went in, nothing beyond the cap.
    let lines_within = |bytes: usize| body[..bytes].iter().filter(|&&b| b == b'\n').count() as u32;
    assert!(
        (lines_within(4000)..=lines_within(4096)).contains(&accepted),
        "{response}"
    );
    assert_eq!(response["sealed"], false);
    assert_stored(&server, &id, 0..accepted).await;
    assert_eq!(server.stored_item(&id, accepted + 1).await, None);

    // A body that says up front it is too long is refused before it is read.
    let response = server.items_request(&id).body(body).send().await.unwrap();
    let (status, response) = into_parts(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");
    assert_eq!(error_code(&response), "BODY_TOO_LARGE");
}

#[apply(both_modes)]
#[tokio::test]
async fn a_gzip_bomb_is_413_within_seconds_and_keeps_the_items_before_it(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.max_body_bytes = 2 << 20;
    })
    .await;
    let id = server.new_batch(100).await;
    // 50 items, then 1 GiB of newlines: 1024 gzip members of 1 MiB of newlines each (a
    // multi-member gzip stream is one valid body), about 1 MiB in all.
    let gzip = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let mut bomb = gzip(&ndjson(0..50));
    let member = gzip(&vec![b'\n'; 1 << 20]);
    for _ in 0..1024 {
        bomb.extend_from_slice(&member);
    }
    assert!(bomb.len() < 2 << 20, "the bomb is {} bytes", bomb.len());

    let started = Instant::now();
    let response = server
        .items_request(&id)
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "BODY_TOO_LARGE");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decoded"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(body["itemsAccepted"], 50);
    assert_stored(&server, &id, 0..50).await;
}

#[apply(both_modes)]
#[tokio::test]
async fn a_client_that_stops_sending_is_cut_off_and_its_items_are_kept(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.body_idle_timeout_ms = 300;
    })
    .await;
    let id = server.new_batch(10).await;
    let (sender, body) = channel_body();
    sender.send(ndjson(0..5)).await.unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        server.items_request(&id).body(body).send(),
    )
    .await
    .expect("the server cut the idle stream off")
    .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(error_code(&body), "BODY_IDLE_TIMEOUT");
    assert_eq!(body["itemsAccepted"], 5);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_stored(&server, &id, 0..5).await;
    drop(sender);

    // The client's retry of the whole body completes the batch, each index once.
    let (status, body) = server.stream(&id, ndjson(0..10)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["itemsAccepted"], 5);
    assert_eq!(body["itemsDeduplicated"], 5);
    assert_eq!(body["sealed"], true);
}

/// Lines whose `index` is a string as long as a line may be: each is rejected, and its message
/// must not echo that string. Three such bodies at once must neither make large answers nor make
/// the server hold their echoes: its memory stays within the bound configuration sets.
#[tokio::test]
async fn hostile_index_values_make_neither_large_answers_nor_large_memory() {
    const ITEM_MAX: usize = 1 << 20;
    const CONCURRENCY: usize = 10;
    const REQUESTS: usize = 3;
    const LINES: usize = 100;
    let data_dir = tempfile::tempdir().unwrap();
    let server = crate::support::ServerProcess::start(&[
        ("SLUICE_API_KEYS", format!("acme:{}", crate::support::KEY)),
        ("SLUICE_DATA_DIR", data_dir.path().display().to_string()),
        ("STREAMING_BATCH_ITEM_MAXIMUM_SIZE", ITEM_MAX.to_string()),
        (
            "STREAMING_BATCH_INGEST_CONCURRENCY",
            CONCURRENCY.to_string(),
        ),
    ])
    .await;
    // As long as a line may be: `{"index":"…","task":"t"}` plus its newline is ITEM_MAX bytes.
    let value = "7".repeat(ITEM_MAX - r#"{"index":"","task":"t"}"#.len() - 1);
    let line = format!("{{\"index\":\"{value}\",\"task\":\"t\"}}\n");
    let body = bytes::Bytes::from(line.repeat(LINES));
    let streams = (0..REQUESTS).map(|_| {
        let body = body.clone();
        let server = &server;
        async move {
            let id = server.new_batch(1).await;
            // Sent in 64 KiB pieces, as a client streaming from a file would.
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..body.len())
                .step_by(64 << 10)
                .map(|start| Ok(body.slice(start..(start + (64 << 10)).min(body.len()))))
                .collect();
            let response = server
                .items_request(&id)
                .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.bytes().await.unwrap())
        }
    });
    for (status, answer) in futures::future::join_all(streams).await {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(answer.len() < 64 << 10, "a {} byte answer", answer.len());
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["itemsRejected"], LINES, "{answer}");
    }
    let peak = server.memory("VmHWM");
    let bound = (64 << 20) + (REQUESTS * CONCURRENCY * ITEM_MAX) as u64;
    eprintln!(
        "hostile index values: server peak RSS {:.1} MiB (bound {:.1} MiB)",
        peak as f64 / f64::from(1 << 20),
        bound as f64 / f64::from(1 << 20)
    );
    assert!(peak < bound, "peak RSS {peak} bytes, bound {bound}");
    server.kill().await;
}

#[apply(both_modes)]
#[tokio::test]
async fn get_limits_advertises_what_a_batch_may_hold(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.max_items = 10_000;
        config.item_max_bytes = 65_536;
        config.offload_threshold_bytes = 4_096;
        config.max_body_bytes = 8 << 20;
        config.max_encoded_body_bytes = 4 << 20;
    })
    .await;
    let response = server
        .client
        .get(server.url("/api/v3/limits"))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "maxItemsPerBatch": 10_000,
            "maxItemBytes": 65_536,
            "offloadThresholdBytes": 4_096,
            "maxBodyBytes": 8 << 20,
            "maxEncodedBodyBytes": 4 << 20,
        })
    );

    let response = server
        .client
        .get(server.url("/api/v3/limits"))
        .send()
        .await
        .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "UNAUTHORIZED");
}
