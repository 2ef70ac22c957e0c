//! The items request body: the input read again line by line, turned into NDJSON items, filtered
//! to the indexes still missing, cut into chunks and optionally gzipped, all as a stream. Only one
//! line and one chunk are in memory at a time, whatever the input size.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_compression::tokio::bufread::GzipEncoder;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncSeekExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use super::error::SendError;
use super::input::{PreparedInput, Shape, task_json};
use super::lines::{LineReader, READ_BUFFER_BYTES, check_payload, content, is_blank};
use super::parts::Part;
use super::progress::{Progress, ProgressEvent};
use crate::protocol::index_probe::{Probe, probe_index};

/// Bytes gathered before a chunk is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;

/// Inclusive index ranges, ascending, as the server reports them in `missing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRanges(Vec<[u32; 2]>);

impl IndexRanges {
    pub fn new(mut ranges: Vec<[u32; 2]>) -> Self {
        ranges.retain(|[first, last]| first <= last);
        ranges.sort_unstable();
        Self(ranges)
    }

    pub fn contains(&self, index: u64) -> bool {
        let at = self.0.partition_point(|&[_, last]| u64::from(last) < index);
        self.0
            .get(at)
            .is_some_and(|&[first, _]| u64::from(first) <= index)
    }

    /// How many indexes the ranges cover.
    pub fn count(&self) -> u64 {
        self.0
            .iter()
            .map(|&[first, last]| u64::from(last - first) + 1)
            .sum()
    }

    pub fn first(&self) -> Option<u32> {
        self.0.first().map(|&[first, _]| first)
    }
}

/// What one request body carries.
#[derive(Debug, Clone)]
pub struct BodyPlan {
    /// Only the lines whose index is in these ranges; `None` sends every line.
    pub only: Option<IndexRanges>,
    pub gzip: bool,
}

/// Shared between a body stream and the sender: what the stream did, and why it stopped if it
/// failed on its own side (reqwest only reports that the body broke).
pub struct BodyTap {
    items: AtomicU64,
    /// The request is over (answered, failed or abandoned): the body produces nothing more. The
    /// connection task may poll it a little longer than the request lives.
    closed: AtomicBool,
    failure: Mutex<Option<SendError>>,
    progress: Arc<dyn Progress>,
    /// The part whose body this is (1-based), named in progress events.
    part: u32,
}

impl BodyTap {
    pub fn new(progress: Arc<dyn Progress>, part: u32) -> Arc<Self> {
        Arc::new(Self {
            items: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
            progress,
            part,
        })
    }

    /// Items put into the body so far.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// A failure of the input (not of the network), if the body stopped because of one.
    pub fn take_failure(&self) -> Option<SendError> {
        self.failure.lock().expect("lock").take()
    }

    /// Stops the body: called once the request is over, whatever its outcome.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn sent(&self, items: u64, bytes: usize) {
        if self.is_closed() {
            return;
        }
        self.items.fetch_add(items, Ordering::Relaxed);
        self.progress.event(ProgressEvent::Sent {
            part: self.part,
            items,
            bytes: bytes as u64,
        });
    }
}

/// How a non-blank input line becomes a body line.
enum LineKind {
    /// `{"index":i,"task":…,"payload":<line>}`; the task already JSON-encoded.
    Item { task_json: String },
    /// The line as it is. Filtering reads its index the way the server does, so the caller only
    /// filters inputs whose every index is readable (`PreparedInput::raw_indexes_readable`).
    Raw,
}

struct Producer {
    lines: LineReader<BufReader<tokio::fs::File>>,
    name: PathBuf,
    kind: LineKind,
    only: Option<IndexRanges>,
    check_lines: bool,
    /// Items mode: index in the whole input of the next non-blank line.
    next_index: u64,
    /// Items mode: the part's items are those from `first_item` to before `end_item` (the end of
    /// the input for the last part); its index `i` is the input's `first_item + i`.
    first_item: u64,
    end_item: u64,
    chunk: BytesMut,
    tap: Arc<BodyTap>,
    /// The input is read to its end.
    done: bool,
    /// The input broke the body: nothing more is produced.
    failed: bool,
}

impl Producer {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SendError> {
        let mut items = 0;
        while !self.done && self.chunk.len() < CHUNK_BYTES {
            if matches!(self.kind, LineKind::Item { .. }) && self.next_index >= self.end_item {
                self.done = true;
                break;
            }
            let raw = self
                .lines
                .next_raw()
                .await
                .map_err(|source| SendError::Input {
                    path: self.name.clone(),
                    source,
                })?;
            let Some(raw) = raw else {
                self.done = true;
                break;
            };
            let line = content(raw);
            let blank = is_blank(line);
            match &self.kind {
                LineKind::Item { task_json } => {
                    if blank {
                        continue;
                    }
                    let Some(index) = self.next_index.checked_sub(self.first_item) else {
                        // A line of an earlier part (the part's start in the file is not known).
                        self.next_index += 1;
                        continue;
                    };
                    self.next_index += 1;
                    if self.only.as_ref().is_some_and(|only| !only.contains(index)) {
                        continue;
                    }
                    if self.check_lines
                        && let Err(reason) = check_payload(line)
                    {
                        return Err(SendError::InvalidLine {
                            path: self.name.clone(),
                            line: self.lines.number,
                            reason,
                        });
                    }
                    let out = &mut self.chunk;
                    let _ = write!(out, "{{\"index\":{index},\"task\":{task_json},\"payload\":");
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"}\n");
                    items += 1;
                }
                LineKind::Raw => {
                    match &self.only {
                        // Blank lines are kept (the server skips them) so that line numbers in
                        // the server's answer are the file's.
                        None if blank => self.chunk.extend_from_slice(b"\n"),
                        None => {
                            self.chunk.extend_from_slice(line);
                            self.chunk.extend_from_slice(b"\n");
                            items += 1;
                        }
                        Some(_) if blank => {}
                        Some(only) => {
                            let wanted = matches!(probe_index(line),
                                Probe::Index(index) if index >= 0 && only.contains(index as u64));
                            if wanted {
                                self.chunk.extend_from_slice(line);
                                self.chunk.extend_from_slice(b"\n");
                                items += 1;
                            }
                        }
                    }
                }
            }
        }
        if self.chunk.is_empty() {
            return Ok(None);
        }
        let chunk = self.chunk.split().freeze();
        self.tap.sent(items, chunk.len());
        Ok(Some(chunk))
    }
}

/// Opens the input again and returns the streaming body for `plan`. The body yields an I/O error
/// (and records the cause in `tap`) if the input cannot be read or a line turns out to be bad.
pub async fn request_body(
    input: &PreparedInput,
    shape: &Shape,
    part: &Part,
    plan: &BodyPlan,
    tap: Arc<BodyTap>,
) -> Result<reqwest::Body, SendError> {
    let input_error = |source| SendError::Input {
        path: input.name.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(&input.path)
        .await
        .map_err(input_error)?;
    let kind = match shape.raw {
        true => LineKind::Raw,
        false => LineKind::Item {
            task_json: task_json(shape),
        },
    };
    // A `--raw` input is always one part, read from its first line so that the server's line
    // numbers are the file's.
    let start = part.start.filter(|_| !shape.raw);
    let (next_index, line_number) = match start {
        Some((offset, line)) => {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(input_error)?;
            (part.first_item, line - 1)
        }
        None => (0, 0),
    };
    let mut lines = LineReader::new(BufReader::with_capacity(READ_BUFFER_BYTES, file));
    lines.number = line_number;
    let producer = Producer {
        lines,
        name: input.name.clone(),
        kind,
        only: plan.only.clone(),
        check_lines: !input.lines_checked,
        next_index,
        first_item: part.first_item,
        // The last part reads to the end: with a wrong `--count`, lines beyond it reach the
        // server, which rejects them, rather than being left out unseen.
        end_item: match input.parts.last() == Some(part) {
            true => u64::MAX,
            false => part.first_item + part.items,
        },
        chunk: BytesMut::with_capacity(CHUNK_BYTES + 1024),
        tap,
        done: false,
        failed: false,
    };
    let chunks = futures::stream::unfold(producer, |mut producer| async move {
        if producer.failed {
            return None;
        }
        if producer.tap.is_closed() {
            // Abort rather than end: a body cut short must not look complete.
            producer.failed = true;
            let abandoned = std::io::Error::other("the request is over");
            return Some((Err(abandoned), producer));
        }
        match producer.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), producer)),
            Ok(None) => {
                if !producer.tap.is_closed() {
                    let part = producer.tap.part;
                    producer
                        .tap
                        .progress
                        .event(ProgressEvent::BodySent { part });
                }
                None
            }
            Err(error) => {
                let broken = std::io::Error::other(error.to_string());
                *producer.tap.failure.lock().expect("lock") = Some(error);
                producer.failed = true;
                Some((Err(broken), producer))
            }
        }
    });
    Ok(match plan.gzip {
        true => {
            let encoder = GzipEncoder::new(StreamReader::new(chunks));
            reqwest::Body::wrap_stream(ReaderStream::with_capacity(encoder, CHUNK_BYTES))
        }
        false => reqwest::Body::wrap_stream(chunks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_their_bounds_and_nothing_else() {
        let ranges = IndexRanges::new(vec![[7, 9], [2, 3], [12, 12]]);
        let inside: Vec<u64> = (0..15).filter(|&i| ranges.contains(i)).collect();
        assert_eq!(inside, vec![2, 3, 7, 8, 9, 12]);
        assert_eq!(ranges.count(), 6);
        assert_eq!(ranges.first(), Some(2));
        assert!(!ranges.contains(u64::from(u32::MAX) + 1));
        assert!(!IndexRanges::new(vec![]).contains(0));
    }
}
