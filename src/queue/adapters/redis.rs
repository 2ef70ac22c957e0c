//! The item queue in Redis (standalone or Cluster).
//!
//! Per batch, two hashes share the `{batch id}` hash tag (one Cluster slot): `items` (index → item)
//! and `failed` (indexes holding a failed item). `HSETNX` marks and stores an index in one atomic
//! command, so an index is never marked without its item; a call sends one pipeline of them (one
//! round trip, no script: Redis spends its time storing, not interpreting).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::dependency::DependencyError;
use crate::queue::{Enqueued, IndexRange, ItemQueue, Progress, QueuedItem, missing_ranges};

/// How long a Redis call may take before the request answers 503 instead of hanging.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// A standalone connection (reconnecting) or a Cluster connection.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisQueue {
    connection: Connection,
}

/// The keys of one batch; all in the batch's hash slot.
struct BatchKeys {
    items: String,
    failed: String,
}

impl BatchKeys {
    fn new(batch_id: &str) -> Self {
        Self {
            items: format!("sluice:{{{batch_id}}}:items"),
            failed: format!("sluice:{{{batch_id}}}:failed"),
        }
    }
}

mod url;

pub use self::url::Topology;

impl RedisQueue {
    /// Connects to what `url` selects: `redis+cluster://host:port[,host:port…]` is Redis Cluster,
    /// any other URL one standalone server (see [`Topology::from_url`]).
    pub async fn connect(url: &str) -> Result<Self, DependencyError> {
        let topology = Topology::from_url(url).map_err(|message| {
            DependencyError::failed(crate::dependency::Dependency::Redis, message)
        })?;
        let connection = match topology {
            // A node that goes away is reconnected in the background, for as long as it takes
            // (redis-rs sets no limit on attempts); meanwhile each call still ends within
            // RESPONSE_TIMEOUT, retries and redirections included.
            Topology::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(CONNECTION_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .overall_response_timeout(Some(RESPONSE_TIMEOUT))
                    .build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
            Topology::Standalone(server) => {
                let client = redis::Client::open(server)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1);
                Connection::Standalone(client.get_connection_manager_with_config(config).await?)
            }
        };
        Ok(Self { connection })
    }
}

#[async_trait]
impl ItemQueue for RedisQueue {
    async fn enqueue(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Enqueued, DependencyError> {
        if items.is_empty() {
            return Ok(Enqueued::default());
        }
        let keys = BatchKeys::new(batch_id);
        let mut stores = redis::pipe();
        for item in items {
            stores
                .cmd("HSETNX")
                .arg(&keys.items)
                .arg(item.index)
                .arg(item.body.as_ref());
        }
        // The count after this call's writes rides along in the same round trip.
        stores.cmd("HLEN").arg(&keys.items);
        let mut replies: Vec<u64> = stores.query_async(&mut self.connection.clone()).await?;
        let taken_after = replies.pop();
        let stored: Vec<bool> = replies.into_iter().map(|reply| reply == 1).collect();
        // Recorded after the items are stored: a crash in between can only undercount failures.
        let failed: Vec<u32> = items
            .iter()
            .zip(&stored)
            .filter(|(item, newly_stored)| item.failed && **newly_stored)
            .map(|(item, _)| item.index)
            .collect();
        if !failed.is_empty() {
            let mut record = redis::cmd("HSET");
            record.arg(&keys.failed);
            for index in failed {
                record.arg(index).arg(1);
            }
            let _: () = record.query_async(&mut self.connection.clone()).await?;
        }
        Ok(Enqueued {
            stored,
            taken_after,
        })
    }

    async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let (enqueued, failed): (u64, u64) = redis::pipe()
            .cmd("HLEN")
            .arg(&keys.items)
            .cmd("HLEN")
            .arg(&keys.failed)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(Progress { enqueued, failed })
    }

    async fn missing(
        &self,
        batch_id: &str,
        run_count: u32,
        limit: usize,
    ) -> Result<Vec<IndexRange>, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        // Only unsealed answers need this; it reads every taken index once.
        let mut present: Vec<u32> = redis::cmd("HKEYS")
            .arg(&keys.items)
            .query_async(&mut self.connection.clone())
            .await?;
        present.sort_unstable();
        Ok(missing_ranges(present, run_count, limit))
    }

    async fn item(&self, batch_id: &str, index: u32) -> Result<Option<Bytes>, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let body: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&keys.items)
            .arg(index)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(body.map(Bytes::from))
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        if let Connection::Cluster(connection) = &self.connection {
            return cluster_serves_every_slot(&mut connection.clone()).await;
        }
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }
}

/// A Cluster `PING` goes only to the masters the client holds a connection to, so a master that
/// died may go unnoticed until the others declare it failed (`cluster-node-timeout`). Healthy
/// means: as many masters answer as the Cluster says serve slots (`cluster_size`), and the
/// Cluster says every slot is served (`cluster_state:ok`).
async fn cluster_serves_every_slot(
    connection: &mut ClusterConnection,
) -> Result<(), DependencyError> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    // Without a response policy, the reply maps each master reached to its answer.
    let every_master = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let replies = connection
        .route_command(redis::cmd("PING"), every_master)
        .await?;
    let answered = match replies {
        Value::Map(replies) => replies
            .iter()
            .filter(|(_, reply)| !matches!(reply, Value::ServerError(_)))
            .count(),
        _ => 0,
    };
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(connection)
        .await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_default()
            .to_owned()
    };
    let (state, size) = (field("cluster_state"), field("cluster_size"));
    if state == "ok" && size == answered.to_string() {
        return Ok(());
    }
    Err(DependencyError::unavailable(
        crate::dependency::Dependency::Redis,
        format!(
            "the Redis Cluster is not serving every slot: cluster_state {state}, {answered} of \
             {size} masters answered"
        ),
    ))
}

/// The benchmark reference of a per-item enqueue: for each item one dedup command (`SADD` of its
/// index), then, if the index was new, one store command (`HSET`). Two round trips per item and
/// not atomic (a crash between the two marks an index without its item), so it is never used for
/// real traffic; `scripts/bench` measures the grouped path against it.
pub struct TwoStepRedisQueue(pub RedisQueue);

#[async_trait]
impl ItemQueue for TwoStepRedisQueue {
    async fn enqueue(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Enqueued, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let seen = format!("sluice:{{{batch_id}}}:seen");
        let mut connection = self.0.connection.clone();
        let mut stored = Vec::with_capacity(items.len());
        for item in items {
            let new: bool = redis::cmd("SADD")
                .arg(&seen)
                .arg(item.index)
                .query_async(&mut connection)
                .await?;
            if new {
                let _: () = redis::cmd("HSET")
                    .arg(&keys.items)
                    .arg(item.index)
                    .arg(item.body.as_ref())
                    .query_async(&mut connection)
                    .await?;
            }
            stored.push(new);
        }
        Ok(Enqueued {
            stored,
            taken_after: None,
        })
    }

    async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError> {
        self.0.progress(batch_id).await
    }

    async fn missing(
        &self,
        batch_id: &str,
        run_count: u32,
        limit: usize,
    ) -> Result<Vec<IndexRange>, DependencyError> {
        self.0.missing(batch_id, run_count, limit).await
    }

    async fn item(&self, batch_id: &str, index: u32) -> Result<Option<Bytes>, DependencyError> {
        self.0.item(batch_id, index).await
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        self.0.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_batch_is_in_one_hash_slot() {
        // Redis Cluster hashes only the text between the first `{` and the next `}`.
        fn hash_tag(key: &str) -> &str {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            &key[open + 1..close]
        }
        let keys = BatchKeys::new("batch_abc");
        for key in [&keys.items, &keys.failed] {
            assert_eq!(hash_tag(key), "batch_abc");
        }
    }
}
