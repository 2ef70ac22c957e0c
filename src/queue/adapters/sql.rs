//! The item queue in the SQL store: one `INSERT … ON CONFLICT DO NOTHING` per call marks and stores
//! each index in the same statement.

use std::collections::HashSet;

use async_trait::async_trait;
use bytes::Bytes;

use crate::dependency::DependencyError;
use crate::queue::{Enqueued, IndexRange, ItemQueue, Progress, QueuedItem};
use crate::store::adapters::{PostgresStore, SqliteStore};

/// SQLite binds at most 32 766 values per statement; 4 per item.
const SQLITE_ITEMS_PER_STATEMENT: usize = 4_000;

/// Which items of a call were newly stored, given the indexes the insert returned. When a call
/// holds one index twice, the first item with it is the one stored.
fn newly_stored(items: &[QueuedItem], inserted: impl IntoIterator<Item = i32>) -> Vec<bool> {
    let mut inserted: HashSet<u32> = inserted.into_iter().map(|index| index as u32).collect();
    items
        .iter()
        .map(|item| inserted.remove(&item.index))
        .collect()
}

/// Missing ranges from the rows that end each run of present indexes (`next` is the first present
/// index after the gap, `None` after the last run) and the first present index.
fn ranges_from_run_ends(
    first: Option<i32>,
    run_ends: Vec<(i32, Option<i32>)>,
    run_count: u32,
    limit: usize,
) -> Vec<IndexRange> {
    let Some(first) = first else {
        return vec![(0, run_count - 1)];
    };
    let mut ranges = Vec::new();
    if first > 0 {
        ranges.push((0, first as u32 - 1));
    }
    for (end, next) in run_ends {
        let after = end as u32 + 1;
        match next {
            Some(next) => ranges.push((after, next as u32 - 1)),
            None if after < run_count => ranges.push((after, run_count - 1)),
            None => {}
        }
    }
    ranges.truncate(limit);
    ranges
}

const RUN_ENDS: &str = "SELECT idx, next_idx FROM ( \
     SELECT idx, LEAD(idx) OVER (ORDER BY idx) AS next_idx FROM batch_items WHERE batch_id = $1 \
     ) runs WHERE next_idx IS NULL OR next_idx > idx + 1 ORDER BY idx LIMIT $2";
const FIRST_INDEX: &str = "SELECT MIN(idx) FROM batch_items WHERE batch_id = $1";
const PROGRESS: &str = "SELECT COUNT(*), COALESCE(SUM(CASE WHEN failed THEN 1 ELSE 0 END), 0) \
     FROM batch_items WHERE batch_id = $1";
const ITEM: &str = "SELECT body FROM batch_items WHERE batch_id = $1 AND idx = $2";
const ITEMS_IN_RANGE: &str = "SELECT idx, body FROM batch_items \
     WHERE batch_id = $1 AND idx BETWEEN $2 AND $3 ORDER BY idx";

/// The bodies of `first..=last` in index order from the rows a range read returned (ascending).
fn in_index_order(rows: Vec<(i32, Vec<u8>)>, first: u32, last: u32) -> Vec<Option<Bytes>> {
    let mut bodies = vec![None; (last - first + 1) as usize];
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
                    // Counting would cost a scan of the batch's rows on every call.
                    taken_after: None,
                })
            }

            async fn progress(&self, batch_id: &str) -> Result<Progress, DependencyError> {
                let (enqueued, failed): (i64, i64) = sqlx::query_as(PROGRESS)
                    .bind(batch_id)
                    .fetch_one(&self.pool)
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
                let first: Option<i32> = sqlx::query_scalar(FIRST_INDEX)
                    .bind(batch_id)
                    .fetch_one(&self.pool)
                    .await?;
                let run_ends: Vec<(i32, Option<i32>)> = sqlx::query_as(RUN_ENDS)
                    .bind(batch_id)
                    .bind(limit as i64 + 1)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(ranges_from_run_ends(first, run_ends, run_count, limit))
            }

            async fn item(
                &self,
                batch_id: &str,
                index: u32,
            ) -> Result<Option<Bytes>, DependencyError> {
                let body: Option<Vec<u8>> = sqlx::query_scalar(ITEM)
                    .bind(batch_id)
                    .bind(index as i32)
                    .fetch_optional(&self.pool)
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
            ) -> Result<Vec<Option<Bytes>>, DependencyError> {
                let rows: Vec<(i32, Vec<u8>)> = sqlx::query_as(ITEMS_IN_RANGE)
                    .bind(batch_id)
                    .bind(first as i64)
                    .bind(last as i64)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(in_index_order(rows, first, last))
            }

            async fn delete_batch(&self, batch_id: &str) -> Result<(), DependencyError> {
                sqlx::query("DELETE FROM batch_items WHERE batch_id = $1")
                    .bind(batch_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

impl_sql_item_queue!(PostgresStore);
impl_sql_item_queue!(SqliteStore);

impl PostgresStore {
    async fn insert_items(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Vec<bool>, DependencyError> {
        let indexes: Vec<i32> = items.iter().map(|item| item.index as i32).collect();
        let failed: Vec<bool> = items.iter().map(|item| item.failed).collect();
        let bodies: Vec<&[u8]> = items.iter().map(|item| item.body.as_ref()).collect();
        let inserted: Vec<i32> = sqlx::query_scalar(
            "INSERT INTO batch_items (batch_id, idx, failed, body) \
             SELECT $1, t.idx, t.failed, t.body \
             FROM UNNEST($2::int4[], $3::bool[], $4::bytea[]) AS t(idx, failed, body) \
             ON CONFLICT (batch_id, idx) DO NOTHING RETURNING idx",
        )
        .bind(batch_id)
        .bind(&indexes)
        .bind(&failed)
        .bind(&bodies)
        .fetch_all(&self.pool)
        .await?;
        Ok(newly_stored(items, inserted))
    }
}

impl SqliteStore {
    async fn insert_items(
        &self,
        batch_id: &str,
        items: &[QueuedItem],
    ) -> Result<Vec<bool>, DependencyError> {
        let mut inserted = Vec::with_capacity(items.len());
        for chunk in items.chunks(SQLITE_ITEMS_PER_STATEMENT) {
            let mut insert =
                sqlx::QueryBuilder::new("INSERT INTO batch_items (batch_id, idx, failed, body) ");
            insert.push_values(chunk, |mut row, item| {
                row.push_bind(batch_id)
                    .push_bind(item.index as i32)
                    .push_bind(item.failed)
                    .push_bind(item.body.as_ref());
            });
            insert.push(" ON CONFLICT (batch_id, idx) DO NOTHING RETURNING idx");
            let rows: Vec<i32> = insert.build_query_scalar().fetch_all(&self.pool).await?;
            inserted.extend(rows);
        }
        Ok(newly_stored(items, inserted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ends_become_missing_ranges() {
        assert_eq!(ranges_from_run_ends(None, vec![], 5, 10), vec![(0, 4)]);
        let ends = vec![(2, Some(5)), (6, None)];
        assert_eq!(
            ranges_from_run_ends(Some(1), ends, 10, 10),
            vec![(0, 0), (3, 4), (7, 9)]
        );
        assert_eq!(
            ranges_from_run_ends(Some(0), vec![(9, None)], 10, 10),
            vec![]
        );
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
