//! The one generic size/time batcher every batched status write goes through.
//!
//! Callers [`Flusher::submit`] an item and wait for its outcome; one task collects items from a
//! bounded channel and hands them to a [`Flush`] in groups. A group is its first item and whatever
//! is already queued behind it; while the flusher is busy (items were waiting when its last write
//! ended) it also waits for more, until `max_items` are waiting or `interval` has passed since the
//! first. So a lone write, or one client's writes one after another, go at once, and writes under
//! load share transactions. A caller is answered only after its group's write returned, so an
//! acknowledged write is committed.
//!
//! While the store fails nothing piles up: a failed group is retried for up to a second while its
//! callers wait (each try bounded to 10 s), then they are answered with the error, the flusher marks itself failing and answers every
//! new caller at once with `503` until a probe of the store succeeds. The channel is bounded, so a
//! store that is merely slow pushes back on callers too ([`Flusher::submit`] fails when it is
//! full). At shutdown the channel is closed and what is queued is flushed once more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::dependency::{Dependency, DependencyError};
use crate::tasks::NamedTask;

/// A grouped write: one call writes every item, and answers one outcome per item, in order.
#[async_trait]
pub trait Flush: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Outcome: Send + 'static;

    /// Writes `items` in one go. On an error nothing of the group may be left half-written: the
    /// write is one transaction.
    async fn flush(&self, items: &[Self::Item]) -> Result<Vec<Self::Outcome>, DependencyError>;

    /// A cheap check that the store takes writes again, while the flusher is failing.
    async fn probe(&self) -> Result<(), DependencyError>;
}

#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    /// Most items one flush writes; 1 writes each item on its own.
    pub max_items: usize,
    /// Longest an item waits for its group to fill, while the flusher is busy (items were
    /// waiting when its last write ended); an item reaching an idle flusher does not wait.
    pub interval: Duration,
    /// Items waiting in the channel beyond the group being written; beyond it callers are turned
    /// away (`503`).
    pub capacity: usize,
    /// After shutdown is signalled, how long callers are still served (requests in flight finish
    /// within the server's grace period); then what is queued is flushed and the task ends.
    pub shutdown_grace: Duration,
}

/// Longest one flush may take; beyond it the store counts as failing. (A group of claims of a
/// thousand runs each takes well under a second; a hung connection never answers.)
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed group is retried while its callers wait, before they are told to retry.
const RETRY_BUDGET: Duration = Duration::from_secs(1);
/// Backoff before the second try; it doubles.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// How often a failing flusher probes the store.
const PROBE_PERIOD: Duration = Duration::from_millis(500);

struct Waiting<F: Flush> {
    item: F::Item,
    reply: oneshot::Sender<Result<F::Outcome, DependencyError>>,
}

/// The submitting side; cheap to clone. The flushing task ends once every clone is dropped or
/// shutdown is signalled, after a last flush.
pub struct Flusher<F: Flush> {
    name: &'static str,
    sender: mpsc::Sender<Waiting<F>>,
    failing: Arc<AtomicBool>,
}

impl<F: Flush> Clone for Flusher<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            sender: self.sender.clone(),
            failing: self.failing.clone(),
        }
    }
}

/// Why a write was not taken or not made.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue in front of the flusher is full: callers send more than the store takes. Not an
    /// outage; the caller retries shortly (or on another node).
    #[error("{0} writes are queued to capacity on this node")]
    Busy(&'static str),
    /// The store failed, is failing, or the flusher stopped.
    #[error(transparent)]
    Store(#[from] DependencyError),
}

fn unavailable(name: &str, why: impl std::fmt::Display) -> DependencyError {
    DependencyError::unavailable(
        Dependency::Database,
        format!("{name} writes are not being taken: {why}"),
    )
}

impl<F: Flush> Flusher<F> {
    /// Starts the flushing task for `flush`.
    pub fn spawn(
        name: &'static str,
        flush: F,
        settings: FlushSettings,
        shutdown: CancellationToken,
    ) -> (Self, NamedTask) {
        let (sender, receiver) = mpsc::channel(settings.capacity.max(1));
        let failing = Arc::new(AtomicBool::new(false));
        let task = FlushTask {
            name,
            flush,
            settings,
            failing: failing.clone(),
        };
        // Stops taking items once the grace period after the shutdown signal is over.
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            let grace = settings.shutdown_grace;
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => tokio::time::sleep(grace).await,
                    () = stop.cancelled() => {}
                }
                stop.cancel();
            }
        });
        let handle = tokio::spawn(task.run(receiver, stop));
        (
            Self {
                name,
                sender,
                failing,
            },
            NamedTask { name, handle },
        )
    }

    /// Queues `item` and waits for its write. Fails at once (without queueing) while the store is
    /// failing, when the queue is full ([`SubmitError::Busy`]), or after shutdown.
    pub async fn submit(&self, item: F::Item) -> Result<F::Outcome, SubmitError> {
        if self.failing.load(Ordering::Acquire) {
            return Err(unavailable(self.name, "the store is failing").into());
        }
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Waiting { item, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => SubmitError::Busy(self.name),
                mpsc::error::TrySendError::Closed(_) => {
                    unavailable(self.name, "shutting down").into()
                }
            })?;
        Ok(answer
            .await
            .map_err(|_| unavailable(self.name, "the flusher stopped"))??)
    }
}

struct FlushTask<F: Flush> {
    name: &'static str,
    flush: F,
    settings: FlushSettings,
    failing: Arc<AtomicBool>,
}

impl<F: Flush> FlushTask<F> {
    /// Runs until every submitting side is dropped, or `stop`; then flushes what is queued.
    async fn run(self, mut receiver: mpsc::Receiver<Waiting<F>>, stop: CancellationToken) {
        let max_items = self.settings.max_items.max(1);
        let mut group: Vec<Waiting<F>> = Vec::with_capacity(max_items);
        // Items were waiting when the last write ended: more are likely on their way.
        let mut busy = false;
        loop {
            // The group's first item, or the end.
            let first = tokio::select! {
                biased;
                item = receiver.recv() => item,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            group.push(first);
            if !busy {
                // One call's items are queued back to back: let the caller finish queueing
                // before the group is taken.
                tokio::task::yield_now().await;
            }
            let deadline = tokio::time::Instant::now() + self.settings.interval;
            while group.len() < max_items {
                match receiver.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) if !busy => break,
                    Err(_) => {
                        let next = tokio::select! {
                            biased;
                            () = stop.cancelled() => None,
                            () = tokio::time::sleep_until(deadline) => None,
                            item = receiver.recv() => item,
                        };
                        match next {
                            Some(item) => group.push(item),
                            None => break,
                        }
                    }
                }
            }
            self.write(&mut group).await;
            busy = !receiver.is_empty();
            if self.failing.load(Ordering::Acquire) {
                self.recover(&mut receiver, &stop).await;
            }
        }
        stop.cancel();
        // Shutdown: take no more, write what is queued (the callers are still waiting).
        receiver.close();
        while let Some(item) = receiver.recv().await {
            group.push(item);
            if group.len() >= max_items {
                self.write(&mut group).await;
            }
        }
        if !group.is_empty() {
            self.write(&mut group).await;
        }
    }

    /// Writes the group and answers its callers; retries a failed write a few times first.
    async fn write(&self, group: &mut Vec<Waiting<F>>) {
        let (items, replies): (Vec<F::Item>, Vec<_>) = group
            .drain(..)
            .map(|waiting| (waiting.item, waiting.reply))
            .unzip();
        let started = Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        let result = loop {
            let attempt = tokio::time::timeout(FLUSH_TIMEOUT, self.flush.flush(&items)).await;
            let error = match attempt {
                Ok(Ok(outcomes)) => break Ok(outcomes),
                Ok(Err(error)) => error,
                // Dropped mid-write: the transaction is rolled back, or (cut during its commit)
                // committed; either way its callers are told to retry, and a retried report of
                // a write that did commit is recognised as such by the store.
                Err(_) => unavailable(
                    self.name,
                    format!("a flush took longer than {FLUSH_TIMEOUT:?}"),
                ),
            };
            if !error.is_unavailable() || started.elapsed() + delay > RETRY_BUDGET {
                break Err(error);
            }
            tracing::warn!(flusher = self.name, %error, "a flush failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
        };
        crate::metrics::flush(self.name, items.len(), started.elapsed(), result.is_ok());
        match result {
            Ok(outcomes) => {
                debug_assert_eq!(outcomes.len(), replies.len());
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // A write refused for what it holds (not for the store being down) may be refused
            // for one item alone: the others are written one by one, so they are not refused too.
            Err(error) if !error.is_unavailable() && items.len() > 1 => {
                tracing::error!(flusher = self.name, %error, items = items.len(), "a grouped flush was refused; writing its items one by one");
                for (item, reply) in items.iter().zip(replies) {
                    let alone = self.flush.flush(std::slice::from_ref(item)).await;
                    let answer = match alone {
                        Ok(mut outcomes) if outcomes.len() == 1 => Ok(outcomes.remove(0)),
                        Ok(_) => Err(unavailable(self.name, "the store answered no outcome")),
                        Err(error) => Err(unavailable(self.name, &error)),
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                tracing::error!(flusher = self.name, %error, items = items.len(), "a flush failed; its callers are told to retry");
                if error.is_unavailable() {
                    self.failing.store(true, Ordering::Release);
                }
                for reply in replies {
                    let _ = reply.send(Err(unavailable(self.name, &error)));
                }
            }
        }
    }

    /// While failing: answers what is queued at once, probes the store until it answers, then
    /// takes writes again.
    async fn recover(&self, receiver: &mut mpsc::Receiver<Waiting<F>>, stop: &CancellationToken) {
        loop {
            while let Ok(waiting) = receiver.try_recv() {
                let _ = waiting
                    .reply
                    .send(Err(unavailable(self.name, "the store is failing")));
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROBE_PERIOD) => {}
            }
            match self.flush.probe().await {
                Ok(()) => {
                    tracing::info!(flusher = self.name, "the store takes writes again");
                    self.failing.store(false, Ordering::Release);
                    return;
                }
                Err(error) => tracing::warn!(flusher = self.name, %error, "the store still fails"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records each group it is given; fails while `failing` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        groups: Arc<Mutex<Vec<Vec<u32>>>>,
        failing: Arc<AtomicBool>,
    }

    #[async_trait]
    impl Flush for Recorder {
        type Item = u32;
        type Outcome = u32;

        async fn flush(&self, items: &[u32]) -> Result<Vec<u32>, DependencyError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(DependencyError::unavailable(Dependency::Database, "down"));
            }
            self.groups.lock().unwrap().push(items.to_vec());
            Ok(items.iter().map(|item| item * 10).collect())
        }

        async fn probe(&self) -> Result<(), DependencyError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(DependencyError::unavailable(Dependency::Database, "down"));
            }
            Ok(())
        }
    }

    fn settings(max_items: usize) -> FlushSettings {
        FlushSettings {
            max_items,
            interval: Duration::from_millis(5),
            capacity: 100,
            shutdown_grace: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn items_are_grouped_up_to_the_size_and_each_caller_gets_its_own_outcome() {
        let recorder = Recorder::default();
        let (flusher, task) = Flusher::spawn(
            "test",
            recorder.clone(),
            settings(4),
            CancellationToken::new(),
        );
        let answers = futures::future::join_all((0..10).map(|item| flusher.submit(item))).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..10).map(|item| item * 10).collect::<Vec<_>>());
        let groups = recorder.groups.lock().unwrap().clone();
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        drop(flusher);
        task.handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_item_goes_at_once_and_items_under_load_wait_at_most_the_interval() {
        let recorder = Recorder::default();
        let (flusher, _task) = Flusher::spawn(
            "test",
            recorder.clone(),
            settings(3),
            CancellationToken::new(),
        );
        // One caller's writes one after another: each goes at once.
        let started = tokio::time::Instant::now();
        assert_eq!(flusher.submit(7).await.unwrap(), 70);
        assert_eq!(flusher.submit(8).await.unwrap(), 80);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Four at once: three fill a group; the fourth was waiting when it was written, so its
        // group waits for company, and takes the item that comes 2 ms later.
        let started = tokio::time::Instant::now();
        let (first, last) = tokio::join!(
            futures::future::join_all((0..4).map(|item| flusher.submit(item))),
            async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                flusher.submit(4).await
            }
        );
        assert!(first.into_iter().all(|answer| answer.is_ok()));
        assert_eq!(last.unwrap(), 40);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(5) && waited < Duration::from_millis(6),
            "{waited:?}"
        );
        // Nothing was waiting after that write: idle again.
        let started = tokio::time::Instant::now();
        assert_eq!(flusher.submit(9).await.unwrap(), 90);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            recorder.groups.lock().unwrap().clone(),
            vec![vec![7], vec![8], vec![0, 1, 2], vec![3, 4], vec![9]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_turns_a_write_away_at_once_as_busy() {
        let recorder = Recorder::default();
        let settings = FlushSettings {
            capacity: 2,
            ..settings(10)
        };
        let (flusher, _task) =
            Flusher::spawn("test", recorder.clone(), settings, CancellationToken::new());
        // The three are queued before the flusher runs: the third finds the queue full.
        let answers = futures::future::join_all((1..=3).map(|item| flusher.submit(item))).await;
        assert_eq!(answers[0].as_ref().unwrap(), &10);
        assert_eq!(answers[1].as_ref().unwrap(), &20);
        assert!(
            matches!(answers[2], Err(SubmitError::Busy("test"))),
            "{:?}",
            answers[2]
        );
        assert_eq!(recorder.groups.lock().unwrap().concat(), vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_store_fails_callers_are_turned_away_until_a_probe_succeeds() {
        let recorder = Recorder::default();
        recorder.failing.store(true, Ordering::SeqCst);
        let (flusher, _task) = Flusher::spawn(
            "test",
            recorder.clone(),
            settings(10),
            CancellationToken::new(),
        );
        let error = flusher.submit(1).await.unwrap_err();
        assert!(
            matches!(&error, SubmitError::Store(error) if error.is_unavailable()),
            "{error}"
        );
        // Turned away at once, without being queued.
        let error = flusher.submit(2).await.unwrap_err();
        assert!(error.to_string().contains("failing"), "{error}");
        recorder.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(PROBE_PERIOD * 2).await;
        assert_eq!(flusher.submit(3).await.unwrap(), 30);
        // Only the write after recovery reached the store.
        assert_eq!(recorder.groups.lock().unwrap().clone(), vec![vec![3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_what_is_queued() {
        let recorder = Recorder::default();
        let shutdown = CancellationToken::new();
        let settings = FlushSettings {
            max_items: 100,
            interval: Duration::from_secs(60),
            capacity: 100,
            shutdown_grace: Duration::ZERO,
        };
        let (flusher, task) = Flusher::spawn("test", recorder.clone(), settings, shutdown.clone());
        let waiting = tokio::spawn({
            let flusher = flusher.clone();
            async move { futures::future::join_all((0..3).map(|item| flusher.submit(item))).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        shutdown.cancel();
        let answers = waiting.await.unwrap();
        assert!(answers.iter().all(Result::is_ok));
        task.handle.await.unwrap();
        assert_eq!(recorder.groups.lock().unwrap().concat(), vec![0, 1, 2]);
        assert!(flusher.submit(9).await.is_err());
    }
}
