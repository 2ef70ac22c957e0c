//! NDJSON framing: turns a byte stream into lines, lazily.
//!
//! The framer owns line boundaries and the per-line size limit. It never holds more than one
//! maximal line (`max_line_bytes` + `\r\n`) plus the last read: once a line is known to be too long,
//! only its first `head_bytes` are kept (so the item's `"index"` can still be read) and the rest is
//! skipped as it arrives. It knows nothing about JSON.
//!
//! It is on the hot path of every body, so it does as little per line as it can: the complete lines
//! of the read buffer are taken out in one piece and cut into frames from there (a line is a slice
//! of the read buffer, never a copy), the unfinished line at the end of a read is not scanned again
//! when more arrives, and a run of blank lines is skipped in bulk, so a body of nothing but newlines
//! costs a scan, not a frame per line.

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
    /// Complete lines (the last one ends with `\n`) taken from the read buffer in one piece:
    /// splitting the read buffer once per read instead of once per line is most of the speed.
    complete_lines: Bytes,
    /// Bytes at the start of the read buffer already known to hold no `\n`.
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

/// White space as far as blank lines go; `\n` included, so runs of blank lines are one run.
/// (`|`, not `matches!`: this form compiles to vector compares in `white_space_prefix`.)
fn is_white_space(byte: u8) -> bool {
    (byte == b' ') | (byte == b'\t') | (byte == b'\r') | (byte == b'\n')
}

/// Length of the white space at the start of `bytes`.
fn white_space_prefix(bytes: &[u8]) -> usize {
    const BLOCK: usize = 32;
    if !bytes.first().copied().is_some_and(is_white_space) {
        return 0;
    }
    // Whole blocks are checked without stopping inside one, so the check is a few vector compares.
    let (blocks, _) = bytes.as_chunks::<BLOCK>();
    let white_blocks = blocks
        .iter()
        .take_while(|block| block.iter().fold(true, |all, &b| all & is_white_space(b)))
        .count();
    let start = white_blocks * BLOCK;
    start
        + bytes[start..]
            .iter()
            .take_while(|&&b| is_white_space(b))
            .count()
}

/// Whether a line (or part of one: no `\n` inside) is only spaces, tabs and `\r`.
#[inline]
fn is_blank(bytes: &[u8]) -> bool {
    bytes.first().is_none_or(|&b| is_white_space(b)) && white_space_prefix(bytes) == bytes.len()
}

/// The blank lines at the start of `bytes`: how many bytes they span (through the last `\n` of the
/// leading white space) and how many lines that is.
fn leading_blank_lines(bytes: &[u8]) -> (usize, u64) {
    let white = white_space_prefix(bytes);
    match memchr::memrchr(b'\n', &bytes[..white]) {
        Some(last) => {
            let lines = memchr::memchr_iter(b'\n', &bytes[..=last]).count();
            (last + 1, lines as u64)
        }
        None => (0, 0),
    }
}

impl NdjsonDecoder {
    pub fn new(max_line_bytes: usize) -> Self {
        Self::with_head_bytes(max_line_bytes, DEFAULT_HEAD_BYTES)
    }

    pub fn with_head_bytes(max_line_bytes: usize, head_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            head_bytes: head_bytes.min(max_line_bytes),
            complete_lines: Bytes::new(),
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

    /// Bytes the decoder holds besides the read buffer: complete lines taken from it but not framed
    /// yet, and the head kept of a line being skipped. With the read buffer's length, this is all
    /// the memory framing holds; it stays below `max_buffered_bytes` + one read.
    pub fn held_bytes(&self) -> usize {
        self.complete_lines.len() + self.skipping.as_ref().map_or(0, |line| line.head.len())
    }

    fn next_line_number(&mut self) -> u64 {
        self.lines_seen += 1;
        self.lines_seen
    }

    /// The next frame among the complete lines taken from the read buffer, blank lines skipped.
    #[inline]
    fn next_complete_line(&mut self) -> Option<Frame> {
        loop {
            if self
                .complete_lines
                .first()
                .copied()
                .is_some_and(is_white_space)
            {
                let (bytes, lines) = leading_blank_lines(&self.complete_lines);
                self.complete_lines.advance(bytes);
                self.lines_seen += lines;
            }
            let Some(newline) = memchr::memchr(b'\n', &self.complete_lines) else {
                // Let go of the read buffer, so that the next read can reuse it in place.
                self.complete_lines = Bytes::new();
                return None;
            };
            let cr = newline > 0 && self.complete_lines[newline - 1] == b'\r';
            let end = newline - usize::from(cr);
            // `clone` + `truncate` inline to a reference count and two stores; `split_to` does not.
            let mut line = self.complete_lines.clone();
            line.truncate(end);
            self.complete_lines.advance(newline + 1);
            if let Some(frame) = self.finish_line(line) {
                return Some(frame);
            }
        }
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

    /// Turns the bytes of one line (`\n` and `\r` removed) into a frame, or `None` for a blank line.
    #[inline]
    fn finish_line(&mut self, line: Bytes) -> Option<Frame> {
        let line_number = self.next_line_number();
        if is_blank(&line) {
            return None;
        }
        let kind = if line.len() > self.max_line_bytes {
            // A copy, so a frame in flight does not pin the (large) buffer the line came from.
            FrameKind::Oversized {
                head: Bytes::copy_from_slice(&line[..self.head_bytes]),
                length: line.len() as u64,
            }
        } else {
            FrameKind::Line(line)
        };
        Some(Frame { line_number, kind })
    }
}

impl Decoder for NdjsonDecoder {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            if let Some(frame) = self.next_complete_line() {
                return Ok(Some(frame));
            }
            if self.skipping.is_some() {
                match self.skip(buf) {
                    Some(Some(frame)) => return Ok(Some(frame)),
                    Some(None) => continue,
                    None => return Ok(None),
                }
            }
            // Only bytes not scanned before: from the end, as the last newline is all that matters.
            match memchr::memrchr(b'\n', &buf[self.scanned..]) {
                Some(offset) => {
                    // The buffer holds at most one maximal line before this read: a line in here
                    // longer than the limit is reported as oversized when it is framed.
                    let end = self.scanned + offset + 1;
                    self.complete_lines = buf.split_to(end).freeze();
                    // What is left starts a line and was just scanned: it holds no newline.
                    self.scanned = buf.len();
                }
                None if buf.len() >= self.max_buffered_bytes() => {
                    // No newline in a buffer already past the limit: the line is oversized
                    // whatever follows, and only its head is worth keeping.
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
        let mut line = buf.split().freeze();
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        Ok(self.finish_line(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the framer holds: the read buffer, lines taken from it and a skipped line's head.
    fn held(decoder: &NdjsonDecoder, buf: &BytesMut) -> usize {
        buf.len() + decoder.held_bytes()
    }

    /// Feeds `chunks` to a decoder the way `FramedRead` does (each read appended to one buffer,
    /// then decoded until the decoder asks for more) and checks the memory bound after every call:
    /// the framer never holds one maximal line plus the last read, and holds less than one
    /// maximal line whenever it waits for the next read.
    fn frame_all(chunks: &[&[u8]], max: usize) -> Vec<Frame> {
        let mut decoder = NdjsonDecoder::with_head_bytes(max, 8);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let limit = decoder.max_buffered_bytes() + chunk.len();
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                assert!(
                    held(&decoder, &buf) < limit,
                    "holds {}",
                    held(&decoder, &buf)
                );
                frames.push(frame);
            }
            let held = held(&decoder, &buf);
            assert!(held < decoder.max_buffered_bytes(), "waits holding {held}");
        }
        while let Some(frame) = decoder.decode_eof(&mut buf).unwrap() {
            assert!(held(&decoder, &buf) < decoder.max_buffered_bytes());
            frames.push(frame);
        }
        assert_eq!(held(&decoder, &buf), 0, "everything is framed at the end");
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

    #[test]
    fn runs_of_blank_lines_are_skipped_with_their_line_numbers() {
        let mut body = "\n".repeat(100_000);
        body.push_str(&"\r\n".repeat(10));
        body.push_str(&"  \t\r\n".repeat(5));
        body.push_str("x\n \n  y");
        let expected = vec![line(100_016, "x"), line(100_018, "  y")];
        assert_eq!(frame_all(&[body.as_bytes()], 100), expected);
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(7).collect();
        assert_eq!(frame_all(&chunks, 100), expected);
    }

    #[test]
    fn white_space_only_line_longer_than_the_limit_is_blank() {
        let body = format!("{}\r\nz\n{}", " ".repeat(1000), "\t".repeat(50));
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(64).collect();
        assert_eq!(frame_all(&chunks, 10), vec![line(2, "z")]);
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

    fn long_lines_strategy() -> impl Strategy<Value = Vec<u8>> {
        let run = (
            1usize..400,
            prop::sample::select(vec![b'x', b' ', b'\r', b'\n']),
        )
            .prop_map(|(length, byte)| vec![byte; length]);
        let piece = prop_oneof![
            3 => Just(b"\n".to_vec()),
            1 => Just(b"\r\n".to_vec()),
            2 => "[a-z{}\":,0-9 ]{0,30}".prop_map(String::into_bytes),
            1 => run,
        ];
        proptest::collection::vec(piece, 0..80).prop_map(|pieces| pieces.concat())
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

        /// `frame_all` asserts the memory bound after every decode call; this feeds it the inputs
        /// that stress it: long lines, oversized lines, long blank lines, many short lines, reads
        /// smaller and larger than a line.
        #[test]
        fn framer_never_holds_more_than_one_line_and_one_read(
            body in long_lines_strategy(),
            reads in proptest::collection::vec(1usize..300, 1..40),
            max in 0usize..64,
        ) {
            let mut chunks = Vec::new();
            let mut start = 0;
            for read in reads.iter().cycle() {
                if start == body.len() {
                    break;
                }
                let end = (start + read).min(body.len());
                chunks.push(&body[start..end]);
                start = end;
            }
            let frames = frame_all(&chunks, max);
            for frame in &frames {
                match &frame.kind {
                    FrameKind::Line(line) => prop_assert!(line.len() <= max && !is_blank(line)),
                    FrameKind::Oversized { head, length } => {
                        prop_assert!(head.len() <= 8.min(max) && *length > max as u64);
                    }
                }
            }
            prop_assert_eq!(frames, frame_all(&[&body], max));
        }
    }
}
