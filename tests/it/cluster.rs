//! Redis Cluster: a master killed while the server uses the Cluster.
//!
//! The master serving a batch's hash slot killed in the middle of a stream: the stream must
//! answer `503` within a bounded time, and once the master is back (restarted on its port, data
//! and `nodes.conf`, so it rejoins owning its slots) the client's re-stream must seal the batch
//! with every index once: the server's Cluster connection reconnects by itself. The steps and
//! checks are those of the standalone outages (`outage.rs`).
//!
//! The ingest, sealing and missing-range tests run against the shared test Cluster too
//! (`Mode::ProductionCluster`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::outage::{
    ACCEPTED, DuringOutage, Noticed, Outage, UNAVAILABLE, health, stop_mid_stream_then_restream,
};
use crate::support::{Mode, PrivateCluster, TestServer, poll_until};

/// Short, so the outage reaches the state where the Cluster itself has declared the master
/// failed, and a restarted master is taken back within seconds.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// The master serving the streamed batch's slot, killed with SIGKILL; no replica takes over.
struct MasterOfTheBatch {
    cluster: PrivateCluster,
    killed: Option<usize>,
}

impl Outage for MasterOfTheBatch {
    async fn stop(&mut self, batch_id: &str) {
        // Every key of a batch is in the slot of its `{batch id}` hash tag.
        let master = self
            .cluster
            .master_of(&format!("sluice:{{{batch_id}}}:items"))
            .await;
        // Master 0 is the server's only seed node: the harder case, as the client cannot go back
        // to its seed to rediscover the Cluster while it is down.
        eprintln!("cluster: killing master {master} of 3 (0 is the seed node)");
        self.cluster.kill(master).await;
        self.killed = Some(master);
    }

    async fn restart(&mut self) {
        let master = self.killed.take().expect("a master was killed");
        self.cluster.restart(master).await;
    }

    fn name(&self) -> String {
        "the Redis Cluster master of the batch's slot (SIGKILL)".into()
    }
}

#[tokio::test]
async fn the_master_of_a_batch_killed_mid_stream_answers_503_and_a_restream_seals_the_batch() {
    let cluster = PrivateCluster::start(3, NODE_TIMEOUT).await;
    let url = cluster.url();
    let server = TestServer::start_with(Mode::ProductionCluster, |config| {
        config.redis_url = Some(url);
    })
    .await;
    // Phase 1 needs only Postgres; a read and a stream need the batch's slot, and /healthz every
    // master.
    let expected = DuringOutage {
        create: ACCEPTED,
        read: UNAVAILABLE,
        health: UNAVAILABLE,
        stream: UNAVAILABLE,
    };
    let mut outage = MasterOfTheBatch {
        cluster,
        killed: None,
    };
    stop_mid_stream_then_restream(&server, &mut outage, Noticed::MidStream, expected).await;
}

/// Before the other masters declare a dead master failed (`cluster-node-timeout`, 15 s by
/// default), the Cluster still says `cluster_state:ok`: /healthz must see the master is gone by
/// itself, and say so until it is back.
#[tokio::test]
async fn healthz_reports_a_dead_master_before_the_cluster_declares_it_failed() {
    // Long enough that the Cluster never declares the master failed during the test.
    let mut cluster = PrivateCluster::start(3, Duration::from_secs(120)).await;
    let url = cluster.url();
    let server = TestServer::start_with(Mode::ProductionCluster, |config| {
        config.redis_url = Some(url);
    })
    .await;
    assert_eq!(health(&server).await, StatusCode::OK);
    // A batch whose keys the master about to die serves.
    let mut id = server.new_batch(1).await;
    while cluster.master_of(&format!("sluice:{{{id}}}:items")).await != 1 {
        id = server.new_batch(1).await;
    }

    cluster.kill(1).await;
    let killed = Instant::now();
    poll_until("/healthz answers 503", WAIT_LIMIT, || async {
        health(&server).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let noticed_after = killed.elapsed();
    // A read of that batch is redirected to the dead master: the client refreshes its slot map
    // and drops its connection to it, so a PING to every master no longer reaches that one.
    let (status, body) = server.batch(&id).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    for _ in 0..5 {
        assert_eq!(health(&server).await, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.state_seen_by(0).await,
        "ok",
        "the Cluster has not noticed"
    );

    cluster.restart(1).await;
    let restarted = Instant::now();
    poll_until("/healthz answers 200 again", WAIT_LIMIT, || async {
        health(&server).await == StatusCode::OK
    })
    .await;
    eprintln!(
        "cluster: /healthz answered 503 {noticed_after:.2?} after a master was killed, while the \
         Cluster still said ok; 200 again {:.2?} after its restart",
        restarted.elapsed()
    );
}
