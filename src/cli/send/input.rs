//! The input of `sluice send`, made ready before the batch exists: one cheap pass that counts the
//! items, checks each line and derives the idempotency key from the content. Stdin can only be
//! read once, so it is spooled to a temporary file in that same pass and read again from there.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio_util::sync::CancellationToken;

use super::error::SendError;
use super::lines::{LineReader, READ_BUFFER_BYTES, check_payload, content, is_blank};
use super::parts::{Part, PartCaps, Splitter, by_count};
use super::progress::{Progress, ProgressEvent};
use crate::protocol::index_probe::{Probe, probe_index};

/// Versioned so that a change of the key's recipe never matches a batch made by an older one.
const KEY_DOMAIN: &[u8] = b"sluice send v1\0";
/// How often the counting pass reports the bytes it has read.
const COUNTING_REPORT_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stdin,
}

impl Source {
    /// `-` is stdin; anything else a file path.
    pub fn parse(value: &str) -> Self {
        match value {
            "-" => Self::Stdin,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// How input lines become items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Lines are already `{index, task, payload, options}` items, sent unchanged.
    pub raw: bool,
    pub task: Option<String>,
}

/// An input ready to be sent, as often as needed.
#[derive(Debug)]
pub struct PreparedInput {
    /// A file that holds the input (the spool, for stdin).
    pub path: PathBuf,
    /// How messages name the input.
    pub name: PathBuf,
    /// Items: non-blank lines.
    pub items: u64,
    pub idempotency_key: String,
    /// Every line was checked to be JSON (not with `--count`): the send pass need not check again.
    pub lines_checked: bool,
    /// `--raw`: every line's index can be read from the line itself, so a resend may send only
    /// some lines. (A line whose index the server cannot read lands at its position in the body,
    /// which changes when lines are left out.)
    pub raw_indexes_readable: bool,
    /// The batches the input is cut into, in order; at least one.
    pub parts: Vec<Part>,
    _spool: Option<NamedTempFile>,
}

/// Counts, checks and keys the input (or, with `count` for a file, trusts the count and keys the
/// file by its path, size and modification time).
pub async fn prepare(
    source: &Source,
    shape: &Shape,
    count: Option<u64>,
    idempotency_key: Option<String>,
    caps: PartCaps,
    cancel: &CancellationToken,
    progress: &dyn Progress,
) -> Result<PreparedInput, SendError> {
    let (path, name, scan, spool) = match (source, count) {
        (Source::File(path), Some(count)) => {
            let key = match idempotency_key {
                Some(key) => key,
                None => metadata_key(path, shape, count)?,
            };
            return Ok(PreparedInput {
                path: path.clone(),
                name: path.clone(),
                items: count,
                idempotency_key: key,
                lines_checked: false,
                raw_indexes_readable: false,
                parts: by_count(count, caps),
                _spool: None,
            });
        }
        (Source::File(path), None) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(input_error(path))?;
            let scan = scan(
                file,
                None::<&mut tokio::io::Sink>,
                shape,
                caps,
                path,
                cancel,
                progress,
            )
            .await?;
            (path.clone(), path.clone(), scan, None)
        }
        (Source::Stdin, _) => {
            let name = PathBuf::from("stdin");
            let spool = NamedTempFile::new().map_err(input_error(&name))?;
            let writer = spool
                .as_file()
                .try_clone()
                .map_err(input_error(spool.path()))?;
            let mut writer = BufWriter::new(tokio::fs::File::from_std(writer));
            let stdin = tokio::io::stdin();
            let scan = scan(
                stdin,
                Some(&mut writer),
                shape,
                caps,
                &name,
                cancel,
                progress,
            )
            .await?;
            writer.flush().await.map_err(input_error(spool.path()))?;
            if let Some(given) = count
                && given != scan.items
            {
                return Err(SendError::CountMismatch {
                    counted: scan.items,
                    given,
                });
            }
            (spool.path().to_path_buf(), name, scan, Some(spool))
        }
    };
    progress.event(ProgressEvent::Counted {
        items: scan.items,
        bytes: scan.bytes,
    });
    if scan.items == 0 {
        return Err(SendError::EmptyInput(name));
    }
    Ok(PreparedInput {
        path,
        name,
        items: scan.items,
        idempotency_key: idempotency_key.unwrap_or_else(|| key_from_digest(&scan.digest)),
        lines_checked: true,
        raw_indexes_readable: scan.raw_indexes_readable,
        parts: scan.parts,
        _spool: spool,
    })
}

fn input_error(path: &Path) -> impl FnOnce(std::io::Error) -> SendError + '_ {
    move |source| SendError::Input {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
struct Scan {
    items: u64,
    bytes: u64,
    digest: [u8; 32],
    raw_indexes_readable: bool,
    parts: Vec<Part>,
}

fn hasher_for(shape: &Shape) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(KEY_DOMAIN);
    hasher.update(if shape.raw { b"raw\0" } else { b"job\0" });
    hasher.update(shape.task.as_deref().unwrap_or("").as_bytes());
    hasher.update(b"\0");
    hasher
}

/// The task as JSON text, as it goes into every item.
pub fn task_json(shape: &Shape) -> String {
    serde_json::to_string(shape.task.as_deref().unwrap_or_default()).expect("a string serialises")
}

fn key_from_digest(digest: &[u8; 32]) -> String {
    format!("send-{}", hex::encode(digest))
}

/// The key when the content is not read first (`--count`): the same file, unchanged, finds the
/// same batch again.
fn metadata_key(path: &Path, shape: &Shape, count: u64) -> Result<String, SendError> {
    let metadata = std::fs::metadata(path).map_err(input_error(path))?;
    let absolute = std::fs::canonicalize(path).map_err(input_error(path))?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    let mut hasher = hasher_for(shape);
    hasher.update(b"by metadata\0");
    hasher.update(absolute.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(metadata.len().to_le_bytes());
    hasher.update(modified.to_le_bytes());
    hasher.update(count.to_le_bytes());
    Ok(key_from_digest(&hasher.finalize().into()))
}

/// The counting pass: hashes every byte, counts non-blank lines, checks each line and copies the
/// input to `spool` when given.
async fn scan<W: AsyncWrite + Unpin>(
    reader: impl AsyncRead + Unpin,
    mut spool: Option<&mut W>,
    shape: &Shape,
    caps: PartCaps,
    name: &Path,
    cancel: &CancellationToken,
    progress: &dyn Progress,
) -> Result<Scan, SendError> {
    let mut lines = LineReader::new(BufReader::with_capacity(READ_BUFFER_BYTES, reader));
    let mut hasher = hasher_for(shape);
    let (mut items, mut bytes, mut reported) = (0u64, 0u64, 0u64);
    let mut raw_indexes_readable = true;
    let mut line_number = 0u64;
    let task_json = (!shape.raw).then(|| task_json(shape));
    let mut splitter = Splitter::new(caps, task_json.as_deref());
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    progress.event(ProgressEvent::Counting { bytes: 0 });
    loop {
        // Stdin may block for long: Ctrl-C must still stop the pass.
        let raw = tokio::select! {
            biased;
            _ = &mut cancelled => return Err(SendError::Interrupted { batch_id: None }),
            raw = lines.next_raw() => raw.map_err(input_error(name))?,
        };
        let Some(raw) = raw else { break };
        // The reader's own count cannot be read while `raw` borrows it.
        line_number += 1;
        hasher.update(raw);
        let offset = bytes;
        bytes += raw.len() as u64;
        if let Some(spool) = spool.as_mut() {
            spool
                .write_all(raw)
                .await
                .map_err(input_error(Path::new("the temporary spool file")))?;
        }
        let line = content(raw);
        if is_blank(line) {
            splitter.blank();
        } else {
            items += 1;
            splitter.item(offset, line_number, line.len() as u64);
            if shape.raw {
                raw_indexes_readable &= probe_index(line) != Probe::Unreadable;
            } else if let Err(reason) = check_payload(line) {
                return Err(SendError::InvalidLine {
                    path: name.to_path_buf(),
                    line: lines.number,
                    reason,
                });
            }
        }
        if bytes - reported >= COUNTING_REPORT_BYTES {
            reported = bytes;
            progress.event(ProgressEvent::Counting { bytes });
        }
    }
    Ok(Scan {
        items,
        bytes,
        digest: hasher.finalize().into(),
        raw_indexes_readable,
        parts: splitter.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::send::progress::NoProgress;

    fn shape(raw: bool, task: &str) -> Shape {
        Shape {
            raw,
            task: Some(task.to_owned()),
        }
    }

    async fn scan_bytes(body: &[u8], shape: &Shape) -> Result<Scan, SendError> {
        let name = Path::new("input.ndjson");
        let cancel = CancellationToken::new();
        scan(
            body,
            None::<&mut tokio::io::Sink>,
            shape,
            PartCaps::new(None, None),
            name,
            &cancel,
            &NoProgress,
        )
        .await
    }

    #[tokio::test]
    async fn counts_non_blank_lines_like_the_server() {
        let body = b"1\r\n\r\n \t\n{\"a\":2}\n\n\"x\"";
        let scan = scan_bytes(body, &shape(false, "t")).await.unwrap();
        assert_eq!(scan.items, 3);
        assert_eq!(scan.bytes, body.len() as u64);
    }

    #[tokio::test]
    async fn a_line_that_is_not_json_fails_naming_its_line() {
        let error = scan_bytes(b"1\n\n{oops\n2\n", &shape(false, "t"))
            .await
            .unwrap_err();
        let SendError::InvalidLine { line, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(*line, 3);
        assert!(
            error
                .to_string()
                .starts_with("line 3 of input.ndjson: it is not valid JSON")
        );
    }

    #[tokio::test]
    async fn key_depends_on_content_task_and_mode() {
        let a = scan_bytes(b"1\n2\n", &shape(false, "t")).await.unwrap();
        let same = scan_bytes(b"1\n2\n", &shape(false, "t")).await.unwrap();
        let other_task = scan_bytes(b"1\n2\n", &shape(false, "u")).await.unwrap();
        let other_content = scan_bytes(b"1\n3\n", &shape(false, "t")).await.unwrap();
        let raw = scan_bytes(b"1\n2\n", &shape(true, "t")).await.unwrap();
        assert_eq!(a.digest, same.digest);
        for other in [other_task, other_content, raw] {
            assert_ne!(a.digest, other.digest);
        }
        assert!(key_from_digest(&a.digest).starts_with("send-"));
        assert_eq!(key_from_digest(&a.digest).len(), 5 + 64);
    }

    #[tokio::test]
    async fn raw_lines_without_a_readable_index_disable_partial_resends() {
        let readable = scan_bytes(
            b"{\"index\":0,\"task\":\"t\"}\n{\"index\":1}\n",
            &shape(true, "t"),
        )
        .await
        .unwrap();
        assert!(readable.raw_indexes_readable);
        let unreadable = scan_bytes(
            b"{\"index\":0,\"task\":\"t\"}\nnot json\n",
            &shape(true, "t"),
        )
        .await
        .unwrap();
        assert_eq!(
            unreadable.items, 2,
            "raw lines are not checked, the server judges them"
        );
        assert!(!unreadable.raw_indexes_readable);
    }

    #[tokio::test]
    async fn an_interrupted_count_stops() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = scan(
            &b"1\n"[..],
            None::<&mut tokio::io::Sink>,
            &shape(false, "t"),
            PartCaps::new(None, None),
            Path::new("x"),
            &cancel,
            &NoProgress,
        )
        .await;
        assert!(matches!(
            result,
            Err(SendError::Interrupted { batch_id: None })
        ));
    }
}
