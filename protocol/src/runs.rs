//! JSON bodies of the API after seal: batch lists, runs, and trigger.dev's batch reads
//! (`GET /api/v2/batches/{id}`, which SDK 4.x `batch.retrieve` validates strictly, and
//! `GET /api/v1/batches/{id}`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A page of a list, and the cursor of the next page when there is one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A batch in a list of batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    pub id: String,
    pub status: String,
    pub run_count: u32,
    pub sealed: bool,
    pub materialised_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunErrorBody {
    pub code: String,
    pub message: String,
    /// The body line of a failed item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResponse {
    pub id: String,
    pub batch_id: String,
    pub index: u32,
    pub task: String,
    pub status: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload_type: String,
    /// The payload, inline when it is not offloaded (and when the run is read on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// Where an offloaded payload is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunErrorBody>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// A failed run as trigger.dev lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerBatchError {
    pub index: u32,
    pub task_identifier: String,
    pub error: String,
    pub error_code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerBatchProcessing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub errors: Vec<TriggerBatchError>,
}

/// `GET /api/v2/batches/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerBatchV2 {
    pub id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub run_count: u32,
    pub runs: Vec<String>,
    pub processing: TriggerBatchProcessing,
}

/// `GET /api/v1/batches/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerBatchV1 {
    pub id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub run_count: u32,
    pub runs: Vec<String>,
    pub successful_run_count: u64,
    pub failed_run_count: u64,
    pub errors: Vec<TriggerBatchError>,
}

/// `GET /api/v3/stats`: the tenant's counts per UTC day, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsResponse {
    pub data: Vec<DayStatsBody>,
}

/// One UTC day of a tenant's stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DayStatsBody {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub batches: u64,
    pub items: u64,
    pub runs_completed: u64,
    pub runs_failed: u64,
}
