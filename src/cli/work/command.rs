//! Running the worker's command for one run: the payload on stdin, the run in the environment,
//! stdout kept as the output and the tail of stderr as the error.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::protocol::work::{ClaimedRun, MAX_OUTPUT_BYTES};

/// Bytes of stderr kept for the error message (its end, where the reason usually is).
const STDERR_TAIL_BYTES: usize = 4 * 1024;

/// How a command ended, as it is reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// Exit 0: the output is stdout as JSON when it parses, else as a string (none when empty).
    Succeeded(Option<serde_json::Value>),
    /// Anything else: a code and a message for the report.
    Failed { code: String, message: String },
}

/// Reads `reader` to its end, keeping the first `max` bytes (`head`) or the last (`!head`).
async fn read_kept(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    head: bool,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return (kept, cut),
            Ok(read) => read,
        };
        kept.extend_from_slice(&buffer[..read]);
        if kept.len() > max {
            cut = true;
            if head {
                kept.truncate(max);
            } else {
                kept.drain(..kept.len() - max);
            }
        }
    }
}

/// What a command's stdout becomes: JSON when it is JSON, else a string; nothing when empty.
pub fn output_of(stdout: &[u8]) -> Option<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned())))
}

/// Runs `argv` for `run` with `payload` on its stdin.
pub async fn run_command(argv: &[String], run: &ClaimedRun, payload: &[u8]) -> Ended {
    let spawned = Command::new(&argv[0])
        .args(&argv[1..])
        .env("SLUICE_RUN_ID", &run.id)
        .env("SLUICE_BATCH_ID", &run.batch_id)
        .env("SLUICE_RUN_INDEX", run.index.to_string())
        .env("SLUICE_ATTEMPT", run.attempt.to_string())
        .env("SLUICE_TASK", &run.task)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            return Ended::Failed {
                code: "COMMAND_NOT_STARTED".into(),
                message: format!("could not start {:?}: {error}", argv[0]),
            };
        }
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let payload = payload.to_vec();
    // A command that does not read its stdin closes it early: that is not an error.
    let feed = async move {
        let _ = stdin.write_all(&payload).await;
        let _ = stdin.shutdown().await;
    };
    let (_, (stdout, output_cut), (stderr, _), status) = tokio::join!(
        feed,
        read_kept(stdout, MAX_OUTPUT_BYTES, true),
        read_kept(stderr, STDERR_TAIL_BYTES, false),
        child.wait(),
    );
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            return Ended::Failed {
                code: "COMMAND_FAILED".into(),
                message: format!("waiting for the command failed: {error}"),
            };
        }
    };
    if status.success() {
        if output_cut {
            return Ended::Failed {
                code: "OUTPUT_TOO_LARGE".into(),
                message: format!("the command wrote more than {MAX_OUTPUT_BYTES} bytes to stdout"),
            };
        }
        return Ended::Succeeded(output_of(&stdout));
    }
    let reason = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    };
    let tail = String::from_utf8_lossy(&stderr);
    let tail = tail.trim();
    Ended::Failed {
        code: status
            .code()
            .map_or_else(|| "KILLED".to_owned(), |code| format!("EXIT_{code}")),
        message: if tail.is_empty() {
            format!("the command {reason}")
        } else {
            format!("the command {reason}: {tail}")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> ClaimedRun {
        serde_json::from_value(serde_json::json!({
            "id": "run_1", "batchId": "batch_1", "index": 7, "task": "t", "attempt": 2,
            "maxAttempts": 3, "payloadType": "application/json", "leaseId": "l",
            "leaseExpiresAt": "2026-01-01T00:00:00.000Z"
        }))
        .unwrap()
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn stdout_is_json_when_it_parses_else_a_string() {
        assert_eq!(
            output_of(b" {\"a\":1}\n"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(output_of(b"done\n"), Some(serde_json::json!("done")));
        assert_eq!(output_of(b"  \n"), None);
    }

    #[tokio::test]
    async fn the_command_gets_the_payload_and_the_run_and_its_failure_says_why() {
        let ended = run_command(
            &sh("read line; echo \"$SLUICE_RUN_INDEX $SLUICE_ATTEMPT $line\""),
            &run(),
            b"{\"x\":1}",
        )
        .await;
        assert_eq!(
            ended,
            Ended::Succeeded(Some(serde_json::json!("7 2 {\"x\":1}")))
        );
        let ended = run_command(&sh("echo oops >&2; exit 3"), &run(), b"").await;
        assert_eq!(
            ended,
            Ended::Failed {
                code: "EXIT_3".into(),
                message: "the command exited with status 3: oops".into()
            }
        );
        let ended = run_command(&["/no/such/program".to_owned()], &run(), b"").await;
        assert!(matches!(ended, Ended::Failed { code, .. } if code == "COMMAND_NOT_STARTED"));
    }
}
