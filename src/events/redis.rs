//! The bus between nodes on Redis pub/sub: each flush's committed events go out as one message on
//! one channel, and every node's one subscription hands the other nodes' events to its streams.
//!
//! On a Redis Cluster, pub/sub messages reach every node of the Cluster, so publishing and
//! subscribing both go through the first seed node of `REDIS_URL`. While it is unreachable, live
//! events from other nodes arrive late (streams read the journal when they wait too long), never
//! lost.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, ConnectionInfo};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::StoredEvent;
use super::live::{EventBus, Hub};
use crate::dependency::{Dependency, DependencyError};
use crate::queue::adapters::redis::Topology;
use crate::tasks::NamedTask;

const CHANNEL: &str = "sluice:batch-events";
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct Message {
    node: String,
    events: Vec<StoredEvent>,
}

pub struct RedisEventBus {
    node: String,
    client: Client,
    publisher: ConnectionManager,
}

impl RedisEventBus {
    pub async fn connect(url: &str) -> Result<Self, DependencyError> {
        let server: ConnectionInfo = match Topology::from_url(url)
            .map_err(|message| DependencyError::failed(Dependency::Redis, message))?
        {
            Topology::Standalone(server) => server,
            Topology::Cluster(seeds) => seeds
                .into_iter()
                .next()
                .ok_or_else(|| DependencyError::failed(Dependency::Redis, "no seed node"))?,
        };
        let client = Client::open(server)?;
        let publisher = client.get_connection_manager().await?;
        Ok(Self {
            node: format!("{:016x}", rand::random::<u64>()),
            client,
            publisher,
        })
    }

    /// Hands the other nodes' events to `hub` until `stop`, resubscribing after a failure.
    pub fn spawn_subscriber(self: &Arc<Self>, hub: Arc<Hub>, stop: CancellationToken) -> NamedTask {
        let bus = self.clone();
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    result = bus.receive(&hub) => if let Err(error) = result {
                        tracing::warn!(%error, "the event subscription to Redis failed; subscribing again");
                    },
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RECONNECT_AFTER) => {}
                }
            }
        });
        NamedTask {
            name: "event-subscriber",
            handle,
        }
    }

    async fn receive(&self, hub: &Hub) -> Result<(), redis::RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let payload: Vec<u8> = message.get_payload()?;
            let Ok(message) = serde_json::from_slice::<Message>(&payload) else {
                tracing::warn!("a message on the event channel is not one Sluice sent");
                continue;
            };
            if message.node == self.node {
                continue;
            }
            for event in message.events {
                hub.deliver(Arc::new(event));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for RedisEventBus {
    async fn publish(&self, events: &[Arc<StoredEvent>]) {
        let message = Message {
            node: self.node.clone(),
            events: events.iter().map(|event| (**event).clone()).collect(),
        };
        let payload = serde_json::to_vec(&message).expect("an event serializes");
        let mut connection = self.publisher.clone();
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(payload)
                .query_async::<()>(&mut connection),
        )
        .await;
        match published {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not publish events to the other nodes"),
            Err(_) => tracing::warn!("publishing events to the other nodes timed out"),
        }
    }
}
