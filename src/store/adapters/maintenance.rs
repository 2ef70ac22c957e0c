//! The retention and stats stores as both SQL adapters implement them: the same statements for
//! both (`$N` placeholders), but for the row lock Postgres takes when holding batches and the
//! spelling of "is distinct from" (`IS NOT` on SQLite).

use std::ops::RangeInclusive;

use async_trait::async_trait;

use super::{PostgresStore, SqliteStore};
use crate::dependency::DependencyError;
use crate::store::Millis;
use crate::store::retention::{ExpiredBatch, Horizon, RetentionStore};
use crate::store::stats::{Day, DayStats, StatsStore, StatsWritten};

/// Final batches past the horizon that no node holds, whose runs are all written or never will be
/// (a canceled batch may still be materialising). `$2`: final before; `$3`: aborted batches
/// without `completed_at` created before; `$4`: now.
const EXPIRED: &str = "status IN ('COMPLETED', 'PARTIAL_FAILED', 'ABORTED', 'CANCELED') \
     AND (completed_at < $2 OR (status = 'ABORTED' AND completed_at IS NULL AND created_at < $3)) \
     AND (NOT sealed OR materialised_count = run_count) \
     AND (retention_lease_until IS NULL OR retention_lease_until <= $4)";

/// Holds batches past the horizon; the guard is repeated on the outer update so that of two
/// nodes holding the same row at once, the second matches nothing.
fn hold_statement(lock: &str) -> String {
    format!(
        "UPDATE batches SET retainer = $1, retention_lease_until = $5 \
         WHERE id IN (SELECT id FROM batches WHERE {EXPIRED} LIMIT $6 {lock}) AND {EXPIRED} \
         RETURNING id, tenant"
    )
}

/// Every tenant's counts per day for the days `$1..=$2`, from the batches created and the runs
/// that turned final in them. A final run is never updated again, so its `updated_at` is when it
/// turned final.
const FRESH: &str = "WITH fresh AS (\
     SELECT tenant, day, CAST(SUM(batches) AS BIGINT) AS batches, \
     CAST(SUM(items) AS BIGINT) AS items, \
     CAST(SUM(runs_completed) AS BIGINT) AS runs_completed, \
     CAST(SUM(runs_failed) AS BIGINT) AS runs_failed FROM (\
       SELECT tenant, created_at / 86400000 AS day, COUNT(*) AS batches, \
       SUM(CASE WHEN sealed THEN run_count ELSE 0 END) AS items, \
       0 AS runs_completed, 0 AS runs_failed \
       FROM batches WHERE created_at >= $1 * 86400000 AND created_at < ($2 + 1) * 86400000 \
       GROUP BY tenant, created_at / 86400000 \
       UNION ALL \
       SELECT tenant, updated_at / 86400000, 0, 0, \
       SUM(CASE WHEN status = 'COMPLETED' THEN 1 ELSE 0 END), \
       SUM(CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END) \
       FROM runs WHERE status IN ('COMPLETED', 'FAILED') \
       AND updated_at >= $1 * 86400000 AND updated_at < ($2 + 1) * 86400000 \
       GROUP BY tenant, updated_at / 86400000\
     ) AS counted GROUP BY tenant, day) ";

/// Writes the fresh counts where they differ from the stored ones. `WHERE TRUE` lets SQLite tell
/// the upsert's `ON CONFLICT` from a join's `ON`; rows are written in key order, so two nodes
/// refreshing at once lock them in the same order.
fn upsert_statement(distinct: &str) -> String {
    format!(
        "{FRESH}INSERT INTO tenant_stats \
         (tenant, day, batches, items, runs_completed, runs_failed, updated_at) \
         SELECT tenant, day, batches, items, runs_completed, runs_failed, $3 FROM fresh \
         WHERE TRUE ORDER BY tenant, day \
         ON CONFLICT (tenant, day) DO UPDATE SET batches = excluded.batches, \
         items = excluded.items, runs_completed = excluded.runs_completed, \
         runs_failed = excluded.runs_failed, updated_at = excluded.updated_at \
         WHERE (tenant_stats.batches, tenant_stats.items, tenant_stats.runs_completed, \
         tenant_stats.runs_failed) {distinct} (excluded.batches, excluded.items, \
         excluded.runs_completed, excluded.runs_failed)"
    )
}

/// The range's rows that no data backs any more (an anti-join with the fresh counts).
const PRUNE: &str = "DELETE FROM tenant_stats WHERE day >= $1 AND day <= $2 AND NOT EXISTS \
     (SELECT 1 FROM fresh WHERE fresh.tenant = tenant_stats.tenant AND fresh.day = tenant_stats.day)";

type DayRow = (i64, i64, i64, i64, i64);

fn day_stats((day, batches, items, runs_completed, runs_failed): DayRow) -> DayStats {
    let count = |n: i64| n.max(0) as u64;
    DayStats {
        day,
        batches: count(batches),
        items: count(items),
        runs_completed: count(runs_completed),
        runs_failed: count(runs_failed),
    }
}

/// Deletes the first `$2` rows of batch `$1` in a table keyed by (batch_id, `order`): one bounded
/// statement, so a big batch goes in many short ones.
fn first_rows_of_batch(table: &str, order: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE batch_id = $1 AND {order} IN \
         (SELECT {order} FROM {table} WHERE batch_id = $1 ORDER BY {order} LIMIT $2)"
    )
}

macro_rules! impl_sql_maintenance {
    ($store:ty, $lock:expr, $begin:expr, $distinct:expr) => {
        #[async_trait]
        impl RetentionStore for $store {
            async fn hold_expired(
                &self,
                token: &str,
                horizon: Horizon,
                now: Millis,
                lease_until: Millis,
                limit: u32,
            ) -> Result<Vec<ExpiredBatch>, DependencyError> {
                let rows: Vec<(String, String)> = sqlx::query_as(&hold_statement($lock))
                    .bind(token)
                    .bind(horizon.final_before)
                    .bind(horizon.aborted_created_before)
                    .bind(now)
                    .bind(lease_until)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, tenant)| ExpiredBatch { id, tenant })
                    .collect())
            }

            async fn delete_runs(
                &self,
                batch_id: &str,
                limit: u32,
            ) -> Result<u64, DependencyError> {
                let deleted = sqlx::query(&first_rows_of_batch("runs", "idx"))
                    .bind(batch_id)
                    .bind(i64::from(limit))
                    .execute(&self.pool)
                    .await?;
                Ok(deleted.rows_affected())
            }

            async fn delete_events(
                &self,
                batch_id: &str,
                limit: u32,
            ) -> Result<u64, DependencyError> {
                let deleted = sqlx::query(&first_rows_of_batch("batch_events", "seq"))
                    .bind(batch_id)
                    .bind(i64::from(limit))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                // The journal is empty: its sequence counter goes last.
                if deleted < u64::from(limit) {
                    sqlx::query("DELETE FROM batch_event_seqs WHERE batch_id = $1")
                        .bind(batch_id)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(deleted)
            }

            async fn delete_batch(
                &self,
                batch_id: &str,
                token: &str,
            ) -> Result<bool, DependencyError> {
                let deleted = sqlx::query("DELETE FROM batches WHERE id = $1 AND retainer = $2")
                    .bind(batch_id)
                    .bind(token)
                    .execute(&self.pool)
                    .await?;
                Ok(deleted.rows_affected() == 1)
            }

            async fn release(&self, batch_id: &str, token: &str) -> Result<(), DependencyError> {
                sqlx::query(
                    "UPDATE batches SET retainer = NULL, retention_lease_until = NULL \
                     WHERE id = $1 AND retainer = $2",
                )
                .bind(batch_id)
                .bind(token)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }

        #[async_trait]
        impl StatsStore for $store {
            async fn refresh_stats(
                &self,
                days: RangeInclusive<Day>,
                now: Millis,
            ) -> Result<StatsWritten, DependencyError> {
                let (first, last) = (*days.start(), *days.end());
                let mut transaction = self.pool.begin_with($begin).await?;
                let upserted = sqlx::query(&upsert_statement($distinct))
                    .bind(first)
                    .bind(last)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected();
                let pruned = sqlx::query(&format!("{FRESH}{PRUNE}"))
                    .bind(first)
                    .bind(last)
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected();
                transaction.commit().await?;
                Ok(StatsWritten { upserted, pruned })
            }

            async fn tenant_stats(
                &self,
                tenant: &str,
                days: RangeInclusive<Day>,
            ) -> Result<Vec<DayStats>, DependencyError> {
                let rows: Vec<DayRow> = sqlx::query_as(
                    "SELECT CAST(day AS BIGINT), batches, items, runs_completed, runs_failed \
                     FROM tenant_stats WHERE tenant = $1 AND day >= $2 AND day <= $3 \
                     ORDER BY day DESC",
                )
                .bind(tenant)
                .bind(*days.start())
                .bind(*days.end())
                .fetch_all(self.reader())
                .await?;
                Ok(rows.into_iter().map(day_stats).collect())
            }
        }
    };
}

impl_sql_maintenance!(
    PostgresStore,
    "FOR UPDATE SKIP LOCKED",
    "BEGIN",
    "IS DISTINCT FROM"
);
// SQLite has one writer: a write transaction already excludes every other.
impl_sql_maintenance!(SqliteStore, "", "BEGIN IMMEDIATE", "IS NOT");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_repeats_its_guard_outside_the_locked_select() {
        let sql = hold_statement("FOR UPDATE SKIP LOCKED");
        assert_eq!(sql.matches(EXPIRED).count(), 2);
        assert!(sql.contains("LIMIT $6 FOR UPDATE SKIP LOCKED)"));
    }

    #[test]
    fn the_upsert_updates_only_rows_whose_counts_differ() {
        let sql = upsert_statement("IS DISTINCT FROM");
        assert!(sql.starts_with("WITH fresh AS ("));
        assert!(sql.contains(
            "tenant_stats.runs_failed) IS DISTINCT FROM (excluded.batches, excluded.items, \
             excluded.runs_completed, excluded.runs_failed)"
        ));
    }
}
