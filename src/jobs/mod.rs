//! Periodic maintenance. Each job runs on its own cadence, never overlaps itself, and stops when
//! the shutdown token is cancelled.

mod expire;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

pub fn spawn(state: AppState, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(expire::run(state, shutdown))
}
