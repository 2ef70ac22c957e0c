//! What a stored queue item becomes as a run: a valid item a `PENDING` run with its task,
//! payload (or storage reference), payload type and options; a failed item a `FAILED` run with
//! its code, message and line. Pure: no I/O.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::stored::DEFAULT_PAYLOAD_TYPE;
use crate::store::runs::RunChunk;

/// Attempts a run gets when its options do not say (`options.maxAttempts`).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// A run whose index holds no item (the queue lost it) fails with this code.
pub const ITEM_MISSING: &str = "ITEM_MISSING";
/// A run whose stored item cannot be read back fails with this code.
pub const ITEM_UNREADABLE: &str = "ITEM_UNREADABLE";

/// Both stored shapes (`protocol::stored`): a valid item, or a failed one (`error` and `line`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredShape<'a> {
    #[serde(default)]
    task: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_type: Option<String>,
    #[serde(default, borrow)]
    options: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<StoredError>,
    #[serde(default)]
    line: Option<i64>,
}

#[derive(Deserialize)]
struct StoredError {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct RunOptions {
    #[serde(default, rename = "maxAttempts")]
    max_attempts: Option<serde_json::Value>,
}

/// `options.maxAttempts` when it is a positive integer, else the default.
fn max_attempts(options: Option<&RawValue>) -> i32 {
    options
        .and_then(|raw| serde_json::from_str::<RunOptions>(raw.get()).ok())
        .and_then(|options| options.max_attempts?.as_u64())
        .filter(|&attempts| attempts >= 1)
        .map_or(DEFAULT_MAX_ATTEMPTS, |attempts| {
            i32::try_from(attempts).unwrap_or(i32::MAX)
        })
}

/// The runs of indexes `first..first + bodies.len()` from their stored items, in order.
pub fn decode_chunk(first: u32, bodies: &[Option<Bytes>]) -> RunChunk {
    let mut chunk = RunChunk::with_capacity(bodies.len());
    for (offset, body) in bodies.iter().enumerate() {
        let index = first + offset as u32;
        chunk.index.push(index as i32);
        let Some(body) = body else {
            push_failed(
                &mut chunk,
                ITEM_MISSING.into(),
                format!("no item was found at index {index} of the sealed batch"),
                None,
            );
            continue;
        };
        match serde_json::from_slice::<StoredShape<'_>>(body) {
            Ok(StoredShape {
                error: Some(error),
                line,
                ..
            }) => push_failed(&mut chunk, error.code, error.message, line),
            Ok(StoredShape {
                task: Some(task),
                payload,
                payload_type,
                options,
                ..
            }) => {
                chunk.task.push(task);
                chunk
                    .payload
                    .push(payload.map(|raw| body.slice_ref(raw.get().as_bytes())));
                chunk
                    .payload_type
                    .push(payload_type.unwrap_or_else(|| DEFAULT_PAYLOAD_TYPE.to_owned()));
                chunk.max_attempts.push(max_attempts(options));
                chunk.options.push(options.map(|raw| raw.get().to_owned()));
                chunk.failed.push(false);
                chunk.error_code.push(None);
                chunk.error_message.push(None);
                chunk.error_line.push(None);
            }
            _ => push_failed(
                &mut chunk,
                ITEM_UNREADABLE.into(),
                format!("the stored item at index {index} could not be read"),
                None,
            ),
        }
    }
    chunk
}

fn push_failed(chunk: &mut RunChunk, code: String, message: String, line: Option<i64>) {
    chunk.task.push(String::new());
    chunk.payload.push(None);
    chunk.payload_type.push(DEFAULT_PAYLOAD_TYPE.to_owned());
    chunk.options.push(None);
    chunk.failed.push(true);
    chunk.max_attempts.push(DEFAULT_MAX_ATTEMPTS);
    chunk.error_code.push(Some(code));
    chunk.error_message.push(Some(message));
    chunk.error_line.push(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn stored_items_become_runs_column_by_column() {
        let chunk = decode_chunk(
            10,
            &[
                body(
                    r#"{"task":"t","payload":{"n": 1},"payloadType":"application/json","options":{"maxAttempts":5,"queue":"q"}}"#,
                ),
                body(r#"{"error":{"code":"INVALID_JSON","message":"not JSON"},"line":7}"#),
                body(
                    r#"{"task":"u","payloadType":"application/store","payload":"batches/b/items/12/sha256-x"}"#,
                ),
                None,
                body("not json"),
                body(r#"{"task":"v","payloadType":"text/plain","options":{"maxAttempts":0}}"#),
            ],
        );
        assert_eq!(chunk.index, vec![10, 11, 12, 13, 14, 15]);
        assert_eq!(chunk.failed, vec![false, true, false, true, true, false]);
        assert_eq!(chunk.task, vec!["t", "", "u", "", "", "v"]);
        assert_eq!(chunk.payload[0].as_deref(), Some(&br#"{"n": 1}"#[..]));
        assert_eq!(
            chunk.payload[2].as_deref(),
            Some(&br#""batches/b/items/12/sha256-x""#[..])
        );
        assert_eq!(chunk.payload[5], None);
        assert_eq!(chunk.payload_type[2], "application/store");
        assert_eq!(chunk.max_attempts, vec![5, 3, 3, 3, 3, 3]);
        assert_eq!(
            chunk.options[0].as_deref(),
            Some(r#"{"maxAttempts":5,"queue":"q"}"#)
        );
        assert_eq!(chunk.error_code[1].as_deref(), Some("INVALID_JSON"));
        assert_eq!(chunk.error_message[1].as_deref(), Some("not JSON"));
        assert_eq!(chunk.error_line[1], Some(7));
        assert_eq!(chunk.error_code[3].as_deref(), Some(ITEM_MISSING));
        assert_eq!(chunk.error_code[4].as_deref(), Some(ITEM_UNREADABLE));
        assert_eq!(chunk.statuses(false)[..2], ["PENDING", "FAILED"]);
        assert_eq!(chunk.statuses(true)[..2], ["CANCELED", "FAILED"]);
        assert_eq!(chunk.attempts()[..2], [1, 0]);
    }
}
