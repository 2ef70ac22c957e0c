//! `GET /healthz`: whether every backend answers.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::state::ApiState;
use crate::dependency::DependencyError;
use crate::protocol::wire::{ErrorDetail, HealthResponse};

/// "ok" or "unavailable"; the reason goes to the log, not to the (unauthenticated) caller.
fn describe(result: &Result<(), DependencyError>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(error) => {
            tracing::warn!(error = %error, "health check failed");
            "unavailable".into()
        }
    }
}

pub async fn healthz(State(state): State<ApiState>) -> Response {
    let (database, queue, payloads) = tokio::join!(
        state.ports.store.ping(),
        state.ports.queue.ping(),
        state.ports.payloads.ping()
    );
    let healthy = database.is_ok() && queue.is_ok() && payloads.is_ok();
    let body = HealthResponse {
        status: if healthy { "ok" } else { "unavailable" }.into(),
        database: describe(&database),
        queue: describe(&queue),
        payloads: describe(&payloads),
        error: (!healthy).then(|| ErrorDetail {
            code: "DEPENDENCY_UNAVAILABLE".into(),
            message: "a backend is unavailable; see the fields of this body".into(),
        }),
    };
    if healthy {
        return (StatusCode::OK, Json(body)).into_response();
    }
    let retry_after = [(header::RETRY_AFTER, super::error::RETRY_AFTER_SECONDS)];
    (StatusCode::SERVICE_UNAVAILABLE, retry_after, Json(body)).into_response()
}
