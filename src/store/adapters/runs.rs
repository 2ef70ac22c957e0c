//! The run store as both SQL adapters implement it: the same statements (`$N` placeholders) but
//! for the chunk insert, which is one `INSERT … SELECT FROM UNNEST(…)` on Postgres and multi-row
//! `VALUES` (as many rows as SQLite binds per statement) on SQLite.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite, Transaction};

use super::copy::BinaryRows;
use super::row::{BATCH_COLUMNS, BatchRow};
use super::work::FINISH_IF_ALL_FINAL;
use super::{PostgresStore, SqliteStore, is_unique_violation};
use crate::dependency::DependencyError;
use crate::store::runs::{
    BatchCursor, Canceled, ChunkCommitted, MaterialiseClaim, Run, RunChunk, RunCounts, RunError,
    RunStatus, RunStore,
};
use crate::store::{Batch, BatchStatus, Millis};

/// What a chunk's insert does with a run already written. None ever is: runs are written only in
/// their chunk's transaction, after the guarded checkpoint update that locks the batch row, so the
/// insert is a plain one (on Postgres, `ON CONFLICT` would insert each row speculatively and confirm
/// it, a third of the chunk's cost). Were one there (a bug), the insert fails with a unique
/// violation and the chunk is written again keeping it, rather than the batch never finishing.
#[derive(Debug, Clone, Copy)]
enum Existing {
    Fail,
    Keep,
}

impl Existing {
    fn clause(self) -> &'static str {
        match self {
            Self::Fail => "",
            Self::Keep => " ON CONFLICT (batch_id, idx) DO NOTHING",
        }
    }
}

/// A chunk's `COPY` is sent in pieces of about this size, so it is never held whole beside the
/// chunk.
const COPY_PIECE_BYTES: usize = 64 * 1024;

/// SQLite binds at most 32 766 values per statement; 15 per run.
const SQLITE_RUNS_PER_STATEMENT: usize = 2_000;

const RUN_COLUMNS: &str = "batch_id, idx, tenant, task, payload, payload_type, options, status, \
     attempt, max_attempts, output, error_code, error_message, error_line, created_at, \
     claimed_at, completed_at";
/// The same columns without the payload, for pages of runs.
const RUN_LIST_COLUMNS: &str = "batch_id, idx, tenant, task, CAST(NULL AS BYTEA) AS payload, \
     payload_type, options, status, attempt, max_attempts, output, error_code, error_message, \
     error_line, created_at, claimed_at, completed_at";

/// The columns a chunk writes (the others keep their defaults).
macro_rules! written_columns {
    () => {
        "batch_id, idx, tenant, task, payload, payload_type, options, status, attempt, \
         max_attempts, error_code, error_message, error_line, created_at, updated_at"
    };
}
const INSERT_COLUMNS: &str = concat!("INSERT INTO runs (", written_columns!(), ") ");
const COPY_RUNS: &str = concat!(
    "COPY runs (",
    written_columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// The claim: the oldest sealed batch not done materialising whose claim is free or expired. The
/// guard is repeated on the outer update so a concurrent claim of the same row loses.
fn claim_statement(lock: &str) -> String {
    const FREE: &str = "sealed AND items_deleted_at IS NULL \
         AND (materialiser_lease_until IS NULL OR materialiser_lease_until <= $2)";
    format!(
        "UPDATE batches SET materialiser = $1, materialiser_lease_until = $3 \
         WHERE id = (SELECT id FROM batches WHERE {FREE} ORDER BY sealed_at LIMIT 1 {lock}) \
         AND {FREE} RETURNING id, tenant, run_count, materialised_count, sealed_at"
    )
}

/// Moves the checkpoint past a chunk, if the pass holds the claim and the checkpoint is where the
/// chunk starts, and counts the chunk's runs: `$6` pending (canceled, in a canceled batch) and `$7`
/// failed. Answers the batch's status (a canceled batch's runs are written canceled).
const ADVANCE: &str = "UPDATE batches SET materialised_count = $3, materialiser_lease_until = $4, \
     open_runs = open_runs + CASE WHEN status = 'CANCELED' THEN 0 ELSE CAST($6 AS BIGINT) END, \
     canceled_runs = canceled_runs + CASE WHEN status = 'CANCELED' THEN CAST($6 AS BIGINT) ELSE 0 END, \
     failed_runs = failed_runs + CAST($7 AS BIGINT) \
     WHERE id = $1 AND materialiser = $2 AND materialised_count = $5 RETURNING status";

#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    batch_id: String,
    idx: i32,
    tenant: String,
    task: String,
    payload: Option<Vec<u8>>,
    payload_type: String,
    options: Option<String>,
    status: String,
    attempt: i32,
    max_attempts: i32,
    output: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    error_line: Option<i64>,
    created_at: i64,
    claimed_at: Option<i64>,
    completed_at: Option<i64>,
}

impl From<RunRow> for Run {
    fn from(row: RunRow) -> Self {
        let error = row.error_code.map(|code| RunError {
            code,
            message: row.error_message.unwrap_or_default(),
            line: row.error_line.map(|line| line as u64),
        });
        Run {
            batch_id: row.batch_id,
            index: row.idx as u32,
            tenant: row.tenant,
            task: row.task,
            payload: row.payload,
            payload_type: row.payload_type,
            options: row.options,
            // Statuses are written by this code only; an unknown one reads as failed (final).
            status: RunStatus::parse(&row.status).unwrap_or(RunStatus::Failed),
            attempt: row.attempt.max(0) as u32,
            max_attempts: row.max_attempts.max(0) as u32,
            output: row.output,
            error,
            created_at: row.created_at,
            claimed_at: row.claimed_at,
            completed_at: row.completed_at,
        }
    }
}

/// A page of a tenant's batches: the optional filters are bound from `$2` on, status first.
fn list_batches_statement(status: bool, after: bool, limit: u32) -> String {
    let mut sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1");
    let mut next = 2;
    if status {
        sql.push_str(&format!(" AND status = ${next}"));
        next += 1;
    }
    if after {
        sql.push_str(&format!(
            " AND (created_at < ${next} OR (created_at = ${next} AND id < ${}))",
            next + 1
        ));
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}"));
    sql
}

/// Write transactions: on SQLite they take the write lock at `BEGIN`, so a transaction never
/// starts reading and then fails to upgrade to writing (SQLITE_BUSY without a wait).
macro_rules! impl_sql_run_store {
    ($store:ty, $db:ty, $lock:expr, $begin:expr, $commit_unflushed:expr) => {
        #[async_trait]
        impl RunStore for $store {
            async fn claim_materialise(
                &self,
                token: &str,
                now: Millis,
                lease_until: Millis,
            ) -> Result<Option<MaterialiseClaim>, DependencyError> {
                let row: Option<(String, String, i32, i32, Option<i64>)> =
                    sqlx::query_as(&claim_statement($lock))
                        .bind(token)
                        .bind(now)
                        .bind(lease_until)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(
                    |(batch_id, tenant, run_count, next_index, sealed_at)| MaterialiseClaim {
                        batch_id,
                        tenant,
                        run_count: run_count as u32,
                        next_index: next_index as u32,
                        sealed_at: sealed_at.unwrap_or_default(),
                        token: token.to_owned(),
                    },
                ))
            }

            async fn commit_chunk(
                &self,
                claim: &MaterialiseClaim,
                chunk: &RunChunk,
                now: Millis,
                lease_until: Millis,
            ) -> Result<ChunkCommitted, DependencyError> {
                match self.write_chunk(claim, chunk, now, lease_until, Existing::Fail).await {
                    Err(error) if is_unique_violation(&error) => {
                        tracing::warn!(
                            batch_id = %claim.batch_id,
                            first_index = chunk.index.first().copied().unwrap_or_default(),
                            "a run of the chunk was already written; writing the chunk again, \
                             keeping the runs already there"
                        );
                        Ok(self.write_chunk(claim, chunk, now, lease_until, Existing::Keep).await?)
                    }
                    written => Ok(written?),
                }
            }

            async fn release_materialise(
                &self,
                claim: &MaterialiseClaim,
                items_deleted: bool,
                now: Millis,
                retry_at: Millis,
            ) -> Result<(), DependencyError> {
                let query = if items_deleted {
                    sqlx::query(
                        "UPDATE batches SET items_deleted_at = $3, materialiser = NULL, \
                         materialiser_lease_until = NULL WHERE id = $1 AND materialiser = $2",
                    )
                    .bind(&claim.batch_id)
                    .bind(&claim.token)
                    .bind(now)
                } else {
                    sqlx::query(
                        "UPDATE batches SET materialiser_lease_until = $3 \
                         WHERE id = $1 AND materialiser = $2",
                    )
                    .bind(&claim.batch_id)
                    .bind(&claim.token)
                    .bind(retry_at)
                };
                query.execute(&self.pool).await?;
                Ok(())
            }

            async fn batches_waiting(&self) -> Result<u64, DependencyError> {
                let count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM batches WHERE sealed AND items_deleted_at IS NULL",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(count as u64)
            }

            async fn run_counts(&self, batch_id: &str) -> Result<RunCounts, DependencyError> {
                // One statement, so the counters and the claimed runs are read at one moment. The
                // second status term names the partial index's condition, which SQLite's planner
                // only uses when the query spells it out.
                let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT open_runs, completed_runs, failed_runs, canceled_runs, \
                     (SELECT COUNT(*) FROM runs WHERE batch_id = $1 AND status = 'CLAIMED' \
                     AND status <> 'PENDING') \
                     FROM batches WHERE id = $1",
                )
                .bind(batch_id)
                .fetch_optional(&self.pool)
                .await?;
                let count = |n: i64| n.max(0) as u64;
                Ok(row.map_or_else(RunCounts::default, |(open, completed, failed, canceled, claimed)| {
                    RunCounts {
                        pending: count(open - claimed),
                        claimed: count(claimed),
                        completed: count(completed),
                        failed: count(failed),
                        canceled: count(canceled),
                    }
                }))
            }

            async fn runs(
                &self,
                batch_id: &str,
                status: Option<RunStatus>,
                from_index: u32,
                limit: u32,
            ) -> Result<Vec<Run>, DependencyError> {
                let rows: Vec<RunRow> = match status {
                    // Pending runs and the others have an index each; the status is spelled out
                    // where a prepared statement's plan must know which one it may use.
                    Some(status) => sqlx::query_as(&format!(
                        "SELECT {RUN_LIST_COLUMNS} FROM runs WHERE batch_id = $1 \
                         AND status = $2 AND {} AND idx >= $3 ORDER BY idx LIMIT $4",
                        if status == RunStatus::Pending {
                            "status = 'PENDING'"
                        } else {
                            "status <> 'PENDING'"
                        }
                    ))
                    .bind(batch_id)
                    .bind(status.as_str())
                    .bind(from_index as i64)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query_as(&format!(
                        "SELECT {RUN_LIST_COLUMNS} FROM runs WHERE batch_id = $1 \
                         AND idx >= $2 ORDER BY idx LIMIT $3"
                    ))
                    .bind(batch_id)
                    .bind(from_index as i64)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?,
                };
                Ok(rows.into_iter().map(Run::from).collect())
            }

            async fn run(
                &self,
                tenant: &str,
                batch_id: &str,
                index: u32,
            ) -> Result<Option<Run>, DependencyError> {
                let row: Option<RunRow> = sqlx::query_as(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE batch_id = $1 AND idx = $2 \
                     AND tenant = $3"
                ))
                .bind(batch_id)
                .bind(index as i64)
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(Run::from))
            }

            async fn list_batches(
                &self,
                tenant: &str,
                status: Option<BatchStatus>,
                after: Option<&BatchCursor>,
                limit: u32,
            ) -> Result<Vec<Batch>, DependencyError> {
                let sql = list_batches_statement(status.is_some(), after.is_some(), limit);
                let mut query = sqlx::query_as::<$db, BatchRow>(&sql).bind(tenant);
                if let Some(status) = status {
                    query = query.bind(status.as_str());
                }
                if let Some(after) = after {
                    query = query.bind(after.created_at).bind(after.id.clone());
                }
                let rows = query.fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(Batch::from).collect())
            }

            async fn cancel_batch(
                &self,
                tenant: &str,
                id: &str,
                now: Millis,
            ) -> Result<Canceled, DependencyError> {
                let mut transaction = self.pool.begin_with($begin).await?;
                let canceled: Option<BatchRow> = sqlx::query_as(&format!(
                    "UPDATE batches SET status = 'CANCELED', completed_at = $3 \
                     WHERE id = $1 AND tenant = $2 AND status IN ('PENDING', 'PROCESSING') \
                     RETURNING {BATCH_COLUMNS}"
                ))
                .bind(id)
                .bind(tenant)
                .bind(now)
                .fetch_optional(&mut *transaction)
                .await?;
                if let Some(batch) = canceled {
                    Self::cancel_pending(&mut transaction, id, now).await?;
                    transaction.commit().await?;
                    return Ok(Canceled::Canceled(batch.into()));
                }
                drop(transaction);
                let current = crate::store::BatchStore::batch(self, tenant, id).await?;
                Ok(match current {
                    None => Canceled::NotFound,
                    Some(batch) if batch.status == BatchStatus::Canceled => {
                        Canceled::Canceled(batch)
                    }
                    Some(batch) => Canceled::Final(batch.status),
                })
            }
        }

        impl $store {
            /// The chunk's transaction: the guarded checkpoint first (it locks the batch row), then
            /// its runs.
            async fn write_chunk(
                &self,
                claim: &MaterialiseClaim,
                chunk: &RunChunk,
                now: Millis,
                lease_until: Millis,
                existing: Existing,
            ) -> Result<ChunkCommitted, sqlx::Error> {
                let Some(&first) = chunk.index.first() else {
                    return Ok(ChunkCommitted::Written);
                };
                let end = first + chunk.len() as i32;
                let last = end as u32 == claim.run_count;
                let mut transaction = self.pool.begin_with($begin).await?;
                if !last && !$commit_unflushed.is_empty() {
                    sqlx::query($commit_unflushed).execute(&mut *transaction).await?;
                }
                let status: Option<String> = sqlx::query_scalar(ADVANCE)
                    .bind(&claim.batch_id)
                    .bind(&claim.token)
                    .bind(end)
                    .bind(lease_until)
                    .bind(first)
                    .bind(chunk.failed.iter().filter(|failed| !**failed).count() as i64)
                    .bind(chunk.failed.iter().filter(|failed| **failed).count() as i64)
                    .fetch_optional(&mut *transaction)
                    .await?;
                let Some(status) = status else {
                    return Ok(ChunkCommitted::ClaimLost);
                };
                let canceled = status == BatchStatus::Canceled.as_str();
                Self::insert_runs(&mut transaction, claim, chunk, canceled, now, existing).await?;
                if last {
                    sqlx::query(FINISH_IF_ALL_FINAL)
                        .bind(&claim.batch_id)
                        .bind(now)
                        .execute(&mut *transaction)
                        .await?;
                }
                transaction.commit().await?;
                Ok(ChunkCommitted::Written)
            }
        }
    };
}

// A chunk's commit on Postgres does not wait for its WAL to reach the disk, but for the last
// chunk's. Every run written stays in the queue until the last chunk commits, and that commit
// flushes the WAL of every chunk before it (as does any commit that waits, on any connection: a
// claim of one of the runs, a journal write), so what a crash of Postgres can take is chunks
// nobody has relied on yet, each with its checkpoint: the next pass writes them again. Waiting
// instead stalls the one connection writing the batch on the disk for each chunk.
impl_sql_run_store!(
    PostgresStore,
    Postgres,
    "FOR UPDATE SKIP LOCKED",
    "BEGIN",
    "SET LOCAL synchronous_commit = off"
);
// SQLite: one file, whose writes are flushed at each checkpoint of its WAL.
impl_sql_run_store!(SqliteStore, Sqlite, "", "BEGIN IMMEDIATE", "");

impl PostgresStore {
    /// One binary `COPY` for the whole chunk: Postgres writes its rows a page at a time. A chunk
    /// written again keeping the runs already there (see [`Existing`]) is one
    /// `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` instead, every column bound as an
    /// array.
    async fn insert_runs(
        transaction: &mut Transaction<'_, Postgres>,
        claim: &MaterialiseClaim,
        chunk: &RunChunk,
        canceled: bool,
        now: Millis,
        existing: Existing,
    ) -> Result<(), sqlx::Error> {
        if let Existing::Keep = existing {
            return Self::insert_runs_keeping(transaction, claim, chunk, canceled, now).await;
        }
        let statuses = chunk.statuses(canceled);
        let attempts = chunk.attempts();
        let mut copy = transaction.copy_in_raw(COPY_RUNS).await?;
        let mut rows = BinaryRows::with_capacity(COPY_PIECE_BYTES + 4096);
        for i in 0..chunk.len() {
            rows.row(15)
                .text(Some(&claim.batch_id))
                .int4(chunk.index[i])
                .text(Some(&claim.tenant))
                .text(Some(&chunk.task[i]))
                .bytes(chunk.payload[i].as_deref())
                .text(Some(&chunk.payload_type[i]))
                .text(chunk.options[i].as_deref())
                .text(Some(statuses[i]))
                .int4(attempts[i])
                .int4(chunk.max_attempts[i])
                .text(chunk.error_code[i].as_deref())
                .text(chunk.error_message[i].as_deref())
                .int8(chunk.error_line[i])
                .int8(Some(now))
                .int8(Some(now));
            if rows.unsent().len() >= COPY_PIECE_BYTES {
                copy.send(rows.unsent()).await?;
                rows.sent();
            }
        }
        rows.end();
        copy.send(rows.unsent()).await?;
        copy.finish().await?;
        Ok(())
    }

    async fn insert_runs_keeping(
        transaction: &mut Transaction<'_, Postgres>,
        claim: &MaterialiseClaim,
        chunk: &RunChunk,
        canceled: bool,
        now: Millis,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "{INSERT_COLUMNS} SELECT $1, t.idx, $2, t.task, t.payload, t.payload_type, \
             t.options, t.status, t.attempt, t.max_attempts, t.error_code, t.error_message, \
             t.error_line, $3, $3 \
             FROM UNNEST($4::int4[], $5::text[], $6::bytea[], $7::text[], $8::text[], \
             $9::text[], $10::int4[], $11::int4[], $12::text[], $13::text[], $14::int8[]) \
             AS t(idx, task, payload, payload_type, options, status, attempt, max_attempts, \
             error_code, error_message, error_line){}",
            Existing::Keep.clause()
        ))
        .bind(&claim.batch_id)
        .bind(&claim.tenant)
        .bind(now)
        .bind(&chunk.index)
        .bind(&chunk.task)
        .bind(
            chunk
                .payload
                .iter()
                .map(Option::as_deref)
                .collect::<Vec<Option<&[u8]>>>(),
        )
        .bind(&chunk.payload_type)
        .bind(&chunk.options)
        .bind(chunk.statuses(canceled))
        .bind(chunk.attempts())
        .bind(&chunk.max_attempts)
        .bind(&chunk.error_code)
        .bind(&chunk.error_message)
        .bind(&chunk.error_line)
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }
}

impl SqliteStore {
    /// Multi-row `VALUES`, as many rows per statement as SQLite binds.
    async fn insert_runs(
        transaction: &mut Transaction<'_, Sqlite>,
        claim: &MaterialiseClaim,
        chunk: &RunChunk,
        canceled: bool,
        now: Millis,
        existing: Existing,
    ) -> Result<(), sqlx::Error> {
        let statuses = chunk.statuses(canceled);
        let attempts = chunk.attempts();
        let rows: Vec<usize> = (0..chunk.len()).collect();
        for part in rows.chunks(SQLITE_RUNS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(INSERT_COLUMNS);
            insert.push_values(part, |mut row, &i| {
                row.push_bind(&claim.batch_id)
                    .push_bind(chunk.index[i])
                    .push_bind(&claim.tenant)
                    .push_bind(&chunk.task[i])
                    .push_bind(chunk.payload[i].as_deref())
                    .push_bind(&chunk.payload_type[i])
                    .push_bind(chunk.options[i].as_deref())
                    .push_bind(statuses[i])
                    .push_bind(attempts[i])
                    .push_bind(chunk.max_attempts[i])
                    .push_bind(chunk.error_code[i].as_deref())
                    .push_bind(chunk.error_message[i].as_deref())
                    .push_bind(chunk.error_line[i])
                    .push_bind(now)
                    .push_bind(now);
            });
            insert.push(existing.clause());
            insert.build().execute(&mut **transaction).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_pages_bind_their_filters_in_order() {
        assert_eq!(
            list_batches_statement(true, true, 10),
            format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1 AND status = $2 AND \
                 (created_at < $3 OR (created_at = $3 AND id < $4)) \
                 ORDER BY created_at DESC, id DESC LIMIT 10"
            )
        );
        assert!(list_batches_statement(false, true, 5).contains("created_at < $2"));
    }
}
