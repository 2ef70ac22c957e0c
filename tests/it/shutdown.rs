//! Graceful shutdown: no new connections, streams in flight finish within the grace period, and a
//! stream still running at its end answers 503 with every item it enqueued kept.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::{
    Mode, PrivateRedis, TestServer, apply, both_modes, channel_body, into_parts, ndjson,
};

type Sent = tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>;

/// A batch of 10 and a stream into it that has sent items 0–4 (all enqueued) and stays open:
/// the batch id, the body's sender (more items, or drop it to end the body) and the request.
async fn half_a_stream(server: &TestServer) -> (String, tokio::sync::mpsc::Sender<Vec<u8>>, Sent) {
    let id = server.new_batch(10).await;
    let (sender, body) = channel_body();
    sender.send(ndjson(0..5)).await.unwrap();
    let stream = tokio::spawn(server.items_request(&id).body(body).send());
    server.wait_for_enqueued(&id, 5).await;
    (id, sender, stream)
}

/// The answer of a stream stopped at shutdown, within `limit`.
async fn stopped(stream: Sent, limit: Duration) -> reqwest::Response {
    tokio::time::timeout(limit, stream)
        .await
        .expect("the stream was stopped after the grace period")
        .unwrap()
        .unwrap()
}

#[apply(both_modes)]
#[tokio::test]
async fn a_stream_that_ends_within_the_grace_period_is_answered_normally(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.shutdown_grace_ms = 10_000).await;
    let (_, sender, stream) = half_a_stream(&server).await;

    server.shut_down();
    // New connections are refused once shutdown has begun.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reqwest::Client::new()
        .get(server.url("/healthz"))
        .send()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "still accepting connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sender.send(ndjson(5..10)).await.unwrap();
    drop(sender);
    let (status, body) = into_parts(stream.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["itemsAccepted"], 10, "{body}");
    assert_eq!(body["sealed"], true, "{body}");
}

#[apply(both_modes)]
#[tokio::test]
async fn a_stream_still_running_after_the_grace_period_is_503_and_keeps_its_items(
    #[case] mode: Mode,
) {
    let server = TestServer::start_with(mode, |config| config.shutdown_grace_ms = 300).await;
    let (id, sender, stream) = half_a_stream(&server).await;

    let started = Instant::now();
    server.shut_down();
    let response = stopped(stream, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "SHUTTING_DOWN", "{body}");
    assert_eq!(body["itemsAccepted"], 5, "{body}");
    for index in 0..5 {
        assert!(
            server.stored_item(&id, index).await.is_some(),
            "index {index}"
        );
    }
    drop(sender);

    if mode == Mode::Production {
        // Another node on the same backends completes the batch from the client's retry.
        let other = TestServer::start(mode).await;
        let (status, body) = other.stream(&id, ndjson(0..10)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["itemsAccepted"], 5);
        assert_eq!(body["itemsDeduplicated"], 5);
        assert_eq!(body["sealed"], true);
    }
}

/// The seal check after a stream stopped at shutdown needs the backends; when one of them is down
/// the answer is still the shutdown's (retry elsewhere), not the backend's, and nothing is lost.
#[tokio::test]
async fn a_stream_stopped_at_shutdown_answers_shutting_down_when_the_seal_check_fails() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let server = TestServer::start_with(Mode::Production, |config| {
        config.redis_url = Some(url);
        config.shutdown_grace_ms = 300;
    })
    .await;
    let (id, sender, stream) = half_a_stream(&server).await;

    redis.kill().await;
    server.shut_down();
    let response = stopped(stream, Duration::from_secs(15)).await;
    let (status, body) = into_parts(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "SHUTTING_DOWN", "{body}");
    assert_eq!(body["itemsAccepted"], 5, "{body}");
    drop(sender);

    redis.restart().await;
    for index in 0..5 {
        assert!(
            server.stored_item(&id, index).await.is_some(),
            "index {index}"
        );
    }
}
