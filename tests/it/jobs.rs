//! Maintenance jobs: retention deletes exactly the final batches past the horizon (runs, queue
//! items, payload objects, the batch), stats count each day exactly and a refresh with nothing new
//! writes nothing, and two nodes running every job at once never apply anything twice.
//!
//! Tests share one Postgres database, so the data a job must act on is moved into the past here
//! (a batch "completed" two days ago, stats of a day in 2001) rather than configured with a short
//! horizon that would reach other tests' batches; tests that claim runs use a tenant of their own.

use std::time::Duration;

use reqwest::StatusCode;
use rstest_reuse::apply;
use serde_json::{Value, json};
use sluice::config::Config;
use sluice::store::retention::Horizon;
use sluice::store::stats::{DayStats, MILLIS_PER_DAY, StatsWritten, day_of};
use sluice::store::{Millis, now_millis};

use crate::runs::crash::runs_in_database;
use crate::runs::wait_materialised;
use crate::support::{Database, KEY, Mode, TENANT, TestServer, both_modes, poll_until};
use crate::workers::{batch_of, report, worker_server};

const DAY: Millis = MILLIS_PER_DAY;
const JOB_LIMIT: Duration = Duration::from_secs(30);

/// Moving data into the past as if time had passed.
impl Database {
    /// The batch turned final `ago` earlier than it did.
    async fn completed_earlier(&self, id: &str, ago: Millis) {
        let sql = "UPDATE batches SET completed_at = completed_at - $2 WHERE id = $1";
        assert_eq!(self.execute(sql, id, ago).await, 1);
    }

    /// The batch, and its runs' last changes, happened at `at` (the day of stats they count in).
    async fn happened_at(&self, id: &str, at: Millis) {
        let sql = "UPDATE batches SET created_at = $2 WHERE id = $1";
        assert_eq!(self.execute(sql, id, at).await, 1);
        self.execute(
            "UPDATE runs SET updated_at = $2 WHERE batch_id = $1",
            id,
            at,
        )
        .await;
    }

    /// Deletes the batch and its runs outright.
    async fn delete(&self, id: &str) {
        self.execute("DELETE FROM runs WHERE batch_id = $1 AND $2 = $2", id, 0)
            .await;
        self.execute("DELETE FROM batches WHERE id = $1 AND $2 = $2", id, 0)
            .await;
    }
}

/// A line whose item fails (no task): its run is `FAILED` at once.
fn failing_line(index: u32) -> String {
    json!({ "index": index, "payload": { "i": index } }).to_string()
}

/// A line of a valid item of `task` with a payload of about `size` bytes.
fn line(index: u32, task: &str, size: usize) -> String {
    json!({ "index": index, "task": task, "payload": { "pad": "x".repeat(size) } }).to_string()
}

/// A sealed, materialised batch whose items all fail (it is `PARTIAL_FAILED` at once).
async fn failed_batch(server: &TestServer, count: u32) -> String {
    let id = server.new_batch(count).await;
    let lines: Vec<String> = (0..count).map(failing_line).collect();
    let (status, body) = server.stream(&id, lines.join("\n")).await;
    assert_eq!(body["sealed"], true, "{status}: {body}");
    let batch = wait_materialised(server, &id).await;
    assert_eq!(batch["status"], "PARTIAL_FAILED", "{batch}");
    id
}

/// Today's entry of `GET /api/v3/stats`.
async fn stats_today(server: &TestServer) -> Value {
    let (status, body) = server.get_as(KEY, "/api/v3/stats?days=3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let days = body["data"].as_array().unwrap();
    assert_eq!(days.len(), 3, "{body}");
    days[0].clone()
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn wait_stats_today(server: &TestServer, want: Value) {
    let seen = std::cell::RefCell::new(Value::Null);
    poll_until("today's stats", JOB_LIMIT, || async {
        let day = stats_today(server).await;
        let done = day == want;
        *seen.borrow_mut() = day;
        done
    })
    .await;
}

/// The offloaded payload key a stored item or run payload holds.
fn offloaded_key(payload: &[u8]) -> String {
    serde_json::from_slice(payload).unwrap()
}

/// Today's activity of the tenant, through `first` and `second` (they may be the same node): 3
/// batches (one never sealed), 6 items of sealed batches, 2 runs completed, 2 failed (one by its
/// worker, one a failed item) and one still claimed. Returns today's stats it makes.
async fn todays_activity(first: &TestServer, second: &TestServer, task: &str) -> Value {
    batch_of(first, task, 4, json!({})).await;
    let runs = first
        .claim(json!({ "tasks": [task], "limit": 4, "leaseMs": 60000 }))
        .await;
    assert_eq!(runs.len(), 4);
    let completed = second
        .complete(json!([
            report(&runs[0], "COMPLETED"),
            report(&runs[1], "COMPLETED")
        ]))
        .await;
    let failed = first.complete(json!([report(&runs[2], "FAILED")])).await;
    assert_eq!(completed.len() + failed.len(), 3);
    let mixed = second.new_batch(2).await;
    let (_, body) = second
        .stream(&mixed, [line(0, task, 10), failing_line(1)].join("\n"))
        .await;
    assert_eq!(body["sealed"], true, "{body}");
    wait_materialised(first, &mixed).await;
    first.new_batch(5).await;
    json!({"day": today(), "batches": 3, "items": 6, "runsCompleted": 2, "runsFailed": 2})
}

#[apply(both_modes)]
#[tokio::test]
async fn stats_count_batches_items_and_final_runs_per_day(mode: Mode) {
    let server = worker_server(mode, |config| config.stats_interval_ms = 50).await;
    let want = todays_activity(&server, &server, "stats").await;
    wait_stats_today(&server, want).await;
    let (_, body) = server.get_as(KEY, "/api/v3/stats").await;
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        30,
        "30 days by default"
    );
    assert_eq!(
        body["data"][1]["batches"], 0,
        "a day with nothing counts zero"
    );
    for bad in ["0", "367", "x"] {
        let (status, body) = server
            .get_as(KEY, &format!("/api/v3/stats?days={bad}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    }
    let response = server
        .client
        .get(server.url("/api/v3/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[apply(both_modes)]
#[tokio::test]
async fn a_stats_refresh_writes_only_what_changed_and_prunes_what_no_data_backs(mode: Mode) {
    let server = TestServer::start(mode).await;
    let database = Database::of(&server, mode).await;
    // A day of 2001 no other test writes in, refreshed by hand (the job refreshes recent days).
    let day = day_of(978_393_600_000);
    let days = day - 1..=day + 1;
    let noon = day * DAY + DAY / 2;
    let refresh = || server.stats.refresh_stats(days.clone(), now_millis());
    let stored = || server.stats.tenant_stats(TENANT, days.clone());

    let first = failed_batch(&server, 3).await;
    database.happened_at(&first, noon).await;
    assert_eq!(
        refresh().await.unwrap(),
        StatsWritten {
            upserted: 1,
            pruned: 0
        }
    );
    let want = |batches, items, failed| DayStats {
        day,
        batches,
        items,
        runs_completed: 0,
        runs_failed: failed,
    };
    assert_eq!(stored().await.unwrap(), vec![want(1, 3, 3)]);
    assert_eq!(
        refresh().await.unwrap(),
        StatsWritten::default(),
        "nothing changed: no row is written"
    );

    let second = failed_batch(&server, 2).await;
    database.happened_at(&second, noon + 1).await;
    assert_eq!(
        refresh().await.unwrap(),
        StatsWritten {
            upserted: 1,
            pruned: 0
        }
    );
    assert_eq!(stored().await.unwrap(), vec![want(2, 5, 5)]);
    assert_eq!(refresh().await.unwrap(), StatsWritten::default());

    database.delete(&first).await;
    database.delete(&second).await;
    assert_eq!(
        refresh().await.unwrap(),
        StatsWritten {
            upserted: 0,
            pruned: 1
        }
    );
    assert_eq!(stored().await.unwrap(), vec![]);
    assert_eq!(refresh().await.unwrap(), StatsWritten::default());
}

/// What retention must delete or keep of one batch.
struct Kept {
    id: String,
    /// Offloaded payload objects of its items.
    objects: Vec<String>,
}

/// A canceled batch of `count` items whose payloads are offloaded, with its runs written.
async fn canceled_batch(server: &TestServer, count: u32) -> Kept {
    let id = server.new_batch(count).await;
    let lines: Vec<String> = (0..count).map(|i| line(i, "email", 200)).collect();
    let (_, body) = server.stream(&id, lines.join("\n")).await;
    assert_eq!(body["sealed"], true, "{body}");
    wait_materialised(server, &id).await;
    let (status, body) = server
        .post_json_as(KEY, &format!("/api/v3/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut objects = Vec::new();
    for index in 0..count {
        let run = server.runs.run(TENANT, &id, index).await.unwrap().unwrap();
        assert_eq!(run.payload_type, "application/store");
        objects.push(offloaded_key(run.payload.as_deref().unwrap()));
    }
    Kept { id, objects }
}

/// An `ABORTED` batch that received `count` of its items (offloaded) before it was given up,
/// created `ago` ago.
async fn aborted_batch(server: &TestServer, database: &Database, count: u32, ago: Millis) -> Kept {
    let id = server.new_batch(count + 1).await;
    let lines: Vec<String> = (0..count).map(|i| line(i, "email", 200)).collect();
    let (_, body) = server.stream(&id, lines.join("\n")).await;
    assert_eq!(body["sealed"], false, "{body}");
    let mut objects = Vec::new();
    for index in 0..count {
        let item: Value =
            serde_json::from_slice(&server.queue.item(&id, index).await.unwrap().unwrap()).unwrap();
        objects.push(item["payload"].as_str().unwrap().to_owned());
    }
    // What the seal-timeout job does (without setting `completed_at`), as if `ago` had passed.
    let sql = "UPDATE batches SET status = 'ABORTED', created_at = created_at - $2 WHERE id = $1";
    assert_eq!(database.execute(sql, &id, ago).await, 1);
    Kept { id, objects }
}

async fn assert_deleted(server: &TestServer, mode: Mode, batch: &Kept) {
    let (status, body) = server.batch(&batch.id).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        runs_in_database(mode, server.data_dir(), &batch.id)
            .await
            .is_empty()
    );
    assert_eq!(server.queue.progress(&batch.id).await.unwrap().enqueued, 0);
    assert_eq!(server.queue.item(&batch.id, 0).await.unwrap(), None);
    for key in &batch.objects {
        assert_eq!(server.payloads.get(key).await.unwrap(), None, "{key}");
    }
    // Its event journal and sequence counter are gone too.
    let database = Database::of(server, mode).await;
    for table in ["batch_events", "batch_event_seqs"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE batch_id = $1");
        assert_eq!(database.count(&sql, &batch.id).await, 0, "{table}");
    }
}

async fn assert_kept(server: &TestServer, mode: Mode, batch: &Kept, runs: usize) {
    let (status, body) = server.batch(&batch.id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        runs_in_database(mode, server.data_dir(), &batch.id)
            .await
            .len(),
        runs
    );
    for key in &batch.objects {
        assert!(server.payloads.get(key).await.unwrap().is_some(), "{key}");
    }
}

#[apply(both_modes)]
#[tokio::test]
async fn retention_deletes_exactly_the_final_batches_past_the_horizon(mode: Mode) {
    let server = TestServer::start_with(mode, |config| {
        config.offload_threshold_bytes = 64;
        config.retention_seconds = 86_400;
        config.retention_interval_ms = 50;
        // Small bounds, so a batch takes several statements and ticks.
        config.retention_rows_per_statement = 3;
        config.retention_max_rows_per_tick = 7;
    })
    .await;
    let database = Database::of(&server, mode).await;
    let seal_timeout = 1_800_000;

    let old_canceled = canceled_batch(&server, 8).await;
    database.completed_earlier(&old_canceled.id, 2 * DAY).await;
    let new_canceled = canceled_batch(&server, 4).await;
    // Turned final just inside the horizon.
    let recent_canceled = canceled_batch(&server, 2).await;
    database
        .completed_earlier(&recent_canceled.id, DAY - 600_000)
        .await;
    let old_aborted = aborted_batch(&server, &database, 5, 2 * DAY).await;
    // Aborted at most a seal timeout after its creation: still inside the horizon.
    let recent_aborted = aborted_batch(&server, &database, 2, DAY + seal_timeout - 600_000).await;
    // Not final (its runs wait for workers): never deleted, however old.
    let processing = server.new_batch(3).await;
    let lines: Vec<String> = (0..3).map(|i| line(i, "keep", 10)).collect();
    let (_, body) = server.stream(&processing, lines.join("\n")).await;
    assert_eq!(body["sealed"], true, "{body}");
    wait_materialised(&server, &processing).await;
    let sql = "UPDATE batches SET created_at = created_at - $2 WHERE id = $1";
    database.execute(sql, &processing, 9 * DAY).await;

    for batch in [&old_canceled, &old_aborted] {
        poll_until("the batch is deleted", JOB_LIMIT, || async {
            server.batch(&batch.id).await.0 == StatusCode::NOT_FOUND
        })
        .await;
        assert_deleted(&server, mode, batch).await;
    }
    // Several ticks have run since.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_kept(&server, mode, &new_canceled, 4).await;
    assert_kept(&server, mode, &recent_canceled, 2).await;
    assert_kept(&server, mode, &recent_aborted, 0).await;
    assert_eq!(
        server
            .queue
            .progress(&recent_aborted.id)
            .await
            .unwrap()
            .enqueued,
        2
    );
    let (status, body) = server.batch(&processing).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("PROCESSING"))
    );
    assert_eq!(
        runs_in_database(mode, server.data_dir(), &processing)
            .await
            .len(),
        3
    );
}

#[tokio::test]
async fn two_nodes_never_hold_the_same_batch_for_deletion() {
    let (a, b) = (
        TestServer::start(Mode::Production).await,
        TestServer::start(Mode::Production).await,
    );
    let mut ids = Vec::new();
    for _ in 0..12 {
        let id = a.new_batch(3).await;
        let (status, body) = a
            .post_json_as(KEY, &format!("/api/v3/batches/{id}/cancel"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(id);
    }
    // A horizon in the future: every final batch is past it, these and other tests' alike (held
    // here for a moment, then released).
    let now = now_millis();
    let horizon = Horizon {
        final_before: now + 60_000,
        aborted_created_before: now + 60_000,
    };
    let hold = |server: &TestServer, token: &'static str| {
        let retention = server.retention.clone();
        async move {
            let mut held = Vec::new();
            loop {
                let batches = retention
                    .hold_expired(token, horizon, now, now + 60_000, 5)
                    .await
                    .unwrap();
                if batches.is_empty() {
                    return held;
                }
                held.extend(batches.into_iter().map(|batch| batch.id));
            }
        }
    };
    let (held_a, held_b) = tokio::join!(hold(&a, "node-a"), hold(&b, "node-b"));
    for id in &held_a {
        assert!(!held_b.contains(id), "{id} held by both nodes");
    }
    for id in &ids {
        assert!(
            held_a.contains(id) || held_b.contains(id),
            "{id} held by neither"
        );
    }
    // A held batch is deleted only by its holder.
    let held_by_a = ids.iter().find(|id| held_a.contains(id)).unwrap_or(&ids[0]);
    assert!(!b.retention.delete_batch(held_by_a, "node-c").await.unwrap());
    for (server, held, token) in [(&a, &held_a, "node-a"), (&b, &held_b, "node-b")] {
        for id in held {
            server.retention.release(id, token).await.unwrap();
        }
    }
    assert_eq!(a.batch(held_by_a).await.0, StatusCode::OK);
}

#[tokio::test]
async fn two_nodes_running_every_job_apply_each_change_once() {
    let tenant = format!("jobs-{:016x}", rand::random::<u64>());
    let node = || {
        let tenant = tenant.clone();
        TestServer::start_with(Mode::Production, move |config: &mut Config| {
            config.api_keys = Some(format!("{tenant}:{KEY}"));
            config.lease_sweep_interval_ms = 50;
            config.stats_interval_ms = 50;
            config.retention_interval_ms = 50;
            config.retention_seconds = 86_400;
            config.retention_rows_per_statement = 2;
            config.retention_max_rows_per_tick = 5;
        })
    };
    let (a, b) = (node().await, node().await);
    let database = Database::of(&a, Mode::Production).await;

    // Deleted by retention: final two days ago, created (and counted in stats) three days ago.
    let mut expired = Vec::new();
    for n in 0..6 {
        let server = if n % 2 == 0 { &a } else { &b };
        let id = failed_batch(server, 4).await;
        database.completed_earlier(&id, 2 * DAY).await;
        database.happened_at(&id, now_millis() - 3 * DAY).await;
        expired.push(id);
    }
    let want = todays_activity(&a, &b, "both").await;

    for id in &expired {
        poll_until("the expired batch is deleted", JOB_LIMIT, || async {
            a.batch(id).await.0 == StatusCode::NOT_FOUND
        })
        .await;
        assert!(
            runs_in_database(Mode::Production, a.data_dir(), id)
                .await
                .is_empty()
        );
    }
    wait_stats_today(&a, want.clone()).await;
    // Both nodes keep refreshing: the counts stay exact on both.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats_today(&a).await, want);
    assert_eq!(stats_today(&b).await, want);
}
