//! A batch's event stream: journal replay after `Last-Event-ID`, then live events, with no gap
//! and no duplicate, ending at the event that makes the batch final; filters, the per-tenant cap,
//! two nodes, many subscribers.

use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Api, KEY, Mode, OTHER_KEY, TestServer, apply, both_modes, ndjson};
use crate::workers::report;

/// Longest any stream of these tests may take to reach its batch's final event.
const STREAM_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// How one connection to the events stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server ended the stream (after the final event).
    Closed,
    /// The reader stopped after the number of events it was asked for.
    Cut,
}

impl Api {
    pub fn events_request(&self, id: &str, query: &str) -> reqwest::RequestBuilder {
        self.client
            .get(self.url(&format!("/api/v3/batches/{id}/events{query}")))
            .bearer_auth(KEY)
    }

    /// Reads the batch's events (after `last_id` if given) until the server ends the stream, or
    /// until `at_most` events arrived; then drops the connection.
    pub async fn read_events(
        &self,
        id: &str,
        query: &str,
        last_id: Option<u64>,
        at_most: usize,
        into: &mut Vec<SseEvent>,
    ) -> End {
        let mut request = self.events_request(id, query);
        if let Some(last) = last_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut parser = SseParser::default();
        let mut body = response.bytes_stream();
        let mut read = 0;
        let end = tokio::time::timeout(STREAM_LIMIT, async {
            while let Some(chunk) = body.next().await {
                for event in parser.push(&chunk.unwrap()) {
                    into.push(event);
                    read += 1;
                    if read >= at_most {
                        return End::Cut;
                    }
                }
            }
            End::Closed
        })
        .await;
        end.unwrap_or_else(|_| panic!("the stream of {id} did not end: {:?}", into.last()))
    }

    pub async fn cancel_batch(&self, id: &str) {
        let (status, body) = self
            .post_empty(&format!("/api/v3/batches/{id}/cancel"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Every event of the batch, read with reconnections after random numbers of events.
    pub async fn read_events_reconnecting(
        &self,
        id: &str,
        query: &str,
        max_cut: usize,
    ) -> (Vec<SseEvent>, usize) {
        let mut events = Vec::new();
        let mut connections = 0;
        loop {
            connections += 1;
            let at_most = rand::rng().random_range(1..=max_cut);
            let last = events.last().map(|event: &SseEvent| event.id);
            if self
                .read_events(id, query, last, at_most, &mut events)
                .await
                == End::Closed
            {
                return (events, connections);
            }
        }
    }
}

/// Server-Sent Events framing, as a browser's EventSource reads it (the parts Sluice sends).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    id: Option<u64>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8(line).unwrap();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(SseEvent {
                        id: self.id.take().expect("every event has an id"),
                        event: self.event.take().expect("every event has a type"),
                        data: serde_json::from_str(&self.data.join("\n")).unwrap(),
                    });
                    self.data.clear();
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.id = Some(value.parse().unwrap()),
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                other => panic!("unexpected field {other}"),
            }
        }
        events
    }
}

const FINAL: [&str; 4] = ["COMPLETED", "PARTIAL_FAILED", "ABORTED", "CANCELED"];

/// Ids are 1, 2, 3, … with none missing and none twice, and only the last event is final.
pub fn assert_journal_order(events: &[SseEvent]) {
    for (position, event) in events.iter().enumerate() {
        assert_eq!(event.id, position as u64 + 1, "event {position}: {event:?}");
    }
    let finals: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, event)| {
            event.event == "batch" && FINAL.contains(&event.data["status"].as_str().unwrap())
        })
        .map(|(position, _)| position)
        .collect();
    assert_eq!(finals, vec![events.len() - 1], "one final event, the last");
}

/// Lines without a task: each becomes a failed item, then a `FAILED` run.
pub fn failed_lines(indexes: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut body = Vec::new();
    for index in indexes {
        body.extend_from_slice(format!("{{\"index\":{index},\"payload\":{{}}}}\n").as_bytes());
    }
    body
}

/// One run event for each of the runs `0..runs`.
fn assert_every_run(events: &[SseEvent], runs: u32) {
    let indexes = run_indexes(events);
    let expected: Vec<u64> = (0..u64::from(runs)).collect();
    if indexes != expected {
        let missing = expected
            .iter()
            .find(|index| indexes.binary_search(index).is_err());
        panic!(
            "{} run events for {runs} runs; first run without an event: {missing:?}",
            indexes.len()
        );
    }
}

fn run_indexes(events: &[SseEvent]) -> Vec<u64> {
    let mut indexes: Vec<u64> = events
        .iter()
        .filter(|event| event.event == "run")
        .map(|event| event.data["index"].as_u64().unwrap())
        .collect();
    indexes.sort_unstable();
    indexes
}

#[apply(both_modes)]
#[tokio::test]
async fn a_stream_replays_then_tails_until_the_batch_is_final(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(40).await;
    // Subscribed before anything happens: every event arrives live.
    let live = {
        let api = Api::new(server.base.clone());
        let id = id.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            let end = api
                .read_events(&id, "", None, usize::MAX, &mut events)
                .await;
            (end, events)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Half the items, then the rest: failed items only, so the batch ends PARTIAL_FAILED.
    server.stream(&id, failed_lines(0..20)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = server.stream(&id, failed_lines(20..40)).await;
    assert_eq!(body["sealed"], true, "{status}: {body}");

    let (end, events) = live.await.unwrap();
    assert_eq!(end, End::Closed);
    assert_journal_order(&events);
    assert_every_run(&events, 40);
    let run = events.iter().find(|event| event.event == "run").unwrap();
    assert_eq!(run.data["status"], "FAILED");
    assert_eq!(run.data["attempt"], 0);
    assert!(
        run.data["id"].as_str().unwrap().starts_with("run_"),
        "{run:?}"
    );
    assert!(run.data["error"]["code"].is_string(), "{run:?}");
    let last = &events.last().unwrap().data;
    assert_eq!(last["status"], "PARTIAL_FAILED");
    assert_eq!(last["runCount"], 40);
    assert_eq!(last["materialisedCount"], 40);
    assert_eq!(last["enqueuedCount"], 40);
    assert_eq!(last["counts"]["failed"], 40);
    // Progress was seen before the seal, and the seal itself.
    let statuses: Vec<&str> = events
        .iter()
        .filter(|event| event.event == "batch")
        .map(|event| event.data["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"PENDING"), "{statuses:?}");
    // A batch event shows the batch as it is when the event is made: a batch of failed items only
    // can turn final before its seal's event is made, and then that event already reads final.
    assert!(
        statuses.contains(&"PROCESSING") || statuses[1..].iter().all(|s| *s == "PARTIAL_FAILED"),
        "{statuses:?}"
    );

    // A later stream replays the same journal and ends at once.
    let mut replay = Vec::new();
    assert_eq!(
        server
            .read_events(&id, "", None, usize::MAX, &mut replay)
            .await,
        End::Closed
    );
    assert_eq!(replay, events);
    // After the final event, nothing is left.
    let mut after = Vec::new();
    let last_id = events.last().unwrap().id;
    server
        .read_events(&id, "", Some(last_id), usize::MAX, &mut after)
        .await;
    assert!(after.is_empty(), "{after:?}");
    // ?after= is the same as Last-Event-ID; runs=none leaves run events out.
    let mut batch_only = Vec::new();
    server
        .read_events(&id, "?after=2&runs=none", None, usize::MAX, &mut batch_only)
        .await;
    let expected: Vec<SseEvent> = events
        .iter()
        .filter(|event| event.id > 2 && event.event == "batch")
        .cloned()
        .collect();
    assert_eq!(batch_only, expected);
}

#[apply(both_modes)]
#[tokio::test]
async fn a_subscriber_that_reconnects_at_random_gets_every_event_once(#[case] mode: Mode) {
    // 20 000 runs rather than 100 000, to keep CI time modest on small machines.
    const RUNS: u32 = 20_000;
    let server = TestServer::start_with(mode, |config| {
        config.materialise_chunk_items = 500;
    })
    .await;
    let id = server.new_batch(RUNS).await;
    let reader = {
        let api = Api::new(server.base.clone());
        let id = id.clone();
        tokio::spawn(async move { api.read_events_reconnecting(&id, "", 3_000).await })
    };
    let (status, body) = server.stream(&id, failed_lines(0..RUNS)).await;
    assert_eq!(body["sealed"], true, "{status}: {body}");
    let (events, connections) = reader.await.unwrap();
    assert!(connections > 5, "{connections} connections");
    assert_journal_order(&events);
    assert_eq!(
        run_indexes(&events),
        (0..u64::from(RUNS)).collect::<Vec<_>>()
    );
    assert_eq!(events.last().unwrap().data["status"], "PARTIAL_FAILED");
}

#[tokio::test]
async fn events_made_on_one_node_reach_a_subscriber_on_another() {
    const RUNS: u32 = 5_000;
    let a = TestServer::start(Mode::Production).await;
    let b = TestServer::start(Mode::Production).await;
    let id = a.new_batch(RUNS).await;
    let reader = {
        let api = Api::new(b.base.clone());
        let id = id.clone();
        tokio::spawn(async move { api.read_events_reconnecting(&id, "", 2_000).await })
    };
    let (status, body) = a.stream(&id, failed_lines(0..RUNS)).await;
    assert_eq!(body["sealed"], true, "{status}: {body}");
    let (events, _) = reader.await.unwrap();
    assert_journal_order(&events);
    assert_eq!(
        run_indexes(&events),
        (0..u64::from(RUNS)).collect::<Vec<_>>()
    );
}

#[apply(both_modes)]
#[tokio::test]
async fn a_canceled_batch_ends_its_stream_with_one_batch_event(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(30).await;
    let (_, body) = server.stream(&id, ndjson(0..30)).await;
    assert_eq!(body["sealed"], true, "{body}");
    let mut events = Vec::new();
    server.read_events(&id, "", None, 1, &mut events).await;
    server.cancel_batch(&id).await;
    let mut rest = Vec::new();
    let last = events.last().map(|event| event.id);
    assert_eq!(
        server
            .read_events(&id, "", last, usize::MAX, &mut rest)
            .await,
        End::Closed
    );
    events.extend(rest);
    assert_journal_order(&events);
    assert!(
        events.iter().all(|event| event.event == "batch"),
        "{events:?}"
    );
    let last = &events.last().unwrap().data;
    assert_eq!(last["status"], "CANCELED");
}

#[apply(both_modes)]
#[tokio::test]
async fn a_stream_open_longer_than_allowed_ends_and_resumes_from_its_last_id(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.event_stream_max_ms = 300;
    })
    .await;
    let id = server.new_batch(5).await;
    // The batch stays open: without the bound this stream would not end.
    let mut events = Vec::new();
    let started = std::time::Instant::now();
    let end = server
        .read_events(&id, "", None, usize::MAX, &mut events)
        .await;
    assert_eq!(end, End::Closed);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    server.cancel_batch(&id).await;
    let mut connections = 1;
    while events.last().map(|event| event.data["status"].clone()) != Some("CANCELED".into()) {
        connections += 1;
        assert!(connections < 100, "no CANCELED event: {events:?}");
        let last = events.last().map(|event| event.id);
        server
            .read_events(&id, "", last, usize::MAX, &mut events)
            .await;
    }
    assert_journal_order(&events);
}

#[apply(both_modes)]
#[tokio::test]
async fn event_streams_are_refused_beyond_the_tenant_cap(#[case] mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.max_event_streams_per_tenant = 2;
    })
    .await;
    let id = server.new_batch(5).await;
    let first = server.events_request(&id, "").send().await.unwrap();
    let second = server.events_request(&id, "").send().await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = server.events_request(&id, "").send().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TOO_MANY_EVENT_STREAMS");
    // Another tenant has its own slots (and cannot see this batch).
    let other = server
        .client
        .get(server.url(&format!("/api/v3/batches/{id}/events")))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    // A closed stream gives its slot back.
    drop(first);
    crate::support::poll_until("the slot is back", Duration::from_secs(5), || async {
        let again = server.events_request(&id, "").send().await.unwrap();
        again.status() == StatusCode::OK
    })
    .await;
    drop(second);
}

#[apply(both_modes)]
#[tokio::test]
async fn bad_event_stream_requests_are_answered_before_streaming(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(5).await;
    for (query, header) in [
        ("?runs=some", None),
        ("?after=-1", None),
        ("?after=x", None),
        ("", Some("abc")),
    ] {
        let mut request = server.events_request(&id, query);
        if let Some(header) = header {
            request = request.header("Last-Event-ID", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{query} {header:?}"
        );
    }
    let missing = server
        .events_request("batch_nope", "")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let anonymous = server
        .client
        .get(server.url(&format!("/api/v3/batches/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_on_one_node_each_get_every_event() {
    // Every subscriber parses every event: 1 000 × a few hundred events keeps a debug build of
    // this test under a minute on two cores.
    const SUBSCRIBERS: usize = 1_000;
    const RUNS: u32 = 300;
    let server = TestServer::start_with(Mode::Embedded, |config| {
        config.max_event_streams_per_tenant = 2_000;
    })
    .await;
    let id = server.new_batch(RUNS).await;
    let before = rss_kib();
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let api = Api {
            base: server.base.clone(),
            client: server.client.clone(),
        };
        let id = id.clone();
        readers.push(tokio::spawn(async move {
            let mut events = Vec::new();
            api.read_events(&id, "", None, usize::MAX, &mut events)
                .await;
            events
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = rss_kib();
    let (_, body) = server.stream(&id, failed_lines(0..RUNS)).await;
    assert_eq!(body["sealed"], true, "{body}");
    let mut first: Option<Vec<SseEvent>> = None;
    for reader in readers {
        let events = reader.await.unwrap();
        assert_journal_order(&events);
        assert_eq!(run_indexes(&events).len(), RUNS as usize);
        match &first {
            None => first = Some(events),
            Some(first) => assert_eq!(first.len(), events.len()),
        }
    }
    let added_mib = connected.saturating_sub(before) / 1024;
    println!(
        "{SUBSCRIBERS} subscribers: RSS {before} KiB before, {connected} KiB connected (+{added_mib} MiB, clients included)"
    );
    assert!(added_mib < 100, "{added_mib} MiB");
}

/// A worker: claims runs and reports each `COMPLETED`, or `FAILED` when its index is a multiple
/// of 10, until `runs` were reported; answers when each report was sent, by run index.
async fn work_through(
    api: &Api,
    task: &str,
    runs: u32,
) -> std::collections::HashMap<u64, std::time::Instant> {
    let mut sent = std::collections::HashMap::new();
    while sent.len() < runs as usize {
        let claimed = api
            .claim(serde_json::json!({ "tasks": [task], "limit": 50, "waitMs": 1000 }))
            .await;
        let reports: Vec<Value> = claimed
            .iter()
            .map(|run| {
                let index = run["index"].as_u64().unwrap();
                let mut report = report(run, "COMPLETED");
                if index % 10 == 0 {
                    report["status"] = "FAILED".into();
                    report["error"] = serde_json::json!({ "code": "BOOM", "message": format!("run {index} failed") });
                }
                report
            })
            .collect();
        if reports.is_empty() {
            continue;
        }
        let at = std::time::Instant::now();
        api.complete(Value::Array(reports)).await;
        for run in &claimed {
            sent.insert(run["index"].as_u64().unwrap(), at);
        }
    }
    sent
}

/// Reads every event of the batch, reconnecting at random, and notes when each run event came.
async fn watch_runs(
    api: Api,
    id: String,
) -> (
    Vec<SseEvent>,
    std::collections::HashMap<u64, std::time::Instant>,
) {
    let mut events = Vec::new();
    let mut arrived = std::collections::HashMap::new();
    loop {
        let at_most = rand::rng().random_range(1..=400);
        let last = events.last().map(|event: &SseEvent| event.id);
        let before = events.len();
        let end = api.read_events(&id, "", last, at_most, &mut events).await;
        for event in &events[before..] {
            if event.event == "run" {
                arrived.insert(
                    event.data["index"].as_u64().unwrap(),
                    std::time::Instant::now(),
                );
            }
        }
        if end == End::Closed {
            return (events, arrived);
        }
    }
}

fn p99_millis(
    sent: &std::collections::HashMap<u64, std::time::Instant>,
    arrived: &std::collections::HashMap<u64, std::time::Instant>,
) -> u128 {
    let mut delays: Vec<u128> = sent
        .iter()
        .map(|(index, at)| arrived[index].saturating_duration_since(*at).as_millis())
        .collect();
    delays.sort_unstable();
    delays[delays.len() * 99 / 100]
}

async fn runs_reported_by_workers_reach_the_stream(producer: &TestServer, watcher: &TestServer) {
    const RUNS: u32 = 2_000;
    let id = producer.new_batch(RUNS).await;
    let reader = tokio::spawn(watch_runs(Api::new(watcher.base.clone()), id.clone()));
    // A task of this test's own: other tests' runs of the same tenant are never claimed here.
    let task = format!("events-{:016x}", rand::random::<u64>());
    let body: Vec<u8> = (0..RUNS)
        .flat_map(|index| format!("{{\"index\":{index},\"task\":\"{task}\"}}\n").into_bytes())
        .collect();
    let (status, body) = producer.stream(&id, body).await;
    assert_eq!(body["sealed"], true, "{status}: {body}");
    let sent = work_through(producer, &task, RUNS).await;
    let (events, arrived) = reader.await.unwrap();
    assert_journal_order(&events);
    assert_every_run(&events, RUNS);
    let failed = events
        .iter()
        .find(|event| event.event == "run" && event.data["index"] == 10)
        .unwrap();
    assert_eq!(failed.data["status"], "FAILED");
    assert_eq!(failed.data["error"]["code"], "BOOM");
    assert_eq!(failed.data["attempt"], 1);
    let completed = events
        .iter()
        .find(|event| event.event == "run" && event.data["index"] == 11)
        .unwrap();
    assert_eq!(completed.data["status"], "COMPLETED");
    assert!(completed.data.get("error").is_none(), "{completed:?}");
    let last = &events.last().unwrap().data;
    assert_eq!(last["status"], "PARTIAL_FAILED");
    assert_eq!(last["counts"]["completed"], 1_800);
    assert_eq!(last["counts"]["failed"], 200);
    println!(
        "{RUNS} runs: p99 from sending a report to its run event at a subscriber: {} ms (debug build)",
        p99_millis(&sent, &arrived)
    );
}

#[apply(both_modes)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_completed_by_workers_stream_their_events(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    runs_reported_by_workers_reach_the_stream(&server, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_completed_on_one_node_stream_from_another() {
    let a = TestServer::start(Mode::Production).await;
    let b = TestServer::start(Mode::Production).await;
    runs_reported_by_workers_reach_the_stream(&a, &b).await;
}
