//! Every error the HTTP API answers with, mapped to a status and a stable `code`.
//!
//! Bodies are always `{ "error": { "code", "message" } }` (plus the ingest summary for rejected
//! items). Dependency failures are logged here with the request's span; clients never see internals.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::wire::IngestResponse;
use crate::dependency::DependencyError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: &str = "1";

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
    BodyTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("Content-Encoding `{0}` is not supported; use gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("request body could not be read: {0}")]
    UnreadableBody(String),
    #[error("{} line(s) were rejected; every other item was processed", .0.items_rejected)]
    ItemsRejected(Box<IngestResponse>),
    #[error(transparent)]
    Dependency(#[from] DependencyError),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BatchNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BatchNotPending(_) => StatusCode::CONFLICT,
            Self::InvalidRequest(_) | Self::UnreadableBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::ItemsRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Dependency(error) if error.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Dependency(_) | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::BatchNotFound => "BATCH_NOT_FOUND",
            Self::RouteNotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::BatchNotPending(_) => "BATCH_NOT_PENDING",
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::BodyTooLarge(_) => "BODY_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::UnsupportedEncoding(_) => "UNSUPPORTED_CONTENT_ENCODING",
            Self::UnreadableBody(_) => "UNREADABLE_BODY",
            Self::ItemsRejected(_) => "ITEMS_REJECTED",
            Self::Dependency(error) if error.is_unavailable() => "DEPENDENCY_UNAVAILABLE",
            Self::Dependency(_) | Self::Internal => "INTERNAL_ERROR",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Dependency(error) if error.is_unavailable() => format!(
                "{} is unavailable; retry the request (items already accepted are kept)",
                error.dependency()
            ),
            Self::Dependency(_) => "internal error; see the server log for this request id".into(),
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
            Self::Dependency(error) if error.is_unavailable() => {
                tracing::warn!(error = %error, "dependency unavailable")
            }
            Self::Dependency(error) => tracing::error!(error = %error, "dependency failed"),
            _ => {}
        }
        let summary = match &self {
            Self::ItemsRejected(summary) => Some(summary.as_ref()),
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::BodyTooLarge(super::batches::MAX_CREATE_BODY_BYTES)
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnsupportedMediaType("expected `Content-Type: application/json`".into())
            }
            _ => Self::InvalidRequest(rejection.body_text()),
        }
    }
}
