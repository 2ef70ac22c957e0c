//! Background tasks: one helper for work repeated every period until shutdown, and joining
//! spawned tasks by name so a panic is logged, never dropped.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// A spawned task and the name it is logged by.
pub struct NamedTask {
    pub name: &'static str,
    pub handle: JoinHandle<()>,
}

/// Spawns `tick` to run every `period` until `shutdown` is cancelled, the first run after
/// `first_delay` (so tasks started together can be staggered). A tick is awaited before the next
/// one starts, so a run never overlaps itself; ticks missed while it ran are skipped, not bunched.
pub fn every<F, Fut>(
    name: &'static str,
    period: Duration,
    first_delay: Duration,
    shutdown: CancellationToken,
    mut tick: F,
) -> NamedTask
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let handle = tokio::spawn(async move {
        let start = tokio::time::Instant::now() + first_delay;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick() => {}
            }
        }
    });
    NamedTask { name, handle }
}

/// Waits for every task; a task that panicked is logged with its name and the panic's message.
pub async fn join_all(tasks: Vec<NamedTask>) {
    for NamedTask { name, handle } in tasks {
        if let Err(error) = handle.await {
            if error.is_panic() {
                let panic = error.into_panic();
                let message = panic_message(panic.as_ref());
                tracing::error!(task = name, panic = message, "background task panicked");
            } else {
                tracing::warn!(task = name, "background task was cancelled");
            }
        }
    }
}

/// The message a panic was raised with, when it was a string.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_start_after_the_delay_never_overlap_and_stop_at_shutdown() {
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let running = Arc::new(AtomicU32::new(0));
        let task = every(
            "test",
            Duration::from_secs(1),
            Duration::from_millis(500),
            shutdown.clone(),
            {
                let (runs, running) = (runs.clone(), running.clone());
                move || {
                    let (runs, running) = (runs.clone(), running.clone());
                    async move {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Overruns its period: the missed tick is skipped, not run at once.
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            },
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "not before the first delay");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The first run lasts 0.5–2.0 s; the ticks missed meanwhile fire once, at 2.0 s, not once
        // per missed period.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        join_all(vec![task]).await;
        let after = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            after,
            "nothing runs after shutdown"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_joined_and_the_others_still_are() {
        let panicked = NamedTask {
            name: "panics",
            handle: tokio::spawn(async { panic!("boom") }),
        };
        let finished = Arc::new(AtomicU32::new(0));
        let counted = finished.clone();
        let fine = NamedTask {
            name: "fine",
            handle: tokio::spawn(async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        };
        join_all(vec![panicked, fine]).await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
