//! NDJSON framing: turns a byte stream into lines, lazily.
//!
//! The framer owns line boundaries and the per-line size limit. It never buffers more than
//! `max_line_bytes` + a little of a line: once a line is known to be too long, only its first
//! `head_bytes` are kept (so the item's `"index"` can still be read) and the rest is skipped as it
//! arrives. It knows nothing about JSON.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// How many leading bytes of an oversized line are kept to look for its `"index"`.
pub const DEFAULT_HEAD_BYTES: usize = 4096;

/// One non-blank line of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 1-based physical line number in the (decoded) body, blank lines included.
    pub line_number: u64,
    pub kind: FrameKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// A complete line, without its `\n` or trailing `\r`.
    Line(Bytes),
    /// A line longer than the limit: its first bytes and its full length (terminator excluded).
    Oversized { head: Bytes, length: u64 },
}

/// A `tokio_util` decoder that frames NDJSON lines with a hard per-line limit.
#[derive(Debug)]
pub struct NdjsonDecoder {
    max_line_bytes: usize,
    head_bytes: usize,
    /// Bytes of the current buffer already known to hold no `\n`.
    scanned: usize,
    lines_seen: u64,
    skipping: Option<SkippedLine>,
}

#[derive(Debug)]
struct SkippedLine {
    head: Bytes,
    length: u64,
    /// The last byte skipped was `\r` (it does not count if the next byte ends the line).
    ends_with_cr: bool,
    /// Every byte so far was white space: such a line is blank, however long.
    blank: bool,
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

impl NdjsonDecoder {
    pub fn new(max_line_bytes: usize) -> Self {
        Self::with_head_bytes(max_line_bytes, DEFAULT_HEAD_BYTES)
    }

    pub fn with_head_bytes(max_line_bytes: usize, head_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            head_bytes: head_bytes.min(max_line_bytes),
            scanned: 0,
            lines_seen: 0,
            skipping: None,
        }
    }

    /// Largest number of bytes the decoder can hold for one line before it starts skipping:
    /// the limit plus room for `\r\n`.
    pub fn max_buffered_bytes(&self) -> usize {
        self.max_line_bytes + 2
    }

    fn next_line_number(&mut self) -> u64 {
        self.lines_seen += 1;
        self.lines_seen
    }

    /// Consumes bytes of a line being skipped; returns the finished line once its `\n` is seen
    /// (`Some(None)` for a line that turned out to be blank).
    fn skip(&mut self, buf: &mut BytesMut) -> Option<Option<Frame>> {
        let skipped = self.skipping.as_mut()?;
        let Some(newline) = memchr::memchr(b'\n', buf) else {
            if let Some(&last) = buf.last() {
                skipped.ends_with_cr = last == b'\r';
            }
            skipped.blank = skipped.blank && is_blank(buf);
            skipped.length += buf.len() as u64;
            buf.clear();
            return None;
        };
        let cr_before_newline = match newline {
            0 => skipped.ends_with_cr,
            _ => buf[newline - 1] == b'\r',
        };
        skipped.length = skipped.length + newline as u64 - u64::from(cr_before_newline);
        skipped.blank = skipped.blank && is_blank(&buf[..newline]);
        buf.advance(newline + 1);
        let skipped = self.skipping.take()?;
        Some(self.finish_skipped(skipped))
    }

    fn finish_skipped(&mut self, skipped: SkippedLine) -> Option<Frame> {
        let line_number = self.next_line_number();
        if skipped.blank {
            return None;
        }
        Some(Frame {
            line_number,
            kind: FrameKind::Oversized {
                head: skipped.head,
                length: skipped.length,
            },
        })
    }

    /// Starts skipping a line whose first `max_buffered_bytes` hold no newline. Only those bytes
    /// are consumed: whatever follows in the buffer is skipped (or framed) by `skip`.
    fn start_skipping(&mut self, buf: &mut BytesMut) {
        let consumed = buf.split_to(self.max_buffered_bytes());
        self.scanned = 0;
        self.skipping = Some(SkippedLine {
            head: Bytes::copy_from_slice(&consumed[..self.head_bytes]),
            length: consumed.len() as u64,
            ends_with_cr: consumed.last() == Some(&b'\r'),
            blank: is_blank(&consumed),
        });
    }

    /// Turns the bytes of one line (terminator removed) into a frame, or `None` for a blank line.
    fn finish_line(&mut self, mut line: BytesMut) -> Option<Frame> {
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        let line_number = self.next_line_number();
        if is_blank(&line) {
            return None;
        }
        let kind = if line.len() > self.max_line_bytes {
            FrameKind::Oversized {
                head: Bytes::copy_from_slice(&line[..self.head_bytes]),
                length: line.len() as u64,
            }
        } else {
            FrameKind::Line(line.freeze())
        };
        Some(Frame { line_number, kind })
    }
}

impl Decoder for NdjsonDecoder {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            if self.skipping.is_some() {
                match self.skip(buf) {
                    Some(Some(frame)) => return Ok(Some(frame)),
                    Some(None) => continue,
                    None => return Ok(None),
                }
            }
            // Never look further than one maximal line (+ "\r\n") ahead.
            let window = buf.len().min(self.max_buffered_bytes());
            match memchr::memchr(b'\n', &buf[self.scanned..window]) {
                Some(offset) => {
                    let newline = self.scanned + offset;
                    self.scanned = 0;
                    let mut line = buf.split_to(newline + 1);
                    line.truncate(newline);
                    if let Some(frame) = self.finish_line(line) {
                        return Ok(Some(frame));
                    }
                    // A blank line: keep looking in what is left.
                }
                None if buf.len() >= self.max_buffered_bytes() => {
                    // No newline within the limit: the line is oversized whatever follows.
                    self.start_skipping(buf);
                }
                None => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some(mut skipped) = self.skipping.take() {
            skipped.length -= u64::from(skipped.ends_with_cr);
            return Ok(self.finish_skipped(skipped));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // The last line may lack its newline.
        self.scanned = 0;
        let line = buf.split();
        Ok(self.finish_line(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_all(chunks: &[&[u8]], max: usize) -> Vec<Frame> {
        let mut decoder = NdjsonDecoder::with_head_bytes(max, 8);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
            assert!(buf.len() <= decoder.max_buffered_bytes() + chunk.len());
        }
        while let Some(frame) = decoder.decode_eof(&mut buf).unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn line(n: u64, text: &str) -> Frame {
        Frame {
            line_number: n,
            kind: FrameKind::Line(Bytes::copy_from_slice(text.as_bytes())),
        }
    }

    #[test]
    fn frames_lines_crlf_blank_and_unterminated_last_line() {
        let frames = frame_all(&[b"a\r\n\r\n  \nbb\n\nccc"], 100);
        assert_eq!(frames, vec![line(1, "a"), line(4, "bb"), line(6, "ccc")]);
    }

    #[test]
    fn oversized_line_keeps_head_and_length_and_framing_continues() {
        let long = format!("{{\"index\":7,{}}}", "x".repeat(50));
        let body = format!("{long}\r\nok\n");
        let frames = frame_all(&[body.as_bytes()], 20);
        assert_eq!(
            frames[0],
            Frame {
                line_number: 1,
                kind: FrameKind::Oversized {
                    head: Bytes::copy_from_slice(&long.as_bytes()[..8]),
                    length: long.len() as u64,
                },
            }
        );
        assert_eq!(frames[1], line(2, "ok"));
    }

    #[test]
    fn oversized_line_split_in_small_chunks_is_skipped_not_buffered() {
        let long = "y".repeat(1000);
        let body = format!("{long}\r\nz");
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(7).collect();
        let frames = frame_all(&chunks, 10);
        assert_eq!(frames.len(), 2);
        assert!(matches!(
            &frames[0].kind,
            FrameKind::Oversized { length: 1000, .. }
        ));
        assert_eq!(frames[1], line(2, "z"));
    }

    #[test]
    fn line_of_exactly_the_limit_with_crlf_is_not_oversized() {
        let frames = frame_all(&[b"0123456789\r", b"\n"], 10);
        assert_eq!(frames, vec![line(1, "0123456789")]);
        let frames = frame_all(&[b"01234567890\n"], 10);
        assert!(matches!(
            &frames[0].kind,
            FrameKind::Oversized { length: 11, .. }
        ));
    }

    #[test]
    fn unterminated_oversized_last_line_is_reported() {
        let frames = frame_all(&[b"ok\n", &[b'q'; 40]], 10);
        assert_eq!(frames[0], line(1, "ok"));
        assert!(matches!(
            &frames[1].kind,
            FrameKind::Oversized { length: 40, .. }
        ));
    }

    fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b" ".to_vec()),
            Just("é€😀".as_bytes().to_vec()),
            "[a-z{}\":,0-9]{0,30}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_chunking_frames_to_the_same_items(
            body in body_strategy(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            max in 1usize..40,
        ) {
            let whole = frame_all(&[&body], max);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for point in points {
                chunks.push(&body[start..point]);
                start = point;
            }
            chunks.push(&body[start..]);
            prop_assert_eq!(frame_all(&chunks, max), whole);
        }
    }
}
