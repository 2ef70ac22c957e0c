-- Maintenance jobs: retention (final batches past the horizon are deleted, runs first, in bounded
-- statements) and tenant stats (per tenant per UTC day).

-- Retention finds final batches by the time they turned final; an ABORTED batch whose
-- completed_at was never set is aged from its creation (plus the seal timeout).
CREATE INDEX batches_final_by_completion ON batches (completed_at)
    WHERE status IN ('COMPLETED', 'PARTIAL_FAILED', 'ABORTED', 'CANCELED');
CREATE INDEX batches_aborted_by_age ON batches (created_at)
    WHERE status = 'ABORTED' AND completed_at IS NULL;
-- A node deleting a batch holds it through retainer (a token of its own) until
-- retention_lease_until, so two nodes never delete the same batch at once; an expired hold (a node
-- that died mid-way) is taken over.
ALTER TABLE batches ADD COLUMN retainer TEXT;
ALTER TABLE batches ADD COLUMN retention_lease_until BIGINT;

-- Stats read the batches created and the runs that turned final in the days they refresh. A final
-- run is never updated again, so its updated_at is when it turned final.
CREATE INDEX batches_by_creation ON batches (created_at);
CREATE INDEX runs_final_by_time ON runs (updated_at) WHERE status IN ('COMPLETED', 'FAILED');

-- Per tenant per UTC day (days since the Unix epoch): batches created, items of those batches
-- that were sealed, runs completed and runs failed that day. Refreshed in place by the stats job:
-- rows are upserted only where a count changed, and pruned only where no data backs them.
CREATE TABLE tenant_stats (
    tenant         TEXT NOT NULL,
    day            INTEGER NOT NULL,
    batches        BIGINT NOT NULL,
    items          BIGINT NOT NULL,
    runs_completed BIGINT NOT NULL,
    runs_failed    BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant, day)
);
