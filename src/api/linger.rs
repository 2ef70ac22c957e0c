//! Lingering close for Phase 2: after an answer given before the request body was read to its end
//! (401, 404, 409, 413, 415, 503, a stream cut off mid-body, a panic), the rest of the body is read
//! and thrown away for a bounded time and byte count before the connection closes, as nginx does.
//!
//! Closing a socket that still holds unread bytes makes the kernel send RST, and a client that
//! writes its whole body before reading (Python `http.client`, many proxies) then gets a broken pipe
//! instead of the answer. hyper keeps reading a request body from the socket for as long as the
//! body's receiver is alive, even after the response was written; so the receiver is kept alive in
//! a drain task, and hyper closes the connection (FIN, not RST) once the drain reaches the body's
//! end, or (RST, as before) once it gives up at a cap.
//!
//! This module owns the body wrapper that starts a drain when it is dropped unread, the node-wide
//! bound on drains in progress, and the `Connection: close` such answers carry. A drain never
//! holds an admission permit and never looks at the bytes it throws away: it costs one task and
//! the socket reads, so the load shield's 503s stay cheap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics;

/// How much of an unread body a drain reads before the connection is closed anyway.
#[derive(Debug, Clone, Copy)]
pub struct LingerLimits {
    pub max_bytes: u64,
    pub max_time: Duration,
    /// Drains in progress at once on this node; beyond it, connections close at once.
    pub max_connections: u32,
}

impl LingerLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_bytes: config.linger_max_bytes,
            max_time: Duration::from_millis(config.linger_time_ms),
            max_connections: config.linger_max_connections,
        }
    }
}

/// The node's drains: their limits and the slots that bound how many run at once.
#[derive(Clone)]
pub struct Lingering {
    limits: LingerLimits,
    slots: Arc<Semaphore>,
}

impl Lingering {
    pub fn new(limits: LingerLimits) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections as usize)),
        }
    }

    /// Drains `body` in a task of its own, or drops it at once when every slot is taken (or no
    /// runtime is left to run the task).
    fn start(&self, body: Body) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            metrics::lingering_close(DrainEnd::Refused.as_str(), 0);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limits = self.limits;
        runtime.spawn(async move {
            let (end, discarded) = drain(body, limits).await;
            metrics::lingering_close(end.as_str(), discarded);
            drop(slot);
        });
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainEnd {
    /// The body's end was read: the client has sent everything and will read the answer.
    Drained,
    ByteCap,
    TimeCap,
    /// The client reset the connection or broke the body's framing.
    Broken,
    /// Every slot was taken: closed at once, as without lingering.
    Refused,
}

impl DrainEnd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Drained => "drained",
            Self::ByteCap => "byte_cap",
            Self::TimeCap => "time_cap",
            Self::Broken => "broken",
            Self::Refused => "refused",
        }
    }
}

/// Reads and discards `body` until its end, `max_bytes` or `max_time`, whichever comes first; at
/// most one read (hyper's read buffer) goes past `max_bytes`. Returns how it ended and the bytes
/// thrown away.
async fn drain(body: Body, limits: LingerLimits) -> (DrainEnd, u64) {
    let mut data = body.into_data_stream();
    let mut discarded = 0u64;
    let deadline = tokio::time::sleep(limits.max_time);
    tokio::pin!(deadline);
    let end = loop {
        let next = tokio::select! {
            () = &mut deadline => break DrainEnd::TimeCap,
            next = data.next() => next,
        };
        match next {
            None => break DrainEnd::Drained,
            Some(Err(_)) => break DrainEnd::Broken,
            Some(Ok(bytes)) => {
                discarded += bytes.len() as u64;
                if discarded > limits.max_bytes {
                    break DrainEnd::ByteCap;
                }
            }
        }
    };
    (end, discarded)
}

/// The request body as the handler sees it; dropped before its end, it hands what is left to a
/// drain. Whether the end was reached is shared with the middleware, which answers accordingly.
struct LingeringBody {
    inner: Option<Body>,
    ended: Arc<AtomicBool>,
    /// Reading failed: the client is gone or broke the framing, and hyper has stopped reading.
    failed: bool,
    /// `None`: drop the rest at once (the client waits for `100 Continue` and sent nothing).
    lingering: Option<Lingering>,
}

impl HttpBody for LingeringBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            None => self.ended.store(true, Ordering::Release),
            Some(Err(_)) => self.failed = true,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.ended.load(Ordering::Acquire) || inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
            return;
        }
        if let Some(lingering) = self.lingering.as_ref().filter(|_| !self.failed) {
            lingering.start(inner);
        }
    }
}

/// Middleware of the Phase 2 route: hands the handler a [`LingeringBody`], and marks an answer
/// given before the body's end with `Connection: close`, so no client sends another request on a
/// connection about to close.
pub async fn linger_after_early_answers(
    State(lingering): State<Lingering>,
    request: Request,
    next: Next,
) -> Response {
    // HTTP/2 ends a stream it stops reading with RST_STREAM, a message that leaves the connection
    // and the answer intact; and it has no `Connection` header.
    if request.version() > Version::HTTP_11 {
        return next.run(request).await;
    }
    // Such a client sends its body only once told to: reading would make hyper invite it.
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let ended = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(LingeringBody {
            inner: Some(body),
            ended: ended.clone(),
            failed: false,
            lingering: (!expects_continue).then_some(lingering),
        })
    });
    let mut response = next.run(request).await;
    if !ended.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn limits(max_bytes: u64, max_time: Duration, max_connections: u32) -> LingerLimits {
        LingerLimits {
            max_bytes,
            max_time,
            max_connections,
        }
    }

    /// A body fed chunk by chunk by the test; it ends when the sender is dropped.
    fn channel_body() -> (mpsc::Sender<Vec<u8>>, Body) {
        let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(4);
        let chunks = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
            .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
        (sender, Body::from_stream(chunks))
    }

    #[tokio::test]
    async fn a_drain_reads_a_body_within_the_caps_to_its_end() {
        let (sender, body) = channel_body();
        let limits = limits(1000, Duration::from_secs(5), 1);
        let drained = tokio::spawn(drain(body, limits));
        for _ in 0..10 {
            sender.send(vec![b'x'; 100]).await.unwrap();
        }
        drop(sender);
        assert_eq!(drained.await.unwrap(), (DrainEnd::Drained, 1000));
    }

    #[tokio::test]
    async fn a_drain_stops_one_read_past_the_byte_cap() {
        let (sender, body) = channel_body();
        let limits = limits(1000, Duration::from_secs(5), 1);
        let drained = tokio::spawn(drain(body, limits));
        // The body never ends; the drain stops on its own.
        while sender.send(vec![b'x'; 300]).await.is_ok() {}
        assert_eq!(drained.await.unwrap(), (DrainEnd::ByteCap, 1200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_stops_at_the_time_cap_however_slowly_bytes_come() {
        let (sender, body) = channel_body();
        let drained = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let drained = drain(body, limits(1 << 20, Duration::from_secs(5), 1)).await;
            (drained, started.elapsed())
        });
        while sender.send(b"x".to_vec()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ((end, discarded), elapsed) = drained.await.unwrap();
        assert_eq!(end, DrainEnd::TimeCap);
        assert_eq!(elapsed, Duration::from_secs(5));
        assert!((49..=51).contains(&discarded), "{discarded}");
    }

    fn unread(lingering: Option<&Lingering>) -> (mpsc::Sender<Vec<u8>>, LingeringBody) {
        let (sender, body) = channel_body();
        let body = LingeringBody {
            inner: Some(body),
            ended: Arc::new(AtomicBool::new(false)),
            failed: false,
            lingering: lingering.cloned(),
        };
        (sender, body)
    }

    #[tokio::test]
    async fn bodies_dropped_unread_are_drained_up_to_the_node_bound_and_beyond_it_dropped() {
        let lingering = Lingering::new(limits(1 << 20, Duration::from_secs(60), 1));
        let (first_sender, first) = unread(Some(&lingering));
        let (second_sender, second) = unread(Some(&lingering));
        drop(first);
        drop(second);
        tokio::task::yield_now().await;
        assert!(!first_sender.is_closed(), "the first is being drained");
        assert!(second_sender.is_closed(), "the second was dropped at once");

        // Once the first drain ends, its slot serves the next body.
        drop(first_sender);
        let (third_sender, third) = unread(Some(&lingering));
        let available = lingering.slots.clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            while available.available_permits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first drain ends with its body");
        drop(third);
        tokio::task::yield_now().await;
        assert!(!third_sender.is_closed(), "the third is being drained");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_or_awaiting_100_continue_is_not_drained() {
        let lingering = Lingering::new(limits(1 << 20, Duration::from_secs(60), 1));
        let (sender, mut body) = unread(Some(&lingering));
        sender.send(b"x".to_vec()).await.unwrap();
        drop(sender);
        while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .is_some()
        {}
        let ended = body.ended.clone();
        drop(body);
        assert!(ended.load(Ordering::Acquire));
        assert_eq!(lingering.slots.available_permits(), 1);

        let (sender, body) = unread(None);
        drop(body);
        assert!(sender.is_closed());
        assert_eq!(lingering.slots.available_permits(), 1);
    }
}
