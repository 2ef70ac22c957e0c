//! The JSON an item is stored as in the queue, for valid and failed items alike.

use serde::Serialize;
use serde_json::value::RawValue;

use super::item::ItemFailure;

/// The `payloadType` of an item whose payload was offloaded; its payload is the storage key.
pub const OFFLOADED_PAYLOAD_TYPE: &str = "application/store";
pub const DEFAULT_PAYLOAD_TYPE: &str = "application/json";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredItem<'a> {
    pub task: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a RawValue>,
    pub payload_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
pub struct StoredFailure<'a> {
    pub error: StoredError<'a>,
    /// The body line the item came from, so a user can find it.
    pub line: u64,
}

#[derive(Serialize)]
pub struct StoredError<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl<'a> StoredFailure<'a> {
    pub fn new(failure: &'a ItemFailure, line: u64) -> Self {
        Self {
            error: StoredError {
                code: failure.code.as_str(),
                message: &failure.message,
            },
            line,
        }
    }
}

/// Serialises a stored shape. These types hold only strings, maps and raw JSON, which cannot fail
/// to serialise.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored items always serialise")
}
