//! The event journal as both SQL adapters implement it: the same statements but for the insert,
//! one `INSERT … SELECT FROM UNNEST(…)` on Postgres and multi-row `VALUES` on SQLite.
//!
//! Sequence numbers come from the batch's row of `batch_event_seqs`, bumped by a guarded upsert in
//! the transaction that inserts the rows. On Postgres the upsert holds that row's lock until the
//! commit, so two nodes writing events of one batch allocate one after the other, and a reader
//! that sees a later commit sees every earlier one: the journal never shows a gap, even for a
//! moment. The counter has a table of its own so that the writer never waits for the batch row,
//! which run completions and the materialiser lock. SQLite has one writer.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite, Transaction};

use super::{PostgresStore, SqliteStore, is_unique_violation};
use crate::dependency::DependencyError;
use crate::events::{AppendError, EventJournal, EventKind, JournalEnd, NewEvent, StoredEvent};
use crate::store::Millis;

/// Allocates `$2` sequence numbers (answering the last), unless the journal is closed; `$3`
/// closes it (the allocation holds a terminal event). The first allocation creates the counter.
const ALLOCATE: &str = "INSERT INTO batch_event_seqs (batch_id, last_seq, closed) \
     VALUES ($1, $2, $3) ON CONFLICT (batch_id) DO UPDATE \
     SET last_seq = batch_event_seqs.last_seq + EXCLUDED.last_seq, closed = EXCLUDED.closed \
     WHERE NOT batch_event_seqs.closed RETURNING last_seq";

/// Moves a counter found behind its journal past the journal's last row.
const REALIGN: &str = "UPDATE batch_event_seqs SET last_seq = \
     (SELECT COALESCE(MAX(seq), 0) FROM batch_events WHERE batch_id = $1) \
     WHERE batch_id = $1 \
     AND last_seq < (SELECT COALESCE(MAX(seq), 0) FROM batch_events WHERE batch_id = $1)";

const INSERT: &str =
    "INSERT INTO batch_events (batch_id, seq, kind, run_status, terminal, data, created_at) ";

/// Rows per SQLite statement: 7 values each, under SQLite's 32 766 binds.
const SQLITE_ROWS_PER_STATEMENT: usize = 4_000;

#[derive(sqlx::FromRow)]
struct EventRow {
    batch_id: String,
    seq: i64,
    kind: String,
    run_status: Option<String>,
    terminal: bool,
    data: String,
}

impl From<EventRow> for StoredEvent {
    fn from(row: EventRow) -> Self {
        Self {
            batch_id: row.batch_id,
            seq: row.seq as u64,
            kind: EventKind::parse(&row.kind),
            run_status: row.run_status,
            terminal: row.terminal,
            data: row.data,
        }
    }
}

fn stored_at(event: &NewEvent, seq: i64) -> StoredEvent {
    StoredEvent {
        batch_id: event.batch_id.to_string(),
        seq: seq as u64,
        kind: event.kind,
        run_status: event.run_status.map(|status| status.as_str().to_owned()),
        terminal: event.terminal,
        data: event.data.clone(),
    }
}

fn insert_error(error: sqlx::Error) -> AppendError {
    if is_unique_violation(&error) {
        AppendError::Conflict
    } else {
        AppendError::Dependency(error.into())
    }
}

/// Each batch's events in the order they came, cut after a terminal event (nothing follows it).
fn by_batch(events: &[NewEvent]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (position, event) in events.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(batch, _)| *batch == &*event.batch_id)
        {
            Some((_, positions)) => positions.push(position),
            None => groups.push((&event.batch_id, vec![position])),
        }
    }
    for (_, positions) in &mut groups {
        if let Some(terminal) = positions.iter().position(|&p| events[p].terminal) {
            positions.truncate(terminal + 1);
        }
    }
    groups
}

macro_rules! impl_sql_event_journal {
    ($store:ty, $db:ty, $begin:expr) => {
        impl $store {
            /// Allocates the sequence numbers of `events` in `transaction`.
            async fn allocate(
                transaction: &mut Transaction<'_, $db>,
                events: &[NewEvent],
            ) -> Result<Vec<Option<StoredEvent>>, DependencyError> {
                let mut stored: Vec<Option<StoredEvent>> = vec![None; events.len()];
                for (batch_id, positions) in by_batch(events) {
                    let closes = positions.last().is_some_and(|&p| events[p].terminal);
                    let last: Option<i64> = sqlx::query_scalar(ALLOCATE)
                        .bind(batch_id)
                        .bind(positions.len() as i64)
                        .bind(closes)
                        .fetch_optional(&mut **transaction)
                        .await?;
                    let Some(last) = last else { continue };
                    let first = last - positions.len() as i64 + 1;
                    for (offset, &position) in positions.iter().enumerate() {
                        stored[position] = Some(stored_at(&events[position], first + offset as i64));
                    }
                }
                Ok(stored)
            }
        }

        #[async_trait]
        impl EventJournal for $store {
            async fn append(
                &self,
                events: &[NewEvent],
                now: Millis,
            ) -> Result<Vec<Option<StoredEvent>>, AppendError> {
                let mut transaction = self.pool.begin_with($begin).await.map_err(DependencyError::from)?;
                let stored = Self::allocate(&mut transaction, events).await?;
                let rows: Vec<&StoredEvent> = stored.iter().flatten().collect();
                if !rows.is_empty() {
                    Self::insert_events(&mut transaction, &rows, now).await?;
                }
                transaction.commit().await.map_err(DependencyError::from)?;
                Ok(stored)
            }

            async fn append_one(
                &self,
                event: &NewEvent,
                now: Millis,
            ) -> Result<Option<StoredEvent>, DependencyError> {
                for attempt in 0..2 {
                    let mut transaction = self.pool.begin_with($begin).await?;
                    let stored = Self::allocate(&mut transaction, std::slice::from_ref(event)).await?;
                    let Some(Some(row)) = stored.into_iter().next() else {
                        return Ok(None);
                    };
                    match Self::insert_events(&mut transaction, &[&row], now).await {
                        Ok(()) => {
                            transaction.commit().await?;
                            return Ok(Some(row));
                        }
                        Err(AppendError::Conflict) if attempt == 0 => {
                            drop(transaction);
                            tracing::warn!(batch = %event.batch_id, seq = row.seq, "a batch's event counter was behind its journal; moving it past the last event");
                            sqlx::query(REALIGN).bind(&*event.batch_id).execute(&self.pool).await?;
                        }
                        Err(AppendError::Conflict) => break,
                        Err(AppendError::Dependency(error)) => return Err(error),
                    }
                }
                Err(DependencyError::failed(
                    crate::dependency::Dependency::Database,
                    "an event's sequence number stays taken",
                ))
            }

            async fn read(
                &self,
                batch_id: &str,
                after: u64,
                limit: u32,
            ) -> Result<Vec<StoredEvent>, DependencyError> {
                let rows: Vec<EventRow> = sqlx::query_as(
                    "SELECT batch_id, seq, kind, run_status, terminal, data FROM batch_events \
                     WHERE batch_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(batch_id)
                .bind(after.min(i64::MAX as u64) as i64)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                Ok(rows.into_iter().map(StoredEvent::from).collect())
            }

            async fn end(&self, batch_id: &str) -> Result<JournalEnd, DependencyError> {
                let row: Option<(i64, bool)> = sqlx::query_as(
                    "SELECT last_seq, closed FROM batch_event_seqs WHERE batch_id = $1",
                )
                .bind(batch_id)
                .fetch_optional(self.reader())
                .await?;
                Ok(row.map_or_else(JournalEnd::default, |(last_seq, closed)| JournalEnd {
                    last_seq: last_seq as u64,
                    closed,
                }))
            }
        }
    };
}

impl_sql_event_journal!(PostgresStore, Postgres, "BEGIN");
impl_sql_event_journal!(SqliteStore, Sqlite, "BEGIN IMMEDIATE");

impl PostgresStore {
    /// One statement for every row, each column bound as an array.
    async fn insert_events(
        transaction: &mut Transaction<'_, Postgres>,
        rows: &[&StoredEvent],
        now: Millis,
    ) -> Result<(), AppendError> {
        let batch_ids: Vec<&str> = rows.iter().map(|row| row.batch_id.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|row| row.seq as i64).collect();
        let kinds: Vec<&str> = rows.iter().map(|row| row.kind.as_str()).collect();
        let statuses: Vec<Option<&str>> =
            rows.iter().map(|row| row.run_status.as_deref()).collect();
        let terminals: Vec<bool> = rows.iter().map(|row| row.terminal).collect();
        let data: Vec<&str> = rows.iter().map(|row| row.data.as_str()).collect();
        sqlx::query(&format!(
            "{INSERT} SELECT t.batch_id, t.seq, t.kind, t.run_status, t.terminal, t.data, $7 \
             FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::bool[], $6::text[]) \
             AS t(batch_id, seq, kind, run_status, terminal, data)"
        ))
        .bind(batch_ids)
        .bind(seqs)
        .bind(kinds)
        .bind(statuses)
        .bind(terminals)
        .bind(data)
        .bind(now)
        .execute(&mut **transaction)
        .await
        .map_err(insert_error)?;
        Ok(())
    }
}

impl SqliteStore {
    /// Multi-row `VALUES`: one statement unless a flush holds more rows than SQLite binds.
    async fn insert_events(
        transaction: &mut Transaction<'_, Sqlite>,
        rows: &[&StoredEvent],
        now: Millis,
    ) -> Result<(), AppendError> {
        for part in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(INSERT);
            insert.push_values(part, |mut values, row| {
                values
                    .push_bind(row.batch_id.as_str())
                    .push_bind(row.seq as i64)
                    .push_bind(row.kind.as_str())
                    .push_bind(row.run_status.as_deref())
                    .push_bind(row.terminal)
                    .push_bind(row.data.as_str())
                    .push_bind(now);
            });
            insert
                .build()
                .execute(&mut **transaction)
                .await
                .map_err(insert_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    fn event(batch: &str, terminal: bool) -> NewEvent {
        NewEvent {
            batch_id: Arc::from(batch),
            kind: EventKind::Batch,
            run_status: None,
            terminal,
            data: "{}".into(),
            queued_at: Instant::now(),
        }
    }

    #[test]
    fn a_flush_is_grouped_by_batch_and_cut_after_a_terminal_event() {
        let events = [
            event("a", false),
            event("b", false),
            event("a", true),
            event("a", false),
            event("b", false),
        ];
        assert_eq!(
            by_batch(&events),
            vec![("a", vec![0, 2]), ("b", vec![1, 4])]
        );
    }
}
