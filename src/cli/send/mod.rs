//! `sluice send`: streams an NDJSON file (or stdin) into a new batch and retries until it is sealed.
//!
//! This module is the command line only: flags, Ctrl-C, what is printed and the exit code. The
//! work is in `sender` (the parts and the attempt loop), `input` (counting pass and idempotency
//! key), `parts` (how the input is cut into batches), `body` (the streamed request body),
//! `http`, `retry` and `progress`.

mod body;
mod error;
pub(crate) mod http;
mod input;
mod lines;
mod parts;
mod progress;
mod retry;
mod sender;

use std::process::ExitCode;
use std::sync::Arc;

use clap::builder::NonEmptyStringValueParser;
use tokio_util::sync::CancellationToken;

pub use self::body::IndexRanges;
pub use self::error::SendError;
pub use self::input::{Shape, Source};
pub use self::progress::{NoProgress, Progress, ProgressEvent};
pub use self::retry::RetryPolicy;
pub use self::sender::{PartReport, SendOptions, SendReport, send};

/// Exit code after Ctrl-C (128 + SIGINT), as shells expect.
const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
Each non-blank input line becomes one item: {\"index\": n, \"task\": NAME, \"payload\": <the line>},
where n counts the non-blank lines before it (from 0). Blank lines are skipped. Every line must be one
JSON value: a line that is not is reported by number and nothing is sent (the check is part of the
counting pass, so it happens before the batch is created). With --raw, lines are sent unchanged and
the server judges them.

The batch's idempotency key is derived from the input's content, the task and --raw, so running the
same command again finds the same batch: it resumes an interrupted send, and is a no-op for a batch
already sealed. `-` (stdin) is first copied to a temporary file while it is counted, so it can be
re-read for retries; it is resumed by piping the same content again.

Inputs larger than one batch: the server's limits (GET /api/v3/limits) are read first and the
input is cut into consecutive parts, each its own batch, each within the server's item cap (or
--batch-size, when smaller) and with room under its body caps. A part's idempotency key is the
input's key, the part's number and its items, so running the same command again finds every part:
sealed parts are left alone and the first unsealed one resumes with only what it misses. Parts are
sent one after another, or --parallel N at once. A server without the route gets the input as one
batch (or split by --batch-size alone).

Retries: connection errors, 408, 429, 5xx (honouring Retry-After) and a `sealed: false` answer are
retried with exponential backoff and jitter; each retry sends only the index ranges the server says
are missing.

Exit codes: 0 every batch is sealed; 1 one is not (the reason is printed on one line); 2 bad usage;
130 interrupted by Ctrl-C (run the same command again to resume).";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct SendArgs {
    /// NDJSON file to send; `-` reads stdin (spooled to a temporary file first).
    #[arg(value_name = "FILE|-", default_value = "-")]
    pub input: String,
    /// Task of every item (with --raw: only reported to the server as the batch's task).
    #[arg(long, value_name = "NAME", required_unless_present = "raw",
          value_parser = NonEmptyStringValueParser::new())]
    pub task: Option<String>,
    /// Base URL of the Sluice server.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:3030")]
    pub url: String,
    /// API key.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Lines are already items ({index, task, payload, options}): send them unchanged.
    #[arg(long)]
    pub raw: bool,
    /// Number of items (non-blank lines), instead of counting them first (files only). Lines are
    /// then checked while sending, and the idempotency key is derived from the file's path, size
    /// and modification time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Idempotency key of the batch, instead of one derived from the input.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Compress the request body with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Most items per batch: a larger input is cut into parts of at most N items (the server's
    /// own cap still applies when smaller).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: Option<u64>,
    /// Parts streamed at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Failed attempts in a row before giving up (an attempt that lands items resets the count).
    #[arg(long, value_name = "N", default_value_t = RetryPolicy::default().max_retries)]
    pub max_retries: u32,
    /// Print no progress and no summary (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the final ingest response of every part as JSON on stdout, one line each.
    #[arg(long)]
    pub json: bool,
}

impl SendArgs {
    pub fn into_options(self, cancel: CancellationToken) -> SendOptions {
        SendOptions {
            source: Source::parse(&self.input),
            shape: Shape {
                raw: self.raw,
                task: self.task,
            },
            base_url: self.url,
            api_key: self.key,
            count: self.count,
            idempotency_key: self.idempotency_key,
            gzip: self.gzip,
            batch_size: self.batch_size,
            parallel: self.parallel as usize,
            retry: RetryPolicy {
                max_retries: self.max_retries,
                ..RetryPolicy::default()
            },
            cancel,
        }
    }
}

pub async fn run(args: SendArgs) -> ExitCode {
    let (quiet, json) = (args.quiet, args.json);
    let cancel = CancellationToken::new();
    let on_interrupt = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        }
    });
    let progress = progress::for_stderr(quiet);
    let result = send(args.into_options(cancel), Arc::clone(&progress)).await;
    on_interrupt.abort();
    progress.event(ProgressEvent::Finished);
    match result {
        Ok(report) => {
            if json {
                for part in &report.parts {
                    println!("{}", part_json(part, report.parts.len()));
                }
            }
            if !quiet {
                for line in summary_lines(&report) {
                    eprintln!("sluice send: {line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sluice send: {error}");
            match error.is_interrupted() {
                true => ExitCode::from(EXIT_INTERRUPTED),
                false => ExitCode::FAILURE,
            }
        }
    }
}

/// A part's final ingest response, with the part it is, as one JSON line.
pub fn part_json(part: &PartReport, parts: usize) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct PartJson<'a> {
        part: u32,
        parts: usize,
        first_item: u64,
        idempotency_key: &'a str,
        #[serde(flatten)]
        response: &'a crate::protocol::wire::IngestResponse,
    }
    serde_json::to_string(&PartJson {
        part: part.part,
        parts,
        first_item: part.first_item,
        idempotency_key: &part.idempotency_key,
        response: part.response(),
    })
    .expect("response serialises")
}

/// How the input got sealed: one line for one batch; for several, a line per part and a total.
pub fn summary_lines(report: &SendReport) -> Vec<String> {
    let parts = report.parts.len();
    if let [only] = report.parts.as_slice() {
        return vec![summary(only)];
    }
    let mut lines: Vec<String> = report
        .parts
        .iter()
        .map(|part| format!("part {}/{parts}: {}", part.part, summary(part)))
        .collect();
    let untouched = report
        .parts
        .iter()
        .filter(|part| part.already_sealed)
        .count();
    let mut total = format!(
        "{} items sealed in {parts} batches, {} accepted now",
        report.items,
        report.items_accepted()
    );
    if untouched > 0 {
        total.push_str(&format!(" ({untouched} already sealed before)"));
    }
    lines.push(total);
    lines
}

/// One line on how a part's batch got sealed.
pub fn summary(report: &PartReport) -> String {
    if report.already_sealed {
        return format!(
            "batch {} was already sealed ({} items); nothing sent",
            report.batch_id, report.items
        );
    }
    let mut line = format!(
        "batch {} sealed: {} items, {} accepted now",
        report.batch_id,
        report.items,
        report.items_accepted()
    );
    for (count, what) in [
        (report.items_deduplicated(), "deduplicated"),
        (report.items_failed(), "failed items"),
    ] {
        if count > 0 {
            line.push_str(&format!(", {count} {what}"));
        }
    }
    if report.resumed {
        line.push_str(" (resumed)");
    }
    if report.requests > 1 {
        line.push_str(&format!(", {} requests", report.requests));
    }
    line
}
