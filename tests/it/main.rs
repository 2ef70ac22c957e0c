//! Integration tests: the real server on 127.0.0.1:0, a real HTTP client, and every case against
//! both modes (embedded; Postgres + Redis + S3), the ingest cases also on a Redis Cluster.

mod batches;
mod cluster;
mod dashboard;
mod events;
mod ingest;
mod jobs;
mod limits;
mod linger;
mod missing;
mod observability;
mod outage;
mod runs;
mod send;
mod shutdown;
mod support;
mod workers;
