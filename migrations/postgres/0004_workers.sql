-- Workers: claiming reads a batch's pending runs of a task in index order; the lease sweep reads
-- claimed runs by lease expiry. Claims go through the tenant's batches (fair across them), so the
-- tenant-wide index of pending runs is replaced.
DROP INDEX runs_claimable;
CREATE INDEX runs_pending ON runs (batch_id, task, idx) WHERE status = 'PENDING';
CREATE INDEX runs_leased ON runs (lease_expires_at) WHERE status = 'CLAIMED';
CREATE INDEX batches_processing ON batches (tenant) WHERE status = 'PROCESSING';
