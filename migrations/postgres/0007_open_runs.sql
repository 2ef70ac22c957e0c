-- A batch counts its runs that are not final (PENDING or CLAIMED): runs written as PENDING add to
-- it, runs turning COMPLETED or FAILED take from it, in the transaction that writes them and with
-- the batch row locked. A batch whose runs are all written turns final when the count reaches
-- zero, without reading its runs (an index range of a million runs' superseded statuses).
ALTER TABLE batches ADD COLUMN open_runs BIGINT NOT NULL DEFAULT 0;
UPDATE batches SET open_runs = (
    SELECT COUNT(*) FROM runs WHERE runs.batch_id = batches.id AND runs.status IN ('PENDING', 'CLAIMED')
) WHERE status = 'PROCESSING';
