//! Prometheus metrics: every metric Sluice records, by name, and the `/metrics` listener.
//!
//! Recording goes through the `metrics` facade, so it costs next to nothing when no listener is
//! configured (no recorder is installed then). Names and labels are listed here and nowhere else.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::dependency::DependencyError;
use crate::tasks;

/// Latency buckets in seconds, from a local write to a slow object store.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How often histograms are compacted while nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Only fails if another recorder was installed first, which Sluice never does.
            metrics::set_global_recorder(recorder).ok();
            handle
        })
        .clone()
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled, with the histograms'
/// upkeep alongside.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let handle = install();
    let upkeep = {
        let handle = handle.clone();
        tasks::every(
            "metrics-upkeep",
            UPKEEP_INTERVAL,
            UPKEEP_INTERVAL,
            shutdown.clone(),
            move || {
                handle.run_upkeep();
                std::future::ready(())
            },
        )
    };
    let router = Router::new().route("/metrics", get(move || async move { handle.render() }));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    tasks::join_all(vec![upkeep]).await;
    served
}

pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    counter!("sluice_http_requests_total", &labels).increment(1);
    histogram!(
        "sluice_http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method.to_owned()
    )
    .record(elapsed.as_secs_f64());
}

/// Items by outcome: `accepted`, `deduplicated`, `failed` (stored as failed items) or `rejected`.
pub fn items(outcome: &'static str, count: u64) {
    if count > 0 {
        counter!("sluice_items_total", "outcome" => outcome).increment(count);
    }
}

/// A failed or rejected item, by its error code.
pub fn item_error(outcome: &'static str, code: &'static str) {
    counter!("sluice_item_errors_total", "outcome" => outcome, "code" => code).increment(1);
}

/// Phase 2 body bytes, as sent (`wire`) or after decompression (`decoded`).
pub fn body_bytes(kind: &'static str, bytes: u64) {
    counter!("sluice_body_bytes_total", "kind" => kind).increment(bytes);
}

pub fn offload_latency(elapsed: Duration) {
    histogram!("sluice_offload_duration_seconds").record(elapsed.as_secs_f64());
}

/// An offloaded payload whose line lost its index to an earlier item, removed from the store.
pub fn offloaded_payload_discarded() {
    counter!("sluice_offloaded_payloads_discarded_total").increment(1);
}

pub fn batch_sealed() {
    counter!("sluice_batches_sealed_total").increment(1);
}

pub fn streams_in_flight(delta: f64) {
    gauge!("sluice_streams_in_flight").increment(delta);
}

/// Item slots held by streams: each stream holds STREAMING_BATCH_INGEST_CONCURRENCY, the most
/// items it can have in flight, for its whole life.
pub fn item_slots_in_use(delta: f64) {
    gauge!("sluice_item_slots_in_use").increment(delta);
}

/// A request turned away before any work: `overloaded` (503: a stream over the node's bounds),
/// `status_writes` (503: a worker call finding the node's status writes queued to capacity),
/// `rate_limited` (429).
pub fn request_shed(reason: &'static str) {
    counter!("sluice_requests_shed_total", "reason" => reason).increment(1);
}

/// A connection closed after an answer given before its body's end: how the drain of the rest
/// ended (`drained`, `byte_cap`, `time_cap`, `broken`, or `refused` when every linger slot was
/// taken), and the body bytes it threw away.
pub fn lingering_close(end: &'static str, discarded_bytes: u64) {
    counter!("sluice_lingering_closes_total", "end" => end).increment(1);
    if discarded_bytes > 0 {
        counter!("sluice_lingering_discarded_bytes_total").increment(discarded_bytes);
    }
}

pub fn dependency_error(error: &DependencyError) {
    let kind = if error.is_unavailable() {
        "unavailable"
    } else {
        "failed"
    };
    counter!(
        "sluice_dependency_errors_total",
        "dependency" => error.dependency().label(),
        "kind" => kind
    )
    .increment(1);
}

/// Runs written by the materialiser, and how long each chunk's commit took.
pub fn chunk_committed(elapsed: Duration, runs: usize) {
    histogram!("sluice_materialise_chunk_commit_seconds").record(elapsed.as_secs_f64());
    counter!("sluice_runs_materialised_total").increment(runs as u64);
}

/// A batch whose runs are all written and whose queue items are deleted.
pub fn batch_materialised() {
    counter!("sluice_batches_materialised_total").increment(1);
}

/// Sealed batches whose runs are not all written yet (or whose queue items are not deleted).
pub fn batches_waiting(count: u64) {
    gauge!("sluice_batches_waiting").set(count as f64);
}

/// Journal rows written, by event kind (`batch`, `run`).
pub fn journal_rows_written(kind: &'static str, rows: u64) {
    counter!("sluice_journal_rows_written_total", "kind" => kind).increment(rows);
}

/// Insert statements the journal writer ran (one per flush, one per row when it falls back).
pub fn journal_insert_statements(count: u64) {
    counter!("sluice_journal_insert_statements_total").increment(count);
}

pub fn journal_flushed(elapsed: Duration) {
    histogram!("sluice_journal_flush_duration_seconds").record(elapsed.as_secs_f64());
}

/// Events not written: `journal_closed` (after their batch's terminal event), `store_failed`
/// (the store was down at shutdown), `writer_stopped`.
pub fn journal_events_dropped(reason: &'static str, count: u64) {
    counter!("sluice_journal_events_dropped_total", "reason" => reason).increment(count);
}

/// From an event being queued to its publish after commit.
pub fn event_publish_delay(elapsed: Duration) {
    histogram!("sluice_event_publish_delay_seconds").record(elapsed.as_secs_f64());
}

/// Event streams open on this node.
pub fn event_streams_open(delta: f64) {
    gauge!("sluice_event_streams_open").increment(delta);
}

/// One flush of a status flusher: how many writes it grouped, how long it took, whether it
/// committed.
pub fn flush(flusher: &'static str, items: usize, elapsed: Duration, committed: bool) {
    let outcome = if committed { "committed" } else { "failed" };
    counter!("sluice_status_flushes_total", "flusher" => flusher, "outcome" => outcome)
        .increment(1);
    histogram!("sluice_status_flush_items", "flusher" => flusher).record(items as f64);
    histogram!("sluice_status_flush_seconds", "flusher" => flusher).record(elapsed.as_secs_f64());
}

/// Runs handed to workers by claims.
pub fn runs_claimed(count: usize) {
    counter!("sluice_runs_claimed_total").increment(count as u64);
}

/// A worker's report of a run, by what it asked and what became of it.
pub fn run_reported(
    reported: &'static str,
    result: &crate::store::work::Fenced<crate::store::work::Completed>,
) {
    use crate::store::work::Fenced;
    let outcome = match result {
        Fenced::Applied(done) => done.status.as_str(),
        Fenced::LeaseLost => "LEASE_LOST",
        Fenced::RunNotFound => "RUN_NOT_FOUND",
    };
    counter!("sluice_run_reports_total", "reported" => reported, "outcome" => outcome).increment(1);
}

/// Runs whose lease expired, returned for another attempt or failed.
pub fn leases_expired(returned: u64, failed: u64) {
    if returned > 0 {
        counter!("sluice_leases_expired_total", "outcome" => "returned").increment(returned);
    }
    if failed > 0 {
        counter!("sluice_leases_expired_total", "outcome" => "failed").increment(failed);
    }
}

/// A batch turned final when its last run did.
pub fn batch_finished(status: &str) {
    let status = match status {
        "COMPLETED" => "COMPLETED",
        _ => "PARTIAL_FAILED",
    };
    counter!("sluice_batches_finished_total", "status" => status).increment(1);
}

/// One tick of a periodic job: how it ended (`idle`, `worked`, `failed`) and how long it took.
pub fn job_ran(job: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!("sluice_job_runs_total", "job" => job, "outcome" => outcome).increment(1);
    histogram!("sluice_job_duration_seconds", "job" => job).record(elapsed.as_secs_f64());
}

/// What a retention tick deleted: `batches`, `runs`, `events` (rows) and `objects` (payloads).
pub fn retention_deleted(kind: &'static str, count: u64) {
    if count > 0 {
        counter!("sluice_retention_deleted_total", "kind" => kind).increment(count);
    }
}

/// Rows a stats refresh wrote (upserted where a count changed, plus pruned): the last tick's in
/// the gauge, every tick's in the counter. A tick with nothing new writes 0.
pub fn stats_rows_written(rows: u64) {
    gauge!("sluice_stats_rows_written").set(rows as f64);
    counter!("sluice_stats_rows_written_total").increment(rows);
}
