//! Request and response bodies of the HTTP API, shared by the server and Sluice's own clients.
//!
//! Field names follow the trigger.dev v3 batch API so its SDK clients work unchanged; Sluice only
//! adds fields.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBatchRequest {
    #[serde(deserialize_with = "json_integer")]
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

/// A JSON integer as JSON Schema reads one: `3.0` is the integer 3, so a client whose JSON encoder
/// writes whole numbers with a fraction is not turned away. Serde's `i64` would reject it.
pub fn json_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    const I64_RANGE: std::ops::RangeInclusive<f64> = i64::MIN as f64..=i64::MAX as f64;
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(integer) = number.as_i64() {
        return Ok(integer);
    }
    match number.as_f64() {
        Some(value) if value.fract() == 0.0 && I64_RANGE.contains(&value) => Ok(value as i64),
        Some(value) if value.fract() == 0.0 => Err(D::Error::custom(format!(
            "the integer {number} is out of range"
        ))),
        _ => Err(D::Error::custom(format!(
            "expected an integer, got {number}"
        ))),
    }
}

/// [`json_integer`] for an optional field (with `#[serde(default)]`): absent is `None`; present,
/// it must be an integer (`null` is refused, as the API's schema says).
pub fn optional_json_integer<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    json_integer(deserializer).map(Some)
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
    /// Runs written so far (`0..materialisedCount`); `runCount` once the batch is materialised.
    #[serde(default)]
    pub materialised_count: u32,
    pub counts: RunCounts,
}

/// How many of a batch's written runs are in each status; they add up to `materialisedCount`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    pub pending: u64,
    /// The same as `claimed`, under the name earlier versions gave it.
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    #[serde(default)]
    pub claimed: u64,
    #[serde(default)]
    pub canceled: u64,
}

/// `GET /api/v3/limits`: what one batch may hold, so a client can split its input to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitsResponse {
    /// Largest `runCount` (`STREAMING_BATCH_MAX_ITEMS`).
    pub max_items_per_batch: u32,
    /// Largest NDJSON line; a longer one becomes a failed item (`STREAMING_BATCH_ITEM_MAXIMUM_SIZE`).
    pub max_item_bytes: u32,
    /// Payload bytes from which a payload goes to object storage (`BATCH_PAYLOAD_OFFLOAD_THRESHOLD`).
    pub offload_threshold_bytes: u32,
    /// Phase 2 body bytes after decompression (`SLUICE_MAX_BODY_BYTES`).
    pub max_body_bytes: u64,
    /// Phase 2 body bytes on the wire (`SLUICE_MAX_ENCODED_BODY_BYTES`).
    pub max_encoded_body_bytes: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_count(body: &str) -> Result<i64, String> {
        serde_json::from_str::<CreateBatchRequest>(body)
            .map(|request| request.run_count)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn run_count_is_any_json_integer() {
        assert_eq!(run_count(r#"{"runCount":3}"#), Ok(3));
        assert_eq!(run_count(r#"{"runCount":3.0}"#), Ok(3));
        assert_eq!(run_count(r#"{"runCount":2e3}"#), Ok(2000));
        assert_eq!(run_count(r#"{"runCount":-1}"#), Ok(-1));
        assert!(
            run_count(r#"{"runCount":2.5}"#)
                .unwrap_err()
                .contains("expected an integer")
        );
        assert!(
            run_count(r#"{"runCount":1e40}"#)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(run_count(r#"{"runCount":"3"}"#).is_err());
        assert!(run_count(r#"{}"#).is_err());
    }
}
