//! Periodic maintenance. Each job runs on its own task and cadence, never overlaps itself, stops
//! when the shutdown token is cancelled, and is given the ports it needs, never the HTTP layer's
//! state. Every job goes through [`schedule`]: its first run staggered, each tick holding one of
//! the jobs' shared database permits, and counted and timed by outcome.
//!
//! Every job is safe on any number of nodes at once, with no leader: each write is a guarded
//! update, and rows worked on by one node are held (`FOR UPDATE SKIP LOCKED`, leases) so another
//! skips them.

mod expire;
mod lease_sweep;
mod materialise;
pub mod retention;
pub mod stats;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ports::Ports;
use crate::tasks::{self, NamedTask};

/// How a tick ended, for `sluice_job_runs_total{job,outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to do.
    Idle,
    /// Something was written (or, for the wake-up, signalled).
    Worked,
    /// A dependency failed; the next tick tries again.
    Failed,
}

impl Tick {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Worked => "worked",
            Self::Failed => "failed",
        }
    }
}

/// The database connections the jobs may use at once, together (`SLUICE_JOB_MAX_CONNECTIONS`).
/// Each tick holds one permit and uses at most one connection at a time, so the jobs never hold
/// more than this share of the pool, whatever their number; requests keep the rest.
#[derive(Clone)]
pub struct JobPermits(Arc<Semaphore>);

impl JobPermits {
    pub fn new(permits: u32) -> Self {
        Self(Arc::new(Semaphore::new(permits.max(1) as usize)))
    }
}

/// Spawns job `name` to tick every `period` until `shutdown` (see [`tasks::every`]: missed ticks
/// are skipped, a tick never overlaps the one before). The first tick comes after a random part of
/// the period, so jobs (and nodes) started together do not tick together. Each tick waits for a
/// permit, then is counted and timed with its outcome.
pub fn schedule<F, Fut>(
    name: &'static str,
    period: Duration,
    permits: &JobPermits,
    shutdown: CancellationToken,
    mut tick: F,
) -> NamedTask
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Tick> + Send,
{
    let permits = permits.clone();
    tasks::every(name, period, stagger(period), shutdown, move || {
        let (tick, permits) = (tick(), permits.clone());
        async move {
            // The semaphore is never closed.
            let Ok(_permit) = permits.0.acquire().await else {
                return;
            };
            let started = Instant::now();
            let outcome = tick.await;
            crate::metrics::job_ran(name, outcome.as_str(), started.elapsed());
        }
    })
}

/// A random delay within the period.
fn stagger(period: Duration) -> Duration {
    period.mul_f64(rand::random::<f64>())
}

/// Starts every job; the caller joins them (`crate::tasks::join_all`) after shutdown.
pub fn spawn(config: &Config, ports: &Ports, shutdown: &CancellationToken) -> Vec<NamedTask> {
    let permits = JobPermits::new(config.job_max_connections);
    let mut jobs = vec![expire::spawn(
        ports.store.clone(),
        ports.events.clone(),
        config.seal_timeout_ms,
        &permits,
        shutdown.clone(),
    )];
    jobs.extend(materialise::spawn(
        ports,
        config.materialise(),
        &permits,
        shutdown.clone(),
    ));
    jobs.push(lease_sweep::spawn(
        ports.work.clone(),
        ports.runs_ready.clone(),
        ports.events.clone(),
        Duration::from_millis(config.lease_sweep_interval_ms),
        &permits,
        shutdown.clone(),
    ));
    jobs.push(retention::spawn(
        retention::Deleters {
            store: ports.retention.clone(),
            queue: ports.queue.clone(),
            payloads: ports.payloads.clone(),
        },
        config.retention(),
        &permits,
        shutdown.clone(),
    ));
    jobs.push(stats::spawn(
        ports.stats.clone(),
        config.stats_refresh_days,
        Duration::from_millis(config.stats_interval_ms),
        &permits,
        shutdown.clone(),
    ));
    jobs
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn jobs_share_their_permits_and_an_overrunning_job_never_overlaps_itself() {
        let shutdown = CancellationToken::new();
        let permits = JobPermits::new(1);
        let (running, ticks) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let job = |name| {
            let (running, ticks) = (running.clone(), ticks.clone());
            schedule(
                name,
                Duration::from_millis(100),
                &permits,
                shutdown.clone(),
                move || {
                    let (running, ticks) = (running.clone(), ticks.clone());
                    async move {
                        // One permit: never two ticks at once, of the same job or not.
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                        ticks.fetch_add(1, Ordering::SeqCst);
                        // Three periods long: the ticks missed meanwhile are skipped.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Tick::Worked
                    }
                },
            )
        };
        let tasks = vec![job("a"), job("b")];
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ran = ticks.load(Ordering::SeqCst);
        // 3 s of 300 ms ticks, one at a time: about 10, never the 60 two unbounded jobs would run.
        assert!((8..=11).contains(&ran), "{ran} ticks");
        shutdown.cancel();
        tasks::join_all(tasks).await;
    }

    #[test]
    fn first_runs_fall_within_the_period() {
        for _ in 0..100 {
            assert!(stagger(Duration::from_secs(60)) < Duration::from_secs(60));
        }
    }
}
