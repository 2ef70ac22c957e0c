//! The batch store as both SQL adapters implement it: the same statements, written with `$N`
//! placeholders (sqlx's SQLite driver binds `$N` by number, as Postgres does).

use async_trait::async_trait;

use super::row::{BATCH_COLUMNS, BatchRow};
use super::{PostgresStore, SqliteStore};
use crate::dependency::DependencyError;
use crate::store::{Batch, BatchStore, Created, Millis, NewBatch};

macro_rules! impl_sql_batch_store {
    ($store:ty) => {
#[async_trait]
impl BatchStore for $store {
    async fn create_batch(&self, batch: NewBatch) -> Result<Created, DependencyError> {
        let inserted: Option<BatchRow> = sqlx::query_as(&format!(
            "INSERT INTO batches (id, tenant, run_count, idempotency_key, task_identifiers, \
             parent_run_id, resume_parent_on_completion, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING {BATCH_COLUMNS}"
        ))
        .bind(&batch.id)
        .bind(&batch.tenant)
        .bind(batch.run_count as i32)
        .bind(&batch.idempotency_key)
        .bind(serde_json::to_string(&batch.task_identifiers).unwrap_or_default())
        .bind(&batch.parent_run_id)
        .bind(batch.resume_parent_on_completion)
        .bind(batch.created_at)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(Created::New(row.into()));
        }
        let existing: BatchRow = sqlx::query_as(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1 AND idempotency_key = $2"
        ))
        .bind(&batch.tenant)
        .bind(&batch.idempotency_key)
        .fetch_one(&self.pool)
        .await?;
        Ok(Created::Existing(existing.into()))
    }

    async fn batch(&self, tenant: &str, id: &str) -> Result<Option<Batch>, DependencyError> {
        let row: Option<BatchRow> = sqlx::query_as(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(Batch::from))
    }

    async fn seal(&self, id: &str, now: Millis) -> Result<bool, DependencyError> {
        let result = sqlx::query(
            "UPDATE batches SET sealed = TRUE, status = 'PROCESSING', sealed_at = $2 \
             WHERE id = $1 AND sealed = FALSE AND status = 'PENDING'",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn abort_unsealed(
        &self,
        created_before: Millis,
    ) -> Result<Vec<(String, String)>, DependencyError> {
        let aborted = sqlx::query_as(
            "UPDATE batches SET status = 'ABORTED' \
             WHERE status = 'PENDING' AND sealed = FALSE AND created_at < $1 \
             RETURNING tenant, id",
        )
        .bind(created_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(aborted)
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
    };
}

impl_sql_batch_store!(PostgresStore);
impl_sql_batch_store!(SqliteStore);
