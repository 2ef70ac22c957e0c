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
