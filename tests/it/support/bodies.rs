//! Request bodies: NDJSON lines, and bodies sent in chunks, never ending, or fed by the test.

use bytes::Bytes;
use futures::StreamExt;
use reqwest::Body;

/// NDJSON lines for indexes, each `{"index":i,"task":"t","payload":{"n":i}}`.
pub fn ndjson(indexes: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut body = Vec::new();
    for index in indexes {
        body.extend_from_slice(
            format!("{{\"index\":{index},\"task\":\"t\",\"payload\":{{\"n\":{index}}}}}\n")
                .as_bytes(),
        );
    }
    body
}

/// Splits a body into chunks at every `step` bytes.
pub fn chunked(body: &[u8], step: usize) -> Vec<Vec<u8>> {
    body.chunks(step).map(<[u8]>::to_vec).collect()
}

/// A stream of chunks that sends `first` and then never ends: for checks that the server answers
/// without reading the whole body.
pub fn endless_body(first: Vec<u8>) -> Body {
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    Body::wrap_stream(first.chain(futures::stream::pending()))
}

/// A chunked body fed through a channel: the test decides when each chunk goes and when the body
/// ends (dropping the sender). Until then the server waits for more.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, Body) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let chunks = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
    (sender, Body::wrap_stream(chunks))
}
