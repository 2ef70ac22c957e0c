//! HTTP: the router, one module per resource, the error mapping, the auth extractor, and the
//! layer's own state. Handlers parse, call a use case (`crate::ingest`), and map its result; the
//! HTTP layer is the only one that knows HTTP, and nothing below imports it.

pub mod admission;
pub mod auth;
pub mod batches;
pub mod body;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod health;
pub mod items;
pub mod limits;
pub mod linger;
pub mod rate_limit;
pub mod runs;
pub mod state;
pub mod stats;
pub mod trigger;
pub mod workers;

use std::any::Any;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use self::error::ApiError;
pub use self::state::ApiState;

fn request_span(request: &Request<Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = crate::tasks::panic_message(panic.as_ref());
    tracing::error!(panic = detail, "request handler panicked");
    ApiError::Internal.into_response()
}

/// Counts every request by route, method and status, and times it (a stream: until its answer).
async fn record_request(request: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    crate::metrics::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

pub fn router(state: ApiState) -> Router {
    let create = post(batches::create_batch)
        .layer(DefaultBodyLimit::max(batches::MAX_CREATE_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit_creates,
        ));
    let lingering = linger::Lingering::new(linger::LingerLimits::from_config(&state.config));
    let stream_items = post(items::stream_items)
        // A catch-panic of its own, so that a panic's 500 also leaves through the linger layer.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(
            lingering,
            linger::linger_after_early_answers,
        ));
    Router::new()
        .route("/api/v3/batches", create.get(batches::list_batches))
        .route("/api/v3/batches/{id}", get(batches::get_batch))
        .route("/api/v3/batches/{id}/items", stream_items)
        .route("/api/v3/batches/{id}/cancel", post(batches::cancel_batch))
        .route("/api/v3/batches/{id}/runs", get(runs::list_runs))
        .route("/api/v3/batches/{id}/events", get(events::batch_events))
        .route("/api/v3/runs/claim", post(workers::claim))
        .route("/api/v3/runs/heartbeat", post(workers::heartbeat))
        .route(
            "/api/v3/runs/complete",
            post(workers::complete).layer(DefaultBodyLimit::max(workers::MAX_COMPLETE_BODY_BYTES)),
        )
        .route("/api/v3/runs/{id}", get(runs::get_run))
        .route("/api/v3/limits", get(limits::get_limits))
        .route("/api/v3/runs/{id}/payload", get(runs::get_run_payload))
        .route("/api/v3/stats", get(stats::get_stats))
        .route("/api/v2/batches/{id}", get(trigger::get_batch_v2))
        .route("/api/v1/batches/{id}", get(trigger::get_batch_v1))
        .route("/healthz", get(health::healthz))
        .route("/", get(dashboard::page))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        // One line per answered request at the default level, with its request id.
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(middleware::from_fn(record_request))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
        .with_state(state)
}
