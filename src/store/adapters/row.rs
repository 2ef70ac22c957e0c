//! The `batches` row as both SQL adapters read it.

use crate::store::{Batch, BatchStatus};

/// Columns every batch query selects, in this order.
pub const BATCH_COLUMNS: &str = "id, tenant, run_count, status, sealed, idempotency_key, created_at, sealed_at, completed_at, \
     materialised_count";

#[derive(Debug, sqlx::FromRow)]
pub struct BatchRow {
    id: String,
    tenant: String,
    run_count: i32,
    status: String,
    sealed: bool,
    idempotency_key: Option<String>,
    created_at: i64,
    sealed_at: Option<i64>,
    completed_at: Option<i64>,
    materialised_count: i32,
}

impl From<BatchRow> for Batch {
    fn from(row: BatchRow) -> Self {
        Batch {
            id: row.id,
            tenant: row.tenant,
            run_count: u32::try_from(row.run_count).unwrap_or(0),
            // Statuses are written by this code only; an unknown one is treated as terminal.
            status: BatchStatus::parse(&row.status).unwrap_or(BatchStatus::Aborted),
            sealed: row.sealed,
            idempotency_key: row.idempotency_key,
            created_at: row.created_at,
            sealed_at: row.sealed_at,
            completed_at: row.completed_at,
            materialised_count: u32::try_from(row.materialised_count).unwrap_or(0),
        }
    }
}
