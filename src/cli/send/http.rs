//! The two calls `sluice send` makes (create a batch, stream items) and how their answers are
//! read: a typed body on success, else a `CallError` that says whether trying again may help.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;

use super::error::SendError;
use super::retry::{is_retryable_status, retry_after};
use crate::protocol::wire::{
    CreateBatchRequest, CreateBatchResponse, ErrorDetail, IngestResponse, LimitsResponse,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an unexpected (non-JSON) answer quoted in an error.
const QUOTED_BODY_BYTES: usize = 200;

/// Why a call did not give the answer hoped for.
#[derive(Debug)]
pub enum CallError {
    /// No answer: connection refused, reset or cut, timeout.
    Transport(reqwest::Error),
    /// An answer that is an error (or an unreadable success).
    Status {
        status: StatusCode,
        code: String,
        message: String,
        retry_after: Option<Duration>,
        /// The ingest summary a `422` carries.
        summary: Option<Box<IngestResponse>>,
    },
}

impl CallError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(error) => !error.is_builder(),
            Self::Status { status, code, .. } => is_retryable_status(*status, Some(code)),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transport(_) => None,
            Self::Status { retry_after, .. } => *retry_after,
        }
    }

    /// One line: what went wrong.
    pub fn describe(&self) -> String {
        match self {
            Self::Transport(error) => error_chain(error),
            Self::Status {
                status,
                code,
                message,
                ..
            } => format!("{status} {code}: {message}"),
        }
    }

    /// The error to stop with when this one is not retried.
    pub fn into_send_error(self) -> SendError {
        match self {
            Self::Status {
                status,
                code,
                message,
                ..
            } => SendError::Server {
                status,
                code,
                message,
            },
            transport => SendError::Request(transport.describe()),
        }
    }
}

/// `error: source: source…`, since reqwest's own message rarely says what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

/// A Sluice server at a base URL, with an API key.
pub struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(base_url: &str, key: &str) -> Result<Self, SendError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|error| SendError::InvalidUrl {
            url: base_url.to_owned(),
            reason: error.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "the scheme must be http or https".to_owned(),
            });
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("sluice-send/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SendError::HttpClient)?;
        Ok(Self {
            client,
            base,
            key: key.to_owned(),
        })
    }

    /// `GET /api/v3/limits`; `None` from a server too old to have the route (`404`).
    pub async fn limits(&self) -> Result<Option<LimitsResponse>, CallError> {
        let response = self
            .client
            .get(format!("{}/api/v3/limits", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(CallError::Transport)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        read_answer(response).await.map(Some)
    }

    /// Phase 1. `202` (new) and `200` (found by idempotency key) are both success.
    pub async fn create_batch(
        &self,
        request: &CreateBatchRequest,
    ) -> Result<CreateBatchResponse, CallError> {
        let response = self
            .client
            .post(format!("{}/api/v3/batches", self.base))
            .bearer_auth(&self.key)
            .json(request)
            .send()
            .await
            .map_err(CallError::Transport)?;
        read_answer(response).await
    }

    /// Phase 2: streams `body` into the batch.
    pub async fn stream_items(
        &self,
        batch_id: &str,
        body: reqwest::Body,
        gzip: bool,
    ) -> Result<IngestResponse, CallError> {
        let mut request = self
            .client
            .post(format!("{}/api/v3/batches/{batch_id}/items", self.base))
            .bearer_auth(&self.key)
            .header(CONTENT_TYPE, "application/x-ndjson");
        if gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(CallError::Transport)?;
        read_answer(response).await
    }
}

pub(crate) async fn read_answer<T: for<'de> Deserialize<'de>>(
    response: reqwest::Response,
) -> Result<T, CallError> {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let bytes = response.bytes().await.map_err(CallError::Transport)?;
    if status.is_success()
        && let Ok(body) = serde_json::from_slice(&bytes)
    {
        return Ok(body);
    }
    let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(envelope) => (envelope.error.code, envelope.error.message),
        Err(_) => {
            let quoted = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTED_BODY_BYTES)]);
            let what = match status.is_success() {
                true => "unexpected answer",
                false => "no Sluice error body",
            };
            (
                "UNEXPECTED_RESPONSE".to_owned(),
                format!("{what}: {quoted:?}"),
            )
        }
    };
    let summary = match status {
        StatusCode::UNPROCESSABLE_ENTITY => serde_json::from_slice(&bytes).ok().map(Box::new),
        _ => None,
    };
    Err(CallError::Status {
        status,
        code,
        message,
        retry_after,
        summary,
    })
}
