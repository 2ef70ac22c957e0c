//! `sluice send`: the client against the real server (in-process and as the real binary), through
//! a TCP proxy that cuts or stalls one connection, and against a fake server for the
//! Retry-After and missing-range rules.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rstest::rstest;
use serde_json::{Value, json};
use sluice::cli::send::{
    IndexRanges, NoProgress, PartReport, RetryPolicy, SendError, SendOptions, SendReport, Shape,
    Source, send,
};
use sluice::protocol::wire::IngestResponse;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use self::proxy::{Fault, Proxy};
use crate::support::{KEY, Mode, TestServer, apply, both_modes};

/// A task name no other test (or earlier run against the same Postgres) uses, so that the
/// content-derived idempotency key never finds another test's batch.
fn unique_task() -> String {
    format!("send-test-{:016x}", rand::random::<u64>())
}

/// An input file whose line `i` is `{"n":i}`.
fn payload_file(lines: u32) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut writer = std::io::BufWriter::new(file.as_file_mut());
    for n in 0..lines {
        writeln!(writer, "{{\"n\":{n}}}").unwrap();
    }
    writer.flush().unwrap();
    drop(writer);
    file
}

fn text_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn options(base: &str, path: &Path, task: &str) -> SendOptions {
    SendOptions {
        source: Source::File(path.to_path_buf()),
        shape: Shape {
            raw: false,
            task: Some(task.to_owned()),
        },
        base_url: base.to_owned(),
        api_key: KEY.to_owned(),
        count: None,
        idempotency_key: None,
        gzip: false,
        batch_size: None,
        parallel: 1,
        retry: RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        },
        cancel: CancellationToken::new(),
    }
}

async fn send_all(options: SendOptions) -> Result<SendReport, SendError> {
    send(options, Arc::new(NoProgress)).await
}

/// Sends an input that fits one batch; the report of that batch.
async fn send_quietly(options: SendOptions) -> Result<PartReport, SendError> {
    let report = send_all(options).await?;
    let [part] = <[PartReport; 1]>::try_from(report.parts).expect("the input is one batch");
    Ok(part)
}

/// How many indexes a response's `missing` ranges cover.
fn missing_count(response: &IngestResponse) -> u64 {
    IndexRanges::new(response.missing.clone().unwrap()).count()
}

async fn assert_batch_sealed_with(server: &TestServer, id: &str, count: u64) {
    let (_, batch) = server.batch(id).await;
    assert_eq!(batch["sealed"], true, "{batch}");
    assert_eq!(batch["enqueuedCount"], count, "{batch}");
    assert_eq!(batch["runCount"], count, "{batch}");
}

async fn assert_payload_item(server: &TestServer, id: &str, task: &str, index: u32) {
    let item = server.stored_item(id, index).await;
    assert_eq!(
        item,
        Some(json!({ "task": task, "payload": { "n": index }, "payloadType": "application/json" })),
        "index {index}"
    );
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_lands_100k_lines_sealed_with_every_index_once(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let file = payload_file(100_000);
    let task = unique_task();
    let report = send_quietly(options(&server.base, file.path(), &task))
        .await
        .unwrap();
    assert!(report.response().sealed);
    assert!(!report.resumed && !report.already_sealed);
    assert_eq!((report.items, report.requests), (100_000, 1));
    assert_eq!(report.items_accepted(), 100_000);
    assert_eq!(report.items_deduplicated(), 0);
    assert_batch_sealed_with(&server, &report.batch_id, 100_000).await;
    for index in [0, 1, 4_242, 50_000, 99_998, 99_999] {
        assert_payload_item(&server, &report.batch_id, &task, index).await;
    }
    assert_eq!(server.stored_item(&report.batch_id, 100_000).await, None);
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_retries_a_cut_connection_and_resends_only_what_is_missing(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    // ~50 bytes per item: the cut comes a third of the way into the body.
    let file = payload_file(30_000);
    let proxy = Proxy::start(&server.base, Fault::CutAfter(500_000)).await;
    let report = send_quietly(options(&proxy.base, file.path(), &unique_task()))
        .await
        .unwrap();

    assert!(proxy.faulted(), "the stream's connection was cut");
    assert!(report.response().sealed);
    // The cut request got no answer; the next one asked what is missing, the last sent it.
    let probe = &report.responses[0];
    assert!(!probe.sealed);
    let landed_before_cut = probe.enqueued_count.unwrap();
    assert!(
        (1..30_000).contains(&landed_before_cut),
        "{landed_before_cut}"
    );
    assert_eq!(probe.missing.as_ref().unwrap().last().unwrap()[1], 29_999);
    // Only the missing items were resent. (Some may be deduplicated all the same: the server
    // still drains what the proxy forwarded before the cut while the retry runs.)
    assert_eq!((report.requests, report.responses.len()), (3, 2));
    let resend = &report.responses[1];
    assert_eq!(
        resend.items_accepted + resend.items_deduplicated,
        missing_count(probe)
    );
    // Every index is stored exactly once.
    assert_batch_sealed_with(&server, &report.batch_id, 30_000).await;
}

#[apply(both_modes)]
#[tokio::test]
async fn a_second_send_of_the_same_file_is_a_no_op(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let file = payload_file(500);
    let task = unique_task();
    let first = send_quietly(options(&server.base, file.path(), &task))
        .await
        .unwrap();
    let second = send_quietly(options(&server.base, file.path(), &task))
        .await
        .unwrap();
    assert_eq!(first.batch_id, second.batch_id);
    assert_eq!(first.idempotency_key, second.idempotency_key);
    assert!(second.resumed && second.already_sealed);
    assert_eq!(second.requests, 1);
    assert_eq!(second.items_accepted(), 0);
    assert!(sluice::cli::send::summary(&second).contains("already sealed"));

    // Another task is another batch.
    let other = send_quietly(options(&server.base, file.path(), &unique_task()))
        .await
        .unwrap();
    assert_ne!(other.batch_id, first.batch_id);
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_send_resumes_where_it_stopped(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let file = payload_file(20_000);
    let task = unique_task();
    let proxy = Proxy::start(&server.base, Fault::StallAfter(300_000)).await;
    let interrupted = options(&proxy.base, file.path(), &task);
    let cancel = interrupted.cancel.clone();
    let stopped = tokio::spawn(send_quietly(interrupted));
    proxy.wait_for_fault().await;
    cancel.cancel();
    let error = tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("Ctrl-C stops at once")
        .unwrap()
        .unwrap_err();
    let SendError::Interrupted {
        batch_id: Some(batch_id),
    } = &error
    else {
        panic!("{error}");
    };
    assert!(error.to_string().contains("run the same command again"));

    let resumed = send_quietly(options(&server.base, file.path(), &task))
        .await
        .unwrap();
    assert_eq!(&resumed.batch_id, batch_id);
    assert!(resumed.resumed && !resumed.already_sealed);
    let landed_before = resumed.responses[0].enqueued_count.unwrap();
    assert!((1..20_000).contains(&landed_before), "{landed_before}");
    assert_eq!(resumed.responses.len(), 2);
    let resend = &resumed.responses[1];
    assert_eq!(
        resend.items_accepted + resend.items_deduplicated,
        missing_count(&resumed.responses[0]),
        "only the missing items are sent again"
    );
    assert_batch_sealed_with(&server, batch_id, 20_000).await;
}

#[apply(both_modes)]
#[tokio::test]
async fn send_raw_sends_items_unchanged(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let file = text_file(concat!(
        "{\"index\":2,\"task\":\"b\",\"payload\":[1],\"options\":{\"payloadType\":\"text/plain\"}}\n",
        "\r\n",
        "{\"index\":0,\"task\":\"a\",\"payload\":\"zero\"}\r\n",
        "   \n",
        "{\"index\":1,\"task\":\"a\"}",
    ));
    let mut options = options(&server.base, file.path(), &unique_task());
    options.shape.raw = true;
    let report = send_quietly(options).await.unwrap();
    assert_eq!(report.items, 3);
    assert_eq!(report.items_accepted(), 3);
    assert_batch_sealed_with(&server, &report.batch_id, 3).await;
    let id = &report.batch_id;
    assert_eq!(
        server.stored_item(id, 2).await.unwrap(),
        json!({ "task": "b", "payload": [1], "payloadType": "text/plain",
                "options": { "payloadType": "text/plain" } })
    );
    assert_eq!(
        server.stored_item(id, 0).await.unwrap()["payload"],
        json!("zero")
    );
    assert_eq!(server.stored_item(id, 1).await.unwrap()["task"], "a");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[tokio::test]
async fn send_raw_reports_lines_the_server_rejects_or_cannot_seal(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    // Blank lines are kept in raw bodies, so the rejected line is named by its number in the file.
    let file = text_file("{\"index\":0,\"task\":\"a\"}\n\n{\"index\":7,\"task\":\"a\"}\n");
    let mut raw = options(&server.base, file.path(), &unique_task());
    raw.shape.raw = true;
    let error = send_quietly(raw).await.unwrap_err();
    let SendError::Rejected {
        rejected: 1,
        first: Some(first),
        ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!((first.line, first.code.as_str()), (3, "INDEX_OUT_OF_RANGE"));

    // Two lines for index 0 and none for index 1: the batch can never seal.
    let file = text_file("{\"index\":0,\"task\":\"a\"}\n{\"index\":0,\"task\":\"a\"}\n");
    let mut raw = options(&server.base, file.path(), &unique_task());
    raw.shape.raw = true;
    let error = send_quietly(raw).await.unwrap_err();
    assert!(
        matches!(
            error,
            SendError::Unsealable {
                missing: 1,
                first_missing: Some(1),
                ..
            }
        ),
        "{error}"
    );
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_gzip_compresses_the_body_and_lands_every_item(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let file = payload_file(5_000);
    let task = unique_task();
    let proxy = Proxy::start(&server.base, Fault::None).await;
    let mut options = options(&proxy.base, file.path(), &task);
    options.gzip = true;
    let report = send_quietly(options).await.unwrap();
    assert_eq!(report.items_accepted(), 5_000);
    assert_batch_sealed_with(&server, &report.batch_id, 5_000).await;
    assert_payload_item(&server, &report.batch_id, &task, 4_321).await;

    let wire = String::from_utf8_lossy(&proxy.captured()).to_ascii_lowercase();
    assert!(wire.contains("content-encoding: gzip"), "{wire:.600}");
    assert!(!wire.contains("\"payload\""), "items are not sent in clear");
}

#[tokio::test]
async fn a_line_that_is_not_json_stops_send_before_any_batch_is_made() {
    let fake = fake::FakeServer::start().await;
    let file = text_file("{\"n\":0}\n\nnot json\n");
    let error = send_quietly(options(&fake.base, file.path(), "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SendError::InvalidLine { line: 3, .. }),
        "{error}"
    );
    assert_eq!(fake.create_calls(), 0);
}

#[tokio::test]
async fn send_honours_retry_after_and_resends_only_missing_ranges() {
    let fake = fake::FakeServer::start().await;
    let file = payload_file(10);
    let started = Instant::now();
    let report = send_quietly(options(&fake.base, file.path(), "t"))
        .await
        .unwrap();
    assert!(report.response().sealed);
    // Create: 429 + Retry-After: 1, then 202. Items: 503 + Retry-After: 1, then the probe
    // (empty body) answered `missing: [[3, 5]]`, then only those three items.
    let creates = fake.create_times();
    assert_eq!(creates.len(), 2);
    assert!(creates[1] - creates[0] >= Duration::from_secs(1));
    let calls = fake.items_calls();
    assert_eq!(calls.len(), 3);
    assert!(calls[1].0 - calls[0].0 >= Duration::from_secs(1));
    let indexes = |body: &[u8]| -> Vec<u64> {
        body.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice::<Value>(line).unwrap()["index"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(indexes(&calls[0].1), (0..10).collect::<Vec<_>>());
    assert!(calls[1].1.is_empty(), "the probe carries no items");
    assert_eq!(indexes(&calls[2].1), vec![3, 4, 5]);
    let resent: Value =
        serde_json::from_slice(calls[2].1.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        resent,
        json!({ "index": 3, "task": "t", "payload": { "n": 3 } })
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn send_gives_up_on_a_server_that_is_not_there() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let file = payload_file(3);
    let mut options = options(&base, file.path(), "t");
    options.retry = RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    };
    let error = send_quietly(options).await.unwrap_err();
    assert!(
        matches!(error, SendError::GaveUp { attempts: 3, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("reading the server's limits failed")
    );
}

// --- inputs larger than one batch ---------------------------------------------------------------

/// A server whose batches hold at most `max_items` items.
async fn server_with_max_items(mode: Mode, max_items: u32) -> TestServer {
    TestServer::start_with(mode, |config| config.max_items = max_items).await
}

/// Each part's batch is sealed with exactly its items, and holds the input's lines from its first
/// item on, in order, so that every line is in exactly one batch.
async fn assert_parts_hold_every_line_once(
    server: &TestServer,
    report: &SendReport,
    task: &str,
    sizes: &[u64],
) {
    let items: Vec<u64> = report.parts.iter().map(|part| part.items).collect();
    assert_eq!(items, sizes);
    let mut next_item = 0;
    for (n, part) in report.parts.iter().enumerate() {
        assert_eq!((part.part, part.first_item), (n as u32 + 1, next_item));
        assert!(part.response().sealed);
        assert_batch_sealed_with(server, &part.batch_id, part.items).await;
        for index in [0, 1, part.items / 2, part.items - 1] {
            let item = server.stored_item(&part.batch_id, index as u32).await;
            let line = part.first_item + index;
            assert_eq!(
                item,
                Some(json!({ "task": task, "payload": { "n": line },
                             "payloadType": "application/json" })),
                "part {} index {index}",
                part.part
            );
        }
        assert_eq!(
            server.stored_item(&part.batch_id, part.items as u32).await,
            None
        );
        next_item += part.items;
    }
    let batches: std::collections::HashSet<_> =
        report.parts.iter().map(|part| &part.batch_id).collect();
    assert_eq!(
        batches.len(),
        report.parts.len(),
        "every part is its own batch"
    );
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_splits_an_input_larger_than_a_batch_into_sealed_parts(#[case] mode: Mode) {
    // 2.5 times the server's cap, as 2.5 M lines would be against the default 1 M.
    let server = server_with_max_items(mode, 10_000).await;
    let file = payload_file(25_000);
    let task = unique_task();
    let report = send_all(options(&server.base, file.path(), &task))
        .await
        .unwrap();
    assert_eq!((report.items, report.items_accepted()), (25_000, 25_000));
    assert_parts_hold_every_line_once(&server, &report, &task, &[10_000, 10_000, 5_000]).await;
    for part in &report.parts {
        assert!(!part.resumed);
        assert!(
            part.idempotency_key.ends_with(&format!(
                "-part-{}-items-{}-{}",
                part.part,
                part.first_item,
                part.first_item + part.items - 1
            )),
            "{}",
            part.idempotency_key
        );
    }
    let lines = sluice::cli::send::summary_lines(&report);
    assert_eq!(
        lines.last().unwrap(),
        "25000 items sealed in 3 batches, 25000 accepted now"
    );

    // --batch-size cuts smaller parts, in parallel; another cut is another set of batches.
    let mut smaller = options(&server.base, file.path(), &task);
    (smaller.batch_size, smaller.parallel) = (Some(7_000), 2);
    let report = send_all(smaller).await.unwrap();
    assert_parts_hold_every_line_once(&server, &report, &task, &[7_000, 7_000, 7_000, 4_000]).await;
}

/// Cancels the send (as Ctrl-C does) once part `part` has put `items` items into its body.
struct CancelDuringPart {
    part: u32,
    items: u64,
    sent: std::sync::atomic::AtomicU64,
    cancel: CancellationToken,
}

impl sluice::cli::send::Progress for CancelDuringPart {
    fn event(&self, event: sluice::cli::send::ProgressEvent<'_>) {
        if let sluice::cli::send::ProgressEvent::Sent { part, items, .. } = event
            && part == self.part
        {
            let sent = self
                .sent
                .fetch_add(items, std::sync::atomic::Ordering::SeqCst)
                + items;
            if sent >= self.items {
                self.cancel.cancel();
            }
        }
    }
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_send_stopped_in_part_2_resumes_there_and_leaves_part_1_alone(#[case] mode: Mode) {
    let server = server_with_max_items(mode, 10_000).await;
    let file = payload_file(25_000);
    let task = unique_task();
    let stopped = options(&server.base, file.path(), &task);
    let progress = Arc::new(CancelDuringPart {
        part: 2,
        items: 4_000,
        sent: Default::default(),
        cancel: stopped.cancel.clone(),
    });
    let error = send(stopped, progress).await.unwrap_err();
    assert!(error.is_interrupted(), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("part 2 of 3 (items 10000–19999): interrupted; run the same command again to resume batch"),
        "{message}"
    );

    let resumed = send_all(options(&server.base, file.path(), &task))
        .await
        .unwrap();
    let [part1, part2, part3] = &resumed.parts[..] else {
        panic!("{resumed:?}");
    };
    // Part 1: found sealed by its key, asked once, nothing sent again.
    assert!(part1.resumed && part1.already_sealed);
    assert_eq!((part1.requests, part1.items_accepted()), (1, 0));
    assert_eq!(part1.items_deduplicated(), 0);
    // Part 2: found again, only its missing ranges sent.
    assert!(part2.resumed && !part2.already_sealed);
    let probe = &part2.responses[0];
    assert!(!probe.sealed);
    assert!(probe.enqueued_count.unwrap() < 10_000);
    let resend = &part2.responses[1];
    assert_eq!(
        resend.items_accepted + resend.items_deduplicated,
        missing_count(probe),
        "only part 2's missing items are sent again"
    );
    // Part 3: never started before, sent whole.
    assert!(!part3.resumed);
    assert_eq!(part3.items_accepted(), 5_000);
    assert_parts_hold_every_line_once(&server, &resumed, &task, &[10_000, 10_000, 5_000]).await;
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_are_sized_under_a_low_body_cap_and_never_meet_413(#[case] mode: Mode) {
    const CAP: u64 = 8 << 20;
    let server = TestServer::start_with(mode, |config| {
        config.max_body_bytes = CAP;
        config.max_encoded_body_bytes = CAP;
    })
    .await;
    // 200 lines of ~100 KiB: 20 MiB, under the item cap, 2.5 times the body cap.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let filler = "x".repeat(100 * 1024);
    for n in 0..200 {
        writeln!(file, "{{\"n\":{n},\"pad\":\"{filler}\"}}").unwrap();
    }
    for gzip in [false, true] {
        let mut options = options(&server.base, file.path(), &unique_task());
        options.gzip = gzip;
        let report = send_all(options).await.unwrap();
        assert_eq!(report.parts.len(), 3, "gzip {gzip}");
        let items: u64 = report.parts.iter().map(|part| part.items).sum();
        assert_eq!(items, 200);
        for part in &report.parts {
            // Every part but the last is filled to within one line of the cap's room.
            let bytes = part.items * (100 * 1024 + 80);
            assert!(bytes < CAP, "part {} of {} items", part.part, part.items);
            assert!(part.response().sealed);
            assert_eq!(part.requests, 1, "one request: no 413, no retry");
            assert_batch_sealed_with(&server, &part.batch_id, part.items).await;
            let last = server
                .stored_item(&part.batch_id, part.items as u32 - 1)
                .await
                .unwrap();
            assert_eq!(last["payload"]["n"], part.first_item + part.items - 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_count_splits_by_count_and_the_server_sees_lines_beyond_it() {
    let server = TestServer::start(Mode::Embedded).await;
    let file = payload_file(25);
    let task = unique_task();
    let mut counted = options(&server.base, file.path(), &task);
    (counted.count, counted.batch_size) = (Some(25), Some(10));
    let report = send_all(counted).await.unwrap();
    assert_parts_hold_every_line_once(&server, &report, &task, &[10, 10, 5]).await;

    // A count short of the file: the last part reads on to the end, so the lines past its items
    // reach the server, which rejects them (and says so), as it does for one batch; they are not
    // left out unseen.
    let mut short = options(&server.base, file.path(), &unique_task());
    (short.count, short.batch_size) = (Some(20), Some(10));
    let report = send_all(short).await.unwrap();
    let last = report.parts[1].response();
    assert_eq!((report.parts.len(), last.items_rejected), (2, 5));
    assert_eq!(last.rejected[0].code, "INDEX_OUT_OF_RANGE");
}

#[tokio::test]
async fn a_server_without_limits_gets_one_batch_and_a_hint_to_use_batch_size() {
    let old = fake_old::OldServer::start(10).await;
    let file = payload_file(25);
    let error = send_all(options(&old.base, file.path(), "t"))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("server answered 400 Bad Request INVALID_REQUEST: runCount must be"),
        "{message}"
    );
    assert!(message.contains("pass --batch-size N"), "{message}");
    assert_eq!(
        old.run_counts(),
        vec![25],
        "the input was sent as one batch"
    );

    // With --batch-size it is split by count alone, as the server cannot say more.
    let mut split = options(&old.base, file.path(), "t");
    split.batch_size = Some(10);
    let report = send_all(split).await.unwrap();
    let items: Vec<u64> = report.parts.iter().map(|part| part.items).collect();
    assert_eq!(items, vec![10, 10, 5]);
    assert_eq!(old.run_counts(), vec![25, 10, 10, 5]);
}

// --- the real binary -------------------------------------------------------------------------

fn sluice_send(base: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("send")
        .args(args)
        .env("SLUICE_URL", base)
        .env("SLUICE_API_KEY", KEY)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn stderr_lines(output: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_binary_prints_the_final_response_as_json_and_exits_0() {
    let server = TestServer::start(Mode::Embedded).await;
    let file = payload_file(1_000);
    let task = unique_task();
    let path = file.path().to_str().unwrap();
    let output = sluice_send(&server.base, &[path, "--task", &task, "--json", "--gzip"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{:?}", stderr_lines(&output));
    let response: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(response["sealed"], true);
    assert_eq!(response["itemsAccepted"], 1_000);
    let id = response["id"].as_str().unwrap();
    assert_batch_sealed_with(&server, id, 1_000).await;
    let summary = stderr_lines(&output).pop().unwrap();
    assert!(
        summary.contains(&format!("batch {id} sealed: 1000 items")),
        "{summary}"
    );

    // The same command again: a no-op, still success.
    let again = sluice_send(&server.base, &[path, "--task", &task])
        .output()
        .await
        .unwrap();
    assert!(again.status.success());
    let lines = stderr_lines(&again);
    assert!(
        lines.last().unwrap().contains("already sealed"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_binary_prints_one_json_line_per_part_and_exits_0_when_all_are_sealed() {
    let server = TestServer::start(Mode::Embedded).await;
    let file = payload_file(1_000);
    let task = unique_task();
    let path = file.path().to_str().unwrap();
    let args = [
        path,
        "--task",
        &task,
        "--json",
        "--batch-size",
        "400",
        "--parallel",
        "2",
    ];
    let output = sluice_send(&server.base, &args).output().await.unwrap();
    assert!(output.status.success(), "{:?}", stderr_lines(&output));
    let parts: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(parts.len(), 3);
    for (n, part) in parts.iter().enumerate() {
        assert_eq!(
            (part["part"].as_u64(), part["parts"].as_u64()),
            (Some(n as u64 + 1), Some(3))
        );
        assert_eq!(part["firstItem"], n * 400);
        assert_eq!(part["sealed"], true);
        let items = if n == 2 { 200 } else { 400 };
        assert_eq!(part["itemsAccepted"], items);
        assert_batch_sealed_with(&server, part["id"].as_str().unwrap(), items).await;
    }
    let summary = stderr_lines(&output).pop().unwrap();
    assert_eq!(
        summary,
        "sluice send: 1000 items sealed in 3 batches, 1000 accepted now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_binary_reads_stdin_and_resumes_it_from_the_same_content() {
    let server = TestServer::start(Mode::Embedded).await;
    let task = unique_task();
    let input: String = (0..300).map(|n| format!("{{\"n\":{n}}}\n\n")).collect();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut child = sluice_send(&server.base, &["-", "--task", &task, "--json", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        let output = child.wait_with_output().await.unwrap();
        assert!(output.status.success(), "{:?}", stderr_lines(&output));
        assert!(
            output.stderr.is_empty(),
            "--quiet prints nothing on success"
        );
        let response: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(response["sealed"], true);
        ids.push((
            response["id"].as_str().unwrap().to_owned(),
            response["itemsAccepted"].as_u64().unwrap(),
        ));
    }
    assert_eq!(ids[0].0, ids[1].0, "stdin keyed by its content");
    assert_eq!((ids[0].1, ids[1].1), (300, 0));
    assert_batch_sealed_with(&server, &ids[0].0, 300).await;
    assert_payload_item(&server, &ids[0].0, &task, 299).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_binary_fails_with_one_clear_line_and_a_non_zero_exit() {
    let server = TestServer::start(Mode::Embedded).await;
    let file = payload_file(3);
    let path = file.path().to_str().unwrap();

    let output = sluice_send(&server.base, &[path, "--task", "t", "--key", "wrong"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("sluice send: server answered 401 Unauthorized UNAUTHORIZED"),
        "{lines:?}"
    );
    // With --quiet the error is all there is.
    let output = sluice_send(&server.base, &[path, "--task", "t", "--key", "wrong", "-q"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );

    let bad = text_file("{\"n\":1}\n[oops\n");
    let output = sluice_send(
        &server.base,
        &[bad.path().to_str().unwrap(), "--task", "t", "-q"],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("line 2 of "), "{lines:?}");
    assert!(lines[0].contains("is not valid JSON"), "{lines:?}");

    let output = sluice_send(&server.base, &[path]).output().await.unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "--task is required without --raw"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_binary_stops_on_ctrl_c_with_exit_130() {
    let server = TestServer::start(Mode::Embedded).await;
    let file = payload_file(20_000);
    let proxy = Proxy::start(&server.base, Fault::StallAfter(200_000)).await;
    let child = sluice_send(
        &proxy.base,
        &[file.path().to_str().unwrap(), "--task", &unique_task()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    proxy.wait_for_fault().await;
    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits promptly on Ctrl-C")
        .unwrap();
    assert_eq!(output.status.code(), Some(130));
    let last = stderr_lines(&output).pop().unwrap();
    assert!(
        last.starts_with("sluice send: interrupted; run the same command again to resume batch"),
        "{last}"
    );
}

/// A TCP proxy in front of the server that misbehaves once: on the first connection whose request
/// bytes reach the fault's limit. (Not simply the first connection: the client may send its Phase 1
/// request on one connection and stream on another, when the first is not back in its pool yet.)
mod proxy {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    /// Most request bytes kept for inspection.
    const CAPTURE_BYTES: usize = 256 * 1024;

    #[derive(Debug, Clone, Copy)]
    pub enum Fault {
        None,
        /// Forward this many request bytes, then close both sides.
        CutAfter(usize),
        /// Forward this many request bytes, then forward nothing more and keep the connection.
        StallAfter(usize),
    }

    pub struct Proxy {
        pub base: String,
        state: Arc<State>,
    }

    struct State {
        target: SocketAddr,
        fault: Fault,
        faulted: AtomicBool,
        fault_seen: Notify,
        captured: Mutex<Vec<u8>>,
    }

    impl Proxy {
        pub async fn start(server_base: &str, fault: Fault) -> Self {
            let target = server_base
                .trim_start_matches("http://")
                .parse()
                .expect("server base is http://ip:port");
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let state = Arc::new(State {
                target,
                fault,
                faulted: AtomicBool::new(false),
                fault_seen: Notify::new(),
                captured: Mutex::new(Vec::new()),
            });
            let accepting = state.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, accepting.clone()));
                }
            });
            Self { base, state }
        }

        pub fn faulted(&self) -> bool {
            self.state.faulted.load(Ordering::SeqCst)
        }

        pub async fn wait_for_fault(&self) {
            let seen = self.state.fault_seen.notified();
            if !self.faulted() {
                tokio::time::timeout(std::time::Duration::from_secs(30), seen)
                    .await
                    .expect("the proxy's fault happens");
            }
        }

        /// The first request bytes of every connection, in arrival order.
        pub fn captured(&self) -> Vec<u8> {
            self.state.captured.lock().unwrap().clone()
        }
    }

    async fn forward(client: TcpStream, state: Arc<State>) {
        let Ok(server) = TcpStream::connect(state.target).await else {
            return;
        };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let answers = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
        });
        let mut limit = match state.fault {
            Fault::CutAfter(limit) | Fault::StallAfter(limit) => Some(limit),
            Fault::None => None,
        };
        let mut forwarded = 0;
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            {
                let mut captured = state.captured.lock().unwrap();
                let room = CAPTURE_BYTES.saturating_sub(captured.len()).min(read);
                captured.extend_from_slice(&buffer[..room]);
            }
            let allowed = limit.map_or(read, |limit| read.min(limit - forwarded));
            if server_write.write_all(&buffer[..allowed]).await.is_err() {
                break;
            }
            forwarded += allowed;
            if allowed < read || limit == Some(forwarded) {
                if state.faulted.swap(true, Ordering::SeqCst) {
                    // Another connection had the fault: this one goes through whole.
                    limit = None;
                    if server_write
                        .write_all(&buffer[allowed..read])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                state.fault_seen.notify_waiters();
                match state.fault {
                    Fault::StallAfter(_) => {
                        // Hold both connections open, silent, until the test ends.
                        let _held = (&client_read, &server_write);
                        std::future::pending::<()>().await;
                    }
                    _ => {
                        answers.abort();
                        return;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
        let _ = answers.await;
    }
}

/// A server from before `GET /api/v3/limits`: the route is unknown (404), a batch holds at most
/// `max_items` items, and every items request seals its batch.
mod fake_old {
    use super::*;

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    struct Old {
        max_items: u64,
        run_counts: Mutex<Vec<u64>>,
    }

    pub struct OldServer {
        pub base: String,
        old: Arc<Old>,
    }

    async fn create(State(old): State<Arc<Old>>, axum::Json(body): axum::Json<Value>) -> Response {
        let run_count = body["runCount"].as_u64().unwrap();
        let key = body["idempotencyKey"].as_str().unwrap().to_owned();
        old.run_counts.lock().unwrap().push(run_count);
        if run_count > old.max_items {
            let message = format!(
                "runCount must be an integer from 1 to {}, got {run_count}",
                old.max_items
            );
            let body = json!({ "error": { "code": "INVALID_REQUEST", "message": message } });
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        let id = format!("batch_{}", key_digest(&key));
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": id, "runCount": run_count, "isCached": false })),
        )
            .into_response()
    }

    /// A batch id made from the key, so each part has its own.
    fn key_digest(key: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    async fn items(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
        axum::Json(json!({
            "id": id, "itemsAccepted": 0, "itemsDeduplicated": 0,
            "sealed": true, "itemsFailed": 0, "itemsRejected": 0, "rejected": []
        }))
        .into_response()
    }

    impl OldServer {
        pub async fn start(max_items: u64) -> Self {
            let old = Arc::new(Old {
                max_items,
                run_counts: Mutex::new(Vec::new()),
            });
            let app = Router::new()
                .route("/api/v3/batches", post(create))
                .route("/api/v3/batches/{id}/items", post(items))
                .with_state(old.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { base, old }
        }

        pub fn run_counts(&self) -> Vec<u64> {
            self.old.run_counts.lock().unwrap().clone()
        }
    }
}

/// A fake Sluice that answers with the failures the client must ride out.
mod fake {
    use super::*;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    #[derive(Default)]
    struct Calls {
        creates: Vec<Instant>,
        items: Vec<(Instant, Vec<u8>)>,
    }

    pub struct FakeServer {
        pub base: String,
        calls: Arc<Mutex<Calls>>,
    }

    fn busy(status: StatusCode, code: &str) -> Response {
        let body = json!({ "error": { "code": code, "message": "try later" } });
        (status, [(header::RETRY_AFTER, "1")], axum::Json(body)).into_response()
    }

    fn ingest(sealed: bool, accepted: u64, missing: Option<Value>) -> Response {
        let mut body = json!({
            "id": "batch_fake", "itemsAccepted": accepted, "itemsDeduplicated": 0,
            "sealed": sealed, "itemsFailed": 0, "itemsRejected": 0, "rejected": []
        });
        if let Some(missing) = missing {
            body["enqueuedCount"] = json!(7);
            body["expectedCount"] = json!(10);
            body["missing"] = missing;
        }
        axum::Json(body).into_response()
    }

    async fn create(State(calls): State<Arc<Mutex<Calls>>>) -> Response {
        let mut calls = calls.lock().unwrap();
        calls.creates.push(Instant::now());
        match calls.creates.len() {
            1 => busy(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            _ => (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "id": "batch_fake", "runCount": 10, "isCached": false })),
            )
                .into_response(),
        }
    }

    async fn items(State(calls): State<Arc<Mutex<Calls>>>, body: Bytes) -> Response {
        let mut calls = calls.lock().unwrap();
        calls.items.push((Instant::now(), body.to_vec()));
        match calls.items.len() {
            1 => busy(StatusCode::SERVICE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
            2 => ingest(false, 0, Some(json!([[3, 5]]))),
            _ => ingest(true, 3, None),
        }
    }

    impl FakeServer {
        pub async fn start() -> Self {
            let calls = Arc::new(Mutex::new(Calls::default()));
            let app = Router::new()
                .route("/api/v3/batches", post(create))
                .route("/api/v3/batches/{id}/items", post(items))
                .with_state(calls.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { base, calls }
        }

        pub fn create_calls(&self) -> usize {
            self.calls.lock().unwrap().creates.len()
        }

        pub fn create_times(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().creates.clone()
        }

        pub fn items_calls(&self) -> Vec<(Instant, Vec<u8>)> {
            self.calls.lock().unwrap().items.clone()
        }
    }
}
