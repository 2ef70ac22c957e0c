//! The server in this test's process, on 127.0.0.1:0, and the HTTP requests the tests make.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::{Body, StatusCode};
use rstest_reuse::template;
use serde_json::{Value, json};
use sluice::app::{App, serve};
use sluice::config::Config;
use sluice::payloads::PayloadStore;
use sluice::queue::ItemQueue;
use sluice::store::retention::RetentionStore;
use sluice::store::runs::{Run, RunStore};
use sluice::store::stats::StatsStore;
use tokio_util::sync::CancellationToken;

use super::required_env;

pub const KEY: &str = "key-of-acme";
pub const OTHER_KEY: &str = "key-of-globex";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite, the SQL queue, payload files: what `cargo run` gives.
    Embedded,
    /// Postgres, Redis, S3.
    Production,
    /// Postgres, a Redis Cluster of three masters (reached through one seed node), S3.
    ProductionCluster,
}

impl Mode {
    /// Where the `REDIS_URL` of this mode comes from (`scripts/test` sets them).
    pub fn redis_url_env(self) -> Option<&'static str> {
        match self {
            Self::Embedded => None,
            Self::Production => Some("SLUICE_TEST_REDIS_URL"),
            Self::ProductionCluster => Some("SLUICE_TEST_REDIS_CLUSTER_URL"),
        }
    }
}

// The cases of a test that runs in both modes: `#[apply(both_modes)]` on
// `#[tokio::test] async fn name(#[case] mode: Mode)` makes `name::case_1_embedded` and
// `name::case_2_production`. (A `//` comment: a doc comment would be copied onto every test.)
#[template]
#[rstest::rstest]
#[case::embedded(crate::support::Mode::Embedded)]
#[case::production(crate::support::Mode::Production)]
fn both_modes(#[case] mode: Mode) {}

// Both modes, and production on a Redis Cluster too: for the tests of ingest, sealing and
// missing ranges, whose Redis calls a Cluster routes by the batch's hash slot.
// `name::case_3_production_cluster` is the third case.
#[template]
#[rstest::rstest]
#[case::embedded(crate::support::Mode::Embedded)]
#[case::production(crate::support::Mode::Production)]
#[case::production_cluster(crate::support::Mode::ProductionCluster)]
fn every_mode(#[case] mode: Mode) {}

/// HTTP access to a running server: its base URL and the requests the tests make.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

pub struct TestServer {
    api: Api,
    pub queue: Arc<dyn ItemQueue>,
    pub runs: Arc<dyn RunStore>,
    pub payloads: Arc<dyn PayloadStore>,
    pub retention: Arc<dyn RetentionStore>,
    pub stats: Arc<dyn StatsStore>,
    /// Where `/metrics` is served, when the configuration asked for it.
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    data_dir: tempfile::TempDir,
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
        if let Some(redis_url_env) = mode.redis_url_env() {
            config.database_url = Some(required_env("SLUICE_TEST_DATABASE_URL"));
            config.database_max_connections = 4;
            config.redis_url = Some(required_env(redis_url_env));
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
        if mode != Mode::Embedded {
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
        let (retention, stats) = (app.retention.clone(), app.stats.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(app, listener, shutdown.clone()));
        Self {
            api: Api::new(base),
            queue,
            payloads,
            runs,
            retention,
            stats,
            metrics_addr,
            shutdown,
            data_dir,
        }
    }

    /// The server's data directory (the embedded mode's SQLite file and payload files).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
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

    /// The item stored at an index, as JSON.
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
        self.post_json_as(key, "/api/v3/batches", body).await
    }

    pub async fn post_json_as(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
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
