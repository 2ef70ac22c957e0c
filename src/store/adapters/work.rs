//! The work store as both SQL adapters implement it. Grouped writes join the runs table with a
//! relation `u` of the group's rows: `UNNEST` of one array per column on Postgres, multi-row
//! `VALUES` on SQLite; the statement after it is the same text for both.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use async_trait::async_trait;
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};

use super::{PostgresStore, SqliteStore};
use crate::dependency::DependencyError;
use crate::store::Millis;
use crate::store::runs::RunStatus;
use crate::store::work::{
    ClaimRequest, ClaimedRun, Completed, Completion, Fenced, Heartbeat, LeasedRun, Outcome, Swept,
    WorkStore,
};

/// SQLite binds at most 32 766 values per statement; completions bind 10 per run.
const SQLITE_ROWS_PER_STATEMENT: usize = 2_000;
/// Batches one claim spreads over; beyond it, a random choice of the tenant's batches.
const CLAIM_BATCHES: u32 = 32;

const COMPLETION_COLUMNS: &str =
    "batch_id, idx, tenant, lease_id, outcome, output, error_code, error_message, delay, now";
const HEARTBEAT_COLUMNS: &str = "batch_id, idx, tenant, lease_id, lease_until, now";

/// A completion, fenced by status and lease. `RETRY` goes back to `PENDING` with one more
/// attempt, or to `FAILED` when the run has used its attempts. The lease id stays on the run, so a
/// repeated report of the same result can be recognised (see `replayed`).
const COMPLETE: &str = "UPDATE runs SET \
     status = CASE WHEN u.outcome = 'COMPLETED' THEN 'COMPLETED' \
       WHEN u.outcome = 'FAILED' OR runs.attempt >= runs.max_attempts THEN 'FAILED' \
       ELSE 'PENDING' END, \
     attempt = CASE WHEN u.outcome = 'RETRY' AND runs.attempt < runs.max_attempts \
       THEN runs.attempt + 1 ELSE runs.attempt END, \
     available_at = CASE WHEN u.outcome = 'RETRY' THEN u.now + u.delay ELSE runs.available_at END, \
     output = u.output, \
     error_code = CASE WHEN u.outcome = 'COMPLETED' THEN NULL \
       ELSE COALESCE(u.error_code, 'TASK_FAILED') END, \
     error_message = CASE WHEN u.outcome = 'COMPLETED' THEN NULL \
       ELSE COALESCE(u.error_message, '') END, \
     error_line = NULL, \
     completed_at = CASE WHEN u.outcome = 'RETRY' AND runs.attempt < runs.max_attempts \
       THEN NULL ELSE u.now END, \
     lease_expires_at = NULL, updated_at = u.now \
     FROM u WHERE runs.batch_id = u.batch_id AND runs.idx = u.idx AND runs.tenant = u.tenant \
     AND runs.status = 'CLAIMED' AND runs.lease_id = u.lease_id \
     RETURNING runs.batch_id, runs.idx, runs.status, runs.attempt";

const HEARTBEAT: &str = "UPDATE runs SET lease_expires_at = u.lease_until, updated_at = u.now \
     FROM u WHERE runs.batch_id = u.batch_id AND runs.idx = u.idx AND runs.tenant = u.tenant \
     AND runs.status = 'CLAIMED' AND runs.lease_id = u.lease_id \
     RETURNING runs.batch_id, runs.idx, runs.lease_expires_at";

/// Expired leases: back to `PENDING` with one more attempt, or `FAILED` when none is left. The
/// lease id is cleared, so a late report under it is `LEASE_LOST`.
fn sweep_statement(lock: &str) -> String {
    format!(
        "UPDATE runs SET \
         status = CASE WHEN attempt >= max_attempts THEN 'FAILED' ELSE 'PENDING' END, \
         attempt = CASE WHEN attempt >= max_attempts THEN attempt ELSE attempt + 1 END, \
         error_code = CASE WHEN attempt >= max_attempts THEN 'LEASE_EXPIRED' ELSE error_code END, \
         error_message = CASE WHEN attempt >= max_attempts \
           THEN 'the lease expired before the run was reported' ELSE error_message END, \
         completed_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END, \
         lease_id = NULL, lease_expires_at = NULL, available_at = $1, updated_at = $1 \
         WHERE (batch_id, idx) IN (SELECT batch_id, idx FROM runs WHERE status = 'CLAIMED' \
         AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT $2 {lock}) \
         RETURNING batch_id, status, tenant, idx, attempt"
    )
}

/// Up to `$2` of a batch's pending runs, oldest index first, claimed under the lease `$3`. Tasks,
/// when given, are bound from `$6` on.
fn claim_statement(lock: &str, tasks: usize) -> String {
    let task_filter = if tasks == 0 {
        String::new()
    } else {
        let names: Vec<String> = (0..tasks).map(|i| format!("${}", i + 6)).collect();
        format!(" AND task IN ({})", names.join(", "))
    };
    format!(
        "UPDATE runs SET status = 'CLAIMED', lease_id = $3, lease_expires_at = $4, \
         claimed_at = $5, updated_at = $5 \
         WHERE (batch_id, idx) IN (SELECT batch_id, idx FROM runs WHERE batch_id = $1 \
         AND status = 'PENDING' AND available_at <= $5{task_filter} ORDER BY idx LIMIT $2 {lock}) \
         RETURNING batch_id, idx, task, attempt, max_attempts, payload_type, payload, options"
    )
}

/// The pending runs of a canceled batch are canceled: at the cancel, and later those that went
/// back to `PENDING` (a retry, an expired lease) in a batch canceled meanwhile. Counted with
/// [`RUNS_CANCELED`].
const CANCEL_PENDING: &str = "UPDATE runs SET status = 'CANCELED', completed_at = $2, \
     updated_at = $2 WHERE batch_id = $1 AND status = 'PENDING' \
     AND EXISTS (SELECT 1 FROM batches WHERE id = $1 AND status = 'CANCELED')";

/// A batch whose runs are all written and all final (`open_runs`, kept by every write that adds a
/// run or changes its status) turns final: `COMPLETED` when every run completed, else
/// `PARTIAL_FAILED`. Run with the batch row locked, after the transaction's own counts, so of two
/// transactions that each make some of its last runs final, the second sees the first's.
pub(super) const FINISH_IF_ALL_FINAL: &str = "UPDATE batches SET completed_at = $2, status = CASE \
     WHEN failed_runs + canceled_runs > 0 THEN 'PARTIAL_FAILED' ELSE 'COMPLETED' END \
     WHERE id = $1 AND status = 'PROCESSING' AND materialised_count = run_count AND open_runs <= 0 \
     RETURNING status";

/// Runs of the batch that turned final in this transaction: `$2` completed, `$3` failed; also
/// locks its row.
const CLOSE_RUNS: &str = "UPDATE batches SET open_runs = open_runs - $2 - $3, \
     completed_runs = completed_runs + $2, failed_runs = failed_runs + $3 WHERE id = $1";

/// `$2` pending runs of the batch were canceled in this transaction.
const RUNS_CANCELED: &str = "UPDATE batches SET open_runs = open_runs - $2, \
     canceled_runs = canceled_runs + $2 WHERE id = $1";

/// A batch's runs made final in one transaction.
#[derive(Debug, Default)]
struct Closed {
    completed: i64,
    failed: i64,
}

impl Closed {
    fn add(&mut self, status: RunStatus) {
        if status == RunStatus::Completed {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
    }
}

type ClaimRow = (
    String,
    i32,
    String,
    i32,
    i32,
    String,
    Option<Vec<u8>>,
    Option<String>,
);

fn claimed_run(row: ClaimRow) -> ClaimedRun {
    let (batch_id, idx, task, attempt, max_attempts, payload_type, payload, options) = row;
    ClaimedRun {
        batch_id,
        index: idx as u32,
        task,
        attempt: attempt.max(0) as u32,
        max_attempts: max_attempts.max(0) as u32,
        payload_type,
        payload,
        options,
    }
}

/// The first report of each run in a group goes to the grouped write; a second report of the same
/// run in the same group is judged afterwards, against what the first wrote.
fn first_reports(runs: impl Iterator<Item = (String, u32)>) -> Vec<bool> {
    let mut seen = HashSet::new();
    runs.map(|key| seen.insert(key)).collect()
}

/// Whether a completion that matched no claimed run repeats what its own lease already wrote (a
/// retried call whose first answer was lost): then it is answered as applied.
fn replayed(outcome: Outcome, status: RunStatus) -> bool {
    match outcome {
        Outcome::Completed => status == RunStatus::Completed,
        Outcome::Failed => status == RunStatus::Failed,
        Outcome::Retry => matches!(status, RunStatus::Pending | RunStatus::Failed),
    }
}

macro_rules! impl_sql_work_store {
    ($store:ty, $db:ty, $lock:expr, $begin:expr, $lock_batches:expr, $claim_plan:expr) => {
        impl $store {
            /// How a run that a fenced write did not match stands: not the tenant's, or held under
            /// another lease (or none); with the status and attempt it has.
            async fn fenced_miss(
                transaction: &mut Transaction<'_, $db>,
                run: &LeasedRun,
            ) -> Result<Option<(RunStatus, u32, bool)>, DependencyError> {
                let row: Option<(String, String, i32, Option<String>)> = sqlx::query_as(
                    "SELECT tenant, status, attempt, lease_id FROM runs \
                     WHERE batch_id = $1 AND idx = $2",
                )
                .bind(&run.batch_id)
                .bind(run.index as i64)
                .fetch_optional(&mut **transaction)
                .await?;
                Ok(row.and_then(|(tenant, status, attempt, lease_id)| {
                    (tenant == run.tenant).then(|| {
                        (
                            RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
                            attempt.max(0) as u32,
                            lease_id.as_deref() == Some(run.lease_id.as_str()),
                        )
                    })
                }))
            }

            /// Cancels the pending runs of a canceled batch (see [`CANCEL_PENDING`]) and counts
            /// them on the batch, in the caller's transaction.
            pub(super) async fn cancel_pending(
                transaction: &mut Transaction<'_, $db>,
                batch_id: &str,
                now: Millis,
            ) -> Result<(), sqlx::Error> {
                let canceled = sqlx::query(CANCEL_PENDING)
                    .bind(batch_id)
                    .bind(now)
                    .execute(&mut **transaction)
                    .await?
                    .rows_affected();
                if canceled > 0 {
                    sqlx::query(RUNS_CANCELED)
                        .bind(batch_id)
                        .bind(canceled as i64)
                        .execute(&mut **transaction)
                        .await?;
                }
                Ok(())
            }

            /// Locks the batches (in id order) and turns final those whose runs all are; cancels
            /// runs sent back to pending in batches canceled meanwhile.
            async fn settle_batches(
                transaction: &mut Transaction<'_, $db>,
                finished: &BTreeMap<String, Closed>,
                returned: &BTreeSet<String>,
                now: Millis,
            ) -> Result<(), DependencyError> {
                let locked: BTreeSet<&String> = finished.keys().chain(returned).collect();
                for batch_id in &locked {
                    if let Some(closed) = finished.get(*batch_id) {
                        sqlx::query(CLOSE_RUNS)
                            .bind(*batch_id)
                            .bind(closed.completed)
                            .bind(closed.failed)
                            .execute(&mut **transaction)
                            .await?;
                    } else if !$lock_batches.is_empty() {
                        sqlx::query($lock_batches)
                            .bind(*batch_id)
                            .execute(&mut **transaction)
                            .await?;
                    }
                }
                for batch_id in returned {
                    Self::cancel_pending(transaction, batch_id, now).await?;
                }
                for batch_id in finished.keys() {
                    let status: Option<String> = sqlx::query_scalar(FINISH_IF_ALL_FINAL)
                        .bind(batch_id)
                        .bind(now)
                        .fetch_optional(&mut **transaction)
                        .await?;
                    if let Some(status) = status {
                        crate::metrics::batch_finished(&status);
                    }
                }
                Ok(())
            }

            async fn claim_from_batch(
                transaction: &mut Transaction<'_, $db>,
                request: &ClaimRequest,
                batch_id: &str,
                limit: u32,
                now: Millis,
            ) -> Result<Vec<ClaimedRun>, DependencyError> {
                let tasks = request.tasks.as_deref().unwrap_or_default();
                let sql = claim_statement($lock, tasks.len());
                let mut query = sqlx::query_as::<$db, ClaimRow>(&sql)
                    .bind(batch_id)
                    .bind(i64::from(limit))
                    .bind(&request.lease_id)
                    .bind(request.lease_until)
                    .bind(now);
                for task in tasks {
                    query = query.bind(task);
                }
                let rows = query.fetch_all(&mut **transaction).await?;
                Ok(rows.into_iter().map(claimed_run).collect())
            }

            /// One request's runs: an even share from each of the tenant's batches with work, then
            /// what is left of the limit from those that had more.
            async fn claim_one(
                transaction: &mut Transaction<'_, $db>,
                request: &ClaimRequest,
                now: Millis,
            ) -> Result<Vec<ClaimedRun>, DependencyError> {
                let mut open: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT id FROM batches WHERE tenant = $1 AND status = 'PROCESSING' \
                     ORDER BY random() LIMIT {CLAIM_BATCHES}"
                ))
                .bind(&request.tenant)
                .fetch_all(&mut **transaction)
                .await?;
                let limit = request.limit as usize;
                let mut claimed = Vec::new();
                for _round in 0..2 {
                    if open.is_empty() || claimed.len() >= limit {
                        break;
                    }
                    let share = (limit - claimed.len()).div_ceil(open.len());
                    let mut more = Vec::new();
                    for batch_id in open {
                        let take = share.min(limit - claimed.len());
                        if take == 0 {
                            break;
                        }
                        let runs = Self::claim_from_batch(
                            transaction,
                            request,
                            &batch_id,
                            take as u32,
                            now,
                        )
                        .await?;
                        if runs.len() == take {
                            more.push(batch_id);
                        }
                        claimed.extend(runs);
                    }
                    open = more;
                }
                claimed.sort_by(|a, b| (&a.batch_id, a.index).cmp(&(&b.batch_id, b.index)));
                Ok(claimed)
            }
        }

        #[async_trait]
        impl WorkStore for $store {
            async fn claim(
                &self,
                requests: &[ClaimRequest],
                now: Millis,
            ) -> Result<Vec<Vec<ClaimedRun>>, DependencyError> {
                let mut transaction = self.pool.begin_with($begin).await?;
                if !$claim_plan.is_empty() {
                    sqlx::query($claim_plan).execute(&mut *transaction).await?;
                }
                let mut claimed = Vec::with_capacity(requests.len());
                for request in requests {
                    claimed.push(Self::claim_one(&mut transaction, request, now).await?);
                }
                transaction.commit().await?;
                Ok(claimed)
            }

            async fn heartbeat(
                &self,
                beats: &[Heartbeat],
                now: Millis,
            ) -> Result<Vec<Fenced<Millis>>, DependencyError> {
                let first = first_reports(
                    beats
                        .iter()
                        .map(|beat| (beat.run.batch_id.clone(), beat.run.index)),
                );
                let grouped: Vec<&Heartbeat> = beats
                    .iter()
                    .zip(&first)
                    .filter(|(_, first)| **first)
                    .map(|(beat, _)| beat)
                    .collect();
                let mut transaction = self.pool.begin_with($begin).await?;
                let applied = Self::write_heartbeats(&mut transaction, &grouped, now).await?;
                let mut results = Vec::with_capacity(beats.len());
                for beat in beats {
                    let key = (beat.run.batch_id.clone(), beat.run.index);
                    results.push(match applied.get(&key) {
                        Some(&until) => Fenced::Applied(until),
                        None => match Self::fenced_miss(&mut transaction, &beat.run).await? {
                            None => Fenced::RunNotFound,
                            Some(_) => Fenced::LeaseLost,
                        },
                    });
                }
                transaction.commit().await?;
                Ok(results)
            }

            async fn complete(
                &self,
                completions: &[Completion],
                now: Millis,
            ) -> Result<Vec<Fenced<Completed>>, DependencyError> {
                let first = first_reports(
                    completions
                        .iter()
                        .map(|completion| (completion.run.batch_id.clone(), completion.run.index)),
                );
                let grouped: Vec<&Completion> = completions
                    .iter()
                    .zip(&first)
                    .filter(|(_, first)| **first)
                    .map(|(completion, _)| completion)
                    .collect();
                let mut transaction = self.pool.begin_with($begin).await?;
                let applied = Self::write_completions(&mut transaction, &grouped, now).await?;
                let mut results = Vec::with_capacity(completions.len());
                let (mut finished, mut returned) = (BTreeMap::new(), BTreeSet::new());
                for (completion, first) in completions.iter().zip(&first) {
                    let key = (completion.run.batch_id.clone(), completion.run.index);
                    let written = if *first {
                        applied.get(&key).copied()
                    } else {
                        None
                    };
                    let result = match written {
                        Some(done) => {
                            if done.status == RunStatus::Pending {
                                returned.insert(completion.run.batch_id.clone());
                            } else {
                                finished
                                    .entry(completion.run.batch_id.clone())
                                    .or_insert_with(Closed::default)
                                    .add(done.status);
                            }
                            Fenced::Applied(done)
                        }
                        None => match Self::fenced_miss(&mut transaction, &completion.run).await? {
                            None => Fenced::RunNotFound,
                            Some((status, attempt, same_lease))
                                if same_lease && replayed(completion.outcome, status) =>
                            {
                                Fenced::Applied(Completed {
                                    status,
                                    attempt,
                                    written: false,
                                })
                            }
                            Some(_) => Fenced::LeaseLost,
                        },
                    };
                    results.push(result);
                }
                Self::settle_batches(&mut transaction, &finished, &returned, now).await?;
                transaction.commit().await?;
                Ok(results)
            }

            async fn sweep_expired_leases(
                &self,
                now: Millis,
                limit: u32,
            ) -> Result<Swept, DependencyError> {
                let mut transaction = self.pool.begin_with($begin).await?;
                let rows: Vec<(String, String, String, i32, i32)> =
                    sqlx::query_as(&sweep_statement($lock))
                        .bind(now)
                        .bind(i64::from(limit))
                        .fetch_all(&mut *transaction)
                        .await?;
                let mut swept = Swept::default();
                let (mut finished, mut returned) = (BTreeMap::new(), BTreeSet::new());
                let mut returned_in = BTreeSet::new();
                for (batch_id, status, tenant, index, attempt) in rows {
                    if status == RunStatus::Pending.as_str() {
                        swept.returned += 1;
                        returned_in.insert((tenant, batch_id.clone()));
                        returned.insert(batch_id);
                    } else {
                        swept.failed += 1;
                        swept.failed_runs.push((
                            tenant,
                            batch_id.clone(),
                            index as u32,
                            attempt.max(0) as u32,
                        ));
                        finished
                            .entry(batch_id)
                            .or_insert_with(Closed::default)
                            .add(RunStatus::Failed);
                    }
                }
                swept.returned_in = returned_in.into_iter().collect();
                Self::settle_batches(&mut transaction, &finished, &returned, now).await?;
                transaction.commit().await?;
                Ok(swept)
            }

            async fn probe(&self) -> Result<(), DependencyError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

// A claim reads a batch's pending runs in index order and stops at its limit; only an ordered
// index scan does that in a few milliseconds. Right after a batch's runs are written the table's
// statistics still describe it before them, and the planner, expecting a handful of rows, sorts
// the whole batch instead (0.9 s for a million runs). Claims forbid the sort to never take that
// plan.
impl_sql_work_store!(
    PostgresStore,
    Postgres,
    "FOR UPDATE SKIP LOCKED",
    "BEGIN",
    "SELECT 1 FROM batches WHERE id = $1 FOR UPDATE",
    "SET LOCAL enable_sort = off"
);
// SQLite has one writer: a write transaction already excludes every other.
impl_sql_work_store!(SqliteStore, Sqlite, "", "BEGIN IMMEDIATE", "", "");

type AppliedCompletions = std::collections::HashMap<(String, u32), Completed>;
type AppliedHeartbeats = std::collections::HashMap<(String, u32), Millis>;

fn completions_applied(rows: Vec<(String, i32, String, i32)>, into: &mut AppliedCompletions) {
    for (batch_id, idx, status, attempt) in rows {
        into.insert(
            (batch_id, idx as u32),
            Completed {
                status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
                attempt: attempt.max(0) as u32,
                written: true,
            },
        );
    }
}

impl PostgresStore {
    async fn write_completions(
        transaction: &mut Transaction<'_, Postgres>,
        completions: &[&Completion],
        now: Millis,
    ) -> Result<AppliedCompletions, DependencyError> {
        let mut applied = AppliedCompletions::new();
        if completions.is_empty() {
            return Ok(applied);
        }
        let column = |f: fn(&Completion) -> String| -> Vec<String> {
            completions.iter().map(|c| f(c)).collect()
        };
        let rows: Vec<(String, i32, String, i32)> = sqlx::query_as(&format!(
            "WITH u({COMPLETION_COLUMNS}) AS (SELECT *, $10::int8 FROM UNNEST($1::text[], \
             $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
             $9::int8[])) {COMPLETE}"
        ))
        .bind(column(|c| c.run.batch_id.clone()))
        .bind(
            completions
                .iter()
                .map(|c| c.run.index as i32)
                .collect::<Vec<_>>(),
        )
        .bind(column(|c| c.run.tenant.clone()))
        .bind(column(|c| c.run.lease_id.clone()))
        .bind(column(|c| c.outcome.as_str().to_owned()))
        .bind(
            completions
                .iter()
                .map(|c| c.output.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            completions
                .iter()
                .map(|c| c.error_code.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            completions
                .iter()
                .map(|c| c.error_message.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            completions
                .iter()
                .map(|c| c.retry_delay_ms)
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .fetch_all(&mut **transaction)
        .await?;
        completions_applied(rows, &mut applied);
        Ok(applied)
    }

    async fn write_heartbeats(
        transaction: &mut Transaction<'_, Postgres>,
        beats: &[&Heartbeat],
        now: Millis,
    ) -> Result<AppliedHeartbeats, DependencyError> {
        let mut applied = AppliedHeartbeats::new();
        if beats.is_empty() {
            return Ok(applied);
        }
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
            "WITH u({HEARTBEAT_COLUMNS}) AS (SELECT *, $6::int8 FROM UNNEST($1::text[], \
             $2::int4[], $3::text[], $4::text[], $5::int8[])) {HEARTBEAT}"
        ))
        .bind(
            beats
                .iter()
                .map(|b| b.run.batch_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(beats.iter().map(|b| b.run.index as i32).collect::<Vec<_>>())
        .bind(
            beats
                .iter()
                .map(|b| b.run.tenant.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            beats
                .iter()
                .map(|b| b.run.lease_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(beats.iter().map(|b| b.lease_until).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut **transaction)
        .await?;
        for (batch_id, idx, until) in rows {
            applied.insert((batch_id, idx as u32), until);
        }
        Ok(applied)
    }
}

impl SqliteStore {
    async fn write_completions(
        transaction: &mut Transaction<'_, Sqlite>,
        completions: &[&Completion],
        now: Millis,
    ) -> Result<AppliedCompletions, DependencyError> {
        let mut applied = AppliedCompletions::new();
        for part in completions.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let mut query =
                QueryBuilder::<Sqlite>::new(format!("WITH u({COMPLETION_COLUMNS}) AS ("));
            query.push_values(part, |mut row, c| {
                row.push_bind(&c.run.batch_id)
                    .push_bind(c.run.index as i64)
                    .push_bind(&c.run.tenant)
                    .push_bind(&c.run.lease_id)
                    .push_bind(c.outcome.as_str())
                    .push_bind(c.output.as_deref())
                    .push_bind(c.error_code.as_deref())
                    .push_bind(c.error_message.as_deref())
                    .push_bind(c.retry_delay_ms)
                    .push_bind(now);
            });
            query.push(") ").push(COMPLETE);
            let rows: Vec<(String, i32, String, i32)> =
                query.build_query_as().fetch_all(&mut **transaction).await?;
            completions_applied(rows, &mut applied);
        }
        Ok(applied)
    }

    async fn write_heartbeats(
        transaction: &mut Transaction<'_, Sqlite>,
        beats: &[&Heartbeat],
        now: Millis,
    ) -> Result<AppliedHeartbeats, DependencyError> {
        let mut applied = AppliedHeartbeats::new();
        for part in beats.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let mut query =
                QueryBuilder::<Sqlite>::new(format!("WITH u({HEARTBEAT_COLUMNS}) AS ("));
            query.push_values(part, |mut row, b| {
                row.push_bind(&b.run.batch_id)
                    .push_bind(b.run.index as i64)
                    .push_bind(&b.run.tenant)
                    .push_bind(&b.run.lease_id)
                    .push_bind(b.lease_until)
                    .push_bind(now);
            });
            query.push(") ").push(HEARTBEAT);
            let rows: Vec<(String, i32, i64)> =
                query.build_query_as().fetch_all(&mut **transaction).await?;
            for (batch_id, idx, until) in rows {
                applied.insert((batch_id, idx as u32), until);
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_filter_by_the_tasks_bound_after_the_fixed_parameters() {
        let sql = claim_statement("FOR UPDATE SKIP LOCKED", 2);
        assert!(sql.contains("AND task IN ($6, $7) ORDER BY idx LIMIT $2 FOR UPDATE SKIP LOCKED"));
        assert!(!claim_statement("", 0).contains("task IN"));
    }

    #[test]
    fn a_second_report_of_a_run_in_one_group_is_judged_after_the_first() {
        let keys = [("a", 1), ("a", 2), ("a", 1), ("b", 1)]
            .map(|(batch, index)| (batch.to_owned(), index));
        assert_eq!(
            first_reports(keys.into_iter()),
            vec![true, true, false, true]
        );
    }

    #[test]
    fn only_the_result_a_report_asked_for_counts_as_its_replay() {
        assert!(replayed(Outcome::Completed, RunStatus::Completed));
        assert!(!replayed(Outcome::Completed, RunStatus::Failed));
        assert!(replayed(Outcome::Retry, RunStatus::Pending));
        assert!(replayed(Outcome::Retry, RunStatus::Failed));
        assert!(!replayed(Outcome::Failed, RunStatus::Claimed));
    }
}
