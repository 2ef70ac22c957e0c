//! `sluice work`: claims runs of the given tasks and runs a command once per run.
//!
//! This module is the command line and the loop: claim as many runs as there are free slots
//! (long-polling while none is pending), run each in its own task (`command`), keep their leases
//! alive with batched heartbeats, and report results in batched completions. Every call to the
//! server is retried on connection errors and `503`/`429` with backoff. Ctrl-C (or SIGTERM) stops
//! claiming; running commands finish and are reported; a second Ctrl-C exits at once.

mod command;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::command::{Ended, run_command};
use super::send::RetryPolicy;
use super::send::http::{CallError, read_answer};
use crate::protocol::work::{
    ClaimRequest, ClaimResponse, ClaimedRun, CompleteRequest, CompleteResponse, HeartbeatRequest,
    HeartbeatResponse, MAX_RUNS_PER_CALL, ReportedError, RunLease, RunReport, RunResultError,
};

/// How long one claim waits on the server for a run when none is pending.
const CLAIM_WAIT_MS: u64 = 5_000;
/// How long a finished run's report waits for others to share its call.
const REPORT_GATHER: Duration = Duration::from_millis(20);
/// Exit code after a second Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
The command runs once per run, with the run's payload (its JSON) on stdin and SLUICE_RUN_ID,
SLUICE_BATCH_ID, SLUICE_RUN_INDEX, SLUICE_ATTEMPT and SLUICE_TASK in its environment. Exit status 0
reports the run COMPLETED, with stdout as its output (JSON when it parses, else a string; at most
1 MiB). Any other status reports RETRY with the end of stderr as the message: the run comes back
until it has used its attempts (options.maxAttempts, default 3), then it is FAILED.

Leases are renewed by heartbeats every third of --lease while commands run; results are reported
in batches. Calls that fail on a connection error, 429 or 5xx are retried with backoff.

Ctrl-C or SIGTERM stops claiming, lets running commands finish and reports them, then exits 0; a
second Ctrl-C exits at once (130), and the runs still held come back when their leases expire.";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct WorkArgs {
    /// Task to claim runs of; repeat for several.
    #[arg(long = "task", value_name = "NAME", required = true)]
    pub tasks: Vec<String>,
    /// Commands running at once.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Lease of each claimed run: `90s`, `500ms`, `2m` (1 s to 1 h).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Base URL of the Sluice server.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:3030")]
    pub url: String,
    /// API key.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Print no progress and no summary (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `90s`, `500ms`, `2m`, `1h`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 60s or 500ms"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&duration) {
        return Err(format!("{text:?} must be from 1s to 1h"));
    }
    Ok(duration)
}

/// What became of the runs this worker took.
#[derive(Default)]
struct Tally {
    claimed: AtomicU64,
    completed: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    lease_lost: AtomicU64,
    running: AtomicU64,
    /// Reports that could not be delivered.
    undelivered: AtomicU64,
}

impl Tally {
    fn line(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut line = format!(
            "{} runs claimed: {} completed, {} retried, {} failed",
            get(&self.claimed),
            get(&self.completed),
            get(&self.retried),
            get(&self.failed),
        );
        for (count, what) in [
            (get(&self.lease_lost), "lease lost"),
            (get(&self.undelivered), "not reported"),
            (get(&self.running), "running"),
        ] {
            if count > 0 {
                line.push_str(&format!(", {count} {what}"));
            }
        }
        line
    }
}

/// The server, with retries of transient failures.
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    retry: RetryPolicy,
}

impl Client {
    /// POSTs `body`; transient failures are retried until `give_up` is cancelled (or, with no
    /// token, until the retry policy gives up).
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        give_up: Option<&CancellationToken>,
    ) -> Result<T, CallError> {
        let mut failures = 0;
        loop {
            let sent = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .json(body)
                .send()
                .await;
            let answer = match sent {
                Ok(response) => read_answer(response).await,
                Err(error) => Err(CallError::Transport(error)),
            };
            let error = match answer {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            failures += 1;
            let exhausted = match give_up {
                Some(token) => token.is_cancelled(),
                None => failures > self.retry.max_retries,
            };
            if exhausted {
                return Err(error);
            }
            let delay = self
                .retry
                .delay(failures, error.retry_after(), rand::random::<f64>());
            tracing::warn!(path, error = %error.describe(), ?delay, "call failed; retrying");
            match give_up {
                Some(token) => {
                    tokio::select! {
                        () = token.cancelled() => return Err(error),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
        }
    }

    /// The payload bytes of a run whose payload is offloaded.
    async fn payload(&self, url: &str) -> Result<Vec<u8>, CallError> {
        let mut failures = 0;
        loop {
            let sent = self
                .http
                .get(format!("{}{url}", self.base))
                .bearer_auth(&self.key)
                .send()
                .await;
            let error = match sent {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(bytes) => return Ok(bytes.to_vec()),
                    Err(error) => CallError::Transport(error),
                },
                Ok(response) => match read_answer::<serde_json::Value>(response).await {
                    Err(error) => error,
                    Ok(_) => unreachable!("a failed status never reads as success"),
                },
                Err(error) => CallError::Transport(error),
            };
            failures += 1;
            if !error.is_retryable() || failures > self.retry.max_retries {
                return Err(error);
            }
            let delay = self
                .retry
                .delay(failures, error.retry_after(), rand::random::<f64>());
            tokio::time::sleep(delay).await;
        }
    }
}

/// Runs held by this worker: run id → lease id, heartbeated until reported.
type Held = Arc<Mutex<HashMap<String, String>>>;

struct Worker {
    client: Arc<Client>,
    argv: Arc<Vec<String>>,
    tasks: Vec<String>,
    concurrency: u32,
    lease: Duration,
    tally: Arc<Tally>,
    progress: ProgressBar,
}

impl Worker {
    /// Claims and runs until `stop`; then waits for running commands and their reports.
    async fn run(self, stop: CancellationToken) -> Result<(), CallError> {
        let slots = Arc::new(Semaphore::new(self.concurrency as usize));
        let held: Held = Arc::default();
        let (reports, to_report) = mpsc::channel::<RunReport>(MAX_RUNS_PER_CALL);
        let reporter = tokio::spawn(report_all(
            self.client.clone(),
            to_report,
            held.clone(),
            self.tally.clone(),
            self.progress.clone(),
        ));
        let heartbeats_stop = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat_all(
            self.client.clone(),
            held.clone(),
            self.lease,
            heartbeats_stop.clone(),
        ));
        let mut running = JoinSet::new();
        let mut failed = None;
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore stays open"),
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let request = ClaimRequest {
                tasks: Some(self.tasks.clone()),
                limit: Some(permits.len() as i64),
                lease_ms: Some(self.lease.as_millis() as i64),
                wait_ms: Some(CLAIM_WAIT_MS as i64),
            };
            // A claim in flight is not cut by Ctrl-C: runs it was given are run, not left to
            // expire (which would use one of their attempts).
            let claimed: ClaimResponse = match self
                .client
                .post("/api/v3/runs/claim", &request, Some(&stop))
                .await
            {
                Ok(claimed) => claimed,
                Err(error) if error.is_retryable() => continue,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            };
            self.tally
                .claimed
                .fetch_add(claimed.runs.len() as u64, Ordering::Relaxed);
            for run in claimed.runs {
                let permit = permits
                    .pop()
                    .expect("the server gives at most `limit` runs");
                held.lock()
                    .expect("not poisoned")
                    .insert(run.id.clone(), run.lease_id.clone());
                self.tally.running.fetch_add(1, Ordering::Relaxed);
                let (client, argv, reports, tally) = (
                    self.client.clone(),
                    self.argv.clone(),
                    reports.clone(),
                    self.tally.clone(),
                );
                running.spawn(async move {
                    let report = execute(&client, &argv, run).await;
                    tally.running.fetch_sub(1, Ordering::Relaxed);
                    // The slot is given back once the report is queued: a server that does not
                    // take reports stops the claims too.
                    let _ = reports.send(report).await;
                    drop(permit);
                });
            }
            self.progress.set_message(self.tally.line());
            while running.try_join_next().is_some() {}
        }
        if stop.is_cancelled() {
            self.progress
                .println("stopping: waiting for running commands to finish");
        }
        while running.join_next().await.is_some() {}
        drop(reports);
        let _ = reporter.await;
        heartbeats_stop.cancel();
        let _ = heartbeats.await;
        failed.map_or(Ok(()), Err)
    }
}

/// Runs the command for `run` and says how to report it.
async fn execute(client: &Client, argv: &[String], run: ClaimedRun) -> RunReport {
    let payload = match (&run.payload, &run.payload_url) {
        (Some(payload), _) => Ok(payload.get().as_bytes().to_vec()),
        (None, Some(url)) => client.payload(url).await,
        (None, None) => Ok(Vec::new()),
    };
    let ended = match payload {
        Ok(payload) => run_command(argv, &run, &payload).await,
        Err(error) => Ended::Failed {
            code: "PAYLOAD_UNREADABLE".into(),
            message: format!("could not read the payload: {}", error.describe()),
        },
    };
    let (status, output, error) = match ended {
        Ended::Succeeded(output) => (
            "COMPLETED",
            output.map(|output| {
                serde_json::value::to_raw_value(&output).expect("JSON values serialise")
            }),
            None,
        ),
        Ended::Failed { code, message } => (
            "RETRY",
            None,
            Some(ReportedError {
                code: Some(code),
                message,
            }),
        ),
    };
    RunReport {
        id: run.id,
        lease_id: run.lease_id,
        status: status.to_owned(),
        output,
        error,
        retry_delay_ms: None,
    }
}

/// Sends reports in batches: what is queued (up to a call's worth), after a short wait for more.
async fn report_all(
    client: Arc<Client>,
    mut to_report: mpsc::Receiver<RunReport>,
    held: Held,
    tally: Arc<Tally>,
    progress: ProgressBar,
) {
    while let Some(first) = to_report.recv().await {
        let mut runs = vec![first];
        let gather = tokio::time::sleep(REPORT_GATHER);
        tokio::pin!(gather);
        while runs.len() < MAX_RUNS_PER_CALL {
            tokio::select! {
                report = to_report.recv() => match report {
                    Some(report) => runs.push(report),
                    None => break,
                },
                () = &mut gather => break,
            }
        }
        let ids: Vec<String> = runs.iter().map(|run| run.id.clone()).collect();
        let answer: Result<CompleteResponse, CallError> = client
            .post("/api/v3/runs/complete", &CompleteRequest { runs }, None)
            .await;
        match answer {
            Ok(answer) => {
                for result in answer.results {
                    let counter = match (result.ok, result.status.as_deref()) {
                        (true, Some("COMPLETED")) => &tally.completed,
                        (true, Some("PENDING")) => &tally.retried,
                        (true, _) => &tally.failed,
                        (false, _) => {
                            let error = result.error.unwrap_or_else(|| RunResultError {
                                code: "UNKNOWN".into(),
                                message: "no reason given".into(),
                            });
                            progress.println(format!(
                                "run {} not reported: {}: {}",
                                result.id, error.code, error.message
                            ));
                            &tally.lease_lost
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                progress.println(format!(
                    "{} results could not be reported: {}",
                    ids.len(),
                    error.describe()
                ));
                tally
                    .undelivered
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
        }
        let mut held = held.lock().expect("not poisoned");
        for id in &ids {
            held.remove(id);
        }
        drop(held);
        progress.set_message(tally.line());
    }
}

/// Renews the leases of every held run every third of the lease, until `stop`.
async fn heartbeat_all(client: Arc<Client>, held: Held, lease: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let runs: Vec<RunLease> = held
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(id, lease_id)| RunLease {
                id: id.clone(),
                lease_id: lease_id.clone(),
            })
            .collect();
        for part in runs.chunks(MAX_RUNS_PER_CALL) {
            let request = HeartbeatRequest {
                runs: part.to_vec(),
                lease_ms: Some(lease.as_millis() as i64),
            };
            let answer: Result<HeartbeatResponse, CallError> = client
                .post("/api/v3/runs/heartbeat", &request, Some(&stop))
                .await;
            match answer {
                Ok(answer) => {
                    for result in answer.results.iter().filter(|result| !result.ok) {
                        tracing::warn!(run = %result.id, "lease lost: the run's report will be refused");
                    }
                }
                Err(error) => tracing::warn!(error = %error.describe(), "heartbeat failed"),
            }
        }
    }
}

async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
}

pub async fn run(args: WorkArgs) -> ExitCode {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("sluice-work/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            eprintln!("sluice work: {error}");
            return ExitCode::FAILURE;
        }
    };
    let progress = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("the template is valid"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    let tally = Arc::new(Tally::default());
    let worker = Worker {
        client: Arc::new(Client {
            http,
            base: args.url.trim_end_matches('/').to_owned(),
            key: args.key,
            retry: RetryPolicy::default(),
        }),
        argv: Arc::new(args.command),
        tasks: args.tasks,
        concurrency: args.concurrency,
        lease: args.lease,
        tally: tally.clone(),
        progress: progress.clone(),
    };
    let stop = CancellationToken::new();
    let signals = tokio::spawn({
        let stop = stop.clone();
        async move {
            stop_signal().await;
            stop.cancel();
            stop_signal().await;
            eprintln!("sluice work: interrupted again; exiting now");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    let result = worker.run(stop).await;
    signals.abort();
    progress.finish_and_clear();
    if !args.quiet {
        eprintln!("sluice work: {}", tally.line());
    }
    match result {
        Err(error) => {
            eprintln!("sluice work: {}", error.describe());
            ExitCode::FAILURE
        }
        Ok(()) if tally.undelivered.load(Ordering::Relaxed) > 0 => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_unit_and_stay_in_range() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("500ms").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
