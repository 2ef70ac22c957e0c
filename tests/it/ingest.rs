//! Phase 2: streaming items, dedup, sealing, bad lines, offload, encodings.

use std::io::Write;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use sluice::payloads::payload_key;

use crate::support::{Mode, TestServer, apply, chunked, endless_body, every_mode, ndjson};

fn assert_sealed(body: &Value, accepted: u64) {
    assert_eq!(body["sealed"], true, "{body}");
    assert_eq!(body["itemsAccepted"], accepted, "{body}");
    assert!(body.get("missing").is_none(), "{body}");
}

#[apply(every_mode)]
#[tokio::test]
async fn streamed_items_seal_the_batch_and_a_restream_adds_nothing(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(50).await;
    let (status, body) = server.stream(&id, ndjson(0..50)).await;
    assert_eq!(status, StatusCode::OK);
    assert_sealed(&body, 50);
    assert_eq!(body["itemsDeduplicated"], 0);
    assert_eq!(body["rejected"], json!([]));
    let item = server.stored_item(&id, 7).await.unwrap();
    assert_eq!(
        item,
        json!({ "task": "t", "payload": { "n": 7 }, "payloadType": "application/json" })
    );

    let (status, again) = server.stream(&id, ndjson(0..50)).await;
    assert_eq!(status, StatusCode::OK);
    assert_sealed(&again, 0);
    let (_, batch) = server.batch(&id).await;
    assert_eq!(batch["enqueuedCount"], 50);
}

#[apply(every_mode)]
#[tokio::test]
async fn a_sealed_batch_answers_without_reading_the_body(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(1).await;
    server.stream(&id, ndjson([0])).await;
    let request = server.items_request(&id).body(endless_body(ndjson([0])));
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("a sealed batch answers before the body ends")
        .unwrap();
    let (status, body) = crate::support::into_parts(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_sealed(&body, 0);
}

#[apply(every_mode)]
#[tokio::test]
async fn partial_stream_reports_missing_ranges_until_the_rest_arrives(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(10).await;
    let (status, body) = server.stream(&id, ndjson([0, 1, 4, 5, 6, 9])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sealed"], false);
    assert_eq!(body["itemsAccepted"], 6);
    assert_eq!(body["enqueuedCount"], 6);
    assert_eq!(body["expectedCount"], 10);
    assert_eq!(body["missing"], json!([[2, 3], [7, 8]]));

    // A retry of the whole stream plus the rest: duplicates are deduplicated.
    let (_, body) = server.stream(&id, ndjson(0..10)).await;
    assert_sealed(&body, 4);
    assert_eq!(body["itemsDeduplicated"], 6);
}

#[apply(every_mode)]
#[tokio::test]
async fn concurrent_streams_store_each_index_once_and_seal_once(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(300).await;
    let body = ndjson(0..300);
    let streams = (0..4).map(|_| server.stream_chunks(&id, chunked(&body, 997)));
    let results = futures::future::join_all(streams).await;
    let mut accepted = 0;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::OK, "{body}");
        let stream_accepted = body["itemsAccepted"].as_u64().unwrap();
        let deduplicated = body["itemsDeduplicated"].as_u64().unwrap();
        accepted += stream_accepted;
        // A stream that starts after another sealed the batch reads nothing and adds nothing.
        let answered_sealed_at_once = body["sealed"] == true && stream_accepted + deduplicated == 0;
        assert!(
            stream_accepted + deduplicated == 300 || answered_sealed_at_once,
            "{body}"
        );
    }
    assert_eq!(accepted, 300, "{results:?}");
    assert!(results.iter().any(|(_, body)| body["sealed"] == true));
    let (_, batch) = server.batch(&id).await;
    assert_eq!(
        (batch["enqueuedCount"].as_u64(), batch["sealed"].as_bool()),
        (Some(300), Some(true))
    );
}

#[apply(every_mode)]
#[tokio::test]
async fn items_in_any_order_seal_the_batch(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(100).await;
    let mut order: Vec<u32> = (0..100).collect();
    // A fixed shuffle: every index moved far from its place.
    order.sort_by_key(|index| (index * 37) % 101);
    let (_, body) = server.stream(&id, ndjson(order)).await;
    assert_sealed(&body, 100);
    assert_eq!(
        server.stored_item(&id, 99).await.unwrap()["payload"]["n"],
        99
    );
}

#[apply(every_mode)]
#[tokio::test]
async fn oversized_lines_become_failed_items_at_their_index_or_emit_position(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.item_max_bytes = 256).await;
    let id = server.new_batch(4).await;
    let big = "x".repeat(10_000);
    let body = format!(
        "{}{{\"index\":3,\"task\":\"t\",\"payload\":\"{big}\"}}\n{{\"task\":\"t\",\"payload\":\"{big}\",\"index\":0}}\n{}",
        String::from_utf8(ndjson([0])).unwrap(),
        String::from_utf8(ndjson([1])).unwrap(),
    );
    // Small chunks: the oversized lines arrive in pieces and must be skipped, not buffered.
    let (status, response) = server
        .stream_chunks(&id, chunked(body.as_bytes(), 100))
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    // Line 2 names index 3; line 3's index comes after 256 bytes, so its emit position (2) is used.
    assert_sealed(&response, 4);
    assert_eq!(response["itemsFailed"], 2);
    for index in [3, 2] {
        let item = server.stored_item(&id, index).await.unwrap();
        assert_eq!(item["error"]["code"], "PAYLOAD_TOO_LARGE", "{item}");
    }
    assert_eq!(server.stored_item(&id, 2).await.unwrap()["line"], 3);
    assert_eq!(server.stored_item(&id, 1).await.unwrap()["task"], "t");
}

#[apply(every_mode)]
#[tokio::test]
async fn bad_lines_become_failed_items_and_the_stream_goes_on(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(5).await;
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"index\":0,\"task\":\"t\"\n"); // not JSON, index readable
    body.extend_from_slice(b"{\"index\":1,\"task\":\"\xff\xfe\"}\n"); // not UTF-8
    body.extend_from_slice(b"{\"index\":2,\"payload\":1}\n"); // no task
    body.extend_from_slice(b"garbage\n"); // unreadable: emit position 3
    body.extend_from_slice(&ndjson([4]));
    let (status, response) = server.stream(&id, body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_sealed(&response, 5);
    assert_eq!(response["itemsFailed"], 4);
    let codes = [
        (0, "INVALID_JSON"),
        (1, "INVALID_JSON"),
        (2, "INVALID_ITEM"),
        (3, "INVALID_JSON"),
    ];
    for (index, code) in codes {
        let item = server.stored_item(&id, index).await.unwrap();
        assert_eq!(item["error"]["code"], code, "index {index}: {item}");
        assert!(item["error"]["message"].as_str().unwrap().len() > 5);
    }
    assert_eq!(server.stored_item(&id, 4).await.unwrap()["payload"]["n"], 4);
}

#[apply(every_mode)]
#[tokio::test]
async fn out_of_range_indexes_answer_422_and_keep_every_other_item(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(3).await;
    let mut body = ndjson([0]);
    body.extend_from_slice(
        b"{\"index\":3,\"task\":\"t\"}\n{\"index\":-1,\"task\":\"t\"}\n{\"task\":\"t\"}\n",
    );
    body.extend_from_slice(&ndjson([1, 2]));
    let (status, response) = server.stream(&id, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{response}");
    assert_eq!(response["error"]["code"], "ITEMS_REJECTED");
    assert_sealed(&response, 3);
    assert_eq!(response["itemsRejected"], 3);
    let rejected = response["rejected"].as_array().unwrap();
    assert_eq!(
        rejected[0],
        json!({ "line": 2, "index": 3, "code": "INDEX_OUT_OF_RANGE",
        "message": "`index` 3 is not below the batch's runCount 3" })
    );
    assert_eq!(
        (rejected[1]["line"].as_u64(), rejected[1]["code"].as_str()),
        (Some(3), Some("INVALID_INDEX"))
    );
    assert_eq!(
        (rejected[2]["line"].as_u64(), rejected[2].get("index")),
        (Some(4), None)
    );
}

#[apply(every_mode)]
#[tokio::test]
async fn large_payloads_are_offloaded_and_the_item_holds_the_reference(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.offload_threshold_bytes = 1024).await;
    let id = server.new_batch(2).await;
    let payload = json!({ "blob": "y".repeat(2000), "nested": [1, 2, 3] });
    let line = json!({ "index": 0, "task": "t", "payload": payload, "options": { "payloadType": "application/json", "__internal": true } });
    let body = format!("{line}\n{}", String::from_utf8(ndjson([1])).unwrap());
    let (_, response) = server.stream(&id, body).await;
    assert_sealed(&response, 2);

    let item = server.stored_item(&id, 0).await.unwrap();
    let key = payload_key(&id, 0, payload.to_string().as_bytes());
    assert!(
        key.starts_with(&format!("batches/{id}/items/0/sha256-")),
        "{key}"
    );
    assert_eq!(item["payload"], key.as_str());
    assert_eq!(item["payloadType"], "application/store");
    assert_eq!(
        item["options"],
        json!({ "payloadType": "application/json" })
    );
    let object = server
        .stored_payload(&key)
        .await
        .expect("payload object exists");
    assert_eq!(object, payload);
    // Below the threshold the payload stays inline and nothing is written.
    assert_eq!(
        server.stored_item(&id, 1).await.unwrap()["payload"],
        json!({ "n": 1 })
    );
    let inline = json!({ "n": 1 }).to_string();
    assert!(
        server
            .stored_payload(&payload_key(&id, 1, inline.as_bytes()))
            .await
            .is_none()
    );
}

/// An offloaded line: its payload is `{"v": "<fill × 300>"}`.
fn offloaded_line(index: u32, fill: &str) -> (String, String) {
    let payload = json!({ "v": fill.repeat(300) }).to_string();
    let line = format!("{{\"index\":{index},\"task\":\"t\",\"payload\":{payload}}}\n");
    (line, payload)
}

/// First wins, for offloaded payloads too: a later line for a taken index cannot replace the
/// payload the index holds, and its own object is removed; the same payload streamed again keeps
/// the winner's object.
#[apply(every_mode)]
#[tokio::test]
async fn a_later_line_never_replaces_an_offloaded_payload_and_its_object_is_removed(
    #[case] mode: Mode,
) {
    let server = TestServer::start_with(mode, |config| config.offload_threshold_bytes = 100).await;
    let id = server.new_batch(2).await;
    let (first, first_payload) = offloaded_line(0, "A");
    let (second, second_payload) = offloaded_line(0, "B");
    let first_key = payload_key(&id, 0, first_payload.as_bytes());
    let second_key = payload_key(&id, 0, second_payload.as_bytes());

    let (status, body) = server.stream(&id, first.clone()).await;
    assert_eq!(
        (status, &body["itemsAccepted"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let (status, body) = server.stream(&id, second).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["itemsDeduplicated"], 1, "{body}");

    assert_eq!(
        server.stored_item(&id, 0).await.unwrap()["payload"],
        first_key.as_str()
    );
    let winner: Value = serde_json::from_str(&first_payload).unwrap();
    assert_eq!(
        server.stored_payload(&first_key).await,
        Some(winner.clone())
    );
    assert_eq!(
        server.stored_payload(&second_key).await,
        None,
        "the loser's object is removed"
    );

    // A retry of the winning line writes the same object and must not remove it.
    let (_, body) = server.stream(&id, first).await;
    assert_eq!(body["itemsDeduplicated"], 1, "{body}");
    assert_eq!(server.stored_payload(&first_key).await, Some(winner));
}

#[apply(every_mode)]
#[tokio::test]
async fn concurrent_streams_with_other_payloads_leave_only_each_winners_object(#[case] mode: Mode) {
    const INDEXES: u32 = 30;
    const STREAMS: usize = 6;
    let server = TestServer::start_with(mode, |config| config.offload_threshold_bytes = 100).await;
    let id = server.new_batch(INDEXES).await;
    let fills: Vec<String> = (0..STREAMS).map(|stream| format!("s{stream}-")).collect();
    let streams = fills.iter().map(|fill| {
        let body: String = (0..INDEXES)
            .map(|index| offloaded_line(index, fill).0)
            .collect();
        let id = id.clone();
        let server = &server;
        async move {
            server
                .stream_chunks(&id, chunked(body.as_bytes(), 4096))
                .await
        }
    });
    let answers = futures::future::join_all(streams).await;
    let accepted: u64 = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            body["itemsAccepted"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(accepted, u64::from(INDEXES));

    for index in 0..INDEXES {
        let stored = server.stored_item(&id, index).await.unwrap();
        let winner_key = stored["payload"].as_str().unwrap().to_owned();
        let mut winners = 0;
        for fill in &fills {
            let (_, payload) = offloaded_line(index, fill);
            let key = payload_key(&id, index, payload.as_bytes());
            let object = server.stored_payload(&key).await;
            if key == winner_key {
                winners += 1;
                let expected: Value = serde_json::from_str(&payload).unwrap();
                assert_eq!(
                    object,
                    Some(expected),
                    "index {index}: the winner's payload"
                );
            } else {
                assert_eq!(
                    object, None,
                    "index {index}: a loser's object {key} is left"
                );
            }
        }
        assert_eq!(winners, 1, "index {index}: {winner_key}");
    }
}

/// The framer lends a line lying in one read without copying it and joins a line cut between two
/// reads; an offloaded payload is a slice of either, and must reach the store intact.
#[apply(every_mode)]
#[tokio::test]
async fn offloaded_payloads_are_intact_whether_their_line_was_cut_between_reads_or_not(
    #[case] mode: Mode,
) {
    let server = TestServer::start_with(mode, |config| config.offload_threshold_bytes = 256).await;
    let id = server.new_batch(40).await;
    let payloads: Vec<Value> = (0..40)
        .map(|index| json!({ "index": index, "blob": format!("{index}-").repeat(150 + index) }))
        .collect();
    let body: String = payloads
        .iter()
        .enumerate()
        .map(|(index, payload)| {
            format!(
                "{}\n",
                json!({ "index": index, "task": "t", "payload": payload })
            )
        })
        .collect();
    // Chunks shorter and longer than a line: some lines lie in one chunk, others span two or more.
    let (_, response) = server
        .stream_chunks(&id, chunked(body.as_bytes(), 997))
        .await;
    assert_sealed(&response, 40);
    for (index, payload) in payloads.iter().enumerate() {
        let key = payload_key(&id, index as u32, payload.to_string().as_bytes());
        assert_eq!(
            server.stored_item(&id, index as u32).await.unwrap()["payload"],
            key.as_str()
        );
        let object = server.stored_payload(&key).await.expect("payload stored");
        assert_eq!(&object, payload, "item {index}");
    }
}

/// A hostile line cannot make a large answer: what it sent is quoted cut to 200 bytes.
#[apply(every_mode)]
#[tokio::test]
async fn rejections_quote_at_most_200_bytes_of_what_the_client_sent(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(1).await;
    let huge = "9".repeat(1 << 20);
    let line = format!("{{\"index\":\"{huge}\",\"task\":\"t\"}}\n");
    let response = server
        .items_request(&id)
        .body(line.repeat(8))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bytes.len() < 8 * 1024, "a {} byte answer", bytes.len());
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["itemsRejected"], 8, "{body}");
    for rejected in body["rejected"].as_array().unwrap() {
        let message = rejected["message"].as_str().unwrap();
        // The quoted raw value starts with its opening `"`: 199 digits fit in 200 bytes.
        assert!(message.contains(&"9".repeat(199)), "{message}");
        assert!(!message.contains(&"9".repeat(200)), "{message}");
        assert!(
            message.contains("1048578 bytes, shown truncated to 200"),
            "{message}"
        );
    }
}

#[apply(every_mode)]
#[tokio::test]
async fn wrong_content_type_or_encoding_is_415(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(1).await;
    let url = server.url(&format!("/api/v3/batches/{id}/items"));
    let cases = [
        ("application/json", None, "UNSUPPORTED_MEDIA_TYPE"),
        ("text/plain", None, "UNSUPPORTED_MEDIA_TYPE"),
        (
            "application/x-ndjson",
            Some("br"),
            "UNSUPPORTED_CONTENT_ENCODING",
        ),
    ];
    for (content_type, encoding, code) in cases {
        let mut request = server
            .client
            .post(&url)
            .bearer_auth(crate::support::KEY)
            .header("content-type", content_type);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let (status, body) =
            crate::support::into_parts(request.body(ndjson([0])).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"]["code"], code);
    }
    // What the client sent is quoted bounded.
    let long_type = format!("application/{}", "x".repeat(4000));
    let request = server
        .client
        .post(&url)
        .bearer_auth(crate::support::KEY)
        .header("content-type", &long_type);
    let (status, body) =
        crate::support::into_parts(request.body(ndjson([0])).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.len() < 400, "{message}");
    assert!(
        message.contains("4012 bytes, shown truncated to 200"),
        "{message}"
    );
    // Parameters are allowed, and so is application/ndjson.
    let request = server
        .client
        .post(&url)
        .bearer_auth(crate::support::KEY)
        .header("content-type", "application/ndjson; charset=utf-8")
        .body(ndjson([0]));
    let (status, body) = crate::support::into_parts(request.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_sealed(&body, 1);
}

#[apply(every_mode)]
#[tokio::test]
async fn awkward_chunk_boundaries_frame_the_same_items(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(3).await;
    let body = "{\"index\":0,\"task\":\"t\",\"payload\":\"é€😀\"}\r\n\r\n{\"index\":1,\"task\":\"t\",\"payload\":\"😀😀\"}\r\n{\"index\":2,\"task\":\"t\"}".as_bytes();
    let euro = body.windows(3).position(|w| w == "€".as_bytes()).unwrap();
    let crlf = body.windows(2).position(|w| w == b"\r\n").unwrap();
    let emoji = body.windows(4).rposition(|w| w == "😀".as_bytes()).unwrap();
    let cuts = [euro + 1, crlf + 1, crlf + 3, emoji + 2, body.len() - 1];
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(body[start..cut].to_vec());
        start = cut;
    }
    chunks.push(body[start..].to_vec());
    let (status, response) = server.stream_chunks(&id, chunks).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_sealed(&response, 3);
    assert_eq!(server.stored_item(&id, 0).await.unwrap()["payload"], "é€😀");
    assert_eq!(server.stored_item(&id, 1).await.unwrap()["payload"], "😀😀");
}

#[apply(every_mode)]
#[tokio::test]
async fn gzip_and_zstd_bodies_are_decoded_in_the_stream(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(400).await;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&ndjson(0..200)).unwrap();
    let gzipped = gzip.finish().unwrap();
    let request = server.items_request(&id).header("content-encoding", "gzip");
    let stream = futures::stream::iter(
        chunked(&gzipped, 64)
            .into_iter()
            .map(Ok::<_, std::io::Error>),
    );
    let response = request
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::into_parts(response).await;
    assert_eq!(
        (status, body["itemsAccepted"].as_u64()),
        (StatusCode::OK, Some(200)),
        "{body}"
    );

    let zstd = zstd::encode_all(&ndjson(200..400)[..], 3).unwrap();
    let request = server
        .items_request(&id)
        .header("content-encoding", "zstd")
        .body(zstd);
    let (status, body) = crate::support::into_parts(request.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_sealed(&body, 200);
}

#[apply(every_mode)]
#[tokio::test]
async fn corrupt_gzip_is_400_and_keeps_what_was_read(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(100).await;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&ndjson(0..100)).unwrap();
    let mut gzipped = gzip.finish().unwrap();
    let len = gzipped.len();
    gzipped.truncate(len - 12); // cut the trailer and some data
    let request = server
        .items_request(&id)
        .header("content-encoding", "gzip")
        .body(gzipped);
    let (status, body) = crate::support::into_parts(request.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "UNREADABLE_BODY");
    let (_, batch) = server.batch(&id).await;
    assert!(batch["enqueuedCount"].as_u64().unwrap() > 0, "{batch}");
}

#[apply(every_mode)]
#[tokio::test]
async fn with_concurrency_one_the_first_line_of_an_index_wins(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.ingest_concurrency = 1).await;
    let id = server.new_batch(2).await;
    let body = "{\"index\":0,\"task\":\"first\"}\n{\"index\":0,\"task\":\"second\"}\n{\"index\":1,\"task\":\"t\"}\n";
    let (_, response) = server.stream(&id, body).await;
    assert_sealed(&response, 2);
    assert_eq!(response["itemsDeduplicated"], 1);
    assert_eq!(server.stored_item(&id, 0).await.unwrap()["task"], "first");
}

/// The per-item reference that `scripts/bench` measures (two round trips per item) stores and
/// dedups like the grouped path, so the comparison is of speed alone.
#[tokio::test]
async fn the_two_step_benchmark_reference_dedups_like_the_grouped_path() {
    let server = TestServer::start_with(Mode::Production, |config| {
        config.bench_two_step_enqueue = true;
        config.enqueue_batch_max_items = 1;
    })
    .await;
    let id = server.new_batch(20).await;
    let (status, body) = server.stream(&id, ndjson(0..12)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["itemsAccepted"], &body["sealed"]),
        (&json!(12), &json!(false))
    );
    let (_, body) = server.stream(&id, ndjson(0..20)).await;
    assert_sealed(&body, 8);
    assert_eq!(body["itemsDeduplicated"], 12, "{body}");
    assert_eq!(
        server.stored_item(&id, 19).await.unwrap()["payload"],
        json!({ "n": 19 })
    );
}
