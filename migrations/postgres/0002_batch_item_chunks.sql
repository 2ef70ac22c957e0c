-- How many indexes of each run of 4096 indexes of a batch are taken (chunk = idx / 4096), kept in
-- the transaction that stores the items, so progress and missing ranges need not read every item.
-- The chunk size is `CHUNK_INDEXES` in src/queue/adapters/sql.rs.
CREATE TABLE batch_item_chunks (
    batch_id TEXT NOT NULL,
    chunk    INTEGER NOT NULL,
    taken    INTEGER NOT NULL,
    failed   INTEGER NOT NULL,
    PRIMARY KEY (batch_id, chunk)
);

-- Items stored before the counters existed. Nodes of an earlier version must be stopped before this
-- runs: items they store afterwards would not be counted.
INSERT INTO batch_item_chunks (batch_id, chunk, taken, failed)
SELECT batch_id, idx / 4096, COUNT(*), COUNT(*) FILTER (WHERE failed)
FROM batch_items
GROUP BY batch_id, idx / 4096;
