//! The worker phase of `sluice bench`: once every batch's runs are written, `--work-claimers`
//! loops claim `--work-batch` runs per call and complete them all in one call, until no run is
//! left; then `--idle-completes` single completions are timed one at a time on an idle server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::{Percentiles, percentiles};
use super::{BenchError, Run, checked};
use crate::protocol::wire::{CreateBatchRequest, CreateBatchResponse};
use crate::protocol::work::{
    ClaimRequest, ClaimResponse, CompleteRequest, CompleteResponse, RunReport,
};

#[derive(Debug, Serialize)]
pub struct WorkReport {
    pub claimers: usize,
    pub runs_per_call: u32,
    pub runs: u64,
    pub seconds: f64,
    pub runs_per_second: f64,
    /// Claim and complete calls, each timed.
    pub claim_latency: Percentiles,
    pub complete_latency: Percentiles,
    /// Single completions on an idle server, one at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_complete_latency: Option<Percentiles>,
}

impl Run {
    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, BenchError> {
        // A 503 is the server pushing back (its status queue is full): wait a little and send
        // again, as a worker does.
        let mut tries = 0;
        loop {
            let response = self
                .client
                .post(format!("{}{path}", self.args.url))
                .bearer_auth(&self.args.key)
                .json(body)
                .send()
                .await?;
            tries += 1;
            if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && tries < 200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            return Ok(checked(response).await?.json().await?);
        }
    }

    async fn claim(&self, limit: u32) -> Result<ClaimResponse, BenchError> {
        let request = ClaimRequest {
            tasks: None,
            limit: Some(i64::from(limit)),
            lease_ms: Some(300_000),
            wait_ms: Some(0),
        };
        self.post("/api/v3/runs/claim", &request).await
    }

    async fn complete_all(&self, claimed: ClaimResponse) -> Result<(), BenchError> {
        let runs = claimed
            .runs
            .into_iter()
            .map(|run| RunReport {
                id: run.id,
                lease_id: run.lease_id,
                status: "COMPLETED".into(),
                output: None,
                error: None,
                retry_delay_ms: None,
            })
            .collect();
        let answer: CompleteResponse = self
            .post("/api/v3/runs/complete", &CompleteRequest { runs })
            .await?;
        match answer.results.iter().find(|result| !result.ok) {
            Some(refused) => Err(BenchError::Status {
                status: 200,
                body: format!("a completion was refused: {refused:?}"),
            }),
            None => Ok(()),
        }
    }

    /// Claims and completes until a claim finds nothing; returns the runs done and the timings.
    async fn work_loop(&self) -> Result<(u64, Vec<Duration>, Vec<Duration>), BenchError> {
        let (mut done, mut claims, mut completes) = (0, Vec::new(), Vec::new());
        loop {
            let started = Instant::now();
            let claimed = self.claim(self.args.work_batch).await?;
            claims.push(started.elapsed());
            if claimed.runs.is_empty() {
                return Ok((done, claims, completes));
            }
            done += claimed.runs.len() as u64;
            let started = Instant::now();
            self.complete_all(claimed).await?;
            completes.push(started.elapsed());
        }
    }

    /// A batch of `count` small items, sealed and materialised.
    async fn small_batch(&self, count: u32) -> Result<(), BenchError> {
        let create = CreateBatchRequest {
            run_count: i64::from(count),
            task_identifiers: Some(vec!["bench-idle".into()]),
            idempotency_key: None,
            parent_run_id: None,
            resume_parent_on_completion: None,
        };
        let created: CreateBatchResponse = self.post("/api/v3/batches", &create).await?;
        let body: String = (0..count)
            .map(|index| {
                format!("{{\"index\":{index},\"task\":\"bench-idle\",\"payload\":{{}}}}\n")
            })
            .collect();
        let response = self
            .client
            .post(format!(
                "{}/api/v3/batches/{}/items",
                self.args.url, created.id
            ))
            .bearer_auth(&self.args.key)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        checked(response).await?;
        self.wait_runs(&created.id).await
    }
}

pub async fn work_phase(run: &Arc<Run>, claimers: usize) -> Result<WorkReport, BenchError> {
    let started = Instant::now();
    let loops = (0..claimers).map(|_| {
        let run = run.clone();
        async move { run.work_loop().await }
    });
    let results = futures::future::join_all(loops).await;
    let seconds = started.elapsed().as_secs_f64();
    let (mut runs, mut claims, mut completes) = (0, Vec::new(), Vec::new());
    for result in results {
        let (done, claim_times, complete_times) = result?;
        runs += done;
        claims.extend(claim_times);
        completes.extend(complete_times);
    }
    let idle_complete_latency = match run.args.idle_completes {
        0 => None,
        count => {
            run.small_batch(count).await?;
            let mut latencies = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let claimed = run.claim(1).await?;
                if claimed.runs.is_empty() {
                    break;
                }
                let started = Instant::now();
                run.complete_all(claimed).await?;
                latencies.push(started.elapsed());
            }
            Some(percentiles(&mut latencies))
        }
    };
    Ok(WorkReport {
        claimers,
        runs_per_call: run.args.work_batch,
        runs,
        seconds,
        runs_per_second: runs as f64 / seconds,
        claim_latency: percentiles(&mut claims),
        complete_latency: percentiles(&mut completes),
        idle_complete_latency,
    })
}
