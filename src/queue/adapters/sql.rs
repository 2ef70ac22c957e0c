//! The item queue in the SQL store: one `INSERT … ON CONFLICT DO NOTHING` per call marks and stores
//! each index, and the same transaction adds what it stored to per-chunk counters
//! (`batch_item_chunks`, one row per 4096 indexes of a batch).
//!
//! `progress` sums the counters (at most runCount / 4096 rows) and never reads an item. `missing`
//! reads the counters, then the runs of taken indexes of incomplete chunks only, one chunk per
//! statement, until it has `limit` ranges; its worst case (a gap in every chunk, fewer than `limit`
//! gaps in all) still has the database read every index, but never more than 4096 per statement.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use crate::dependency::DependencyError;
use crate::queue::ranges::MissingRanges;
use crate::queue::{Enqueued, IndexRange, ItemQueue, Progress, QueuedItem};
use crate::store::adapters::{PostgresStore, SqliteStore};

/// Indexes per counter row. Migration 0002 backfilled the counters with this size: changing it
/// needs a migration that recounts them.
const CHUNK_INDEXES: u32 = 4096;
/// Most rows one statement of [`ItemQueue::delete_batch`] deletes.
const DELETE_ROWS_PER_STATEMENT: i64 = 10_000;

/// Which items of a call were newly stored, given the indexes the insert returned. When a call
/// holds one index twice, the first item with it is the one stored.
fn newly_stored(items: &[QueuedItem], inserted: impl IntoIterator<Item = i32>) -> Vec<bool> {
    let mut inserted: HashSet<u32> = inserted.into_iter().map(|index| index as u32).collect();
    items
        .iter()
        .map(|item| inserted.remove(&item.index))
        .collect()
}

/// What a chunk's counter says about its indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Every index taken.
    Full,
    /// No index taken (or no counter row).
    Empty,
    /// Some indexes taken: only reading them says which.
    Partial,
}

/// The chunks of `0..run_count` in order, each with its indexes and what its counter says, from
/// the counter rows (`(chunk, taken)`, ascending; a chunk without a row has nothing taken).
fn chunk_states(
    counters: &[(i32, i32)],
    run_count: u32,
) -> impl Iterator<Item = (Range<u32>, ChunkState)> + '_ {
    let mut counters = counters.iter().peekable();
    (0..run_count.div_ceil(CHUNK_INDEXES)).map(move |chunk| {
        let start = chunk * CHUNK_INDEXES;
        let indexes = start..run_count.min(start + CHUNK_INDEXES);
        while counters.next_if(|(row, _)| (*row as u32) < chunk).is_some() {}
        let taken = match counters.next_if(|(row, _)| *row as u32 == chunk) {
            Some(&(_, taken)) => taken as u32,
            None => 0,
        };
        let state = match taken {
            0 => ChunkState::Empty,
            taken if taken >= indexes.len() as u32 => ChunkState::Full,
            _ => ChunkState::Partial,
        };
        (indexes, state)
    })
}

/// Counter increments for the items a call stored (`(index, failed)`): `(chunk, taken, failed)`,
/// ascending by chunk, the order rows are locked in.
fn chunk_increments(inserted: impl IntoIterator<Item = (i32, bool)>) -> Vec<(i32, i32, i32)> {
    let mut chunks: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
    for (index, failed) in inserted {
        let counts = chunks.entry(index / CHUNK_INDEXES as i32).or_default();
        counts.0 += 1;
        counts.1 += i32::from(failed);
    }
    chunks
        .into_iter()
        .map(|(chunk, (taken, failed))| (chunk, taken, failed))
        .collect()
}

const CHUNK_COUNTERS: &str = "SELECT chunk, taken FROM batch_item_chunks \
     WHERE batch_id = $1 AND chunk < $2 ORDER BY chunk";
/// The runs of consecutive taken indexes in `$2..$3` as `(first, last)`, ascending: indexes of one
/// run share `idx - ROW_NUMBER()`. A row per run, not per index, as rows are what costs.
const TAKEN_RUNS: &str = "SELECT MIN(idx), MAX(idx) FROM ( \
     SELECT idx, idx - ROW_NUMBER() OVER (ORDER BY idx) AS run FROM batch_items \
     WHERE batch_id = $1 AND idx >= $2 AND idx < $3 \
     ) AS taken GROUP BY run ORDER BY MIN(idx)";
const PROGRESS: &str = "SELECT COALESCE(SUM(taken), 0), COALESCE(SUM(failed), 0) \
     FROM batch_item_chunks WHERE batch_id = $1";
const ITEM: &str = "SELECT body FROM batch_items WHERE batch_id = $1 AND idx = $2";
/// Adds a call's increments to the counters; the rows to insert come before it.
const ADD_TO_COUNTERS: &str = " ON CONFLICT (batch_id, chunk) DO UPDATE \
     SET taken = batch_item_chunks.taken + excluded.taken, \
     failed = batch_item_chunks.failed + excluded.failed";
/// Postgres: the items of a range in index order while their bytes stay within `$4` (the first
/// always comes), each with the index of the row after it in the range. The lengths are read from
/// the rows' headers, so an item left out is never loaded or sent.
const PG_ITEMS_WITHIN: &str = "SELECT idx, body, next_idx FROM (\
     SELECT idx, body, LENGTH(body) AS size, SUM(LENGTH(body)) OVER (ORDER BY idx) AS upto, \
     LEAD(idx) OVER (ORDER BY idx) AS next_idx \
     FROM batch_items WHERE batch_id = $1 AND idx BETWEEN $2 AND $3) AS items \
     WHERE upto <= $4 OR upto = size ORDER BY idx";

/// SQLite: the items of a range in index order; the reader stops stepping through them once it has
/// enough (SQLite reads a row only when asked for it).
const SQLITE_ITEMS_IN_RANGE: &str = "SELECT idx, body FROM batch_items \
     WHERE batch_id = $1 AND idx BETWEEN $2 AND $3 ORDER BY idx";

/// The bodies of `first..=end` in index order from the rows a range read returned (ascending).
fn in_index_order(
    rows: impl IntoIterator<Item = (i32, Vec<u8>)>,
    first: u32,
    end: u32,
) -> Vec<Option<Bytes>> {
    let mut bodies = vec![None; (end - first + 1) as usize];
    for (index, body) in rows {
        bodies[(index as u32 - first) as usize] = Some(Bytes::from(body));
    }
    bodies
}

/// Both stores implement the queue the same way but for the insert; the read side is the same SQL
/// (sqlx's SQLite driver binds `$N` by number).
macro_rules! impl_sql_item_queue {
    ($store:ty) => {
        #[async_trait]
        impl ItemQueue for $store {
            async fn enqueue(
                &self,
                batch_id: &str,
                items: &[QueuedItem],
            ) -> Result<Enqueued, DependencyError> {
                Ok(Enqueued {
                    stored: self.insert_items(batch_id, items).await?,
                    // `progress` reads the counters when the stream ends; reading them after
                    // every call would cost a statement each.
                    taken_after: None,
                })
            }

            async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError> {
                let (enqueued, failed): (i64, i64) = sqlx::query_as(PROGRESS)
                    .bind(batch_id)
                    .fetch_one(self.reader())
                    .await?;
                Ok(Progress {
                    enqueued: enqueued as u64,
                    failed: failed as u64,
                })
            }

            async fn missing(
                &self,
                batch_id: &str,
                run_count: u32,
                limit: usize,
            ) -> Result<Vec<IndexRange>, DependencyError> {
                let counters: Vec<(i32, i32)> = sqlx::query_as(CHUNK_COUNTERS)
                    .bind(batch_id)
                    .bind(run_count.div_ceil(CHUNK_INDEXES) as i32)
                    .fetch_all(self.reader())
                    .await?;
                let mut ranges = MissingRanges::new(run_count, limit);
                for (indexes, state) in chunk_states(&counters, run_count) {
                    if !ranges.needs_more() {
                        break;
                    }
                    match state {
                        ChunkState::Full => ranges.taken_until(indexes.end),
                        ChunkState::Empty => ranges.missing_until(indexes.end),
                        ChunkState::Partial => {
                            let runs: Vec<(i32, i32)> = sqlx::query_as(TAKEN_RUNS)
                                .bind(batch_id)
                                .bind(indexes.start as i32)
                                .bind(indexes.end as i32)
                                .fetch_all(self.reader())
                                .await?;
                            for (first, last) in runs {
                                ranges.missing_until(first as u32);
                                ranges.taken_until(last as u32 + 1);
                            }
                            ranges.missing_until(indexes.end);
                        }
                    }
                }
                Ok(ranges.finish())
            }

            async fn item(
                &self,
                batch_id: &str,
                index: u32,
            ) -> Result<Option<Bytes>, DependencyError> {
                let body: Option<Vec<u8>> = sqlx::query_scalar(ITEM)
                    .bind(batch_id)
                    .bind(index as i32)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(body.map(Bytes::from))
            }

            async fn ping(&self) -> Result<(), DependencyError> {
                crate::store::BatchStore::ping(self).await
            }

            async fn items_in_range(
                &self,
                batch_id: &str,
                first: u32,
                last: u32,
                max_bytes: u64,
            ) -> Result<Vec<Option<Bytes>>, DependencyError> {
                self.items_within(batch_id, first, last, max_bytes).await
            }

            async fn delete_batch(&self, batch_id: &str) -> Result<(), DependencyError> {
                // In bounded statements, each committing on its own, so deleting a large batch
                // (one never sealed keeps its items until retention) never holds the writer or
                // a huge transaction for long.
                for delete in [
                    "DELETE FROM batch_items WHERE batch_id = $1 AND idx IN \
                     (SELECT idx FROM batch_items WHERE batch_id = $1 ORDER BY idx LIMIT $2)",
                    "DELETE FROM batch_item_chunks WHERE batch_id = $1 AND chunk IN \
                     (SELECT chunk FROM batch_item_chunks WHERE batch_id = $1 ORDER BY chunk \
                     LIMIT $2)",
                ] {
                    loop {
                        let deleted = sqlx::query(delete)
                            .bind(batch_id)
                            .bind(DELETE_ROWS_PER_STATEMENT)
                            .execute(&self.pool)
                            .await?
                            .rows_affected();
                        if deleted < DELETE_ROWS_PER_STATEMENT as u64 {
                            break;
                        }
                    }
                }
                Ok(())
            }
        }
    };
}

impl_sql_item_queue!(PostgresStore);
impl_sql_item_queue!(SqliteStore);

impl PostgresStore {
    /// [`ItemQueue::items_in_range`]: the bound is applied by the database, so what is left out
    /// is never sent.
    async fn items_within(
        &self,
        batch_id: &str,
        first: u32,
        last: u32,
        max_bytes: u64,
    ) -> Result<Vec<Option<Bytes>>, DependencyError> {
        let rows: Vec<(i32, Vec<u8>, Option<i32>)> = sqlx::query_as(PG_ITEMS_WITHIN)
            .bind(batch_id)
            .bind(first as i64)
            .bind(last as i64)
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        // Rows after the last one returned were left out: the read ends before the next.
        let end = match rows.last() {
            Some(&(_, _, Some(next))) => next as u32 - 1,
            _ => last,
        };
        Ok(in_index_order(
            rows.into_iter().map(|(index, body, _)| (index, body)),
            first,
            end,
        ))
    }

    async fn insert_items(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Vec<bool>, DependencyError> {
        let indexes: Vec<i32> = items.iter().map(|item| item.index as i32).collect();
        let failed: Vec<bool> = items.iter().map(|item| item.failed).collect();
        let bodies: Vec<&[u8]> = items.iter().map(|item| item.body.as_ref()).collect();
        // One statement, so one transaction: the counters always match the rows. All item rows are
        // inserted before any counter row is locked, and counter rows are locked in chunk order, so
        // two calls on one batch cannot deadlock on the counters.
        let inserted: Vec<i32> = sqlx::query_scalar(&format!(
            "WITH inserted AS ( \
                 INSERT INTO batch_items (batch_id, idx, failed, body) \
                 SELECT $1, t.idx, t.failed, t.body \
                 FROM UNNEST($2::int4[], $3::bool[], $4::bytea[]) AS t(idx, failed, body) \
                 ON CONFLICT (batch_id, idx) DO NOTHING RETURNING idx, failed \
             ), counted AS ( \
                 INSERT INTO batch_item_chunks (batch_id, chunk, taken, failed) \
                 SELECT $1, chunk, COUNT(*), COUNT(*) FILTER (WHERE failed) \
                 FROM (SELECT idx / $5 AS chunk, failed FROM inserted) AS stored \
                 GROUP BY chunk ORDER BY chunk{ADD_TO_COUNTERS} \
             ) \
             SELECT idx FROM inserted"
        ))
        .bind(batch_id)
        .bind(&indexes)
        .bind(&failed)
        .bind(&bodies)
        .bind(CHUNK_INDEXES as i32)
        .fetch_all(&self.pool)
        .await?;
        Ok(newly_stored(items, inserted))
    }
}

/// Rows per multi-row insert, largest first: a call's new items are written with as few
/// statements as these sizes allow, and only these statement texts are ever prepared (a text per
/// row count would miss the connection's statement cache).
const SQLITE_ROWS_PER_INSERT: [usize; 3] = [256, 16, 1];

/// The insert of `rows` items, for each size of [`SQLITE_ROWS_PER_INSERT`].
static SQLITE_INSERTS: std::sync::LazyLock<Vec<(usize, String)>> = std::sync::LazyLock::new(|| {
    SQLITE_ROWS_PER_INSERT
        .iter()
        .map(|&rows| {
            // Anonymous `?` parameters: SQLite looks a named one (`$N`) up in a list at every
            // bind, which makes binding a statement of many parameters quadratic.
            let sql = format!(
                "INSERT INTO batch_items (batch_id, idx, failed, body) VALUES {}",
                vec!["(?, ?, ?, ?)"; rows].join(", ")
            );
            (rows, sql)
        })
        .collect()
});

/// Which items of a call to store, given the indexes of the call's range already taken: each
/// index not taken, the first item with it.
fn items_to_store(items: &[QueuedItem], taken: impl IntoIterator<Item = i32>) -> Vec<bool> {
    let mut taken: HashSet<u32> = taken.into_iter().map(|index| index as u32).collect();
    items.iter().map(|item| taken.insert(item.index)).collect()
}

impl SqliteStore {
    /// [`ItemQueue::items_in_range`]: rows are stepped through until the next would pass the
    /// bound; dropping the stream then resets the statement. The driver reads up to its row
    /// channel (50 rows) ahead of what is taken, so that many items may be read past the bound
    /// and dropped.
    async fn items_within(
        &self,
        batch_id: &str,
        first: u32,
        last: u32,
        max_bytes: u64,
    ) -> Result<Vec<Option<Bytes>>, DependencyError> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query_as::<_, (i32, Vec<u8>)>(SQLITE_ITEMS_IN_RANGE)
            .bind(batch_id)
            .bind(first as i64)
            .bind(last as i64)
            .fetch(&self.pool);
        let (mut kept, mut bytes, mut end) = (Vec::new(), 0u64, last);
        while let Some((index, body)) = rows.try_next().await? {
            let size = body.len() as u64;
            if !kept.is_empty() && bytes + size > max_bytes {
                end = index as u32 - 1;
                break;
            }
            bytes += size;
            kept.push((index, body));
        }
        Ok(in_index_order(kept, first, end))
    }

    /// On the one writer connection, in one transaction: read which of the call's indexes are
    /// taken, insert the others, add them to the counters. No other writer can come between the
    /// read and the insert (there is one writer connection, held for the whole transaction), so
    /// the insert never meets a taken index, and rows do not come back one by one as `RETURNING`
    /// would send them.
    async fn insert_items(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Vec<bool>, DependencyError> {
        let (Some(low), Some(high)) = (
            items.iter().map(|item| item.index).min(),
            items.iter().map(|item| item.index).max(),
        ) else {
            return Ok(Vec::new());
        };
        let mut transaction = self.pool.begin().await?;
        let taken: Vec<i32> = sqlx::query_scalar(
            "SELECT idx FROM batch_items WHERE batch_id = $1 AND idx >= $2 AND idx <= $3",
        )
        .bind(batch_id)
        .bind(low as i32)
        .bind(high as i32)
        .fetch_all(&mut *transaction)
        .await?;
        let stored = items_to_store(items, taken);
        let new: Vec<&QueuedItem> = items
            .iter()
            .zip(&stored)
            .filter_map(|(item, &new)| new.then_some(item))
            .collect();
        let mut rest = new.as_slice();
        for (rows, sql) in SQLITE_INSERTS.iter() {
            while rest.len() >= *rows {
                let (part, after) = rest.split_at(*rows);
                let mut insert = sqlx::query(sql);
                for item in part {
                    insert = insert
                        .bind(batch_id)
                        .bind(item.index as i32)
                        .bind(item.failed)
                        .bind(item.body.as_ref());
                }
                insert.execute(&mut *transaction).await?;
                rest = after;
            }
        }
        let increments = chunk_increments(new.iter().map(|item| (item.index as i32, item.failed)));
        if !increments.is_empty() {
            let mut count = sqlx::QueryBuilder::new(
                "INSERT INTO batch_item_chunks (batch_id, chunk, taken, failed) ",
            );
            count.push_values(&increments, |mut row, &(chunk, taken, failed)| {
                row.push_bind(batch_id)
                    .push_bind(chunk)
                    .push_bind(taken)
                    .push_bind(failed);
            });
            count.push(ADD_TO_COUNTERS);
            count.build().execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(counters: &[(i32, i32)], run_count: u32) -> Vec<(Range<u32>, ChunkState)> {
        chunk_states(counters, run_count).collect()
    }

    #[test]
    fn only_chunks_with_some_indexes_taken_need_reading() {
        use ChunkState::*;
        // 3 chunks, the last one short (2 indexes); chunk 1 has no counter row.
        let run_count = 2 * CHUNK_INDEXES + 2;
        assert_eq!(
            states(&[(0, 4096), (2, 1)], run_count),
            vec![(0..4096, Full), (4096..8192, Empty), (8192..8194, Partial),]
        );
        assert_eq!(
            states(&[(0, 17), (2, 2)], run_count),
            vec![(0..4096, Partial), (4096..8192, Empty), (8192..8194, Full),]
        );
        assert_eq!(states(&[], 1), vec![(0..1, Empty)]);
    }

    #[test]
    fn counter_rows_past_run_count_are_skipped() {
        use ChunkState::*;
        assert_eq!(states(&[(0, 10), (5, 1)], 10), vec![(0..10, Full)]);
    }

    #[test]
    fn increments_are_per_chunk_in_chunk_order() {
        let inserted = [
            (9000, false),
            (3, true),
            (4095, false),
            (4096, true),
            (8191, true),
        ];
        assert_eq!(
            chunk_increments(inserted),
            vec![(0, 2, 1), (1, 2, 2), (2, 1, 0)]
        );
        assert_eq!(chunk_increments([]), vec![]);
    }

    #[test]
    fn migrations_backfill_with_the_chunk_size_the_code_uses() {
        for migration in [
            include_str!("../../../migrations/postgres/0002_batch_item_chunks.sql"),
            include_str!("../../../migrations/sqlite/0002_batch_item_chunks.sql"),
        ] {
            assert!(migration.contains(&format!("idx / {CHUNK_INDEXES}")));
        }
    }

    #[test]
    fn untaken_indexes_are_stored_once_each() {
        let item = |index| QueuedItem {
            index,
            failed: false,
            body: Bytes::new(),
        };
        let items = [item(1), item(2), item(1), item(3)];
        assert_eq!(items_to_store(&items, [3]), vec![true, true, false, false]);
    }

    #[test]
    fn sqlite_inserts_bind_four_values_per_row() {
        for (rows, sql) in SQLITE_INSERTS.iter() {
            assert_eq!(sql.matches("(?, ?, ?, ?)").count(), *rows, "{sql}");
        }
    }

    #[test]
    fn first_of_two_items_with_one_index_is_the_stored_one() {
        let item = |index| QueuedItem {
            index,
            failed: false,
            body: Bytes::new(),
        };
        let items = [item(1), item(2), item(1)];
        assert_eq!(newly_stored(&items, [1]), vec![true, false, false]);
    }
}
