//! Aborts batches left unsealed past `BATCH_SEAL_TIMEOUT_MS`.
//!
//! Requests already treat such a batch as aborted; this job makes the status say so.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::store::now_millis;

const LONGEST_PERIOD: Duration = Duration::from_secs(60);

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let timeout_ms = state.config.seal_timeout_ms;
    let period = Duration::from_millis((timeout_ms / 10).max(100)).min(LONGEST_PERIOD);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let created_before = now_millis().saturating_sub(timeout_ms as i64);
        match state.store.abort_unsealed(created_before).await {
            Ok(0) => {}
            Ok(aborted) => tracing::info!(aborted, "aborted batches past their seal timeout"),
            Err(error) => tracing::warn!(error = %error, "could not abort expired batches"),
        }
    }
}
