-- The batch event journal: what a batch's event stream replays. seq is the batch's event
-- sequence number, gap-free from 1, allocated from batches.event_seq in the transaction that
-- writes the rows. The batch event that made the batch final is the journal's last row
-- (batches.events_closed is set with it and no row is allocated after it).
CREATE TABLE batch_events (
    batch_id   TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    -- 'batch' or 'run'.
    kind       TEXT NOT NULL,
    -- A run event's run status, so ?runs=failed filters without reading data.
    run_status TEXT,
    -- The batch event that made the batch final.
    terminal   BOOLEAN NOT NULL DEFAULT FALSE,
    -- The event's JSON.
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (batch_id, seq)
);

ALTER TABLE batches ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN events_closed BOOLEAN NOT NULL DEFAULT FALSE;
