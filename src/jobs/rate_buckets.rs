//! Forgets the rate-limit buckets of tenants that have been idle long enough to be full again.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

const PERIOD: Duration = Duration::from_secs(60);

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => state.create_limiter.forget_idle_tenants(),
        }
    }
}
