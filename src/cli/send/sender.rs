//! The core of `sluice send`, without any terminal concerns: prepare the input, create (or find
//! again) the batch, stream items, and retry until the batch is sealed or there is no point.
//!
//! Every request is safe to repeat: the batch is found again through its idempotency key and the
//! server stores each index once. So after any failure the sender asks the server what is missing
//! (an empty items request) and sends only that.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::body::{BodyPlan, BodyTap, IndexRanges, request_body};
use super::error::SendError;
use super::http::{Api, CallError};
use super::input::{PreparedInput, Shape, Source, prepare};
use super::parts::{Part, PartCaps};
use super::progress::{Progress, ProgressEvent};
use super::retry::RetryPolicy;
use crate::protocol::wire::{CreateBatchRequest, IngestResponse, LimitsResponse};

/// Error code of a batch that was aborted or expired.
const BATCH_NOT_PENDING: &str = "BATCH_NOT_PENDING";

/// Everything `send` needs; `SendArgs` turns the command line into this.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub source: Source,
    pub shape: Shape,
    /// Base URL of the server, e.g. `http://127.0.0.1:3030`.
    pub base_url: String,
    pub api_key: String,
    /// Trust this item count instead of counting (files only).
    pub count: Option<u64>,
    /// Use this key instead of one derived from the input.
    pub idempotency_key: Option<String>,
    pub gzip: bool,
    /// Most items per batch, below the server's own cap.
    pub batch_size: Option<u64>,
    /// Parts streamed at once (at least 1).
    pub parallel: usize,
    pub retry: RetryPolicy,
    /// Cancelled on Ctrl-C: the current request is dropped and `send` returns `Interrupted`.
    pub cancel: CancellationToken,
}

/// How an input got sealed: one report per part (batch), in order.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Items in the input.
    pub items: u64,
    pub parts: Vec<PartReport>,
}

impl SendReport {
    pub fn items_accepted(&self) -> u64 {
        self.parts.iter().map(PartReport::items_accepted).sum()
    }
}

/// How one part's batch got sealed.
#[derive(Debug, Clone)]
pub struct PartReport {
    /// 1-based.
    pub part: u32,
    /// Index in the input of the part's first item.
    pub first_item: u64,
    pub batch_id: String,
    pub idempotency_key: String,
    /// Items in the part (the batch's `runCount`).
    pub items: u64,
    /// The batch existed already (found through the idempotency key).
    pub resumed: bool,
    /// The batch was already sealed: nothing was sent.
    pub already_sealed: bool,
    /// Items requests made, status probes included.
    pub requests: u32,
    /// Every items response received, in order; the last is the sealed one.
    pub responses: Vec<IngestResponse>,
}

impl PartReport {
    /// The final (sealed) response.
    pub fn response(&self) -> &IngestResponse {
        self.responses
            .last()
            .expect("a report has its sealing response")
    }

    /// Items newly stored by the requests that got an answer (a cut request's are not known).
    pub fn items_accepted(&self) -> u64 {
        self.responses.iter().map(|r| r.items_accepted).sum()
    }

    pub fn items_deduplicated(&self) -> u64 {
        self.responses.iter().map(|r| r.items_deduplicated).sum()
    }

    pub fn items_failed(&self) -> u64 {
        self.responses.iter().map(|r| r.items_failed).sum()
    }
}

/// What the next items request sends.
#[derive(Debug)]
enum Plan {
    /// An empty body: the server answers with the batch's state and what it misses.
    Probe,
    Everything,
    Only(IndexRanges),
}

/// Sends the input, cut into as many batches as the server's limits (and `--batch-size`) need,
/// and returns once every one is sealed.
pub async fn send(
    options: SendOptions,
    progress: Arc<dyn Progress>,
) -> Result<SendReport, SendError> {
    if !options.shape.raw && options.shape.task.is_none() {
        return Err(SendError::MissingTask);
    }
    let api = Api::new(&options.base_url, &options.api_key)?;
    let limits = server_limits(&api, &options, progress.as_ref()).await?;
    let caps = PartCaps::new(limits.as_ref(), options.batch_size);
    let input = prepare(
        &options.source,
        &options.shape,
        options.count,
        options.idempotency_key.clone(),
        caps,
        &options.cancel,
        progress.as_ref(),
    )
    .await?;
    let parts = input.parts.len();
    if options.shape.raw && parts > 1 {
        return Err(SendError::RawTooLarge {
            items: input.items,
            parts,
            max_items: caps.max_items,
        });
    }
    progress.event(ProgressEvent::Planned {
        parts: parts as u32,
        items: input.items,
    });
    // By position: a closure over `&Part` would make the future not provably `Send`.
    let sent = futures::stream::iter(0..parts)
        .map(|n| send_part(&options, &api, &input, &input.parts[n], progress.clone()))
        .buffered(options.parallel.max(1))
        .try_collect()
        .await;
    match sent {
        Ok(parts) => Ok(SendReport {
            items: input.items,
            parts,
        }),
        Err(error) if limits.is_none() && refused_for_size(&error) => {
            Err(SendError::LimitsUnknown {
                source: Box::new(error),
            })
        }
        Err(error) => Err(error),
    }
}

/// A refusal that splitting would have avoided: a `runCount` over the cap, or a body too large.
fn refused_for_size(error: &SendError) -> bool {
    match error {
        SendError::InPart { source, .. } => refused_for_size(source),
        SendError::Server {
            status, message, ..
        } => {
            *status == StatusCode::PAYLOAD_TOO_LARGE
                || (*status == StatusCode::BAD_REQUEST && message.contains("runCount"))
        }
        _ => false,
    }
}

/// The server's limits, retried like any call; `None` from a server without the route.
async fn server_limits(
    api: &Api,
    options: &SendOptions,
    progress: &dyn Progress,
) -> Result<Option<LimitsResponse>, SendError> {
    let mut retries = Retries::new(options, progress);
    loop {
        match retries.cancellable(api.limits()).await? {
            Ok(limits) => return Ok(limits),
            Err(error) if error.is_retryable() => {
                let reason = format!("reading the server's limits failed: {}", error.describe());
                retries.back_off(reason, error.retry_after()).await?;
            }
            Err(error) => return Err(error.into_send_error()),
        }
    }
}

/// Sends one part into its own batch, until it is sealed.
async fn send_part(
    options: &SendOptions,
    api: &Api,
    input: &PreparedInput,
    part: &Part,
    progress: Arc<dyn Progress>,
) -> Result<PartReport, SendError> {
    let parts = input.parts.len();
    let mut session = Session {
        options,
        api,
        input,
        part,
        parts,
        retries: Retries::new(options, progress.as_ref()),
        progress: progress.clone(),
        requests: 0,
    };
    let result = session.run().await;
    result.map_err(|error| match parts {
        1 => error,
        _ => SendError::InPart {
            part: part.number,
            parts: parts as u32,
            first_item: part.first_item,
            last_item: part.first_item + part.items - 1,
            source: Box::new(error),
        },
    })
}

/// Failed attempts in a row, the backoff between them, and Ctrl-C.
struct Retries<'a> {
    options: &'a SendOptions,
    progress: &'a dyn Progress,
    failures: u32,
    /// The batch being filled, named when giving up or interrupted.
    batch_id: Option<String>,
}

impl<'a> Retries<'a> {
    fn new(options: &'a SendOptions, progress: &'a dyn Progress) -> Self {
        Self {
            options,
            progress,
            failures: 0,
            batch_id: None,
        }
    }

    fn interrupted(&self) -> SendError {
        SendError::Interrupted {
            batch_id: self.batch_id.clone(),
        }
    }

    async fn cancellable<T>(&self, work: impl Future<Output = T>) -> Result<T, SendError> {
        tokio::select! {
            biased;
            _ = self.options.cancel.cancelled() => Err(self.interrupted()),
            output = work => Ok(output),
        }
    }

    /// Counts one more failure, then waits before the next attempt, or gives up.
    async fn back_off(
        &mut self,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Result<(), SendError> {
        self.failures += 1;
        if self.failures > self.options.retry.max_retries {
            return Err(SendError::GaveUp {
                batch_id: self.batch_id.clone(),
                attempts: self.failures,
                last: reason,
            });
        }
        let delay = self
            .options
            .retry
            .delay(self.failures, retry_after, rand::random());
        self.progress.event(ProgressEvent::Retrying {
            delay,
            reason: &reason,
        });
        self.cancellable(tokio::time::sleep(delay)).await
    }
}

struct Session<'a> {
    options: &'a SendOptions,
    api: &'a Api,
    input: &'a PreparedInput,
    part: &'a Part,
    /// Parts of the input.
    parts: usize,
    retries: Retries<'a>,
    progress: Arc<dyn Progress>,
    /// Items requests made.
    requests: u32,
}

impl Session<'_> {
    /// `reason`, naming the part when there are several.
    fn in_part(&self, reason: String) -> String {
        match self.parts {
            1 => reason,
            parts => format!("part {}/{parts}: {reason}", self.part.number),
        }
    }

    async fn back_off(
        &mut self,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Result<(), SendError> {
        let reason = self.in_part(reason);
        self.retries.back_off(reason, retry_after).await
    }

    async fn run(&mut self) -> Result<PartReport, SendError> {
        let key = self
            .part
            .idempotency_key(&self.input.idempotency_key, self.parts);
        let (batch_id, resumed) = self.create_batch(&key).await?;
        self.retries.batch_id = Some(batch_id.clone());
        self.progress.event(ProgressEvent::PartReady {
            part: self.part.number,
            parts: self.parts as u32,
            id: &batch_id,
            resumed,
            first_item: self.part.first_item,
            items: self.part.items,
        });
        let responses = self.stream_until_sealed(&batch_id, resumed).await?;
        self.progress.event(ProgressEvent::PartSealed {
            part: self.part.number,
        });
        Ok(PartReport {
            part: self.part.number,
            first_item: self.part.first_item,
            already_sealed: resumed && responses.len() == 1 && responses[0].items_accepted == 0,
            requests: self.requests,
            batch_id,
            idempotency_key: key,
            items: self.part.items,
            resumed,
            responses,
        })
    }

    /// Phase 1, retried; returns the batch id and whether it existed already.
    async fn create_batch(&mut self, key: &str) -> Result<(String, bool), SendError> {
        let request = CreateBatchRequest {
            run_count: i64::try_from(self.part.items).unwrap_or(i64::MAX),
            task_identifiers: self.options.shape.task.clone().map(|task| vec![task]),
            idempotency_key: Some(key.to_owned()),
            parent_run_id: None,
            resume_parent_on_completion: None,
        };
        let created = loop {
            match self
                .retries
                .cancellable(self.api.create_batch(&request))
                .await?
            {
                Ok(created) => break created,
                Err(error) if error.is_retryable() => {
                    let reason = format!("creating the batch failed: {}", error.describe());
                    self.back_off(reason, error.retry_after()).await?;
                }
                Err(error) => return Err(error.into_send_error()),
            }
        };
        self.retries.failures = 0;
        if u64::from(created.run_count) != self.part.items {
            return Err(SendError::BatchMismatch {
                batch_id: created.id,
                key: key.to_owned(),
                expected: created.run_count,
                items: self.part.items,
            });
        }
        Ok((created.id, created.is_cached))
    }

    /// Phase 2, until the batch is sealed.
    async fn stream_until_sealed(
        &mut self,
        batch_id: &str,
        resumed: bool,
    ) -> Result<Vec<IngestResponse>, SendError> {
        let mut responses = Vec::new();
        // A raw line whose index cannot be read lands at its position in the body, which changes
        // when lines are left out: such inputs are always sent whole.
        let input = self.input;
        let can_send_a_subset = !self.options.shape.raw || input.raw_indexes_readable;
        // A batch found again may be sealed or partly filled: ask before sending anything.
        let mut plan = if resumed {
            Plan::Probe
        } else {
            Plan::Everything
        };
        loop {
            let planned = match &plan {
                Plan::Probe => 0,
                Plan::Everything => self.part.items,
                Plan::Only(ranges) => ranges.count().min(self.part.items),
            };
            self.requests += 1;
            self.progress.event(ProgressEvent::AttemptStarted {
                part: self.part.number,
                attempt: self.requests,
                items: planned,
            });
            let tap = BodyTap::new(self.progress.clone(), self.part.number);
            let (body, gzip) = match &plan {
                Plan::Probe => (reqwest::Body::from(Vec::new()), false),
                Plan::Everything | Plan::Only(_) => {
                    let body_plan = BodyPlan {
                        only: match &plan {
                            Plan::Only(ranges) => Some(ranges.clone()),
                            _ => None,
                        },
                        gzip: self.options.gzip,
                    };
                    let body = request_body(
                        input,
                        &self.options.shape,
                        self.part,
                        &body_plan,
                        tap.clone(),
                    )
                    .await?;
                    (body, self.options.gzip)
                }
            };
            let answer = self
                .retries
                .cancellable(self.api.stream_items(batch_id, body, gzip))
                .await;
            tap.close();
            let answer = answer?;
            if let Some(failure) = tap.take_failure() {
                return Err(failure);
            }
            let response = match answer {
                Ok(response) => response,
                Err(CallError::Status {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    summary: Some(summary),
                    ..
                }) if summary.sealed => *summary,
                Err(CallError::Status {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    summary: Some(summary),
                    ..
                }) => {
                    return Err(SendError::Rejected {
                        batch_id: batch_id.to_owned(),
                        rejected: summary.items_rejected,
                        first: summary.rejected.first().cloned(),
                    });
                }
                Err(CallError::Status { code, message, .. }) if code == BATCH_NOT_PENDING => {
                    return Err(SendError::BatchClosed {
                        batch_id: batch_id.to_owned(),
                        message,
                    });
                }
                Err(error) if error.is_retryable() => {
                    let reason = format!("sending items failed: {}", error.describe());
                    self.back_off(reason, error.retry_after()).await?;
                    plan = Plan::Probe;
                    continue;
                }
                Err(error) => return Err(error.into_send_error()),
            };
            let sealed = response.sealed;
            let accepted = response.items_accepted;
            let next = match &response.missing {
                Some(missing) if !missing.is_empty() && can_send_a_subset => {
                    Plan::Only(IndexRanges::new(missing.clone()))
                }
                _ => Plan::Everything,
            };
            let still_missing = response
                .expected_count
                .zip(response.enqueued_count)
                .map_or(0, |(expected, enqueued)| {
                    u64::from(expected).saturating_sub(enqueued)
                });
            responses.push(response);
            if sealed {
                return Ok(responses);
            }
            let sent = tap.items();
            match plan {
                // A status answer is no progress and no failure: go on with what it says.
                Plan::Probe => {}
                Plan::Everything | Plan::Only(_)
                    if sent == 0 || sent == self.part.items && accepted == 0 =>
                {
                    return Err(SendError::Unsealable {
                        batch_id: batch_id.to_owned(),
                        missing: still_missing,
                        first_missing: match &next {
                            Plan::Only(ranges) => ranges.first(),
                            _ => None,
                        },
                    });
                }
                Plan::Everything | Plan::Only(_) if accepted > 0 => self.retries.failures = 0,
                Plan::Everything | Plan::Only(_) => {
                    let reason = format!("batch still misses {still_missing} item(s)");
                    self.back_off(reason, None).await?;
                }
            }
            plan = next;
        }
    }
}
