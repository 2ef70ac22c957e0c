//! Private instances of the services for fault tests: stopped and restarted by the test that owns
//! them, on their own ports, never the shared ones.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::required_env;

/// How long a service or server may take to come up before the test fails.
pub(super) const START_LIMIT: Duration = Duration::from_secs(30);

/// A port free right now, for a service that must come back on the same address after a stop.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// Polls `done` every 50 ms until it holds; fails the test, naming `what`, after `limit`.
pub async fn poll_until<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what}: still not so after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal (`KILL`, `INT`, `QUIT`, …) to a process; false if it is already gone.
fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A log file for a child's stdout and stderr, kept next to its data so a failure can show it.
fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    (file.try_clone().unwrap().into(), file.into())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until `ready` holds for a child just started; fails with its log if it exits or stays
/// unready.
async fn wait_ready<F, Fut>(what: &str, child: &mut Child, log: &Path, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + START_LIMIT;
    while !ready().await {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before it was ready:\n{}",
                log_tail(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {START_LIMIT:?}:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a child with `signal` and waits for it to exit.
async fn stop_child(child: &mut Option<Child>, signal: &str) {
    let Some(mut running) = child.take() else {
        return;
    };
    if let Some(pid) = running.id() {
        send_signal(pid, signal);
    }
    tokio::time::timeout(START_LIMIT, running.wait())
        .await
        .expect("a stopped service exits")
        .expect("wait for a stopped service");
}

/// A Redis server of this test's own, persisting every write (AOF, fsync always) so a restart
/// keeps what it acknowledged, as a production Redis would.
pub struct PrivateRedis {
    port: u16,
    process: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            process: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server as a crash would.
    pub async fn kill(&mut self) {
        stop_child(&mut self.process, "KILL").await;
    }

    /// Stops the process without closing its connections (SIGSTOP): it accepts, but never
    /// answers, like a server stuck or cut off by the network.
    pub fn freeze(&self) {
        assert!(send_signal(self.pid(), "STOP"), "SIGSTOP Redis");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        assert!(send_signal(self.pid(), "CONT"), "SIGCONT Redis");
    }

    fn pid(&self) -> u32 {
        let process = self.process.as_ref().expect("Redis is running");
        process.id().expect("Redis has not exited")
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self) {
        let log = self.dir.path().join("redis.log");
        let (stdout, stderr) = log_file(&log);
        let mut child = Command::new(required_env("SLUICE_TEST_REDIS_SERVER"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        let url = self.url();
        wait_ready("private Redis", &mut child, &log, || redis_answers(&url)).await;
        self.process = Some(child);
    }
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .is_ok()
}

/// A Redis Cluster of this test's own: masters on ports of their own, no replicas, each
/// persisting every write (AOF, fsync always). A master killed and started again on its port, data
/// and `nodes.conf` rejoins owning its slots and what it acknowledged.
pub struct PrivateCluster {
    masters: Vec<ClusterMaster>,
    node_timeout: Duration,
}

struct ClusterMaster {
    port: u16,
    /// The cluster bus port, chosen too: the default (port + 10000) may be taken or out of range.
    bus_port: u16,
    process: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// Starts `count` masters with the 16384 slots split evenly between them. `node_timeout` is
    /// how long a master may be unreachable before the others mark it failed and the Cluster, with
    /// no replica to promote, stops serving; a restarted master is taken back two node timeouts
    /// after it was marked failed.
    pub async fn start(count: usize, node_timeout: Duration) -> Self {
        // Held open together, so all the ports differ.
        let listeners: Vec<std::net::TcpListener> = (0..2 * count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|listener| listener.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let mut cluster = Self {
            masters: ports
                .chunks(2)
                .map(|pair| ClusterMaster {
                    port: pair[0],
                    bus_port: pair[1],
                    process: None,
                    dir: tempfile::tempdir().expect("temp dir"),
                })
                .collect(),
            node_timeout,
        };
        for index in 0..count {
            cluster.start_master(index).await;
        }
        // What `redis-cli --cluster create` does: slots, a distinct config epoch each, then meet.
        let per_master = 16_384 / count;
        for (index, master) in cluster.masters.iter().enumerate() {
            let first = index * per_master;
            let last = if index + 1 == count {
                16_383
            } else {
                first + per_master - 1
            };
            let _: () = node_query(
                master.port,
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(first)
                    .arg(last),
            )
            .await
            .expect("CLUSTER ADDSLOTSRANGE");
            let _: () = node_query(
                master.port,
                redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(index + 1),
            )
            .await
            .expect("CLUSTER SET-CONFIG-EPOCH");
        }
        let first = cluster.masters[0].port;
        for master in &cluster.masters[1..] {
            let _: () = node_query(
                first,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(master.port)
                    .arg(master.bus_port),
            )
            .await
            .expect("CLUSTER MEET");
        }
        cluster.wait_until_ok().await;
        cluster
    }

    /// The server's `REDIS_URL`: one seed node; the client finds the other masters through it.
    pub fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.masters[0].port)
    }

    /// The master (its index) serving the hash slot of `key`.
    pub async fn master_of(&self, key: &str) -> usize {
        let slot: u16 = node_query(
            self.masters[0].port,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
        .expect("CLUSTER KEYSLOT");
        for (index, master) in self.masters.iter().enumerate() {
            let nodes: String = node_query(master.port, redis::cmd("CLUSTER").arg("NODES"))
                .await
                .expect("CLUSTER NODES");
            // `id address flags master ping pong epoch link slot-range…`, on the node's own line.
            let own = nodes
                .lines()
                .find(|line| line.contains("myself"))
                .expect("own line");
            let serves = own.split_whitespace().skip(8).any(|range| {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                (first.parse().unwrap()..=last.parse().unwrap()).contains(&slot)
            });
            if serves {
                return index;
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// `cluster_state` (`ok` or `fail`) as a running master sees it.
    pub async fn state_seen_by(&self, index: usize) -> String {
        let info: String = node_query(self.masters[index].port, redis::cmd("CLUSTER").arg("INFO"))
            .await
            .expect("CLUSTER INFO");
        let state = info
            .lines()
            .find_map(|line| line.strip_prefix("cluster_state:"));
        state.expect("cluster_state").to_owned()
    }

    /// Kills a master as a crash would.
    pub async fn kill(&mut self, index: usize) {
        stop_child(&mut self.masters[index].process, "KILL").await;
    }

    /// Starts a master again on its port, data and `nodes.conf`, and waits until every master
    /// reports the Cluster healthy.
    pub async fn restart(&mut self, index: usize) {
        self.start_master(index).await;
        self.wait_until_ok().await;
    }

    async fn start_master(&mut self, index: usize) {
        let master = &mut self.masters[index];
        let log = master.dir.path().join("redis.log");
        let (stdout, stderr) = log_file(&log);
        let mut child = Command::new(required_env("SLUICE_TEST_REDIS_SERVER"))
            .args(["--port", &master.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-port", &master.bus_port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args([
                "--cluster-node-timeout",
                &self.node_timeout.as_millis().to_string(),
            ])
            .arg("--dir")
            .arg(master.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        let url = format!("redis://127.0.0.1:{}", master.port);
        wait_ready("private Redis Cluster master", &mut child, &log, || {
            redis_answers(&url)
        })
        .await;
        master.process = Some(child);
    }

    async fn wait_until_ok(&self) {
        let known = format!("cluster_known_nodes:{}", self.masters.len());
        poll_until(
            "every master reports cluster_state:ok",
            START_LIMIT,
            || async {
                for master in &self.masters {
                    let info: redis::RedisResult<String> =
                        node_query(master.port, redis::cmd("CLUSTER").arg("INFO")).await;
                    let Ok(info) = info else { return false };
                    let ok = info.lines().any(|line| line == "cluster_state:ok");
                    if !ok || !info.lines().any(|line| line == known) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }
}

/// One command to one node, as a plain (not Cluster) client.
async fn node_query<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    command.query_async(&mut connection).await
}

/// An s3s-fs S3 server of this test's own, with one bucket, `PrivateS3::BUCKET`.
pub struct PrivateS3 {
    port: u16,
    process: Option<Child>,
    root: tempfile::TempDir,
}

impl PrivateS3 {
    pub const BUCKET: &str = "outage";

    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        // s3s-fs serves each directory of its root as a bucket.
        std::fs::create_dir(root.path().join(Self::BUCKET)).unwrap();
        let mut s3 = Self {
            port: free_port(),
            process: None,
            root,
        };
        s3.restart().await;
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server as a crash would; stored objects stay in its root.
    pub async fn kill(&mut self) {
        stop_child(&mut self.process, "KILL").await;
    }

    /// Starts the server again on the same port and root.
    pub async fn restart(&mut self) {
        let log = self.root.path().with_extension("log");
        let (stdout, stderr) = log_file(&log);
        let mut child = Command::new(required_env("SLUICE_TEST_S3S_FS"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &required_env("AWS_ACCESS_KEY_ID")])
            .args(["--secret-key", &required_env("AWS_SECRET_ACCESS_KEY")])
            .arg(self.root.path())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start s3s-fs");
        let endpoint = self.endpoint();
        let client = reqwest::Client::new();
        wait_ready("private S3", &mut child, &log, || {
            let request = client.get(&endpoint).send();
            async move { request.await.is_ok() }
        })
        .await;
        self.process = Some(child);
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        std::fs::remove_file(self.root.path().with_extension("log")).ok();
    }
}

/// How a Postgres server is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresStop {
    /// `pg_ctl stop` (fast): sessions are ended with an error, then the server shuts down.
    Fast,
    /// `pg_ctl stop -m immediate`: every process quits at once, as in a crash; the next start
    /// recovers from the WAL.
    Immediate,
}

/// A Postgres cluster of this test's own (initdb in a temp dir), trusting local TCP connections.
///
/// Postgres refuses to run as root: when the tests run as root, `SLUICE_TEST_POSTGRES_RUN_AS`
/// (`uid:gid`, set by `scripts/test`) names the account its processes run as.
pub struct PrivatePostgres {
    port: u16,
    run_as: Option<(u32, u32)>,
    process: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let run_as = std::env::var("SLUICE_TEST_POSTGRES_RUN_AS")
            .ok()
            .filter(|value| !value.is_empty())
            .map(|value| {
                let (uid, gid) = value.split_once(':').expect("uid:gid");
                (uid.parse().expect("uid"), gid.parse().expect("gid"))
            });
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let mut postgres = Self {
            port: free_port(),
            run_as,
            process: None,
            dir,
        };
        let log = postgres.log_path();
        let (stdout, stderr) = log_file(&log);
        let status = postgres
            .command("initdb")
            .arg("-D")
            .arg(postgres.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
            ])
            .args(["--locale=C", "--no-instructions"])
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .await
            .expect("run initdb");
        assert!(status.success(), "initdb failed:\n{}", log_tail(&log));
        postgres.restart().await;
        postgres
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A Postgres program, run as the account Postgres runs as.
    fn command(&self, program: &str) -> Command {
        let mut command =
            Command::new(Path::new(&required_env("SLUICE_TEST_POSTGRES_BIN")).join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    pub async fn stop(&mut self, how: PostgresStop) {
        let signal = match how {
            PostgresStop::Fast => "INT",
            PostgresStop::Immediate => "QUIT",
        };
        stop_child(&mut self.process, signal).await;
    }

    /// Starts the server again on the same port and data (recovering after an immediate stop).
    pub async fn restart(&mut self) {
        let log = self.log_path();
        let (stdout, stderr) = log_file(&log);
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start postgres");
        let url = self.url();
        wait_ready("private Postgres", &mut child, &log, || {
            let url = url.clone();
            async move {
                use sqlx::Connection;
                sqlx::PgConnection::connect(&url).await.is_ok()
            }
        })
        .await;
        self.process = Some(child);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // An immediate stop ends the server's own child processes too (a SIGKILL would leave them).
        let Some(pid) = self.process.as_ref().and_then(Child::id) else {
            return;
        };
        send_signal(pid, "QUIT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.data_dir().join("postmaster.pid").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
