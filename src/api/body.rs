//! The request body as a stream of reads (`Bytes`): decompressed on the fly when `Content-Encoding`
//! asks for it, and bounded in size (on the wire and decoded), in idle time, and by server shutdown.
//! An identity body's reads are the chunks hyper hands over, framed where they lie, never copied.
//!
//! A bound that trips ends the stream with an error carrying a [`BodyStop`]; everything read
//! before it has already gone through the pipeline and stays enqueued.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use axum::body::{Body, BodyDataStream};
use bytes::Bytes;
use futures::Stream;
use tokio::time::Sleep;
use tokio_util::io::{ReaderStream, StreamReader};

/// A `Content-Encoding` Sluice can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    Identity,
    Gzip,
    Zstd,
}

impl ContentEncoding {
    /// Parses the header value; `None` for an encoding Sluice cannot read.
    pub fn parse(header: Option<&str>) -> Option<Self> {
        match header
            .map(|value| value.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "identity") => Some(Self::Identity),
            Some("gzip" | "x-gzip") => Some(Self::Gzip),
            Some("zstd") => Some(Self::Zstd),
            Some(_) => None,
        }
    }
}

/// Why Sluice stopped reading a body before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyStop {
    #[error("request body is larger than {0} bytes (SLUICE_MAX_ENCODED_BODY_BYTES)")]
    EncodedTooLarge(u64),
    #[error("decoded request body is larger than {0} bytes (SLUICE_MAX_BODY_BYTES)")]
    DecodedTooLarge(u64),
    #[error("no body bytes arrived for {0} ms (SLUICE_BODY_IDLE_TIMEOUT_MS)")]
    Idle(u64),
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl BodyStop {
    /// The stop behind an I/O error of the body reader, if it was one of ours.
    pub fn of(error: &io::Error) -> Option<Self> {
        error.get_ref()?.downcast_ref::<Self>().copied()
    }
}

impl From<BodyStop> for io::Error {
    fn from(stop: BodyStop) -> Self {
        io::Error::other(stop)
    }
}

/// The bounds a body is read under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_encoded_bytes: u64,
    pub max_decoded_bytes: u64,
    pub idle_timeout: Duration,
}

/// The body's reads, decoded.
pub type BodyReads = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Size of a read of decompressed bytes.
const DECODED_READ_BYTES: usize = 64 * 1024;

/// A future that resolves when the server wants streams to stop reading.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The body's reads, decoded, taken lazily as the client sends them, within `limits`; reading
/// ends with [`BodyStop::ShuttingDown`] once `stop` resolves.
pub fn body_reads(
    body: Body,
    encoding: ContentEncoding,
    limits: BodyLimits,
    stop: StopSignal,
) -> BodyReads {
    let wire = GuardedBody {
        inner: body.into_data_stream(),
        read: 0,
        limits,
        idle: None,
        stop,
    };
    let decoded: BodyReads = match encoding {
        ContentEncoding::Identity => Box::pin(wire),
        ContentEncoding::Gzip => {
            let mut decoder = GzipDecoder::new(StreamReader::new(wire));
            // `cat a.gz b.gz` is a valid gzip stream; read every member.
            decoder.multiple_members(true);
            Box::pin(ReaderStream::with_capacity(decoder, DECODED_READ_BYTES))
        }
        ContentEncoding::Zstd => {
            let mut decoder = ZstdDecoder::new(StreamReader::new(wire));
            decoder.multiple_members(true);
            Box::pin(ReaderStream::with_capacity(decoder, DECODED_READ_BYTES))
        }
    };
    Box::pin(DecodedLimit {
        inner: decoded,
        read: 0,
        max: limits.max_decoded_bytes,
    })
}

/// The wire body with its byte cap, idle timeout and shutdown stop.
struct GuardedBody {
    inner: BodyDataStream,
    read: u64,
    limits: BodyLimits,
    /// Armed while waiting for the client; disarmed when bytes arrive. Time the server spends on
    /// its own work (a slow enqueue) never counts as the client being idle.
    idle: Option<Pin<Box<Sleep>>>,
    stop: StopSignal,
}

impl Stream for GuardedBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyStop::ShuttingDown.into())));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.idle = None;
                this.read += chunk.len() as u64;
                if this.read > this.limits.max_encoded_bytes {
                    let max = this.limits.max_encoded_bytes;
                    return Poll::Ready(Some(Err(BodyStop::EncodedTooLarge(max).into())));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(io::Error::other(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.limits.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(idle.as_mut().poll(cx));
                let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                Poll::Ready(Some(Err(BodyStop::Idle(millis).into())))
            }
        }
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        crate::metrics::body_bytes("wire", self.read);
    }
}

/// The decoded body with its byte cap: a zip bomb stops here, however well it compressed.
struct DecodedLimit {
    inner: BodyReads,
    read: u64,
    max: u64,
}

impl Stream for DecodedLimit {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let read = ready!(self.inner.as_mut().poll_next(cx));
        if let Some(Ok(bytes)) = &read {
            self.read += bytes.len() as u64;
            if self.read > self.max {
                return Poll::Ready(Some(Err(BodyStop::DecodedTooLarge(self.max).into())));
            }
        }
        Poll::Ready(read)
    }
}

impl Drop for DecodedLimit {
    fn drop(&mut self) {
        crate::metrics::body_bytes("decoded", self.read);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn limits(max_encoded_bytes: u64, max_decoded_bytes: u64) -> BodyLimits {
        BodyLimits {
            max_encoded_bytes,
            max_decoded_bytes,
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn never() -> StopSignal {
        Box::pin(std::future::pending())
    }

    async fn read_all(mut reads: BodyReads) -> (Vec<u8>, io::Result<()>) {
        let mut out = Vec::new();
        while let Some(read) = reads.next().await {
            match read {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(error) => return (out, Err(error)),
            }
        }
        (out, Ok(()))
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[tokio::test]
    async fn a_body_within_both_caps_reads_whole() {
        let body = Body::from(vec![b'x'; 100]);
        let (read, result) = read_all(body_reads(
            body,
            ContentEncoding::Identity,
            limits(100, 100),
            never(),
        ))
        .await;
        assert!(result.is_ok());
        assert_eq!(read.len(), 100);
    }

    #[tokio::test]
    async fn the_wire_cap_stops_an_identity_body() {
        let body = Body::from(vec![b'x'; 101]);
        let (_, result) = read_all(body_reads(
            body,
            ContentEncoding::Identity,
            limits(100, 1000),
            never(),
        ))
        .await;
        assert_eq!(
            BodyStop::of(&result.unwrap_err()),
            Some(BodyStop::EncodedTooLarge(100))
        );
    }

    #[tokio::test]
    async fn the_decoded_cap_stops_a_small_gzip_bomb_early() {
        let bomb = gzip(&vec![b'\n'; 4 << 20]);
        assert!(bomb.len() < 16 << 10, "4 MiB of newlines gzip to a few KiB");
        let (read, result) = read_all(body_reads(
            Body::from(bomb),
            ContentEncoding::Gzip,
            limits(1 << 20, 1 << 20),
            never(),
        ))
        .await;
        assert_eq!(
            BodyStop::of(&result.unwrap_err()),
            Some(BodyStop::DecodedTooLarge(1 << 20))
        );
        // Stopped within one read of the cap, not after decoding everything.
        assert!(read.len() <= (1 << 20) + 1024, "read {}", read.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_is_cut_off_after_the_idle_timeout() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
        sender.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        let body = Body::from_stream(tokio_stream_from(receiver));
        let mut reads = body_reads(
            body,
            ContentEncoding::Identity,
            BodyLimits {
                idle_timeout: Duration::from_millis(500),
                ..limits(1000, 1000)
            },
            never(),
        );
        assert_eq!(reads.next().await.unwrap().unwrap(), "abc");
        let started = tokio::time::Instant::now();
        let error = reads.next().await.unwrap().unwrap_err();
        assert_eq!(BodyStop::of(&error), Some(BodyStop::Idle(500)));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        drop(sender);
    }

    #[tokio::test]
    async fn the_stop_signal_ends_reading() {
        let (_sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
        let body = Body::from_stream(tokio_stream_from(receiver));
        let mut reads = body_reads(
            body,
            ContentEncoding::Identity,
            limits(1000, 1000),
            Box::pin(async {}),
        );
        let error = reads.next().await.unwrap().unwrap_err();
        assert_eq!(BodyStop::of(&error), Some(BodyStop::ShuttingDown));
    }

    fn tokio_stream_from(
        mut receiver: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    ) -> impl Stream<Item = io::Result<Bytes>> {
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
