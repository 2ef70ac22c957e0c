//! trigger.dev's real SDK (`@trigger.dev/sdk` 4.x from npm, installed under `tests/sdk` by
//! `scripts/test`) reads a Sluice batch with `batch.retrieve`.

use std::path::Path;

use rstest::rstest;
use serde_json::Value;

use super::wait_materialised;
use crate::support::{KEY, Mode, TestServer, ndjson};

/// Runs `tests/sdk/retrieve.mjs` against the server; the SDK's result (or error) as JSON.
async fn sdk_retrieve(base: &str, key: &str, id: &str) -> (bool, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    assert!(
        dir.join("node_modules/@trigger.dev/sdk").is_dir(),
        "the trigger.dev SDK is not installed: run the tests with `scripts/test`"
    );
    let output = tokio::process::Command::new("node")
        .arg("retrieve.mjs")
        .arg(id)
        .current_dir(&dir)
        .env("TRIGGER_API_URL", base)
        .env("TRIGGER_SECRET_KEY", key)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "the SDK script printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), result)
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::production(Mode::Production)]
#[tokio::test]
async fn the_trigger_dev_sdk_retrieves_a_batch(#[case] mode: Mode) {
    let server = TestServer::start(mode).await;
    let id = server.new_batch(3).await;
    let (ok, pending) = sdk_retrieve(&server.base, KEY, &id).await;
    assert!(ok, "{pending}");
    assert_eq!(pending["status"], "PENDING");

    server
        .stream(&id, [ndjson([0, 1]), b"oops\n".to_vec()].concat())
        .await;
    wait_materialised(&server, &id).await;
    let (ok, batch) = sdk_retrieve(&server.base, KEY, &id).await;
    assert!(ok, "{batch}");
    assert_eq!(batch["id"], id.as_str());
    assert_eq!(batch["status"], "PROCESSING");
    assert_eq!(batch["runCount"], 3);
    assert_eq!(batch["runs"].as_array().unwrap().len(), 3);
    assert_eq!(batch["processing"]["errors"][0]["index"], 2);
    assert_eq!(
        batch["processing"]["errors"][0]["errorCode"],
        "INVALID_JSON"
    );

    let (ok, missing) = sdk_retrieve(&server.base, KEY, "batch_unknown").await;
    assert!(!ok);
    assert_eq!(missing["status"], 404, "{missing}");
    let (ok, unauthorized) = sdk_retrieve(&server.base, "wrong-key", &id).await;
    assert!(!ok);
    assert_eq!(unauthorized["status"], 401, "{unauthorized}");
}
