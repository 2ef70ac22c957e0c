//! Periodic maintenance. Each job runs on its own cadence, never overlaps itself, and stops when
//! the shutdown token is cancelled.

mod expire;
mod rate_buckets;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

pub fn spawn(state: AppState, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::join!(
            expire::run(state.clone(), shutdown.clone()),
            rate_buckets::run(state, shutdown),
        );
    })
}
