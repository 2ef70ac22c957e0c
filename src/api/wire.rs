//! Request and response bodies of the HTTP API, shared by the server and Sluice's own clients.
//!
//! Field names follow the trigger.dev v3 batch API so its SDK clients work unchanged; Sluice only
//! adds fields.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBatchRequest {
    pub run_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_identifiers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_parent_on_completion: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBatchResponse {
    pub id: String,
    pub run_count: u32,
    pub is_cached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    /// 1-based line number in the (decompressed) body.
    pub line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestResponse {
    pub id: String,
    pub items_accepted: u64,
    pub items_deduplicated: u64,
    pub sealed: bool,
    pub items_failed: u64,
    /// All rejected lines; `rejected` lists at most the first 100.
    pub items_rejected: u64,
    pub rejected: Vec<RejectedLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_count: Option<u32>,
    /// Inclusive index ranges not yet enqueued, ascending, at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<[u32; 2]>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub id: String,
    pub status: String,
    pub run_count: u32,
    pub sealed: bool,
    pub enqueued_count: u64,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub counts: RunCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub database: String,
    pub queue: String,
    pub payloads: String,
    /// Present when a backend is unavailable (the answer is then 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The `error` member every non-2xx body carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
