//! JSON bodies of the worker API: `POST /api/v3/runs/claim`, `/heartbeat` and `/complete`, as the
//! server answers them and `sluice work` sends them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::wire::optional_json_integer;

/// For an optional field (with `#[serde(default)]`): absent is `None`; present, it must be a value
/// of the field's type (`null` is refused, as the API's schema says).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Most runs one claim, heartbeat or complete call carries.
pub const MAX_RUNS_PER_CALL: usize = 1000;
/// Lease of a claim or heartbeat that does not say, in milliseconds.
pub const DEFAULT_LEASE_MS: i64 = 60_000;
pub const MIN_LEASE_MS: i64 = 1_000;
pub const MAX_LEASE_MS: i64 = 3_600_000;
/// Longest a claim waits for a run to become available.
pub const MAX_WAIT_MS: i64 = 30_000;
/// Largest `output` a completion may carry.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequest {
    /// Only runs of these tasks; every task when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tasks: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_json_integer"
    )]
    pub limit: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_json_integer"
    )]
    pub lease_ms: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_json_integer"
    )]
    pub wait_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedRun {
    pub id: String,
    pub batch_id: String,
    pub index: u32,
    pub task: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload_type: String,
    /// The payload, unless it is offloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// Where an offloaded payload is read (`GET`, with the API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Box<RawValue>>,
    pub lease_id: String,
    pub lease_expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub runs: Vec<ClaimedRun>,
}

/// A run and the lease its worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunLease {
    pub id: String,
    pub lease_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub runs: Vec<RunLease>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_json_integer"
    )]
    pub lease_ms: Option<i64>,
}

/// Why one run of a call was not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResultError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResult {
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunResultError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub results: Vec<HeartbeatResult>,
}

/// A worker's error for a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedError {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub code: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunReport {
    pub id: String,
    pub lease_id: String,
    /// `COMPLETED`, `FAILED` or `RETRY`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Box<RawValue>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub error: Option<ReportedError>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_json_integer"
    )]
    pub retry_delay_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub runs: Vec<RunReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteResult {
    pub id: String,
    pub ok: bool,
    /// The run's status after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunResultError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteResponse {
    pub results: Vec<CompleteResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_may_be_written_as_any_json_integer_and_may_be_absent() {
        let claim: ClaimRequest =
            serde_json::from_str(r#"{"limit": 3.0, "leaseMs": 6e4}"#).unwrap();
        assert_eq!(claim.limit, Some(3));
        assert_eq!(claim.lease_ms, Some(60_000));
        assert_eq!(claim.wait_ms, None);
        assert!(serde_json::from_str::<ClaimRequest>(r#"{"waitMs": null}"#).is_err());
        assert!(serde_json::from_str::<ClaimRequest>(r#"{"tasks": null}"#).is_err());
        let report = r#"{"id": "r", "leaseId": "l", "status": "RETRY", "error": {"code": null, "message": ""}}"#;
        assert!(serde_json::from_str::<RunReport>(report).is_err());
        let empty: ClaimRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.limit, None);
        assert!(serde_json::from_str::<ClaimRequest>(r#"{"limit": 1.5}"#).is_err());
        assert!(serde_json::from_str::<ClaimRequest>(r#"{"limit": "2"}"#).is_err());
        assert!(serde_json::from_str::<ClaimRequest>(r#"{"limt": 2}"#).is_err());
    }
}
