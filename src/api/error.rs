//! Every error the HTTP API answers with, mapped to a status and a stable `code`.
//!
//! Bodies are always `{ "error": { "code", "message" } }` (plus the ingest summary for rejected
//! items). Dependency failures are logged here with the request's span; clients never see internals.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::admission::Overload;
use super::body::BodyStop;
use crate::dependency::DependencyError;
use crate::ingest::batches::BatchError;
use crate::protocol::quote::bounded;
use crate::protocol::wire::IngestResponse;
use crate::runs::RunsError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// Rate-limit headers of Phase 1 answers: bucket size, requests left in it now, and (on a 429)
/// seconds until the next request fits.
pub const RATE_LIMIT_LIMIT: header::HeaderName =
    header::HeaderName::from_static("x-ratelimit-limit");
pub const RATE_LIMIT_REMAINING: header::HeaderName =
    header::HeaderName::from_static("x-ratelimit-remaining");
pub const RATE_LIMIT_RESET: header::HeaderName =
    header::HeaderName::from_static("x-ratelimit-reset");

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("no batch with this id")]
    BatchNotFound,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("batch is {0} and accepts no more items")]
    BatchNotPending(&'static str),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client's encoding, already quoted (and bounded).
    #[error("Content-Encoding {0} is not supported; use gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("request body could not be read: {0}")]
    UnreadableBody(String),
    #[error("{} line(s) were rejected; every other item was processed", .0.items_rejected)]
    ItemsRejected(Box<IngestResponse>),
    /// The body was cut off by a limit or by shutdown; what was read before is kept.
    #[error("{0}; items read before that are kept")]
    StreamStopped(BodyStop, Box<IngestResponse>),
    #[error("too many {} on this server; retry later", .0.as_str())]
    Overloaded(Overload),
    #[error("too many batches created; retry in {retry_after_seconds} s")]
    RateLimited {
        retry_after_seconds: u64,
        limit: u32,
    },
    #[error(transparent)]
    Dependency(#[from] DependencyError),
    /// A backend failed mid-stream; what was enqueued before is kept and summarised.
    #[error("{0}")]
    StreamFailed(DependencyError, Box<IngestResponse>),
    #[error("internal error")]
    Internal,
    #[error("no run with this id")]
    RunNotFound,
    #[error("this run has no payload")]
    PayloadNotFound,
    #[error("batch is {0} and can no longer be canceled")]
    BatchFinal(&'static str),
    #[error(
        "this API key has {0} event streams open on this server already; close one, or retry later"
    )]
    TooManyEventStreams(u32),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BatchNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::RunNotFound | Self::PayloadNotFound => StatusCode::NOT_FOUND,
            Self::BatchFinal(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BatchNotPending(_) => StatusCode::CONFLICT,
            Self::InvalidRequest(_) | Self::UnreadableBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::ItemsRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::StreamStopped(stop, _) => match stop {
                BodyStop::EncodedTooLarge(_) | BodyStop::DecodedTooLarge(_) => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                BodyStop::Idle(_) => StatusCode::REQUEST_TIMEOUT,
                BodyStop::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } | Self::TooManyEventStreams(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Dependency(error) | Self::StreamFailed(error, _) if error.is_unavailable() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Dependency(_) | Self::StreamFailed(..) | Self::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::BatchNotFound => "BATCH_NOT_FOUND",
            Self::RunNotFound => "RUN_NOT_FOUND",
            Self::PayloadNotFound => "PAYLOAD_NOT_FOUND",
            Self::BatchFinal(_) => "BATCH_FINAL",
            Self::RouteNotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::BatchNotPending(_) => "BATCH_NOT_PENDING",
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::BodyTooLarge(_) => "BODY_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::UnsupportedEncoding(_) => "UNSUPPORTED_CONTENT_ENCODING",
            Self::UnreadableBody(_) => "UNREADABLE_BODY",
            Self::ItemsRejected(_) => "ITEMS_REJECTED",
            Self::StreamStopped(stop, _) => match stop {
                BodyStop::EncodedTooLarge(_) | BodyStop::DecodedTooLarge(_) => "BODY_TOO_LARGE",
                BodyStop::Idle(_) => "BODY_IDLE_TIMEOUT",
                BodyStop::ShuttingDown => "SHUTTING_DOWN",
            },
            Self::Overloaded(_) => "OVERLOADED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::TooManyEventStreams(_) => "TOO_MANY_EVENT_STREAMS",
            Self::Dependency(error) | Self::StreamFailed(error, _) if error.is_unavailable() => {
                "DEPENDENCY_UNAVAILABLE"
            }
            Self::Dependency(_) | Self::StreamFailed(..) | Self::Internal => "INTERNAL_ERROR",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::StreamFailed(error, _) if error.is_unavailable() => format!(
                "{} is unavailable; retry the request (items already accepted are kept)",
                error.dependency()
            ),
            Self::Dependency(error) if error.is_unavailable() => {
                format!("{} is unavailable; retry the request", error.dependency())
            }
            Self::Dependency(_) | Self::StreamFailed(..) => {
                "internal error; see the server log for this request id".into()
            }
            other => other.to_string(),
        }
    }
}

#[derive(Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    summary: Option<&'a IngestResponse>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Dependency(error) | Self::StreamFailed(error, _) if error.is_unavailable() => {
                crate::metrics::dependency_error(error);
                tracing::warn!(error = %error, "dependency unavailable")
            }
            Self::Dependency(error) | Self::StreamFailed(error, _) => {
                crate::metrics::dependency_error(error);
                tracing::error!(error = %error, "dependency failed")
            }
            // Streams turned away are counted where they are admitted.
            Self::Overloaded(Overload::StatusWrites) => {
                crate::metrics::request_shed("status_writes")
            }
            _ => {}
        }
        let summary = match &self {
            Self::ItemsRejected(summary)
            | Self::StreamStopped(_, summary)
            | Self::StreamFailed(_, summary) => Some(summary.as_ref()),
            _ => None,
        };
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code(),
                message: self.message(),
            },
            summary,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if let Self::TooManyEventStreams(_) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::RateLimited {
            retry_after_seconds,
            limit,
        } = self
        {
            headers.insert(header::RETRY_AFTER, retry_after_seconds.into());
            headers.insert(RATE_LIMIT_LIMIT, limit.into());
            headers.insert(RATE_LIMIT_REMAINING, 0.into());
            headers.insert(RATE_LIMIT_RESET, retry_after_seconds.into());
        }
        response
    }
}

/// The one place a use case's error becomes an HTTP answer.
impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Invalid(message) => Self::InvalidRequest(message),
            BatchError::NotFound => Self::BatchNotFound,
            BatchError::NotPending(status) => Self::BatchNotPending(status.as_str()),
            BatchError::Dependency(error) => Self::Dependency(error),
        }
    }
}

impl From<RunsError> for ApiError {
    fn from(error: RunsError) -> Self {
        match error {
            RunsError::Invalid(message) => Self::InvalidRequest(message),
            RunsError::BatchNotFound => Self::BatchNotFound,
            RunsError::RunNotFound => Self::RunNotFound,
            RunsError::NoPayload => Self::PayloadNotFound,
            RunsError::BatchFinal(status) => Self::BatchFinal(status.as_str()),
            RunsError::Busy(_) => Self::Overloaded(Overload::StatusWrites),
            RunsError::Dependency(error) => Self::Dependency(error),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidRequest(bounded(rejection.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::BodyTooLarge(super::batches::MAX_CREATE_BODY_BYTES as u64)
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnsupportedMediaType("expected `Content-Type: application/json`".into())
            }
            _ => Self::InvalidRequest(bounded(rejection.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;
    use crate::dependency::Dependency;

    async fn answer(error: ApiError) -> (StatusCode, HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&body).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_full_status_queue_is_overloaded_not_a_dependency_outage() {
        let (status, headers, body) = answer(RunsError::Busy("completions").into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], RETRY_AFTER_SECONDS);
        assert_eq!(body["error"]["code"], "OVERLOADED");
        assert_eq!(
            body["error"]["message"],
            "too many status writes queued on this server; retry later"
        );
    }

    #[tokio::test]
    async fn only_a_stream_says_its_items_are_kept_when_a_dependency_is_down() {
        let down = || DependencyError::unavailable(Dependency::Database, "down");
        let (status, _, body) = answer(ApiError::Dependency(down())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "DEPENDENCY_UNAVAILABLE");
        assert_eq!(
            body["error"]["message"],
            "database is unavailable; retry the request"
        );
        let summary: IngestResponse = serde_json::from_value(serde_json::json!({
            "id": "batch_1", "itemsAccepted": 3, "itemsDeduplicated": 0, "sealed": false,
            "itemsFailed": 0, "itemsRejected": 0, "rejected": []
        }))
        .unwrap();
        let summary = Box::new(summary);
        let (_, _, body) = answer(ApiError::StreamFailed(down(), summary)).await;
        assert_eq!(
            body["error"]["message"],
            "database is unavailable; retry the request (items already accepted are kept)"
        );
        assert_eq!(body["itemsAccepted"], 3);
    }
}
