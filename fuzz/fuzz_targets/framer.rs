//! Fuzzes the NDJSON framer and the item decoder together: arbitrary bytes, cut into arbitrary
//! reads, framed the way the pipeline frames a request body, then every frame decoded as an item.
//!
//! What must hold, whatever the input (each one is asserted, so a violation is a crash):
//! - nothing panics;
//! - the frames are exactly the body's non-blank lines, in order, with their 1-based physical line
//!   numbers: the line's bytes (without `\n` and one trailing `\r`) when it fits the limit, else
//!   its first `head_bytes` and its length; so no frame is longer than the limit, every
//!   non-blank line gives exactly one frame, and how the body is cut into reads changes nothing;
//! - the framer never holds one maximal line plus the last read, and holds less than one maximal
//!   line whenever it waits for the next read;
//! - a decoded item's index is below `runCount`; a valid item is a JSON object whose `index` is
//!   that index; a failed item sits at the index its first bytes name, else at its emit position;
//!   a rejection names the frame's line;
//! - the index probe never guesses: any prefix of a line (what an oversized line keeps) reads the
//!   same index as the whole line, or nothing.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

use sluice_protocol::framer::{Frame, FrameKind, LineFramer};
use sluice_protocol::index_probe::{Probe, probe_index};
use sluice_protocol::item::{Decoded, LineCode, LineRules, decode_frame};
use sluice_protocol::stored::OFFLOADED_PAYLOAD_TYPE;

/// One fuzz input: `[max_line_bytes, head_bytes, run_count, n, n read sizes…, body…]`. Small
/// limits make oversized lines common, a small `runCount` makes indexes in and out of range both
/// common; a read size of 0 stands for a read larger than any input.
struct Input<'a> {
    max_line_bytes: usize,
    head_bytes: usize,
    run_count: u32,
    reads: &'a [u8],
    body: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let (&[max_line_bytes, head_bytes, run_count, reads], rest) = data.split_first_chunk()?;
        let (reads, body) = rest.split_at_checked(usize::from(reads))?;
        Some(Self {
            max_line_bytes: usize::from(max_line_bytes),
            head_bytes: usize::from(head_bytes),
            run_count: u32::from(run_count),
            reads,
            body,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let rules = LineRules {
        run_count: input.run_count,
        max_line_bytes: input.max_line_bytes,
    };
    let frames = frame_in_reads(&input, rules);
    let expected = expected_frames(input.body, input.max_line_bytes, input.head_bytes);
    assert_eq!(frames, expected);
});

/// A frame kept past the next one: its line number, its bytes (or an oversized line's head), and
/// an oversized line's length.
type Owned = (u64, Vec<u8>, Option<u64>);

/// Checks `frame` decodes as the item rules (docs/protocol.md) say, and keeps it to compare.
fn check_and_keep(frame: Frame<'_>, emit_position: u64, rules: LineRules) -> Owned {
    check_item(&frame, emit_position, rules);
    match frame.kind {
        FrameKind::Line(line) => (frame.line_number, line.bytes().to_vec(), None),
        FrameKind::Oversized { head, length } => (frame.line_number, head.to_vec(), Some(length)),
    }
}

/// Frames the body one read at a time, as the pipeline does, checking the memory bound after
/// every call.
fn frame_in_reads(input: &Input<'_>, rules: LineRules) -> Vec<Owned> {
    let mut framer = LineFramer::with_head_bytes(input.max_line_bytes, input.head_bytes);
    let mut frames = Vec::new();
    let mut reads = input.reads.iter().cycle();
    let mut rest = input.body;
    while !rest.is_empty() {
        let size = match reads.next() {
            Some(&0) | None => rest.len(),
            Some(&size) => usize::from(size).min(rest.len()),
        };
        let (read, after) = rest.split_at(size);
        rest = after;
        framer.push(Bytes::copy_from_slice(read));
        let limit = framer.max_buffered_bytes() + read.len();
        while let Some(frame) = framer.next_frame() {
            frames.push(check_and_keep(frame, frames.len() as u64, rules));
            assert!(framer.held_bytes() < limit);
        }
        assert!(framer.held_bytes() < framer.max_buffered_bytes());
    }
    while let Some(frame) = framer.finish() {
        frames.push(check_and_keep(frame, frames.len() as u64, rules));
    }
    assert_eq!(framer.held_bytes(), 0);
    frames
}

/// The frames the framing rules (docs/protocol.md) ask for, from the whole body at once, written as plainly as possible.
fn expected_frames(body: &[u8], max: usize, head_bytes: usize) -> Vec<Owned> {
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    // What follows the last `\n` is an unterminated last line, or nothing.
    if lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    let mut frames = Vec::new();
    for (index, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            continue;
        }
        let line_number = index as u64 + 1;
        frames.push(if line.len() > max {
            let head = line[..head_bytes.min(max)].to_vec();
            (line_number, head, Some(line.len() as u64))
        } else {
            (line_number, line.to_vec(), None)
        });
    }
    frames
}

/// Reads only an object's `index` (a lone surrogate elsewhere in the line is valid JSON grammar,
/// which a `serde_json::Value` would refuse).
#[derive(serde::Deserialize)]
struct IndexOf {
    index: i64,
}

fn check_item(frame: &Frame<'_>, emit_position: u64, rules: LineRules) {
    let bytes = match frame.kind {
        FrameKind::Line(line) => line.bytes(),
        FrameKind::Oversized { head, .. } => head,
    };
    let probe = probe_index(bytes);
    for eighth in 0..8 {
        let prefix = probe_index(&bytes[..bytes.len() * eighth / 8]);
        assert!(
            prefix == Probe::Unreadable || prefix == probe,
            "{prefix:?} vs {probe:?}"
        );
    }
    let oversized = matches!(frame.kind, FrameKind::Oversized { .. });
    match decode_frame(frame, emit_position, rules) {
        Decoded::Valid {
            index,
            task,
            payload_type,
            options,
            ..
        } => {
            assert!(index < rules.run_count && !oversized && !task.is_empty());
            assert_ne!(payload_type, OFFLOADED_PAYLOAD_TYPE);
            let options = options.unwrap_or_default();
            assert!(options.keys().all(|key| !key.starts_with("__")));
            // The item rules: a line that is not UTF-8 or not JSON is a failed item, never a valid one.
            let text = std::str::from_utf8(bytes).expect("a valid item is UTF-8");
            serde_json::from_str::<&RawValue>(text).expect("a valid item is JSON");
            let item: IndexOf = serde_json::from_str(text).expect("a valid item has an index");
            assert_eq!(item.index, i64::from(index));
            assert!(probe == Probe::Index(i64::from(index)) || probe == Probe::Unreadable);
        }
        Decoded::Failed { index, failure } => {
            assert!(index < rules.run_count);
            assert_eq!(oversized, failure.code == LineCode::PayloadTooLarge);
            // These failures happen before the index could be parsed: it comes from the probe.
            if matches!(
                failure.code,
                LineCode::PayloadTooLarge | LineCode::InvalidJson
            ) {
                match probe {
                    Probe::Index(probed) => assert_eq!(i64::from(index), probed),
                    Probe::Unreadable => assert_eq!(u64::from(index), emit_position),
                    Probe::NotAnInteger => panic!("a non-integer index is a rejection"),
                }
            }
        }
        Decoded::Rejected(rejection) => {
            assert_eq!(rejection.line, frame.line_number);
            match (rejection.code, rejection.index) {
                (LineCode::IndexOutOfRange, Some(index)) => {
                    assert!(index >= i64::from(rules.run_count))
                }
                (LineCode::IndexOutOfRange, None) => panic!("out of range needs the index"),
                (LineCode::InvalidIndex, index) => assert!(index.is_none_or(|index| index < 0)),
                // A failed line with no readable index and no emit position in range.
                (_, index) => {
                    assert!(index.is_none() && probe == Probe::Unreadable);
                    assert!(emit_position >= u64::from(rules.run_count));
                }
            }
        }
    }
}
