//! The server binary as a child process, which a test can kill.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::server::Api;
use super::services::{START_LIMIT, poll_until};

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

    /// A memory figure of the process from `/proc/{pid}/status`, in bytes: `VmRSS` (resident now)
    /// or `VmHWM` (its peak).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
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
