//! Why `sluice send` stopped without a sealed batch. Each message is one line that says what to do.

use std::path::PathBuf;

use reqwest::StatusCode;

use crate::protocol::wire::RejectedLine;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot read {path}: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "line {line} of {path}: {reason}; every line must be one JSON value (use --raw for lines that already are items)"
    )]
    InvalidLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{0} has no items (it is empty or holds only blank lines)")]
    EmptyInput(PathBuf),
    #[error("stdin had {counted} items but --count says {given}")]
    CountMismatch { counted: u64, given: u64 },
    #[error("--task is required unless --raw is given")]
    MissingTask,
    #[error("invalid --url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "batch {batch_id} (found by idempotency key {key}) expects {expected} items but the input has {items}; pass another --idempotency-key"
    )]
    BatchMismatch {
        batch_id: String,
        key: String,
        expected: u32,
        items: u64,
    },
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    #[error("server answered {status} {code}: {message}")]
    Server {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("{}", rejected_message(.batch_id, *.rejected, .first.as_ref()))]
    Rejected {
        batch_id: String,
        rejected: u64,
        first: Option<RejectedLine>,
    },
    #[error(
        "batch {batch_id} still misses {missing} item(s){} but the input has no line for them; it cannot be sealed",
        .first_missing.map(|index| format!(" (first index {index})")).unwrap_or_default()
    )]
    Unsealable {
        batch_id: String,
        missing: u64,
        first_missing: Option<u32>,
    },
    #[error(
        "batch {batch_id} takes no more items ({message}); pass another --idempotency-key to start a new batch"
    )]
    BatchClosed { batch_id: String, message: String },
    #[error("request failed: {0}")]
    Request(String),
    #[error("gave up after {attempts} attempts ({last}); {}", resume_hint(.batch_id.as_deref()))]
    GaveUp {
        batch_id: Option<String>,
        attempts: u32,
        last: String,
    },
    #[error("interrupted; {}", resume_hint(.batch_id.as_deref()))]
    Interrupted { batch_id: Option<String> },
    #[error(
        "--raw input of {items} items needs {parts} batches under the server's limits, but raw lines carry their own indexes and are never split; split it into files of at most {max_items} items, each indexed from 0"
    )]
    RawTooLarge {
        items: u64,
        parts: usize,
        max_items: u64,
    },
    /// What stopped one part of an input sent as several batches.
    #[error("part {part} of {parts} (items {first_item}–{last_item}): {source}")]
    InPart {
        part: u32,
        parts: u32,
        first_item: u64,
        last_item: u64,
        source: Box<SendError>,
    },
    /// A refusal by a server that does not publish its limits, so the input was not split.
    #[error(
        "{source}; this server does not publish its limits (GET /api/v3/limits answered 404), so the input was sent as one batch: pass --batch-size N to split it into batches of at most N items"
    )]
    LimitsUnknown { source: Box<SendError> },
}

fn resume_hint(batch_id: Option<&str>) -> String {
    match batch_id {
        Some(id) => format!("run the same command again to resume batch {id}"),
        // No batch yet: nothing to resume, the same command simply starts again.
        None => "run the same command again to retry".to_owned(),
    }
}

fn rejected_message(batch_id: &str, rejected: u64, first: Option<&RejectedLine>) -> String {
    let mut message = format!("batch {batch_id}: the server rejected {rejected} line(s)");
    if let Some(line) = first {
        message.push_str(&format!(
            ", first line {} ({}: {})",
            line.line, line.code, line.message
        ));
    }
    message.push_str("; the batch cannot be sealed");
    message
}

impl SendError {
    pub fn is_interrupted(&self) -> bool {
        match self {
            Self::Interrupted { .. } => true,
            Self::InPart { source, .. } | Self::LimitsUnknown { source } => source.is_interrupted(),
            _ => false,
        }
    }
}
