//! Decides what one framed line becomes: a valid item, a failed item at an index, or a rejection.
//!
//! Pure and synchronous: no I/O here. The rules are the table of `docs/protocol.md`; the index of a
//! line that cannot be parsed is read from its first bytes, else it is the line's emit position.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::framer::{Frame, FrameKind};
use super::index_probe::{Probe, probe_index};
use super::quote::{bounded, quote};
use super::stored::{DEFAULT_PAYLOAD_TYPE, OFFLOADED_PAYLOAD_TYPE};

/// Stable codes of failed items and rejections, as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCode {
    PayloadTooLarge,
    InvalidJson,
    InvalidItem,
    InvalidIndex,
    IndexOutOfRange,
}

impl LineCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::InvalidJson => "INVALID_JSON",
            Self::InvalidItem => "INVALID_ITEM",
            Self::InvalidIndex => "INVALID_INDEX",
            Self::IndexOutOfRange => "INDEX_OUT_OF_RANGE",
        }
    }
}

/// Why a line became a failed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    pub code: LineCode,
    pub message: String,
}

/// A line that is not enqueued at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    pub index: Option<i64>,
    pub code: LineCode,
    pub message: String,
}

/// An item line as clients send it. Unknown keys are ignored.
#[derive(Debug, Deserialize)]
pub struct WireItem<'a> {
    #[serde(default, borrow)]
    pub index: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub task: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub options: Option<&'a RawValue>,
}

/// What a line decodes to.
#[derive(Debug)]
pub enum Decoded<'a> {
    Valid {
        index: u32,
        task: String,
        payload: Option<&'a RawValue>,
        /// `options.payloadType`, or the default.
        payload_type: String,
        options: Option<serde_json::Map<String, serde_json::Value>>,
    },
    Failed {
        index: u32,
        failure: ItemFailure,
    },
    Rejected(Rejection),
}

/// The batch-level facts a line is checked against.
#[derive(Debug, Clone, Copy)]
pub struct LineRules {
    pub run_count: u32,
    pub max_line_bytes: usize,
}

/// Decodes one frame. `emit_position` is the 0-based count of frames before it. Every message it
/// gives is bounded in size, whatever the line held.
pub fn decode_frame<'a>(frame: &Frame<'a>, emit_position: u64, rules: LineRules) -> Decoded<'a> {
    match decode_unbounded(frame, emit_position, rules) {
        Decoded::Failed { index, failure } => Decoded::Failed {
            index,
            failure: ItemFailure {
                message: bounded(failure.message),
                ..failure
            },
        },
        Decoded::Rejected(rejection) => Decoded::Rejected(Rejection {
            message: bounded(rejection.message),
            ..rejection
        }),
        valid => valid,
    }
}

fn decode_unbounded<'a>(frame: &Frame<'a>, emit_position: u64, rules: LineRules) -> Decoded<'a> {
    match frame.kind {
        FrameKind::Line(line) => decode_line(line.bytes(), frame.line_number, emit_position, rules),
        FrameKind::Oversized { head, length } => {
            let failure = ItemFailure {
                code: LineCode::PayloadTooLarge,
                message: format!(
                    "line is {length} bytes; the limit is {} bytes",
                    rules.max_line_bytes
                ),
            };
            failed_at_probed_index(head, frame.line_number, emit_position, failure, rules)
        }
    }
}

fn decode_line(bytes: &[u8], line: u64, emit_position: u64, rules: LineRules) -> Decoded<'_> {
    // Checked for the whole line up front: serde skips the strings of unknown keys without
    // validating them, so invalid UTF-8 there would otherwise pass as a valid item.
    let Ok(text) = std::str::from_utf8(bytes) else {
        let failure = ItemFailure {
            code: LineCode::InvalidJson,
            message: "line is not valid UTF-8".to_owned(),
        };
        return failed_at_probed_index(bytes, line, emit_position, failure, rules);
    };
    let starts_an_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !starts_an_object {
        // Serde would read a JSON array as the item's fields in order; only objects are items.
        let failure = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ItemFailure {
                code: LineCode::InvalidItem,
                message: "item must be a JSON object".to_owned(),
            },
            Err(error) => ItemFailure {
                code: LineCode::InvalidJson,
                message: format!("line is not valid JSON: {error}"),
            },
        };
        return failed_at_probed_index(bytes, line, emit_position, failure, rules);
    }
    let item: WireItem<'_> = match serde_json::from_str(text) {
        Ok(item) => item,
        Err(error) => {
            let (code, message) = if error.is_data() {
                (LineCode::InvalidItem, format!("item is not valid: {error}"))
            } else {
                (
                    LineCode::InvalidJson,
                    format!("line is not valid JSON: {error}"),
                )
            };
            let failure = ItemFailure { code, message };
            return failed_at_probed_index(bytes, line, emit_position, failure, rules);
        }
    };

    let index = match checked_index(item.index, rules.run_count) {
        Ok(index) => index,
        Err((index, code, message)) => {
            return Decoded::Rejected(Rejection {
                line,
                index,
                code,
                message,
            });
        }
    };
    let invalid = |message: String| Decoded::Failed {
        index,
        failure: ItemFailure {
            code: LineCode::InvalidItem,
            message,
        },
    };

    let task = match item
        .task
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        Some(Ok(task)) if !task.is_empty() => task,
        Some(Ok(_)) => return invalid("`task` must not be empty".to_owned()),
        Some(Err(_)) => return invalid("`task` must be a string".to_owned()),
        None => return invalid("`task` is missing".to_owned()),
    };
    let options = match item.options.map(|raw| serde_json::from_str(raw.get())) {
        None => None,
        Some(Ok(serde_json::Value::Null)) => None,
        Some(Ok(serde_json::Value::Object(mut options))) => {
            // Clients cannot forge internal markers.
            options.retain(|key, _| !key.starts_with("__"));
            Some(options)
        }
        Some(_) => return invalid("`options` must be an object".to_owned()),
    };
    let payload_type = match options
        .as_ref()
        .and_then(|options| options.get("payloadType"))
    {
        None => DEFAULT_PAYLOAD_TYPE.to_owned(),
        // Only Sluice writes this type: a client-made reference could point at any object.
        Some(serde_json::Value::String(kind)) if kind == OFFLOADED_PAYLOAD_TYPE => {
            return invalid(format!(
                "`options.payloadType` {OFFLOADED_PAYLOAD_TYPE} is reserved"
            ));
        }
        Some(serde_json::Value::String(kind)) => kind.clone(),
        Some(_) => return invalid("`options.payloadType` must be a string".to_owned()),
    };
    Decoded::Valid {
        index,
        task,
        payload: item.payload,
        payload_type,
        options,
    }
}

type IndexError = (Option<i64>, LineCode, String);

fn checked_index(raw: Option<&RawValue>, run_count: u32) -> Result<u32, IndexError> {
    let Some(raw) = raw else {
        return Err((
            None,
            LineCode::InvalidIndex,
            "`index` is missing".to_owned(),
        ));
    };
    match serde_json::from_str::<i64>(raw.get()) {
        Ok(index) => in_range(index, run_count),
        Err(_) => Err((
            None,
            LineCode::InvalidIndex,
            format!("`index` must be an integer, got {}", quote(raw.get())),
        )),
    }
}

fn in_range(index: i64, run_count: u32) -> Result<u32, IndexError> {
    match u32::try_from(index) {
        Ok(valid) if valid < run_count => Ok(valid),
        _ if index < 0 => Err((
            Some(index),
            LineCode::InvalidIndex,
            format!("`index` must not be negative, got {index}"),
        )),
        _ => Err((
            Some(index),
            LineCode::IndexOutOfRange,
            format!("`index` {index} is not below the batch's runCount {run_count}"),
        )),
    }
}

/// A failed line is enqueued at the index read from its first bytes, else at its emit position.
fn failed_at_probed_index(
    bytes: &[u8],
    line: u64,
    emit_position: u64,
    failure: ItemFailure,
    rules: LineRules,
) -> Decoded<'_> {
    let rejected = |index, code, message| {
        Decoded::Rejected(Rejection {
            line,
            index,
            code,
            message,
        })
    };
    let index = match probe_index(bytes) {
        Probe::Index(index) => match in_range(index, rules.run_count) {
            Ok(index) => index,
            Err((index, code, message)) => return rejected(index, code, message),
        },
        Probe::NotAnInteger => {
            let message = "`index` must be an integer".to_owned();
            return rejected(None, LineCode::InvalidIndex, message);
        }
        Probe::Unreadable => match u32::try_from(emit_position) {
            Ok(position) if position < rules.run_count => position,
            _ => {
                let message = format!(
                    "{}; its index is unreadable and its emit position {emit_position} is not below runCount {}",
                    failure.message, rules.run_count
                );
                return rejected(None, failure.code, message);
            }
        },
    };
    Decoded::Failed { index, failure }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: LineRules = LineRules {
        run_count: 10,
        max_line_bytes: 64,
    };

    fn line(text: &[u8]) -> Frame<'_> {
        Frame {
            line_number: 5,
            kind: FrameKind::Line(text.into()),
        }
    }

    fn failure_of(decoded: Decoded<'_>) -> (u32, LineCode) {
        match decoded {
            Decoded::Failed { index, failure } => (index, failure.code),
            other => panic!("expected a failed item, got {other:?}"),
        }
    }

    fn rejection_of(decoded: Decoded<'_>) -> LineCode {
        match decoded {
            Decoded::Rejected(rejection) => rejection.code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn valid_item_strips_internal_options_and_keeps_raw_payload() {
        let frame =
            line(br#"{"index":3,"task":"t","payload":{"a": [1, 2]},"options":{"__x":1,"k":2}}"#);
        match decode_frame(&frame, 0, RULES) {
            Decoded::Valid {
                index,
                task,
                payload,
                payload_type,
                options,
            } => {
                assert_eq!((index, task.as_str()), (3, "t"));
                assert_eq!(payload_type, DEFAULT_PAYLOAD_TYPE);
                assert_eq!(payload.unwrap().get(), r#"{"a": [1, 2]}"#);
                let options = options.unwrap();
                assert!(options.contains_key("k") && !options.contains_key("__x"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_lines_become_failed_items_at_their_index_or_emit_position() {
        let cases: [(&[u8], u32, LineCode); 10] = [
            (br#"{"index":4,"task":"t""#, 4, LineCode::InvalidJson),
            (b"{\"index\":2,\"task\":\"\xff\"}", 2, LineCode::InvalidJson),
            // Invalid UTF-8 under a key Sluice ignores, or in a line that is not an object.
            (
                b"{\"index\":5,\"task\":\"t\",\"note\":\"\xff\"}",
                5,
                LineCode::InvalidJson,
            ),
            (b"[1,\"\xff\"]", 7, LineCode::InvalidJson),
            (br#"{"index":6}"#, 6, LineCode::InvalidItem),
            (br#"{"index":6,"task":""}"#, 6, LineCode::InvalidItem),
            (br#"[1,2]"#, 7, LineCode::InvalidItem),
            (
                br#"{"index":1,"task":"t","options":[]}"#,
                1,
                LineCode::InvalidItem,
            ),
            (
                br#"{"index":3,"task":"t","payload":"k","options":{"payloadType":"application/store"}}"#,
                3,
                LineCode::InvalidItem,
            ),
            (
                br#"{"index":3,"task":"t","options":{"payloadType":7}}"#,
                3,
                LineCode::InvalidItem,
            ),
        ];
        for (text, index, code) in cases {
            let frame = line(text);
            let decoded = decode_frame(&frame, 7, RULES);
            assert_eq!(
                failure_of(decoded),
                (index, code),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn objects_without_a_usable_index_are_rejected() {
        let cases: [(&[u8], LineCode); 5] = [
            (br#"{"task":"t"}"#, LineCode::InvalidIndex),
            (br#"{"index":"1","task":"t"}"#, LineCode::InvalidIndex),
            (br#"{"index":-1,"task":"t"}"#, LineCode::InvalidIndex),
            (br#"{"index":10,"task":"t"}"#, LineCode::IndexOutOfRange),
            (br#"{"index":1.5,"task":"t"}"#, LineCode::InvalidIndex),
        ];
        for (text, code) in cases {
            assert_eq!(rejection_of(decode_frame(&line(text), 0, RULES)), code);
        }
    }

    #[test]
    fn oversized_line_uses_probed_index_or_emit_position() {
        fn oversized(head: &[u8]) -> Frame<'_> {
            Frame {
                line_number: 1,
                kind: FrameKind::Oversized { head, length: 100 },
            }
        }
        let readable = oversized(br#"{"index":8,"payload":"xxxx"#);
        assert_eq!(
            failure_of(decode_frame(&readable, 2, RULES)),
            (8, LineCode::PayloadTooLarge)
        );
        let unreadable = oversized(br#"{"payload":"xxxxxxxx"#);
        assert_eq!(
            failure_of(decode_frame(&unreadable, 2, RULES)),
            (2, LineCode::PayloadTooLarge)
        );
        let out_of_range = oversized(br#"{"index":99,"payload":"x"#);
        assert_eq!(
            rejection_of(decode_frame(&out_of_range, 2, RULES)),
            LineCode::IndexOutOfRange
        );
        assert_eq!(
            rejection_of(decode_frame(&unreadable, 10, RULES)),
            LineCode::PayloadTooLarge
        );
    }
}
