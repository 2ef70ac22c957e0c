//! Work on runs: claiming with a lease (waiting for runs when asked to), heartbeats and
//! completions, for workers of one tenant.
//!
//! Every status write goes through a status flusher ([`StatusWriters`], over `crate::flusher`):
//! writes of many callers are grouped into one transaction, and each caller is answered only once
//! its write committed. Writes are fenced by lease in the store (`crate::store::work`), so a late
//! or repeated report never overwrites a newer state.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::RunsError;
use super::id::parse_run_id;
use crate::dependency::DependencyError;
use crate::events::{Events, RunEvent};
use crate::flusher::{Flush, FlushSettings, Flusher, SubmitError};
use crate::ports::Ports;
use crate::protocol::work::{
    DEFAULT_LEASE_MS, MAX_LEASE_MS, MAX_OUTPUT_BYTES, MAX_RUNS_PER_CALL, MAX_WAIT_MS, MIN_LEASE_MS,
};
use crate::store::runs::RunStatus;
use crate::store::work::{
    ClaimRequest, ClaimedRun, Completed, Completion, Fenced, Heartbeat, LeasedRun, Outcome,
    WorkStore,
};
use crate::store::{Millis, now_millis};
use crate::tasks::NamedTask;

/// How often a waiting claim looks again without being woken: runs made claimable on another
/// node, or a retry whose delay ran out, are found this late at most.
const WAIT_RECHECK: Duration = Duration::from_millis(500);
/// Longest error code and message kept from a worker.
const MAX_ERROR_CODE_BYTES: usize = 64;
const MAX_ERROR_MESSAGE_BYTES: usize = 8 * 1024;
/// Longest retry delay a worker may ask for: a day.
const MAX_RETRY_DELAY_MS: i64 = 86_400_000;

/// Wakes this node's waiting claims when runs may have become claimable here (a chunk of runs
/// committed, leases swept, runs sent back for a retry).
#[derive(Clone, Default)]
pub struct RunsReady(Arc<Notify>);

impl RunsReady {
    pub fn runs_added(&self) {
        self.0.notify_waiters();
    }
}

/// The flushers every status write goes through: claims, heartbeats, completions.
#[derive(Clone)]
pub struct StatusWriters {
    claims: Flusher<ClaimWrites>,
    heartbeats: Flusher<HeartbeatWrites>,
    completions: Flusher<CompletionWrites>,
}

impl StatusWriters {
    /// The flushers over `store`; runs that completions make final are reported to `events`.
    pub fn spawn(
        store: Arc<dyn WorkStore>,
        events: Events,
        settings: FlushSettings,
        shutdown: &CancellationToken,
    ) -> (Self, Vec<NamedTask>) {
        let (claims, claim_task) = Flusher::spawn(
            "claims",
            ClaimWrites(store.clone()),
            settings,
            shutdown.clone(),
        );
        let (heartbeats, heartbeat_task) = Flusher::spawn(
            "heartbeats",
            HeartbeatWrites(store.clone()),
            settings,
            shutdown.clone(),
        );
        let (completions, completion_task) = Flusher::spawn(
            "completions",
            CompletionWrites(store, events),
            settings,
            shutdown.clone(),
        );
        (
            Self {
                claims,
                heartbeats,
                completions,
            },
            vec![claim_task, heartbeat_task, completion_task],
        )
    }
}

struct ClaimWrites(Arc<dyn WorkStore>);
struct HeartbeatWrites(Arc<dyn WorkStore>);
struct CompletionWrites(Arc<dyn WorkStore>, Events);

#[async_trait]
impl Flush for ClaimWrites {
    type Item = ClaimRequest;
    type Outcome = Vec<ClaimedRun>;

    async fn flush(&self, items: &[ClaimRequest]) -> Result<Vec<Vec<ClaimedRun>>, DependencyError> {
        self.0.claim(items, now_millis()).await
    }

    async fn probe(&self) -> Result<(), DependencyError> {
        self.0.probe().await
    }
}

#[async_trait]
impl Flush for HeartbeatWrites {
    type Item = Heartbeat;
    type Outcome = Fenced<Millis>;

    async fn flush(&self, items: &[Heartbeat]) -> Result<Vec<Fenced<Millis>>, DependencyError> {
        self.0.heartbeat(items, now_millis()).await
    }

    async fn probe(&self) -> Result<(), DependencyError> {
        self.0.probe().await
    }
}

#[async_trait]
impl Flush for CompletionWrites {
    type Item = Completion;
    type Outcome = Fenced<Completed>;

    async fn flush(&self, items: &[Completion]) -> Result<Vec<Fenced<Completed>>, DependencyError> {
        let results = self.0.complete(items, now_millis()).await?;
        report_completions(&self.1, items, &results).await;
        Ok(results)
    }

    async fn probe(&self) -> Result<(), DependencyError> {
        self.0.probe().await
    }
}

/// Tells the batches' event streams what a committed flush of completions did: a `run` event for
/// each run it made final (a repeated report changes nothing and tells nothing), then each batch
/// touched, which may have turned final with its last run.
async fn report_completions(events: &Events, items: &[Completion], results: &[Fenced<Completed>]) {
    let mut batches: Vec<(&str, &str, bool)> = Vec::new();
    for (item, result) in items.iter().zip(results) {
        let Fenced::Applied(done) = result else {
            continue;
        };
        if !done.written {
            continue;
        }
        let turned_final = done.status != RunStatus::Pending;
        if turned_final {
            let error = match done.status {
                RunStatus::Failed => Some((
                    item.error_code.clone().unwrap_or_else(|| "FAILED".into()),
                    item.error_message.clone().unwrap_or_default(),
                )),
                _ => None,
            };
            let run = RunEvent {
                index: item.run.index,
                status: done.status,
                attempt: done.attempt,
                error,
            };
            events
                .run_final(&item.run.tenant, &item.run.batch_id, run)
                .await;
        }
        let batch = (item.run.tenant.as_str(), item.run.batch_id.as_str());
        match batches.iter_mut().find(|(t, b, _)| (*t, *b) == batch) {
            Some(entry) => entry.2 |= turned_final,
            None => batches.push((batch.0, batch.1, turned_final)),
        }
    }
    for (tenant, batch_id, turned_final) in batches {
        if turned_final {
            events.runs_turned_final(tenant, batch_id);
        } else {
            events.batch_changed(tenant, batch_id);
        }
    }
}

/// A claim call as the worker asked it.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    pub tasks: Option<Vec<String>>,
    pub limit: Option<i64>,
    pub lease_ms: Option<i64>,
    pub wait_ms: Option<i64>,
}

/// Runs claimed under one lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub runs: Vec<ClaimedRun>,
    pub lease_id: String,
    pub lease_expires_at: Millis,
}

fn checked_lease_ms(lease_ms: Option<i64>) -> Result<i64, RunsError> {
    let lease = lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease) {
        Ok(lease)
    } else {
        Err(RunsError::Invalid(format!(
            "leaseMs must be an integer from {MIN_LEASE_MS} to {MAX_LEASE_MS}, got {lease}"
        )))
    }
}

fn check_run_count(count: usize) -> Result<(), RunsError> {
    if (1..=MAX_RUNS_PER_CALL).contains(&count) {
        Ok(())
    } else {
        Err(RunsError::Invalid(format!(
            "runs must hold from 1 to {MAX_RUNS_PER_CALL} entries, got {count}"
        )))
    }
}

/// Claims up to `limit` of the tenant's pending runs; with `wait_ms`, waits that long (at most
/// `wait_cap_ms`) for one when none is pending. An empty answer is not an error.
pub async fn claim(
    ports: &Ports,
    tenant: &str,
    claim: Claim,
    wait_cap_ms: u64,
) -> Result<Claimed, RunsError> {
    let limit = claim.limit.unwrap_or(1);
    if !(1..=MAX_RUNS_PER_CALL as i64).contains(&limit) {
        return Err(RunsError::Invalid(format!(
            "limit must be an integer from 1 to {MAX_RUNS_PER_CALL}, got {limit}"
        )));
    }
    let limit = limit as u32;
    let lease = checked_lease_ms(claim.lease_ms)?;
    let wait = claim.wait_ms.unwrap_or(0);
    if !(0..=MAX_WAIT_MS).contains(&wait) {
        return Err(RunsError::Invalid(format!(
            "waitMs must be an integer from 0 to {MAX_WAIT_MS}, got {wait}"
        )));
    }
    if let Some(tasks) = &claim.tasks
        && (tasks.is_empty() || tasks.len() > 100 || tasks.iter().any(String::is_empty))
    {
        return Err(RunsError::Invalid(
            "tasks must hold from 1 to 100 non-empty task names".into(),
        ));
    }
    let lease_id = format!("lease_{:032x}", rand::random::<u128>());
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis((wait as u64).min(wait_cap_ms));
    loop {
        // Registered before looking, so runs added while the claim runs wake the wait below.
        let woken = ports.runs_ready.0.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let lease_expires_at = now_millis() + lease;
        let runs = ports
            .status
            .claims
            .submit(ClaimRequest {
                tenant: tenant.to_owned(),
                tasks: claim.tasks.clone(),
                limit,
                lease_id: lease_id.clone(),
                lease_until: lease_expires_at,
            })
            .await?;
        if !runs.is_empty() || tokio::time::Instant::now() >= deadline {
            crate::metrics::runs_claimed(runs.len());
            return Ok(Claimed {
                runs,
                lease_id,
                lease_expires_at,
            });
        }
        let recheck = tokio::time::Instant::now() + WAIT_RECHECK;
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(recheck.min(deadline)) => {}
        }
    }
}

/// A run reference from a worker: its id and lease. An id no run can have is kept as `None`, and
/// answered as an unknown run.
pub struct RunRef {
    pub id: String,
    pub lease_id: String,
}

fn leased(tenant: &str, run: &RunRef) -> Option<LeasedRun> {
    let (batch_id, index) = parse_run_id(&run.id)?;
    Some(LeasedRun {
        tenant: tenant.to_owned(),
        batch_id,
        index,
        lease_id: run.lease_id.clone(),
    })
}

/// Extends the leases of the tenant's runs by `lease_ms` from now, fenced.
pub async fn heartbeat(
    ports: &Ports,
    tenant: &str,
    runs: &[RunRef],
    lease_ms: Option<i64>,
) -> Result<Vec<Fenced<Millis>>, RunsError> {
    check_run_count(runs.len())?;
    let lease = checked_lease_ms(lease_ms)?;
    let lease_until = now_millis() + lease;
    let writes = runs.iter().map(|run| {
        let leased = leased(tenant, run);
        async move {
            match leased {
                None => Ok(Fenced::RunNotFound),
                Some(run) => {
                    ports
                        .status
                        .heartbeats
                        .submit(Heartbeat { run, lease_until })
                        .await
                }
            }
        }
    });
    let results = futures::future::join_all(writes).await;
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(RunsError::from)
}

/// A worker's report of how a run ended.
pub struct Report {
    pub run: RunRef,
    pub status: String,
    /// JSON text.
    pub output: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub retry_delay_ms: Option<i64>,
}

/// Text a worker sent, kept within `max` bytes (cut at a character boundary) and without NUL,
/// which the store's text columns refuse.
fn kept_text(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "")
}

fn completion(tenant: &str, report: &Report) -> Result<Option<Completion>, RunsError> {
    let outcome = match report.status.as_str() {
        "COMPLETED" => Outcome::Completed,
        "FAILED" => Outcome::Failed,
        "RETRY" => Outcome::Retry,
        other => {
            return Err(RunsError::Invalid(format!(
                "status must be COMPLETED, FAILED or RETRY, got {}",
                crate::protocol::quote::quote(other)
            )));
        }
    };
    if report
        .output
        .as_ref()
        .is_some_and(|output| output.len() > MAX_OUTPUT_BYTES)
    {
        return Err(RunsError::Invalid(format!(
            "output of run {} is larger than {MAX_OUTPUT_BYTES} bytes",
            crate::protocol::quote::quote(&report.run.id)
        )));
    }
    let retry_delay_ms = report.retry_delay_ms.unwrap_or(0);
    if !(0..=MAX_RETRY_DELAY_MS).contains(&retry_delay_ms) {
        return Err(RunsError::Invalid(format!(
            "retryDelayMs must be an integer from 0 to {MAX_RETRY_DELAY_MS}, got {retry_delay_ms}"
        )));
    }
    let Some(run) = leased(tenant, &report.run) else {
        return Ok(None);
    };
    Ok(Some(Completion {
        run,
        outcome,
        output: report.output.clone(),
        error_code: report
            .error_code
            .as_deref()
            .map(|code| kept_text(code, MAX_ERROR_CODE_BYTES)),
        error_message: report
            .error_message
            .as_deref()
            .map(|message| kept_text(message, MAX_ERROR_MESSAGE_BYTES)),
        retry_delay_ms,
    }))
}

/// Writes the worker's reports, fenced, and answers each once it is committed. The whole call is
/// refused (nothing written) when any report is malformed.
pub async fn complete(
    ports: &Ports,
    tenant: &str,
    reports: &[Report],
) -> Result<Vec<Fenced<Completed>>, RunsError> {
    check_run_count(reports.len())?;
    let completions = reports
        .iter()
        .map(|report| completion(tenant, report))
        .collect::<Result<Vec<_>, _>>()?;
    let writes = completions.into_iter().map(|completion| async move {
        match completion {
            None => Ok(Fenced::RunNotFound),
            Some(completion) => {
                let outcome = completion.outcome;
                let result = ports.status.completions.submit(completion).await?;
                crate::metrics::run_reported(outcome.as_str(), &result);
                Ok(result)
            }
        }
    });
    let results: Vec<Result<Fenced<Completed>, SubmitError>> =
        futures::future::join_all(writes).await;
    let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let retried = |result: &Fenced<Completed>| matches!(result, Fenced::Applied(Completed { status, .. }) if *status == RunStatus::Pending);
    if results.iter().any(retried) {
        ports.runs_ready.runs_added();
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_text_is_cut_at_a_character_and_loses_its_nul_bytes() {
        assert_eq!(kept_text("héllo", 2), "h");
        assert_eq!(kept_text("a\0b", 10), "ab");
        assert_eq!(kept_text("abc", 10), "abc");
    }

    #[test]
    fn leases_outside_the_range_are_refused() {
        assert_eq!(checked_lease_ms(None).unwrap(), DEFAULT_LEASE_MS);
        assert!(checked_lease_ms(Some(999)).is_err());
        assert!(checked_lease_ms(Some(MAX_LEASE_MS + 1)).is_err());
    }
}
