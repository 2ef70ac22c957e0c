-- Runs: what a sealed batch becomes, one per index. A run's id is derived from (batch_id, idx)
-- (see src/runs/id.rs), so the key is the pair and no second unique index is kept.
CREATE TABLE runs (
    batch_id         TEXT NOT NULL,
    idx              INTEGER NOT NULL,
    tenant           TEXT NOT NULL,
    -- Empty for a failed item whose line gave no task.
    task             TEXT NOT NULL,
    -- The payload's JSON bytes as sent; for payload_type 'application/store' the JSON string of
    -- its object storage key. NULL when the item had no payload.
    payload          BLOB,
    payload_type     TEXT NOT NULL,
    options          TEXT,
    status           TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    lease_id         TEXT,
    lease_expires_at BIGINT,
    -- A retried run is not claimed before this time.
    available_at     BIGINT NOT NULL DEFAULT 0,
    output           TEXT,
    error_code       TEXT,
    error_message    TEXT,
    -- The body line a failed item came from.
    error_line       BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    claimed_at       BIGINT,
    completed_at     BIGINT,
    PRIMARY KEY (batch_id, idx)
);

-- Listing a batch's runs by status in index order, counting them by status, canceling.
CREATE INDEX runs_by_batch_status ON runs (batch_id, status, idx);
-- Claiming: a tenant's pending runs of a task.
CREATE INDEX runs_claimable ON runs (tenant, task, available_at) WHERE status = 'PENDING';

-- The materialiser's checkpoint: runs 0..materialised_count are written. A pass holds the batch
-- through materialiser (a token of its own) until materialiser_lease_until; an expired claim is
-- taken over. items_deleted_at is set once the batch's queue items are deleted, which ends its
-- materialising.
ALTER TABLE batches ADD COLUMN materialised_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN materialiser TEXT;
ALTER TABLE batches ADD COLUMN materialiser_lease_until BIGINT;
ALTER TABLE batches ADD COLUMN items_deleted_at BIGINT;

CREATE INDEX batches_to_materialise ON batches (sealed_at) WHERE sealed AND items_deleted_at IS NULL;
CREATE INDEX batches_by_tenant_newest ON batches (tenant, created_at DESC, id DESC);
