//! `sluice send` then `sluice work`, both as the real binary, against the server: a batch whose
//! command fails some runs on purpose ends `PARTIAL_FAILED` with exact counts and attempts.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use rstest_reuse::apply;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::worker_server;
use crate::support::{KEY, Mode, both_modes, poll_until};

const LINES: u32 = 10_000;

/// `{"n":i}` with every index ending in 7 failing: the command prints to stderr and exits 1.
const COMMAND: &str = r#"read payload
case "$payload" in
  *7}) echo "no luck for $payload" >&2; exit 1 ;;
esac
echo "{\"index\": $SLUICE_RUN_INDEX, \"attempt\": $SLUICE_ATTEMPT}""#;

fn sluice(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .env("SLUICE_API_KEY", KEY)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[apply(both_modes)]
#[tokio::test]
async fn sent_items_are_worked_to_a_partially_failed_batch_with_exact_counts(mode: Mode) {
    let server = worker_server(mode, |_| {}).await;
    let mut input = tempfile::NamedTempFile::new().unwrap();
    {
        let mut writer = std::io::BufWriter::new(input.as_file_mut());
        for n in 0..LINES {
            writeln!(writer, "{{\"n\":{n}}}").unwrap();
        }
    }
    let sent = sluice(&[
        "send",
        input.path().to_str().unwrap(),
        "--task",
        "email",
        "--quiet",
        "--url",
        &server.base,
    ])
    .status()
    .await
    .unwrap();
    assert!(sent.success(), "sluice send: {sent}");
    let (_, page) = server.get("/api/v3/batches").await;
    let id = page["data"][0]["id"].as_str().unwrap().to_owned();

    let mut worker = sluice(&[
        "work",
        "--task",
        "email",
        "--concurrency",
        "8",
        "--lease",
        "30s",
        "--url",
        &server.base,
        "--",
        "sh",
        "-c",
        COMMAND,
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();

    let batch = std::cell::RefCell::new(Value::Null);
    poll_until("the batch is final", Duration::from_secs(240), || async {
        let (status, body) = server.batch(&id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let done = body["status"] != "PROCESSING";
        *batch.borrow_mut() = body;
        done
    })
    .await;
    let batch = batch.into_inner();
    assert_eq!(batch["status"], "PARTIAL_FAILED", "{batch}");
    let failing = u64::from(LINES / 10);
    assert_eq!(batch["counts"]["completed"], u64::from(LINES) - failing);
    assert_eq!(batch["counts"]["failed"], failing);
    assert_eq!(batch["counts"]["pending"], 0);
    assert_eq!(batch["counts"]["claimed"], 0);

    // Ctrl-C: the worker stops cleanly and says what it did.
    let pid = worker.id().unwrap().to_string();
    let interrupted = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(interrupted.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker stops after Ctrl-C")
        .unwrap();
    let mut stderr = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(exit.success(), "{exit}: {stderr}");
    let runs_of_failing = failing * 3;
    assert!(
        stderr.contains(&format!(
            "{} runs claimed: {} completed, {} retried, {} failed",
            u64::from(LINES) - failing + runs_of_failing,
            u64::from(LINES) - failing,
            failing * 2,
            failing
        )),
        "{stderr}"
    );

    // Every failed run used its three attempts and says why; completed runs took one attempt
    // and kept the command's output.
    let failed = server.all_runs(&id, "&status=FAILED", 1000).await;
    assert_eq!(failed.len() as u64, failing);
    for run in &failed {
        assert_eq!(run["index"].as_u64().unwrap() % 10, 7, "{run}");
        assert_eq!(run["attempt"], 3, "{run}");
        assert_eq!(run["error"]["code"], "EXIT_1", "{run}");
        let message = run["error"]["message"].as_str().unwrap();
        assert!(message.contains("no luck for {\"n\":"), "{message}");
    }
    let completed = server.all_runs(&id, "&status=COMPLETED", 1000).await;
    assert_eq!(completed.len() as u64, u64::from(LINES) - failing);
    for run in completed.iter().step_by(997) {
        assert_eq!(run["attempt"], 1, "{run}");
        let (_, full) = server
            .get(&format!("/api/v3/runs/{}", run["id"].as_str().unwrap()))
            .await;
        assert_eq!(full["output"]["index"], run["index"], "{full}");
        assert_eq!(full["output"]["attempt"], 1, "{full}");
    }
}
