//! The item queue in Redis (standalone or Cluster).
//!
//! Per batch, three keys share the `{batch id}` hash tag (one Cluster slot): `items` (a hash,
//! index → item), `failed` (a hash of the indexes holding a failed item) and `taken` (a bitmap
//! whose bit i is set once index i is taken). A call sends one `MULTI`/`EXEC` transaction: an
//! `HSETNX` per item (marks and stores the index in one command, so an index is never marked without
//! its item), one `BITFIELD` setting every item's bit (an operation per run of consecutive indexes),
//! and `HLEN`. One round trip, no script: Redis spends its time storing, not interpreting.
//!
//! `missing` reads the bitmap in slices with `GETRANGE` and stops at the limit: it never reads the
//! hash's keys. `progress` is two `HLEN`s.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::dependency::DependencyError;
use crate::queue::ranges::MissingRanges;
use crate::queue::{Enqueued, IndexRange, ItemQueue, Progress, QueuedItem};

/// How long a Redis call may take before the request answers 503 instead of hanging.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of the taken bitmap one `GETRANGE` reads (262 144 indexes): microseconds of Redis time
/// each, and four round trips for a batch of a million.
const BITMAP_SLICE_BYTES: usize = 32 * 1024;
/// Indexes one `BITFIELD` marks when marking indexes stored before the bitmap was kept.
const BACKFILL_BITS_PER_COMMAND: usize = 8192;

/// The items of a range in index order, `false` (a nil reply) where an index holds nothing,
/// ending before the item that would bring their bytes past `ARGV[3]` (the first item always
/// comes). Read with `HMGET`s of at most `ARGV[4]` fields: the first of 16, each next one sized
/// by what is left of the bound and the largest item seen, so what the script reads beyond its
/// answer is about one item, unless the items grow along the range.
static ITEMS_WITHIN_BYTES: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local budget, most = tonumber(ARGV[3]), tonumber(ARGV[4])
local items, bytes, any, largest = {}, 0, false, 1
local index, group = first, math.min(16, most)
while index <= last do
  local upto = math.min(index + group - 1, last)
  local fields = {}
  for field = index, upto do fields[#fields + 1] = field end
  local values = redis.call('HMGET', KEYS[1], unpack(fields))
  for position = 1, #fields do
    local value = values[position]
    if value then
      if any and bytes + #value > budget then return items end
      bytes, any = bytes + #value, true
      if #value > largest then largest = #value end
    end
    items[#items + 1] = value
  end
  index = upto + 1
  group = math.max(1, math.min(most, math.floor((budget - bytes) / largest) + 1))
end
return items
",
    )
});

/// Fields one `HMGET` of a range read asks for at most.
const FIELDS_PER_HMGET: u32 = 256;

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
    taken: String,
}

impl BatchKeys {
    fn new(batch_id: &str) -> Self {
        Self {
            items: format!("sluice:{{{batch_id}}}:items"),
            failed: format!("sluice:{{{batch_id}}}:failed"),
            taken: format!("sluice:{{{batch_id}}}:taken"),
        }
    }
}

/// A `BITFIELD` that sets the taken bit of each index, with one `SET` per run of up to 64
/// consecutive indexes (`i64` -1 is 64 set bits, `u<n>` 2ⁿ-1 is n): the items of a call mostly
/// come in order, so it is a few operations, not one per item. Every other bit is left as it is.
fn set_taken_bits(key: &str, indexes: impl IntoIterator<Item = u32>) -> Cmd {
    let mut command = redis::cmd("BITFIELD");
    command.arg(key);
    for (first, bits) in bit_runs(indexes) {
        command.arg("SET");
        match bits {
            64 => command.arg("i64").arg(first).arg(-1),
            _ => command
                .arg(format!("u{bits}"))
                .arg(first)
                .arg((1u64 << bits) - 1),
        };
    }
    command
}

/// The indexes as runs of consecutive ones, `(first, length)` with lengths of 1 to 64, ascending.
fn bit_runs(indexes: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut sorted: Vec<u32> = indexes.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for index in sorted {
        match runs.last_mut() {
            Some((first, bits)) if *bits < 64 && *first + *bits == index => *bits += 1,
            _ => runs.push((index, 1)),
        }
    }
    runs
}

/// Walks one slice of the taken bitmap whose first bit is index `ranges.cursor()`. Bits are
/// numbered as `SETBIT` and `BITFIELD` number them: bit 0 is the most significant bit of byte 0.
fn scan_bitmap(slice: &[u8], ranges: &mut MissingRanges) {
    for &byte in slice {
        if !ranges.needs_more() {
            return;
        }
        let first = ranges.cursor();
        match byte {
            0xFF => ranges.taken_until(first.saturating_add(8)),
            0x00 => ranges.missing_until(first.saturating_add(8)),
            _ => {
                for bit in 0..8u32 {
                    let end = first.saturating_add(bit + 1);
                    if byte & (0x80 >> bit) != 0 {
                        ranges.taken_until(end);
                    } else {
                        ranges.missing_until(end);
                    }
                }
            }
        }
    }
}

/// Reads the taken bitmap slice by slice (`GETRANGE`), up to the byte holding bit `run_count - 1`,
/// and stops once the answer is known: `limit` ranges found, or the key ended.
struct BitmapScan {
    ranges: MissingRanges,
    slice_bytes: usize,
    /// Bytes of the bitmap that cover `0..run_count`.
    bitmap_bytes: usize,
    /// The first byte not read yet.
    offset: usize,
    /// The key ended before `offset`: every index from there on is missing.
    ended: bool,
}

impl BitmapScan {
    fn new(run_count: u32, limit: usize, slice_bytes: usize) -> Self {
        Self {
            ranges: MissingRanges::new(run_count, limit),
            slice_bytes,
            bitmap_bytes: run_count.div_ceil(8) as usize,
            offset: 0,
            ended: false,
        }
    }

    /// The first and last byte (inclusive, as `GETRANGE` takes them) of the next slice to read,
    /// if the answer needs one.
    fn next_slice(&self) -> Option<(usize, usize)> {
        let needed = !self.ended && self.offset < self.bitmap_bytes && self.ranges.needs_more();
        needed.then(|| {
            let end = (self.offset + self.slice_bytes).min(self.bitmap_bytes);
            (self.offset, end - 1)
        })
    }

    /// Takes the slice `next_slice` asked for; a shorter one means the key ends there.
    fn read(&mut self, slice: &[u8]) {
        let asked = self.slice_bytes.min(self.bitmap_bytes - self.offset);
        scan_bitmap(slice, &mut self.ranges);
        self.offset += asked;
        self.ended = slice.len() < asked;
    }

    fn finish(self) -> Vec<IndexRange> {
        self.ranges.finish()
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

impl RedisQueue {
    /// Sets the bits of indexes an earlier version stored without them (a batch streamed across an
    /// upgrade, or by older nodes during a rolling one). Every bit is set with its item, so the
    /// bitmap counts no more indexes than the hash holds, and as many when it is whole; `HLEN` is
    /// read before `BITCOUNT`, so an enqueue between the two cannot make a whole bitmap look short.
    async fn mark_indexes_stored_without_bits(
        &self,
        keys: &BatchKeys,
    ) -> Result<(), DependencyError> {
        let mut connection = self.connection.clone();
        let (stored, marked): (u64, u64) = redis::pipe()
            .cmd("HLEN")
            .arg(&keys.items)
            .cmd("BITCOUNT")
            .arg(&keys.taken)
            .query_async(&mut connection)
            .await?;
        if marked >= stored {
            return Ok(());
        }
        // Once per such batch, the cost the bitmap otherwise avoids: every stored index.
        let indexes: Vec<u32> = redis::cmd("HKEYS")
            .arg(&keys.items)
            .query_async(&mut connection)
            .await?;
        tracing::info!(
            key = %keys.items,
            stored,
            marked,
            "marking indexes stored without their taken bits"
        );
        for part in indexes.chunks(BACKFILL_BITS_PER_COMMAND) {
            let _: () = set_taken_bits(&keys.taken, part.iter().copied())
                .query_async(&mut connection)
                .await?;
        }
        Ok(())
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
        // A transaction, so an index's bit is set exactly when its HSETNX runs: a connection lost
        // before EXEC runs neither. Every key is in one slot, so Cluster sends it to one node.
        let mut stores = redis::pipe();
        stores.atomic();
        for item in items {
            stores
                .cmd("HSETNX")
                .arg(&keys.items)
                .arg(item.index)
                .arg(item.body.as_ref());
        }
        // Every item's index is taken after this call, whether this HSETNX stored it or not.
        stores
            .add_command(set_taken_bits(
                &keys.taken,
                items.iter().map(|item| item.index),
            ))
            .ignore();
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
        let mut connection = self.connection.clone();
        self.mark_indexes_stored_without_bits(&keys).await?;
        let mut scan = BitmapScan::new(run_count, limit, BITMAP_SLICE_BYTES);
        while let Some((first, last)) = scan.next_slice() {
            let slice: Vec<u8> = redis::cmd("GETRANGE")
                .arg(&keys.taken)
                .arg(first)
                .arg(last)
                .query_async(&mut connection)
                .await?;
            scan.read(&slice);
        }
        Ok(scan.finish())
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
    async fn items_in_range(
        &self,
        batch_id: &str,
        first: u32,
        last: u32,
        max_bytes: u64,
    ) -> Result<Vec<Option<Bytes>>, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let bodies: Vec<Option<Vec<u8>>> = ITEMS_WITHIN_BYTES
            .key(&keys.items)
            .arg(first)
            .arg(last)
            .arg(max_bytes)
            .arg(FIELDS_PER_HMGET)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(bodies
            .into_iter()
            .map(|body| body.map(Bytes::from))
            .collect())
    }

    async fn delete_batch(&self, batch_id: &str) -> Result<(), DependencyError> {
        let keys = BatchKeys::new(batch_id);
        // UNLINK frees a large hash off Redis's main thread.
        let _: () = redis::cmd("UNLINK")
            .arg(&keys.items)
            .arg(&keys.failed)
            .arg(&keys.taken)
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

/// The set of indexes the two-step reference has seen, in the batch's hash slot.
fn seen_key(batch_id: &str) -> String {
    format!("sluice:{{{batch_id}}}:seen")
}

#[async_trait]
impl ItemQueue for TwoStepRedisQueue {
    async fn enqueue(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Enqueued, DependencyError> {
        let keys = BatchKeys::new(batch_id);
        let seen = seen_key(batch_id);
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
    async fn items_in_range(
        &self,
        batch_id: &str,
        first: u32,
        last: u32,
        max_bytes: u64,
    ) -> Result<Vec<Option<Bytes>>, DependencyError> {
        self.0
            .items_in_range(batch_id, first, last, max_bytes)
            .await
    }

    async fn delete_batch(&self, batch_id: &str) -> Result<(), DependencyError> {
        let _: () = redis::cmd("UNLINK")
            .arg(seen_key(batch_id))
            .query_async(&mut self.0.connection.clone())
            .await?;
        self.0.delete_batch(batch_id).await
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
        for key in [&keys.items, &keys.failed, &keys.taken] {
            assert_eq!(hash_tag(key), "batch_abc");
        }
    }

    /// The bitmap `BITFIELD SET u1` builds for these indexes.
    fn bitmap(indexes: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &index in indexes {
            let byte = index as usize / 8;
            if bytes.len() <= byte {
                bytes.resize(byte + 1, 0);
            }
            bytes[byte] |= 0x80 >> (index % 8);
        }
        bytes
    }

    /// Runs a scan against `key` as Redis would answer its `GETRANGE`s, counting them.
    fn scan(
        key: &[u8],
        run_count: u32,
        limit: usize,
        slice_bytes: usize,
    ) -> (Vec<IndexRange>, usize) {
        let mut scan = BitmapScan::new(run_count, limit, slice_bytes);
        let mut reads = 0;
        while let Some((first, last)) = scan.next_slice() {
            let slice = key.get(first..key.len().min(last + 1)).unwrap_or_default();
            scan.read(slice);
            reads += 1;
        }
        (scan.finish(), reads)
    }

    /// Missing ranges the slow, obvious way.
    fn expected(taken: &[u32], run_count: u32, limit: usize) -> Vec<IndexRange> {
        let mut ranges: Vec<IndexRange> = Vec::new();
        for index in (0..run_count).filter(|index| !taken.contains(index)) {
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == index => *last = index,
                _ => ranges.push((index, index)),
            }
        }
        ranges.truncate(limit);
        ranges
    }

    /// The bitmap a `set_taken_bits` command leaves on `bitmap`, applied as Redis applies it.
    fn apply_bitfield(bitmap: &mut Vec<u8>, command: &Cmd) {
        let args: Vec<String> = command
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                _ => unreachable!("set_taken_bits has no cursor"),
            })
            .collect();
        assert_eq!(args[0], "BITFIELD");
        for op in args[2..].chunks(4) {
            assert_eq!(op[0], "SET");
            let (signed, width) = op[1].split_at(1);
            let width: u32 = width.parse().unwrap();
            let first: u32 = op[2].parse().unwrap();
            let value: u64 = match signed {
                "i" => op[3].parse::<i64>().unwrap() as u64,
                _ => op[3].parse().unwrap(),
            };
            for bit in 0..width {
                let index = first + bit;
                let set = value >> (width - 1 - bit) & 1 == 1;
                let byte = index as usize / 8;
                if bitmap.len() <= byte {
                    bitmap.resize(byte + 1, 0);
                }
                let mask = 0x80 >> (index % 8);
                if set {
                    bitmap[byte] |= mask;
                } else {
                    bitmap[byte] &= !mask;
                }
            }
        }
    }

    #[test]
    fn consecutive_indexes_take_one_operation_per_64() {
        assert_eq!(bit_runs(1000..1512).len(), 8);
        assert_eq!(bit_runs([7, 3, 5, 4, 3]), vec![(3, 3), (7, 1)]);
        assert_eq!(bit_runs(0..130), vec![(0, 64), (64, 64), (128, 2)]);
        let mut bitmap = Vec::new();
        apply_bitfield(&mut bitmap, &set_taken_bits("k", 0..130));
        assert_eq!(bitmap.len(), 17);
        assert!(bitmap[..16].iter().all(|&byte| byte == 0xFF));
        assert_eq!(bitmap[16], 0b1100_0000);
    }

    #[test]
    fn bits_are_numbered_from_the_most_significant_bit() {
        assert_eq!(bitmap(&[0, 9]), vec![0b1000_0000, 0b0100_0000]);
        let (ranges, _) = scan(&[0b1011_1111, 0b1111_1110], 16, 10, 64);
        assert_eq!(ranges, vec![(1, 1), (15, 15)]);
    }

    #[test]
    fn a_key_shorter_than_the_batch_leaves_the_rest_missing() {
        let taken: Vec<u32> = (0..20).collect();
        let (ranges, reads) = scan(&bitmap(&taken), 1000, 10, 2);
        assert_eq!(ranges, vec![(20, 999)]);
        // 3 bytes exist: the first slice is whole, the second is short and ends the scan.
        assert_eq!(reads, 2);
        assert_eq!(scan(&[], 5, 10, 4), (vec![(0, 4)], 1));
    }

    #[test]
    fn bits_past_run_count_are_ignored() {
        // Index 12 is the last; bits 13..16 of the last byte are never indexes.
        let (ranges, _) = scan(&bitmap(&[0, 1, 12]), 13, 10, 1);
        assert_eq!(ranges, vec![(2, 11)]);
        let all: Vec<u32> = (0..13).collect();
        assert_eq!(scan(&bitmap(&all), 13, 10, 1).0, vec![]);
    }

    #[test]
    fn scanning_stops_once_the_limit_is_reached() {
        // Every other index missing: the first 1000 ranges lie in the first 250 bytes.
        let taken: Vec<u32> = (0..1_000_000).filter(|index| index % 2 == 1).collect();
        let key = bitmap(&taken);
        let (ranges, reads) = scan(&key, 1_000_000, 1000, 256);
        assert_eq!(ranges.len(), 1000);
        assert_eq!(ranges[999], (1998, 1998));
        assert_eq!(reads, 1);
    }

    proptest::proptest! {
        #[test]
        fn setting_bits_sets_exactly_those_bits_and_keeps_the_others(
            before in proptest::collection::btree_set(0u32..400, 0..200),
            indexes in proptest::collection::vec(0u32..400, 0..300),
        ) {
            let before: Vec<u32> = before.into_iter().collect();
            let mut bitmap = bitmap(&before);
            apply_bitfield(&mut bitmap, &set_taken_bits("k", indexes.iter().copied()));
            let all: Vec<u32> = before.iter().chain(&indexes).copied().collect();
            let mut expected = self::bitmap(&all);
            expected.resize(bitmap.len(), 0);
            proptest::prop_assert_eq!(bitmap, expected);
        }

        #[test]
        fn any_slicing_gives_the_ranges_of_the_whole_bitmap(
            taken in proptest::collection::btree_set(0u32..300, 0..300),
            run_count in 1u32..300,
            limit in 1usize..20,
            slice_bytes in 1usize..50,
        ) {
            let taken: Vec<u32> = taken.into_iter().filter(|&index| index < run_count).collect();
            let (ranges, _) = scan(&bitmap(&taken), run_count, limit, slice_bytes);
            proptest::prop_assert_eq!(ranges, expected(&taken, run_count, limit));
        }
    }
}
