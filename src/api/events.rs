//! `GET /api/v3/batches/{id}/events`: a batch's events as Server-Sent Events — the journal after
//! `Last-Event-ID` (or `?after=`), then live, until the event that makes the batch final — and
//! the per-tenant cap on open streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::auth::Tenant;
use super::batches::BatchId;
use super::error::ApiError;
use super::state::ApiState;
use crate::events::stream::{RunFilter, Watch, watch_batch};
use crate::protocol::quote::quote;

/// A comment line this often keeps proxies from closing a quiet stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub after: Option<String>,
    pub runs: Option<String>,
}

fn sequence_number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::InvalidRequest(format!(
            "{what} must be an event id (a non-negative integer), got {}",
            quote(text)
        ))
    })
}

pub async fn batch_events(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    BatchId(id): BatchId,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let filter = match query.runs.as_deref() {
        None => RunFilter::All,
        Some(text) => RunFilter::parse(text).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "runs must be none, failed or all, got {}",
                quote(text)
            ))
        })?,
    };
    // The header a reconnecting EventSource sends wins over the query of the first request; the
    // query must still be a valid one.
    let after_query = query
        .after
        .as_deref()
        .map(|text| sequence_number(text, "after"))
        .transpose()?;
    let after = match headers.get("last-event-id") {
        Some(value) => sequence_number(
            value.to_str().map_err(|_| {
                ApiError::InvalidRequest("Last-Event-ID must be an event id".into())
            })?,
            "Last-Event-ID",
        )?,
        None => after_query.unwrap_or(0),
    };
    let open = state.event_streams.open(&tenant)?;
    let watch = Watch {
        store: state.ports.store.clone(),
        journal: state.ports.journal.clone(),
        hub: state.ports.hub.clone(),
        seal_timeout_ms: state.config.seal_timeout_ms,
        stop: state.shutdown_token(),
    };
    let events = watch_batch(watch, &tenant, &id, after, filter).await?;
    // A stream ends after `SLUICE_EVENT_STREAM_MAX_MS` (never when 0); the client resumes from
    // the last id it saw.
    let max_open = state.config.event_stream_max_ms;
    let ends = async move {
        match max_open {
            0 => std::future::pending::<()>().await,
            ms => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    };
    let events = events.take_until(ends).map(move |event| {
        // The stream's slot is held as long as the stream.
        let _open = &open;
        Ok::<_, Infallible>(
            Event::default()
                .id(event.seq.to_string())
                .event(event.kind.as_str())
                .data(&event.data),
        )
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEPALIVE))
        .into_response();
    // Proxies must pass events on as they come.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// Event streams open on this node, per tenant, up to `SLUICE_MAX_EVENT_STREAMS_PER_TENANT`.
pub struct EventStreamCap {
    max: u32,
    open: Arc<Mutex<HashMap<String, u32>>>,
}

impl EventStreamCap {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    pub fn open(&self, tenant: &str) -> Result<OpenStream, ApiError> {
        let mut open = self.open.lock().expect("never poisoned");
        let count = open.entry(tenant.to_owned()).or_default();
        if *count >= self.max {
            crate::metrics::request_shed("event_streams");
            return Err(ApiError::TooManyEventStreams(self.max));
        }
        *count += 1;
        crate::metrics::event_streams_open(1.0);
        Ok(OpenStream {
            open: self.open.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

/// One tenant's slot, given back when the stream ends or its client goes away.
pub struct OpenStream {
    open: Arc<Mutex<HashMap<String, u32>>>,
    tenant: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("never poisoned");
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
        crate::metrics::event_streams_open(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_slots_back_when_streams_end() {
        let cap = EventStreamCap::new(2);
        let first = cap.open("acme").unwrap();
        let _second = cap.open("acme").unwrap();
        assert!(matches!(
            cap.open("acme"),
            Err(ApiError::TooManyEventStreams(2))
        ));
        let _other = cap.open("globex").unwrap();
        drop(first);
        assert!(cap.open("acme").is_ok());
    }
}
