//! Periodic maintenance. Each job runs on its own task and cadence (`crate::tasks::every`), never
//! overlaps itself, stops when the shutdown token is cancelled, and is given the ports it needs,
//! never the HTTP layer's state.

mod expire;
mod lease_sweep;
mod materialise;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ports::Ports;
use crate::tasks::NamedTask;

/// Starts every job; the caller joins them (`crate::tasks::join_all`) after shutdown.
pub fn spawn(config: &Config, ports: &Ports, shutdown: &CancellationToken) -> Vec<NamedTask> {
    let mut jobs = vec![expire::spawn(
        ports.store.clone(),
        ports.events.clone(),
        config.seal_timeout_ms,
        shutdown.clone(),
    )];
    jobs.extend(materialise::spawn(
        ports.runs.clone(),
        ports.queue.clone(),
        ports.sealed.clone(),
        ports.events.clone(),
        ports.runs_ready.clone(),
        config.materialise(),
        shutdown.clone(),
    ));
    jobs.push(lease_sweep::spawn(
        ports.work.clone(),
        ports.runs_ready.clone(),
        ports.events.clone(),
        std::time::Duration::from_millis(config.lease_sweep_interval_ms),
        shutdown.clone(),
    ));
    jobs
}
