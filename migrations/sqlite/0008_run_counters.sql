-- A batch counts its final runs by status beside open_runs (PENDING or CLAIMED), kept the same
-- way: in the transaction that writes or changes the runs, with the batch row locked. A batch's
-- counts are then read from its row (claimed runs are counted from their index: as many as are
-- leased), not from an index range as long as the batch.
ALTER TABLE batches ADD COLUMN completed_runs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN failed_runs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN canceled_runs BIGINT NOT NULL DEFAULT 0;
UPDATE batches SET
    open_runs = (SELECT COUNT(*) FROM runs
                 WHERE runs.batch_id = batches.id AND runs.status IN ('PENDING', 'CLAIMED')),
    completed_runs = (SELECT COUNT(*) FROM runs
                      WHERE runs.batch_id = batches.id AND runs.status = 'COMPLETED'),
    failed_runs = (SELECT COUNT(*) FROM runs
                   WHERE runs.batch_id = batches.id AND runs.status = 'FAILED'),
    canceled_runs = (SELECT COUNT(*) FROM runs
                     WHERE runs.batch_id = batches.id AND runs.status = 'CANCELED')
WHERE materialised_count > 0;

-- Every run is written PENDING, into the primary key and one more index only: the pending runs
-- in index order (claims, a page of pending runs, cancel). Runs in the other statuses are found by
-- status in index order as before (a page by status, claimed runs counted).
DROP INDEX runs_by_batch_status;
CREATE INDEX runs_by_batch_status ON runs (batch_id, status, idx) WHERE status <> 'PENDING';
DROP INDEX runs_pending;
CREATE INDEX runs_pending ON runs (batch_id, idx) WHERE status = 'PENDING';
