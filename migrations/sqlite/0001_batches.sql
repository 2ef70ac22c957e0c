-- Batches created by Phase 1 and the items enqueued into them when Redis is not configured.
CREATE TABLE batches (
    id                          TEXT PRIMARY KEY,
    tenant                      TEXT NOT NULL,
    run_count                   INTEGER NOT NULL CHECK (run_count > 0),
    status                      TEXT NOT NULL DEFAULT 'PENDING',
    sealed                      BOOLEAN NOT NULL DEFAULT FALSE,
    idempotency_key             TEXT,
    task_identifiers            TEXT NOT NULL DEFAULT '[]',
    parent_run_id               TEXT,
    resume_parent_on_completion BOOLEAN NOT NULL DEFAULT FALSE,
    created_at                  BIGINT NOT NULL,
    sealed_at                   BIGINT,
    completed_at                BIGINT,
    -- NULL keys never conflict, so batches without a key are never deduplicated.
    UNIQUE (tenant, idempotency_key)
);

CREATE INDEX batches_pending_by_age ON batches (created_at) WHERE status = 'PENDING';

CREATE TABLE batch_items (
    batch_id TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    failed   BOOLEAN NOT NULL,
    body     BLOB NOT NULL,
    PRIMARY KEY (batch_id, idx)
);
