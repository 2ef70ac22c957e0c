-- The batch event journal: what a batch's event stream replays. seq is the batch's event
-- sequence number, gap-free from 1, allocated from batch_event_seqs in the transaction that
-- writes the rows. The batch event that made the batch final is the journal's last row
-- (batch_event_seqs.closed is set with it and no number is allocated after it).
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

-- Each batch's last allocated sequence number. A table of its own, not a column of batches: the
-- allocation locks its row until the journal's commit, and the batch row is locked by run
-- completions and the materialiser, which the journal writer must not wait for.
CREATE TABLE batch_event_seqs (
    batch_id TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    closed   BOOLEAN NOT NULL DEFAULT FALSE
);
