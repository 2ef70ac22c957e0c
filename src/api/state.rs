//! The HTTP layer's state: what every handler gets, behind one `Arc`.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::admission::LoadShield;
use super::auth::ApiKeys;
use super::body::{BodyLimits, StopSignal};
use super::events::EventStreamCap;
use super::rate_limit::CreateRateLimiter;
use crate::config::Config;
use crate::ingest::pipeline::IngestLimits;
use crate::ports::Ports;

pub struct Api {
    pub config: Config,
    pub ports: Ports,
    pub keys: ApiKeys,
    pub shield: LoadShield,
    pub create_limiter: Arc<CreateRateLimiter>,
    pub event_streams: EventStreamCap,
}

/// The API behind one `Arc`, and the server's shutdown token.
#[derive(Clone)]
pub struct ApiState {
    api: Arc<Api>,
    shutdown: CancellationToken,
}

impl Deref for ApiState {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ApiState {
    /// The API over `ports`, with its load shield and Phase 1 rate limit built from `config`.
    pub fn new(config: Config, ports: Ports, keys: ApiKeys, shutdown: CancellationToken) -> Self {
        let api = Api {
            shield: LoadShield::new(config.max_streams, config.max_items_in_flight),
            create_limiter: Arc::new(CreateRateLimiter::new(
                config.create_rate_per_second,
                config.create_rate_burst,
            )),
            event_streams: EventStreamCap::new(config.max_event_streams_per_tenant),
            config,
            ports,
            keys,
        };
        Self {
            api: Arc::new(api),
            shutdown,
        }
    }

    /// Cancelled when the server starts stopping: event streams end then (their clients
    /// reconnect, with their last event id, to a node that is not stopping).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn ingest_limits(&self) -> IngestLimits {
        IngestLimits {
            concurrency: self.config.ingest_concurrency as usize,
            max_items_per_enqueue: self.config.enqueue_batch_max_items as usize,
            max_line_bytes: self.config.item_max_bytes as usize,
            offload_threshold_bytes: self.config.offload_threshold_bytes as usize,
        }
    }

    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_encoded_bytes: self.config.max_encoded_body_bytes,
            max_decoded_bytes: self.config.max_body_bytes,
            idle_timeout: Duration::from_millis(self.config.body_idle_timeout_ms),
        }
    }

    /// Resolves when streams must stop reading: the shutdown grace period has passed.
    pub fn stream_stop(&self) -> StopSignal {
        let shutdown = self.shutdown.clone();
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        Box::pin(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        })
    }
}
