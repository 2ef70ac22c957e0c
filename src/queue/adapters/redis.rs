//! The item queue in Redis (standalone or Cluster).
//!
//! Per batch, three keys share the `{batch id}` hash tag, so one Lua script can touch them all on a
//! Cluster: `items` (hash: index → item), `seen` (bitmap of taken indexes, for cheap counts and
//! missing ranges) and `failed` (count of failed items). `HSETNX` marks and stores an index in one
//! command; the script only adds the bookkeeping of the same call.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use crate::dependency::DependencyError;
use crate::queue::{IndexRange, ItemQueue, Progress, QueuedItem, missing_ranges};

/// How long a Redis call may take before the request answers 503 instead of hanging.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

const ENQUEUE_SCRIPT: &str = r#"
-- KEYS: items, seen, failed. ARGV: index, failed flag, body; repeated per item.
local stored = {}
local failed = 0
for i = 1, #ARGV, 3 do
  local new = redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 2])
  if new == 1 then
    redis.call('SETBIT', KEYS[2], ARGV[i], 1)
    if ARGV[i + 1] == '1' then failed = failed + 1 end
  end
  stored[#stored + 1] = new
end
if failed > 0 then redis.call('INCRBY', KEYS[3], failed) end
return stored
"#;

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
    enqueue: Script,
}

/// The keys of one batch; all in the batch's hash slot.
struct BatchKeys {
    items: String,
    seen: String,
    failed: String,
}

impl BatchKeys {
    fn new(batch_id: &str) -> Self {
        Self {
            items: format!("sluice:{{{batch_id}}}:items"),
            seen: format!("sluice:{{{batch_id}}}:seen"),
            failed: format!("sluice:{{{batch_id}}}:failed"),
        }
    }
}

impl RedisQueue {
    /// Connects to `url`; a comma-separated list of node URLs selects Redis Cluster.
    pub async fn connect(url: &str) -> Result<Self, DependencyError> {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let connection = if url.contains(',') {
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(CONNECTION_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()?;
            Connection::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1);
            Connection::Standalone(client.get_connection_manager_with_config(config).await?)
        };
        Ok(Self {
            connection,
            enqueue: Script::new(ENQUEUE_SCRIPT),
        })
    }
}

/// Indexes whose bit is set in a Redis bitmap (bit 0 is the high bit of the first byte).
fn set_bits(bitmap: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bitmap.iter().enumerate().flat_map(|(byte_at, &byte)| {
        (0..8u32)
            .filter(move |bit| byte & (0x80 >> bit) != 0)
            .map(move |bit| byte_at as u32 * 8 + bit)
    })
}

#[async_trait]
impl ItemQueue for RedisQueue {
    async fn enqueue(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Vec<bool>, DependencyError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys = BatchKeys::new(batch_id);
        let mut invocation = self.enqueue.prepare_invoke();
        invocation
            .key(&keys.items)
            .key(&keys.seen)
            .key(&keys.failed);
        for item in items {
            invocation
                .arg(item.index)
                .arg(if item.failed { "1" } else { "0" })
                .arg(item.body.as_ref());
        }
        let stored: Vec<i64> = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(stored.into_iter().map(|new| new == 1).collect())
    }

    async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let (enqueued, failed): (u64, Option<u64>) = redis::pipe()
            .cmd("BITCOUNT")
            .arg(&keys.seen)
            .cmd("GET")
            .arg(&keys.failed)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(Progress {
            enqueued,
            failed: failed.unwrap_or(0),
        })
    }

    async fn missing(
        &self,
        batch_id: &str,
        run_count: u32,
        limit: usize,
    ) -> Result<Vec<IndexRange>, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let bitmap: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&keys.seen)
            .query_async(&mut self.connection.clone())
            .await?;
        let bitmap = bitmap.unwrap_or_default();
        let present = set_bits(&bitmap).take_while(|&index| index < run_count);
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
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bits_are_read_high_bit_first() {
        let present: Vec<u32> = set_bits(&[0b1000_0001, 0, 0b0100_0000]).collect();
        assert_eq!(present, vec![0, 7, 17]);
    }

    #[test]
    fn every_key_of_a_batch_is_in_one_hash_slot() {
        // Redis Cluster hashes only the text between the first `{` and the next `}`.
        fn hash_tag(key: &str) -> &str {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            &key[open + 1..close]
        }
        let keys = BatchKeys::new("batch_abc");
        for key in [&keys.items, &keys.seen, &keys.failed] {
            assert_eq!(hash_tag(key), "batch_abc");
        }
    }
}
