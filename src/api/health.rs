//! `GET /healthz`: whether every backend answers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::wire::HealthResponse;
use crate::app::AppState;
use crate::dependency::DependencyError;

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

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let (database, queue, payloads) = tokio::join!(
        state.store.ping(),
        state.queue.ping(),
        state.payloads.ping()
    );
    let healthy = database.is_ok() && queue.is_ok() && payloads.is_ok();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthResponse {
        status: if healthy { "ok" } else { "unavailable" }.into(),
        database: describe(&database),
        queue: describe(&queue),
        payloads: describe(&payloads),
    };
    (status, Json(body))
}
