//! Starts a real Sluice server on 127.0.0.1:0 in either mode and talks HTTP to it.
//!
//! Production mode needs Postgres, Redis and an S3 server; their addresses come from the
//! environment `scripts/test` sets up. A missing service fails the test loudly: it is never
//! skipped.
//!
//! For fault tests it also runs private Redis, Postgres and S3 servers (started, stopped and
//! restarted by the test that owns them, on ports of their own) and the server binary as a child
//! process that a test can kill.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::{Body, StatusCode};
use serde_json::{Value, json};
use sluice::app::{App, serve};
use sluice::config::Config;
use sluice::payloads::PayloadStore;
use sluice::queue::ItemQueue;
use sluice::store::runs::{Run, RunStore};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "key-of-acme";
pub const OTHER_KEY: &str = "key-of-globex";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite, the SQL queue, payload files: what `cargo run` gives.
    Embedded,
    /// Postgres, Redis, S3.
    Production,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `scripts/test`, which starts Postgres, Redis and S3")
    })
}

/// HTTP access to a running server: its base URL and the requests the tests make.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

pub struct TestServer {
    api: Api,
    pub queue: Arc<dyn ItemQueue>,
    pub payloads: Arc<dyn PayloadStore>,
    pub runs: Arc<dyn RunStore>,
    /// Where `/metrics` is served, when the configuration asked for it.
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    _data_dir: tempfile::TempDir,
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, |_| {}).await
    }

    pub async fn start_with(mode: Mode, adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::embedded(data_dir.path().to_path_buf());
        config.api_keys = Some(format!("acme:{KEY},globex:{OTHER_KEY}"));
        if mode == Mode::Production {
            config.database_url = Some(required_env("SLUICE_TEST_DATABASE_URL"));
            config.database_max_connections = 4;
            config.redis_url = Some(required_env("SLUICE_TEST_REDIS_URL"));
            config.s3_bucket = Some(required_env("SLUICE_TEST_S3_BUCKET"));
            config.s3_endpoint = Some(required_env("SLUICE_TEST_S3_ENDPOINT"));
            config.s3_force_path_style = true;
        }
        adjust(&mut config);
        let app = App::build(config).await.unwrap_or_else(|error| {
            panic!(
                "{mode:?} server could not start (is every service of `scripts/test` up?): {error}"
            )
        });
        if mode == Mode::Production {
            app.payloads
                .ping()
                .await
                .expect("the S3 bucket is reachable");
        }
        let metrics_addr = app
            .metrics_listener
            .as_ref()
            .map(|listener| listener.local_addr().unwrap());
        let queue = app.queue.clone();
        let payloads = app.payloads.clone();
        let runs = app.runs.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(app, listener, shutdown.clone()));
        Self {
            api: Api::new(base),
            queue,
            payloads,
            runs,
            metrics_addr,
            shutdown,
            _data_dir: data_dir,
        }
    }

    /// Starts the server's shutdown, as SIGTERM does.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Waits until at least `count` items of the batch are enqueued (10 s at most).
    pub async fn wait_for_enqueued(&self, id: &str, count: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let progress = self.queue.progress(id).await.unwrap();
            if progress.enqueued >= count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never reached {count} items: {progress:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The item stored at an index, as JSON: from the queue, or from its run once the batch is
    /// materialised (its queue items are then deleted).
    pub async fn stored_item(&self, id: &str, index: u32) -> Option<Value> {
        accepted_item(self.queue.as_ref(), self.runs.as_ref(), id, index).await
    }

    /// The object the payload store holds at `key`, as JSON.
    pub async fn stored_payload(&self, key: &str) -> Option<Value> {
        let object = self.payloads.get(key).await.unwrap()?;
        Some(serde_json::from_slice(&object).unwrap())
    }
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.create_as(KEY, body).await
    }

    pub async fn create_as(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url("/api/v3/batches"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }

    /// Creates a batch of `run_count` items and returns its id.
    pub async fn new_batch(&self, run_count: u32) -> String {
        let (status, body) = self.create(json!({ "runCount": run_count })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub fn items_request(&self, id: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(&format!("/api/v3/batches/{id}/items")))
            .bearer_auth(KEY)
            .header("content-type", "application/x-ndjson")
    }

    /// Streams `chunks` as a chunked body (no Content-Length), one HTTP chunk each.
    pub async fn stream_chunks(&self, id: &str, chunks: Vec<Vec<u8>>) -> (StatusCode, Value) {
        let body = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        );
        let response = self
            .items_request(id)
            .body(Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }

    pub async fn stream(&self, id: &str, body: impl Into<Vec<u8>>) -> (StatusCode, Value) {
        self.stream_chunks(id, vec![body.into()]).await
    }

    pub async fn batch(&self, id: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(&format!("/api/v3/batches/{id}")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }
}

pub async fn into_parts(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{status}: body is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// The tenant `KEY` belongs to.
pub const TENANT: &str = "acme";

/// The item accepted at an index, in its stored shape (`{task, payload?, payloadType, options?}`
/// or `{error, line}`): read from the queue while the batch is not materialised, else rebuilt from
/// its run (the queue items are deleted only after every run is committed).
pub async fn accepted_item(
    queue: &dyn ItemQueue,
    runs: &dyn RunStore,
    id: &str,
    index: u32,
) -> Option<Value> {
    if let Some(body) = queue.item(id, index).await.unwrap() {
        return Some(serde_json::from_slice(&body).unwrap());
    }
    let run = runs.run(TENANT, id, index).await.unwrap()?;
    Some(item_of_run(&run))
}

fn item_of_run(run: &Run) -> Value {
    let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap();
    if run.attempt == 0 {
        let error = run
            .error
            .as_ref()
            .expect("a failed item's run has its error");
        return json!({
            "error": { "code": error.code, "message": error.message },
            "line": error.line,
        });
    }
    let mut item = json!({ "task": run.task, "payloadType": run.payload_type });
    if let Some(payload) = &run.payload {
        item["payload"] = json(payload);
    }
    if let Some(options) = &run.options {
        item["options"] = json(options.as_bytes());
    }
    item
}

/// NDJSON lines for indexes, each `{"index":i,"task":"t","payload":{"n":i}}`.
pub fn ndjson(indexes: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut body = Vec::new();
    for index in indexes {
        body.extend_from_slice(
            format!("{{\"index\":{index},\"task\":\"t\",\"payload\":{{\"n\":{index}}}}}\n")
                .as_bytes(),
        );
    }
    body
}

/// Splits a body into chunks at every `step` bytes.
pub fn chunked(body: &[u8], step: usize) -> Vec<Vec<u8>> {
    body.chunks(step).map(<[u8]>::to_vec).collect()
}

/// A stream of chunks that sends `first` and then never ends: for checks that the server answers
/// without reading the whole body.
pub fn endless_body(first: Vec<u8>) -> Body {
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    Body::wrap_stream(first.chain(futures::stream::pending()))
}

/// A chunked body fed through a channel: the test decides when each chunk goes and when the body
/// ends (dropping the sender). Until then the server waits for more.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, Body) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let chunks = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
    (sender, Body::wrap_stream(chunks))
}

// ---------------------------------------------------------------------------------------------
// Fault tests: private instances of the services (stopped and restarted by the test that owns
// them, on their own ports, never the shared ones), and the server binary as a child process.
// ---------------------------------------------------------------------------------------------

/// How long a service or server may take to come up before the test fails.
const START_LIMIT: Duration = Duration::from_secs(30);

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

/// `sluice serve` run as a child process, so a test can kill it with SIGKILL and start it again
/// on the same backends.
pub struct ServerProcess {
    api: Api,
    process: Child,
    /// Every line the server wrote to stdout so far.
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::ops::Deref for ServerProcess {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ServerProcess {
    /// Starts the binary with only `env` (plus PATH and the AWS credentials of the test
    /// environment) and waits until it listens; it picks its own port.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.env_clear();
        for name in [
            "PATH",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_EC2_METADATA_DISABLED",
        ] {
            if let Ok(value) = std::env::var(name) {
                command.env(name, value);
            }
        }
        command
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut process = command.spawn().expect("start the sluice binary");
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let address = tokio::time::timeout(START_LIMIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let address = listening_address(&line);
                log.lock().unwrap().push(line);
                if let Some(address) = address {
                    return address;
                }
            }
            panic!(
                "the server exited before listening:\n{}",
                log.lock().unwrap().join("\n")
            );
        })
        .await
        .expect("the server listens");
        // Keep reading its log, so the pipe never fills and blocks it.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            api: Api::new(format!("http://{address}")),
            process,
            log,
        }
    }

    /// The server's log lines, once one of them satisfies `found`.
    pub async fn log_until(&self, found: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        poll_until("the log line", Duration::from_secs(10), || {
            lines = self.log.lock().unwrap().clone();
            let seen = lines.iter().any(|line| found(line));
            async move { seen }
        })
        .await;
        lines
    }

    /// The process id, to read its memory use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.process.id().expect("the server is running")
    }

    /// SIGKILL: no shutdown, no flush, nothing the process held in memory survives.
    pub async fn kill(mut self) {
        self.process.start_kill().expect("SIGKILL the server");
        self.process.wait().await.expect("the killed server exits");
    }
}

/// The address in the server's `Sluice listening address=…` log line.
fn listening_address(line: &str) -> Option<String> {
    if !line.contains("Sluice listening") {
        return None;
    }
    let rest = &line[line.find("address=")? + "address=".len()..];
    Some(rest.split_whitespace().next()?.to_owned())
}
