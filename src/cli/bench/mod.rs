//! `sluice bench`: a load generator. Creates batches and streams generated NDJSON to a running
//! server over real HTTP (chunked bodies), then reports items/s, MB/s, request latency
//! percentiles and the server's peak RSS.
//!
//! With `--missing-share` the batches stay unsealed, and `--probes` then times the unsealed answer
//! (an empty-body Phase 2 request, as `sluice send` makes after a failure): first one probe at a
//! time, then `--probe-concurrency` at once, with the server's peak RSS during those.

mod body;
mod stats;
mod work;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_compression::tokio::bufread::GzipEncoder;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::io::{ReaderStream, StreamReader};

use self::body::{BodyShape, generate};
use self::stats::{Percentiles, peak_rss_bytes, percentiles, reset_peak_rss, rss_bytes};
use crate::protocol::runs::{BatchSummary, Page};
use crate::protocol::wire::{CreateBatchRequest, CreateBatchResponse, IngestResponse};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server base URL.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:3030")]
    pub url: String,
    /// API key.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Items per batch.
    #[arg(long, default_value_t = 100_000)]
    pub items: u32,
    /// Batches to create and stream.
    #[arg(long, default_value_t = 1)]
    pub batches: u32,
    /// Requests (create + stream) in flight at once.
    #[arg(long, default_value_t = 1)]
    pub requests: usize,
    /// Bytes of each item's payload.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Compress request bodies with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Share of items sent as an oversized line (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub oversized_share: f64,
    /// Bytes of an oversized item's payload; more than the server's line limit.
    #[arg(long, default_value_t = 3_145_729)]
    pub oversized_bytes: usize,
    /// Share of items sent twice (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Share of indexes left out of each body, so batches stay unsealed (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub missing_share: f64,
    /// Leave out the last `--missing-share` of the indexes instead of indexes at random.
    #[arg(long)]
    pub missing_tail: bool,
    /// Empty-body requests to each batch after streaming it, timed (needs `--missing-share`).
    #[arg(long, default_value_t = 0)]
    pub probes: u32,
    /// Probes in flight at once in the second round of probes.
    #[arg(long, default_value_t = 20)]
    pub probe_concurrency: usize,
    /// Bytes per HTTP body chunk.
    #[arg(long, default_value_t = 64 * 1024)]
    pub chunk_bytes: usize,
    /// PID of a server on this machine, to report its peak RSS during the run.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A name for this run in the report.
    #[arg(long, default_value = "bench")]
    pub label: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// After each batch is sealed, wait until all its runs are written (`materialisedCount =
    /// runCount`, read every 10 ms) and report how fast they were.
    #[arg(long)]
    pub wait_runs: bool,
    /// After every run is written (needs `--wait-runs`), this many loops claim runs and complete
    /// them until none is left, and report runs/s end to end.
    #[arg(long, default_value_t = 0)]
    pub work_claimers: usize,
    /// Runs per claim and per complete call in the worker phase.
    #[arg(long, default_value_t = 1000)]
    pub work_batch: u32,
    /// After the worker phase, single completions timed one at a time on the idle server.
    #[arg(long, default_value_t = 0)]
    pub idle_completes: u32,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub label: String,
    pub batches: u32,
    pub items_per_batch: u32,
    pub items: u64,
    pub body_bytes: u64,
    pub seconds: f64,
    pub items_per_second: f64,
    pub megabytes_per_second: f64,
    pub sealed_batches: u32,
    pub request_latency: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbeReport>,
    /// With `--wait-runs`: from the first seal to the last batch's runs all written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_per_second: Option<f64>,
    /// With `--work-claimers`: claiming and completing every run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<work::WorkReport>,
}

/// What one batch's run measured.
struct BatchTimes {
    latency: Duration,
    sealed: bool,
    id: String,
    /// When the seal was answered and when every run was written (with `--wait-runs`).
    runs: Option<(Instant, Instant)>,
}

/// Timings of the unsealed answers.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub probes_per_round: u32,
    pub concurrency: usize,
    /// One probe at a time, error answers included.
    pub sequential_latency: Percentiles,
    pub sequential_errors: u32,
    /// `concurrency` probes at once, error answers included.
    pub concurrent_latency: Percentiles,
    pub concurrent_errors: u32,
    /// Ranges in the last answer.
    pub missing_ranges: usize,
    /// The server's RSS before the probes, and its peak during them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("a probe of batch {0} found it sealed: leave indexes out with --missing-share")]
    ProbeSealed(String),
}

struct Run {
    client: reqwest::Client,
    args: BenchArgs,
    body_bytes: Arc<AtomicU64>,
}

impl Run {
    async fn batch(&self, seed: u64) -> Result<BatchTimes, BenchError> {
        let started = Instant::now();
        let create = CreateBatchRequest {
            run_count: i64::from(self.args.items),
            task_identifiers: Some(vec!["bench".into()]),
            idempotency_key: None,
            parent_run_id: None,
            resume_parent_on_completion: None,
        };
        let response = self
            .client
            .post(format!("{}/api/v3/batches", self.args.url))
            .bearer_auth(&self.args.key)
            .json(&create)
            .send()
            .await?;
        let created: CreateBatchResponse = checked(response).await?.json().await?;

        let shape = BodyShape {
            items: self.args.items,
            payload_bytes: self.args.payload_bytes,
            oversized_share: self.args.oversized_share,
            oversized_bytes: self.args.oversized_bytes,
            duplicate_share: self.args.duplicate_share,
            missing_share: self.args.missing_share,
            missing_tail: self.args.missing_tail,
            chunk_bytes: self.args.chunk_bytes,
            seed,
        };
        let body_bytes = self.body_bytes.clone();
        let counted = generate(shape).inspect_ok(move |chunk| {
            body_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        });
        let mut request = self
            .client
            .post(format!(
                "{}/api/v3/batches/{}/items",
                self.args.url, created.id
            ))
            .bearer_auth(&self.args.key)
            .header("content-type", "application/x-ndjson");
        let body = if self.args.gzip {
            request = request.header("content-encoding", "gzip");
            let encoder = GzipEncoder::new(StreamReader::new(counted));
            reqwest::Body::wrap_stream(ReaderStream::with_capacity(encoder, self.args.chunk_bytes))
        } else {
            reqwest::Body::wrap_stream(counted)
        };
        let response = request.body(body).send().await?;
        let status = response.status();
        let ingested: IngestResponse = if status.as_u16() == 422 {
            response.json().await?
        } else {
            checked(response).await?.json().await?
        };
        let latency = started.elapsed();
        let runs = if self.args.wait_runs && ingested.sealed {
            let sealed_at = Instant::now();
            self.wait_runs(&created.id).await?;
            Some((sealed_at, Instant::now()))
        } else {
            None
        };
        Ok(BatchTimes {
            latency,
            sealed: ingested.sealed,
            id: created.id,
            runs,
        })
    }

    /// Polls the tenant's newest batches (the list shows `materialisedCount` without counting
    /// runs by status, so polling adds no work of its own to the store).
    async fn wait_runs(&self, id: &str) -> Result<(), BenchError> {
        loop {
            let response = self
                .client
                .get(format!("{}/api/v3/batches?limit=1000", self.args.url))
                .bearer_auth(&self.args.key)
                .send()
                .await?;
            let page: Page<BatchSummary> = checked(response).await?.json().await?;
            let done = page
                .data
                .iter()
                .find(|batch| batch.id == id)
                .is_some_and(|batch| batch.materialised_count == batch.run_count);
            if done {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One unsealed answer: an empty body to a batch that misses items. Returns how long it took
    /// and how many ranges it listed, or `None` for an error answer (a 503 when a dependency timed
    /// out), which is timed all the same.
    async fn probe(&self, id: &str) -> Result<(Duration, Option<usize>), BenchError> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/api/v3/batches/{id}/items", self.args.url))
            .bearer_auth(&self.args.key)
            .header("content-type", "application/x-ndjson")
            .body(Vec::new())
            .send()
            .await?;
        if !response.status().is_success() {
            response.bytes().await?;
            return Ok((started.elapsed(), None));
        }
        let answer: IngestResponse = response.json().await?;
        let elapsed = started.elapsed();
        match answer.missing {
            Some(missing) if !answer.sealed => Ok((elapsed, Some(missing.len()))),
            _ => Err(BenchError::ProbeSealed(id.to_owned())),
        }
    }

    /// `count` probes spread over `ids`, `concurrency` at a time.
    async fn probes(
        self: &Arc<Self>,
        ids: &[String],
        count: u32,
        concurrency: usize,
    ) -> Result<ProbeRound, BenchError> {
        let results: Vec<Result<(Duration, Option<usize>), BenchError>> =
            futures::stream::iter(0..count as usize)
                .map(|n| {
                    let run = self.clone();
                    let id = ids[n % ids.len()].clone();
                    async move { run.probe(&id).await }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        let mut round = ProbeRound::default();
        for result in results {
            let (latency, listed) = result?;
            round.latencies.push(latency);
            match listed {
                Some(listed) => round.missing_ranges = listed,
                None => round.errors += 1,
            }
        }
        Ok(round)
    }
}

#[derive(Default)]
struct ProbeRound {
    latencies: Vec<Duration>,
    /// Error answers.
    errors: u32,
    /// Ranges listed by the last answer.
    missing_ranges: usize,
}

async fn checked(response: reqwest::Response) -> Result<reqwest::Response, BenchError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(BenchError::Status {
        status: status.as_u16(),
        body,
    })
}

/// Runs the benchmark described by `args`.
pub async fn bench(args: BenchArgs) -> Result<BenchReport, BenchError> {
    if let Some(pid) = args.server_pid
        && !reset_peak_rss(pid)
    {
        eprintln!("sluice bench: cannot reset the peak RSS of {pid}; it is the peak since start");
    }
    let run = Arc::new(Run {
        client: reqwest::Client::new(),
        args: args.clone(),
        body_bytes: Arc::new(AtomicU64::new(0)),
    });
    let started = Instant::now();
    let results: Vec<Result<BatchTimes, BenchError>> =
        futures::stream::iter(0..u64::from(args.batches))
            .map(|seed| {
                let run = run.clone();
                async move { run.batch(seed).await }
            })
            .buffer_unordered(args.requests.max(1))
            .collect()
            .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(results.len());
    let mut sealed_batches = 0;
    let mut ids = Vec::with_capacity(results.len());
    let mut runs_span: Option<(Instant, Instant)> = None;
    for result in results {
        let times = result?;
        latencies.push(times.latency);
        sealed_batches += u32::from(times.sealed);
        ids.push(times.id);
        if let Some((first, last)) = times.runs {
            runs_span = Some(match runs_span {
                Some((a, b)) => (a.min(first), b.max(last)),
                None => (first, last),
            });
        }
    }
    let runs_seconds = runs_span.map(|(first, last)| (last - first).as_secs_f64());
    let items = u64::from(args.items) * u64::from(args.batches);
    let body_bytes = run.body_bytes.load(Ordering::Relaxed);
    let server_peak_rss_bytes = args.server_pid.and_then(peak_rss_bytes);
    let probes = match args.probes {
        0 => None,
        count => Some(probe_rounds(&run, &ids, count).await?),
    };
    let work = match args.work_claimers {
        0 => None,
        claimers => Some(work::work_phase(&run, claimers).await?),
    };
    Ok(BenchReport {
        label: args.label,
        batches: args.batches,
        items_per_batch: args.items,
        items,
        body_bytes,
        seconds,
        items_per_second: items as f64 / seconds,
        megabytes_per_second: body_bytes as f64 / seconds / 1e6,
        sealed_batches,
        request_latency: percentiles(&mut latencies),
        server_peak_rss_bytes,
        probes,
        runs_per_second: runs_seconds.map(|seconds| items as f64 / seconds),
        runs_seconds,
        work,
    })
}

/// A round of probes one at a time, then one with `probe_concurrency` at once, watching the
/// server's memory from the first probe on.
async fn probe_rounds(
    run: &Arc<Run>,
    ids: &[String],
    count: u32,
) -> Result<ProbeReport, BenchError> {
    let pid = run.args.server_pid;
    let server_rss_before_bytes = pid.and_then(rss_bytes);
    if let Some(pid) = pid {
        reset_peak_rss(pid);
    }
    let concurrency = run.args.probe_concurrency;
    let mut sequential = run.probes(ids, count, 1).await?;
    let mut concurrent = run.probes(ids, count, concurrency).await?;
    Ok(ProbeReport {
        probes_per_round: count,
        concurrency,
        sequential_latency: percentiles(&mut sequential.latencies),
        sequential_errors: sequential.errors,
        concurrent_latency: percentiles(&mut concurrent.latencies),
        concurrent_errors: concurrent.errors,
        missing_ranges: concurrent.missing_ranges.max(sequential.missing_ranges),
        server_rss_before_bytes,
        server_peak_rss_bytes: pid.and_then(peak_rss_bytes),
    })
}

fn print_table(report: &BenchReport) {
    let latency = &report.request_latency;
    println!("{:<24} {}", "run", report.label);
    println!(
        "{:<24} {} × {} items",
        "batches", report.batches, report.items_per_batch
    );
    println!(
        "{:<24} {} of {}",
        "sealed", report.sealed_batches, report.batches
    );
    println!("{:<24} {:.3}", "seconds", report.seconds);
    println!("{:<24} {:.0}", "items/s", report.items_per_second);
    println!(
        "{:<24} {:.1}",
        "MB/s (uncompressed)", report.megabytes_per_second
    );
    println!(
        "{:<24} p50 {:.2} · p90 {:.2} · p99 {:.2} · max {:.2}",
        "request latency (ms)", latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
    );
    if let (Some(seconds), Some(rate)) = (report.runs_seconds, report.runs_per_second) {
        println!(
            "{:<24} {seconds:.3} s after the seal · {rate:.0} runs/s",
            "runs written"
        );
    }
    if let Some(rss) = report.server_peak_rss_bytes {
        println!("{:<24} {:.1} MiB", "server peak RSS", mib(rss));
    }
    if let Some(work) = &report.work {
        println!(
            "{:<24} {} runs in {:.3} s · {:.0} runs/s ({} claimers × {} per call)",
            "claimed + completed",
            work.runs,
            work.seconds,
            work.runs_per_second,
            work.claimers,
            work.runs_per_call
        );
        for (name, latency) in [
            ("claim calls", Some(&work.claim_latency)),
            ("complete calls", Some(&work.complete_latency)),
            ("idle single complete", work.idle_complete_latency.as_ref()),
        ] {
            if let Some(latency) = latency {
                println!(
                    "{:<24} p50 {:.2} · p90 {:.2} · p99 {:.2} · max {:.2} ms",
                    name, latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
                );
            }
        }
    }
    if let Some(probes) = &report.probes {
        for (name, latency) in [
            ("probes one at a time", &probes.sequential_latency),
            ("probes at once", &probes.concurrent_latency),
        ] {
            println!(
                "{:<24} p50 {:.2} · p90 {:.2} · p99 {:.2} · max {:.2} ms",
                name, latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
            );
        }
        println!(
            "{:<24} {} per round, {} at once; {} ranges listed; {} + {} error answers",
            "probes",
            probes.probes_per_round,
            probes.concurrency,
            probes.missing_ranges,
            probes.sequential_errors,
            probes.concurrent_errors
        );
        if let (Some(before), Some(peak)) =
            (probes.server_rss_before_bytes, probes.server_peak_rss_bytes)
        {
            println!(
                "{:<24} {:.1} MiB before, {:.1} MiB peak",
                "server RSS (probes)",
                mib(before),
                mib(peak)
            );
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub async fn run(args: BenchArgs) -> ExitCode {
    let json = args.json;
    let leaves_gaps = args.missing_share > 0.0;
    match bench(args).await {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("report serialises")
                );
            } else {
                print_table(&report);
            }
            // Batches with indexes left out are meant to stay unsealed.
            let expected_sealed = if leaves_gaps { 0 } else { report.batches };
            if report.sealed_batches == expected_sealed {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "sluice bench: {} of {} batch(es) sealed, {expected_sealed} expected",
                    report.sealed_batches, report.batches
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("sluice bench: {error}");
            ExitCode::FAILURE
        }
    }
}
