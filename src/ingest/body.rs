//! The request body as a byte reader, decompressed on the fly when `Content-Encoding` asks for it.

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use axum::body::Body;
use futures::TryStreamExt;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

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

pub type BodyReader = Box<dyn AsyncRead + Send + Unpin>;

/// The body's bytes, decoded, read lazily as the client sends them.
pub fn body_reader(body: Body, encoding: ContentEncoding) -> BodyReader {
    let wire = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    match encoding {
        ContentEncoding::Identity => Box::new(wire),
        ContentEncoding::Gzip => {
            let mut decoder = GzipDecoder::new(wire);
            // `cat a.gz b.gz` is a valid gzip stream; read every member.
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        ContentEncoding::Zstd => {
            let mut decoder = ZstdDecoder::new(wire);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
    }
}
