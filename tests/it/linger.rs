//! Lingering close: a Phase 2 request answered before its body was read (bad key, unknown batch,
//! wrong content type, overload, a cap tripped mid-stream) still reaches a client that writes its
//! whole body before reading a byte, as Python's `http.client` and many proxies do; and the server
//! reads that body for a bounded time and byte count only.
//!
//! The client is a raw TCP socket, so nothing in it reads early or retries. Each case is tried
//! many times because a reset is a race: the client sees it only when the server closes while
//! body bytes are still on their way (its next write then fails with a broken pipe).
//!
//! The answers to a bad key, a wrong content type and an overloaded node are given before any
//! backend is asked, so production mode adds nothing to them and they run embedded only.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::Value;
use sluice::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{KEY, Mode, TestServer, channel_body, ndjson};

/// Tries per case: enough that a reset race lost even a quarter of the time shows.
const TRIES: usize = 20;
/// How long one try may take before it counts as hung.
const TRY_LIMIT: Duration = Duration::from_secs(10);

/// A request body as the client sends it: chunks, one write each, `pace` apart.
struct Upload {
    chunks: Vec<Vec<u8>>,
    pace: Duration,
}

impl Upload {
    fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }
}

/// 50 NDJSON lines, each a chunk of its own, 1 ms apart, as a client sends lines as it produces
/// them: the body is still arriving when the server answers.
fn fifty_lines() -> Upload {
    Upload {
        chunks: (0..50).map(|index| ndjson([index])).collect(),
        pace: Duration::from_millis(1),
    }
}

/// About 300 KiB: 300 lines of 1 KiB, each a chunk of its own, back to back. More than the
/// server reads on its own before closing, however fast it arrives.
fn three_hundred_kib() -> Upload {
    let pad = "x".repeat(980);
    Upload {
        chunks: (0..300)
            .map(|index| {
                format!("{{\"index\":{index},\"task\":\"t\",\"payload\":{{\"pad\":\"{pad}\"}}}}\n")
                    .into_bytes()
            })
            .collect(),
        pace: Duration::ZERO,
    }
}

/// The head of a chunked Phase 2 request.
fn items_head(id: &str, key: &str, content_type: &str) -> String {
    format!(
        "POST /api/v3/batches/{id}/items HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
}

/// One chunk of a chunked body, framed.
fn framed(chunk: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(chunk);
    framed.extend_from_slice(b"\r\n");
    framed
}

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// An answer as the raw client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    connection_close: bool,
    body: Value,
}

/// Parses a whole HTTP/1.1 response with a `Content-Length` body.
fn parse(raw: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no whole head in {} bytes: {text:?}", raw.len()))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(found, _)| found == name)
            .map(|(_, value)| value.as_str())
    };
    let length: usize = header("content-length")
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("no Content-Length: {head:?}"))?;
    let body = rest
        .as_bytes()
        .get(..length)
        .ok_or_else(|| format!("body cut short: {rest:?}"))?;
    Ok(Answer {
        status,
        connection_close: header("connection").is_some_and(|value| value == "close"),
        body: serde_json::from_slice(body).map_err(|error| format!("{error}: {rest:?}"))?,
    })
}

/// Writes the head, every chunk and the last chunk before reading a byte, then
/// reads the answer until the server closes the connection. A reset anywhere is an error.
async fn write_whole_body_then_read(
    address: &str,
    head: &str,
    upload: &Upload,
) -> Result<Answer, String> {
    let exchange = async {
        let mut socket = TcpStream::connect(address).await?;
        socket.write_all(head.as_bytes()).await?;
        for chunk in &upload.chunks {
            socket.write_all(&framed(chunk)).await?;
            if !upload.pace.is_zero() {
                tokio::time::sleep(upload.pace).await;
            }
        }
        socket.write_all(b"0\r\n\r\n").await?;
        let mut raw = Vec::new();
        socket.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(TRY_LIMIT, exchange)
        .await
        .map_err(|_| format!("no answer and no close within {TRY_LIMIT:?}"))?
        .map_err(|error| format!("{:?}: {error}", error.kind()))?;
    parse(&raw)
}

/// Makes the request [`TRIES`] times for each body size; every try must read the expected
/// answer, marked `Connection: close`, and see the connection closed cleanly.
async fn every_try_reads_the_answer(
    address: &str,
    head: &str,
    status: StatusCode,
    code: &str,
    uploads: &[Upload],
) {
    let mut report = Vec::new();
    for upload in uploads {
        let (mut answered, mut marked_close) = (0, 0);
        let mut failure = None;
        for _ in 0..TRIES {
            match write_whole_body_then_read(address, head, upload).await {
                Ok(answer)
                    if answer.status == status.as_u16() && answer.body["error"]["code"] == code =>
                {
                    answered += 1;
                    marked_close += usize::from(answer.connection_close);
                }
                Ok(answer) => failure = failure.or(Some(format!("{answer:?}"))),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        report.push((upload.bytes(), answered, marked_close, failure));
    }
    assert!(
        report
            .iter()
            .all(|&(_, answered, marked, _)| answered == TRIES && marked == TRIES),
        "tries that saw the {status} {code} answer (and `Connection: close`), of {TRIES}, by body size: {}",
        report
            .iter()
            .map(|(bytes, answered, marked, failure)| format!(
                "{bytes} bytes: {answered} ({marked}), first failure: {failure:?}"
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn an_unknown_batch_404_reaches_a_client_that_writes_its_whole_body_first(
    #[case] mode: Mode,
) {
    let server = TestServer::start(mode).await;
    every_try_reads_the_answer(
        &address(&server),
        &items_head("b_unknown", KEY, "application/x-ndjson"),
        StatusCode::NOT_FOUND,
        "BATCH_NOT_FOUND",
        &[fifty_lines(), three_hundred_kib()],
    )
    .await;
}

#[tokio::test]
async fn a_bad_key_401_reaches_a_client_that_writes_its_whole_body_first() {
    let server = TestServer::start(Mode::Embedded).await;
    let id = server.new_batch(50).await;
    every_try_reads_the_answer(
        &address(&server),
        &items_head(&id, "not-a-key", "application/x-ndjson"),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        &[fifty_lines(), three_hundred_kib()],
    )
    .await;
}

#[tokio::test]
async fn a_wrong_content_type_415_reaches_a_client_that_writes_its_whole_body_first() {
    let server = TestServer::start(Mode::Embedded).await;
    let id = server.new_batch(50).await;
    every_try_reads_the_answer(
        &address(&server),
        &items_head(&id, KEY, "application/json"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        &[fifty_lines(), three_hundred_kib()],
    )
    .await;
}

#[tokio::test]
async fn an_overload_503_reaches_a_client_that_writes_its_whole_body_first() {
    let server = TestServer::start_with(Mode::Embedded, |config| config.max_streams = 1).await;
    let id = server.new_batch(100).await;
    // One stream holds the node's only slot until its body ends.
    let (sender, body) = channel_body();
    sender.send(ndjson([99])).await.unwrap();
    let held = tokio::spawn(server.items_request(&id).body(body).send());
    server.wait_for_enqueued(&id, 1).await;

    every_try_reads_the_answer(
        &address(&server),
        &items_head(&id, KEY, "application/x-ndjson"),
        StatusCode::SERVICE_UNAVAILABLE,
        "OVERLOADED",
        &[fifty_lines(), three_hundred_kib()],
    )
    .await;

    drop(sender);
    let response = held.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn a_413_mid_stream_reaches_a_client_that_writes_its_whole_body_first(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| config.max_encoded_body_bytes = 1024).await;
    let id = server.new_batch(1000).await;
    every_try_reads_the_answer(
        &address(&server),
        &items_head(&id, KEY, "application/x-ndjson"),
        StatusCode::PAYLOAD_TOO_LARGE,
        "BODY_TOO_LARGE",
        &[fifty_lines(), three_hundred_kib()],
    )
    .await;
}

#[tokio::test]
async fn a_body_read_to_its_end_keeps_its_connection() {
    let server = TestServer::start(Mode::Embedded).await;
    let id = server.new_batch(50).await;
    let response = server
        .items_request(&id)
        .body(ndjson(0..50))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("connection"), None);
}

/// A client that reads while it writes: it sends `chunk` every `pace` until its writes fail (or
/// `limit`), reading the answer meanwhile. Returns the answer (if one was read before the
/// connection ended), how long the read side lasted, and how long until a write failed.
async fn write_until_cut_off(
    address: &str,
    head: &str,
    chunk: &[u8],
    pace: Duration,
    limit: Duration,
) -> (Option<Answer>, Duration, Option<Duration>) {
    let started = Instant::now();
    let socket = TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    let read = tokio::spawn(async move {
        let mut raw = Vec::new();
        // A reset after the answer is expected here: the server stopped reading at a cap.
        let _ = reader.read_to_end(&mut raw).await;
        (raw, started.elapsed())
    });
    writer.write_all(head.as_bytes()).await.unwrap();
    let framed = framed(chunk);
    let write_failed = loop {
        if started.elapsed() > limit {
            break None;
        }
        if writer.write_all(&framed).await.is_err() {
            break Some(started.elapsed());
        }
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    };
    let (raw, read_lasted) = tokio::time::timeout(limit, read)
        .await
        .expect("the read side ends once writes fail")
        .unwrap();
    (parse(&raw).ok(), read_lasted, write_failed)
}

#[tokio::test]
async fn a_body_past_the_byte_cap_is_cut_off_without_waiting_for_the_time_cap() {
    let server = TestServer::start_with(Mode::Embedded, |config: &mut Config| {
        config.linger_max_bytes = 64 << 10;
        config.linger_time_ms = 60_000;
    })
    .await;
    let (_, read_lasted, write_failed) = write_until_cut_off(
        &address(&server),
        &items_head("b_unknown", KEY, "application/x-ndjson"),
        &vec![b'x'; 16 << 10],
        Duration::ZERO,
        Duration::from_secs(30),
    )
    .await;
    // Past 64 KiB the server closes; the client's writes fail as soon as its socket buffer is
    // full, far sooner than the 60 s time cap.
    let write_failed = write_failed.expect("the server closed the connection");
    assert!(write_failed < Duration::from_secs(10), "{write_failed:?}");
    assert!(read_lasted < Duration::from_secs(10), "{read_lasted:?}");
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_at_the_time_cap_after_its_answer_was_read() {
    let server = TestServer::start_with(Mode::Embedded, |config: &mut Config| {
        config.linger_time_ms = 1_500;
    })
    .await;
    let (answer, read_lasted, write_failed) = write_until_cut_off(
        &address(&server),
        &items_head("b_unknown", KEY, "application/x-ndjson"),
        &ndjson([0]),
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await;
    let answer = answer.expect("the answer was read while the body was still being sent");
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(answer.connection_close, "{answer:?}");
    // The server read on for the time cap, then closed: not at once, and not for ever.
    assert!(
        (Duration::from_millis(1_400)..Duration::from_secs(10)).contains(&read_lasted),
        "the connection was closed after {read_lasted:?}"
    );
    write_failed.expect("the client's writes failed once the server closed");
}

#[tokio::test]
async fn beyond_the_node_bound_a_connection_closes_at_once_after_its_answer() {
    let server = TestServer::start_with(Mode::Embedded, |config: &mut Config| {
        config.linger_max_connections = 1;
        config.linger_time_ms = 60_000;
    })
    .await;
    let address = address(&server);
    let head = items_head("b_unknown", KEY, "application/x-ndjson");

    // The first connection takes the only linger slot: it stays open while it trickles.
    let mut first = TcpStream::connect(&address).await.unwrap();
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&framed(&ndjson([0]))).await.unwrap();
    let mut answered = Vec::new();
    while parse(&answered).is_err() {
        let mut buffer = [0; 4096];
        let read = tokio::time::timeout(TRY_LIMIT, first.read(&mut buffer))
            .await
            .expect("the first connection is answered")
            .unwrap();
        assert!(read > 0, "the first connection was closed at once");
        answered.extend_from_slice(&buffer[..read]);
    }
    assert_eq!(parse(&answered).unwrap().status, 404);

    // The second finds no slot: it is closed at once, as without lingering.
    let (_, read_lasted, write_failed) = write_until_cut_off(
        &address,
        &head,
        &ndjson([0]),
        Duration::from_millis(10),
        Duration::from_secs(30),
    )
    .await;
    assert!(read_lasted < Duration::from_secs(10), "{read_lasted:?}");
    write_failed.expect("the second connection was closed");

    // Meanwhile the first is still being read.
    for index in 1..20 {
        first
            .write_all(&framed(&ndjson([index])))
            .await
            .expect("the first connection still lingers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
