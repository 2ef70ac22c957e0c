//! The core of `sluice send`, without any terminal concerns: prepare the input, create (or find
//! again) the batch, stream items, and retry until the batch is sealed or there is no point.
//!
//! Every request is safe to repeat: the batch is found again through its idempotency key and the
//! server stores each index once. So after any failure the sender asks the server what is missing
//! (an empty items request) and sends only that.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::body::{BodyPlan, BodyTap, IndexRanges, request_body};
use super::error::SendError;
use super::http::{Api, CallError};
use super::input::{PreparedInput, Shape, Source, prepare};
use super::progress::{Progress, ProgressEvent};
use super::retry::RetryPolicy;
use crate::protocol::wire::{CreateBatchRequest, IngestResponse};

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
    pub retry: RetryPolicy,
    /// Cancelled on Ctrl-C: the current request is dropped and `send` returns `Interrupted`.
    pub cancel: CancellationToken,
}

/// How a batch got sealed.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub batch_id: String,
    pub idempotency_key: String,
    /// Items in the input (the batch's `runCount`).
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

impl SendReport {
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

/// Sends the input into a batch and returns once it is sealed.
pub async fn send(
    options: SendOptions,
    progress: Arc<dyn Progress>,
) -> Result<SendReport, SendError> {
    if !options.shape.raw && options.shape.task.is_none() {
        return Err(SendError::MissingTask);
    }
    let api = Api::new(&options.base_url, &options.api_key)?;
    let input = prepare(
        &options.source,
        &options.shape,
        options.count,
        options.idempotency_key.clone(),
        &options.cancel,
        progress.as_ref(),
    )
    .await?;
    let mut session = Session {
        options: &options,
        api,
        progress,
        failures: 0,
        requests: 0,
        batch_id: None,
    };
    let (batch_id, resumed) = session.create_batch(&input).await?;
    session.batch_id = Some(batch_id.clone());
    session.progress.event(ProgressEvent::BatchReady {
        id: &batch_id,
        resumed,
    });
    let responses = session
        .stream_until_sealed(&input, &batch_id, resumed)
        .await?;
    Ok(SendReport {
        already_sealed: resumed && responses.len() == 1 && responses[0].items_accepted == 0,
        requests: session.requests,
        batch_id,
        idempotency_key: input.idempotency_key.clone(),
        items: input.items,
        resumed,
        responses,
    })
}

struct Session<'a> {
    options: &'a SendOptions,
    api: Api,
    progress: Arc<dyn Progress>,
    /// Failed attempts in a row.
    failures: u32,
    /// Items requests made.
    requests: u32,
    batch_id: Option<String>,
}

impl Session<'_> {
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

    /// Phase 1, retried; returns the batch id and whether it existed already.
    async fn create_batch(&mut self, input: &PreparedInput) -> Result<(String, bool), SendError> {
        let request = CreateBatchRequest {
            run_count: i64::try_from(input.items).unwrap_or(i64::MAX),
            task_identifiers: self.options.shape.task.clone().map(|task| vec![task]),
            idempotency_key: Some(input.idempotency_key.clone()),
            parent_run_id: None,
            resume_parent_on_completion: None,
        };
        let created = loop {
            match self.cancellable(self.api.create_batch(&request)).await? {
                Ok(created) => break created,
                Err(error) if error.is_retryable() => {
                    let reason = format!("creating the batch failed: {}", error.describe());
                    self.back_off(reason, error.retry_after()).await?;
                }
                Err(error) => return Err(error.into_send_error()),
            }
        };
        self.failures = 0;
        if u64::from(created.run_count) != input.items {
            return Err(SendError::BatchMismatch {
                batch_id: created.id,
                key: input.idempotency_key.clone(),
                expected: created.run_count,
                items: input.items,
            });
        }
        Ok((created.id, created.is_cached))
    }

    /// Phase 2, until the batch is sealed.
    async fn stream_until_sealed(
        &mut self,
        input: &PreparedInput,
        batch_id: &str,
        resumed: bool,
    ) -> Result<Vec<IngestResponse>, SendError> {
        let mut responses = Vec::new();
        // A raw line whose index cannot be read lands at its position in the body, which changes
        // when lines are left out: such inputs are always sent whole.
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
                Plan::Everything => input.items,
                Plan::Only(ranges) => ranges.count().min(input.items),
            };
            self.requests += 1;
            self.progress.event(ProgressEvent::AttemptStarted {
                attempt: self.requests,
                items: planned,
            });
            let tap = BodyTap::new(self.progress.clone());
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
                    let body =
                        request_body(input, &self.options.shape, &body_plan, tap.clone()).await?;
                    (body, self.options.gzip)
                }
            };
            let answer = self
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
                    if sent == 0 || sent == input.items && accepted == 0 =>
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
                Plan::Everything | Plan::Only(_) if accepted > 0 => self.failures = 0,
                Plan::Everything | Plan::Only(_) => {
                    let reason = format!("batch still misses {still_missing} item(s)");
                    self.back_off(reason, None).await?;
                }
            }
            plan = next;
        }
    }
}
