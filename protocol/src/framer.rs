//! NDJSON framing: turns the body's reads into lines, lazily.
//!
//! The framer owns line boundaries and the per-line size limit. It never holds more than one
//! maximal line (`max_line_bytes` + `\r\n`) plus the last read: once a line is known to be too long,
//! only its first `head_bytes` are kept (so the item's `"index"` can still be read) and the rest is
//! skipped as it arrives. It knows nothing about JSON.
//!
//! It is on the hot path of every body, so it does as little per line as it can. It frames the
//! reads the body hands it (`Bytes`, as hyper or the decompressor made them) where they lie, and
//! lends each line out by reference until the next one is asked for: a line inside one read is
//! neither copied nor reference-counted (a [`Line`] can still be turned into `Bytes` sharing the
//! read, for a payload that must outlive framing). Only a line cut between two reads is copied, to be
//! joined. A run of blank lines is skipped in bulk, so a body of nothing but newlines costs a scan,
//! not a frame per line.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::Stream;

/// How many leading bytes of an oversized line are kept to look for its `"index"`.
pub const DEFAULT_HEAD_BYTES: usize = 4096;

/// One non-blank line of the body, lent by the framer until it frames the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// 1-based physical line number in the (decoded) body, blank lines included.
    pub line_number: u64,
    pub kind: FrameKind<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind<'a> {
    /// A complete line, without its `\n` or trailing `\r`.
    Line(Line<'a>),
    /// A line longer than the limit: its first bytes and its full length (terminator excluded).
    Oversized { head: &'a [u8], length: u64 },
}

/// The bytes of a complete line, borrowed from the read they lie in.
#[derive(Clone, Copy)]
pub struct Line<'a> {
    bytes: &'a [u8],
    /// The buffer `bytes` lie in, when they lie in one that can be shared.
    buffer: Option<&'a Bytes>,
}

impl<'a> Line<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `part` of this line as `Bytes` that outlive the frame: a slice sharing the read's buffer,
    /// not a copy, for a line the framer made.
    pub fn share(&self, part: &[u8]) -> Bytes {
        match self.buffer {
            Some(buffer) => buffer.slice_ref(part),
            None => Bytes::copy_from_slice(part),
        }
    }
}

/// A line made from bytes that lie in no shared buffer; `share` copies.
impl<'a> From<&'a [u8]> for Line<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            buffer: None,
        }
    }
}

impl PartialEq for Line<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Line<'_> {}

impl fmt::Debug for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Line({:?})", String::from_utf8_lossy(self.bytes))
    }
}

/// Cuts NDJSON lines out of the reads it is given, with a hard per-line limit: [`push`] a read,
/// take [`next_frame`] until it says `None`, push the next read; [`finish`] once the body ended.
///
/// [`push`]: LineFramer::push
/// [`next_frame`]: LineFramer::next_frame
/// [`finish`]: LineFramer::finish
#[derive(Debug)]
pub struct LineFramer {
    max_line_bytes: usize,
    head_bytes: usize,
    /// The last read, and how much of it is framed.
    read: Bytes,
    at: usize,
    /// The start of a line begun in an earlier read (no `\n` in it, shorter than
    /// `max_buffered_bytes`), copied so the read it came from can go.
    partial: BytesMut,
    /// The line last joined from `partial` and a read, while a frame lends it.
    joined: Bytes,
    /// The head of the last oversized line, while a frame lends it.
    head: Bytes,
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

impl SkippedLine {
    /// A line whose first bytes, `first`, already hold no newline and reach the limit.
    fn begin(first: &[u8], head_bytes: usize) -> Self {
        Self {
            head: Bytes::copy_from_slice(&first[..head_bytes]),
            length: first.len() as u64,
            ends_with_cr: first.last() == Some(&b'\r'),
            blank: is_blank(first),
        }
    }
}

/// What one step of framing came to. The steps are inlined into `next_frame`: returned through
/// memory, this value cost a store-forwarding stall on every line.
enum Progress {
    Found(Found),
    /// A blank line, or a step that made no frame yet: go on.
    Blank,
    /// The read is used up.
    NeedsRead,
}

/// A frame, by position, before it is lent out.
enum Found {
    Line {
        line_number: u64,
        in_joined: bool,
        start: usize,
        end: usize,
    },
    /// Its head is in `LineFramer::head`.
    Oversized { line_number: u64, length: u64 },
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

impl LineFramer {
    pub fn new(max_line_bytes: usize) -> Self {
        Self::with_head_bytes(max_line_bytes, DEFAULT_HEAD_BYTES)
    }

    pub fn with_head_bytes(max_line_bytes: usize, head_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            head_bytes: head_bytes.min(max_line_bytes),
            read: Bytes::new(),
            at: 0,
            partial: BytesMut::new(),
            joined: Bytes::new(),
            head: Bytes::new(),
            lines_seen: 0,
            skipping: None,
        }
    }

    /// Largest number of bytes the framer can hold for one line before it starts skipping:
    /// the limit plus room for `\r\n`.
    pub fn max_buffered_bytes(&self) -> usize {
        self.max_line_bytes + 2
    }

    /// Bytes the framer holds: the last read, the start of a line cut between reads, the line or
    /// head the last frame lends, and the head kept of a line being skipped. It stays below
    /// `max_buffered_bytes` + one read, and below `max_buffered_bytes` whenever the framer waits
    /// for the next read.
    pub fn held_bytes(&self) -> usize {
        self.read.len()
            + self.partial.len()
            + self.joined.len()
            + self.head.len()
            + self.skipping.as_ref().map_or(0, |line| line.head.len())
    }

    /// Hands the framer the body's next read. Every frame of the previous read must have been
    /// taken (`next_frame` returned `None`).
    pub fn push(&mut self, read: Bytes) {
        debug_assert!(
            self.at == self.read.len(),
            "the previous read is not framed yet"
        );
        self.read = read;
        self.at = 0;
    }

    /// The next frame of what was pushed so far, or `None` once the framer needs the next read.
    #[inline]
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        self.release_lent();
        let found = loop {
            let progress = if self.skipping.is_some() {
                self.skip()
            } else if !self.partial.is_empty() {
                self.complete_partial()
            } else {
                self.frame_in_read()
            };
            match progress {
                Progress::Found(found) => break found,
                Progress::Blank => {}
                Progress::NeedsRead => {
                    // Let go of the read, so its buffer can be freed or reused.
                    self.read = Bytes::new();
                    self.at = 0;
                    return None;
                }
            }
        };
        Some(self.lend(found))
    }

    /// The last frame, once the body has ended and `next_frame` said `None`: a last line without a
    /// newline, or the line being skipped. `None` when there is nothing left (and from then on).
    pub fn finish(&mut self) -> Option<Frame<'_>> {
        self.release_lent();
        let progress = if let Some(mut skipped) = self.skipping.take() {
            skipped.length -= u64::from(skipped.ends_with_cr);
            self.finish_skipped(skipped)
        } else if self.partial.is_empty() {
            Progress::Blank
        } else {
            self.join_partial()
        };
        match progress {
            Progress::Found(found) => Some(self.lend(found)),
            Progress::Blank | Progress::NeedsRead => None,
        }
    }

    /// The fast path: a line that begins in the current read. A line that also ends in it is lent
    /// straight from the read.
    #[inline]
    fn frame_in_read(&mut self) -> Progress {
        let rest = &self.read[self.at..];
        if rest.first().copied().is_some_and(is_white_space) {
            let (bytes, lines) = leading_blank_lines(rest);
            self.at += bytes;
            self.lines_seen += lines;
        }
        let rest = &self.read[self.at..];
        let Some(newline) = memchr::memchr(b'\n', rest) else {
            // The read ends inside a line.
            let max = self.max_buffered_bytes();
            if rest.len() >= max {
                self.skipping = Some(SkippedLine::begin(&rest[..max], self.head_bytes));
                self.at += max;
                return Progress::Blank;
            }
            self.partial.extend_from_slice(rest);
            return Progress::NeedsRead;
        };
        let cr = newline > 0 && rest[newline - 1] == b'\r';
        let start = self.at;
        self.at += newline + 1;
        self.finish_line(false, start, start + newline - usize::from(cr))
    }

    /// A line begun in an earlier read: joined with the start of this one, as far as the limit.
    #[inline]
    fn complete_partial(&mut self) -> Progress {
        let rest = &self.read[self.at..];
        let room = self.max_buffered_bytes() - self.partial.len();
        let searched = rest.len().min(room);
        match memchr::memchr(b'\n', &rest[..searched]) {
            Some(newline) => {
                self.partial.extend_from_slice(&rest[..newline]);
                self.at += newline + 1;
                self.join_partial()
            }
            None if searched == room => {
                // The line reaches the limit without ending: oversized, whatever follows.
                self.partial.extend_from_slice(&rest[..room]);
                self.at += room;
                self.skipping = Some(SkippedLine::begin(&self.partial, self.head_bytes));
                self.partial.clear();
                Progress::Blank
            }
            None => {
                self.partial.extend_from_slice(rest);
                Progress::NeedsRead
            }
        }
    }

    /// Frames `partial` as a whole line (its `\n` already consumed, a trailing `\r` removed here).
    #[inline]
    fn join_partial(&mut self) -> Progress {
        self.joined = self.partial.split().freeze();
        let cr = self.joined.last() == Some(&b'\r');
        self.finish_line(true, 0, self.joined.len() - usize::from(cr))
    }

    /// Consumes bytes of a line being skipped, up to and including its `\n`.
    #[inline]
    fn skip(&mut self) -> Progress {
        let Some(mut skipped) = self.skipping.take() else {
            return Progress::Blank;
        };
        let rest = &self.read[self.at..];
        let Some(newline) = memchr::memchr(b'\n', rest) else {
            if let Some(&last) = rest.last() {
                skipped.ends_with_cr = last == b'\r';
            }
            skipped.blank = skipped.blank && is_blank(rest);
            skipped.length += rest.len() as u64;
            self.skipping = Some(skipped);
            return Progress::NeedsRead;
        };
        let cr_before_newline = match newline {
            0 => skipped.ends_with_cr,
            _ => rest[newline - 1] == b'\r',
        };
        skipped.length = skipped.length + newline as u64 - u64::from(cr_before_newline);
        skipped.blank = skipped.blank && is_blank(&rest[..newline]);
        self.at += newline + 1;
        self.finish_skipped(skipped)
    }

    #[inline]
    fn next_line_number(&mut self) -> u64 {
        self.lines_seen += 1;
        self.lines_seen
    }

    #[inline]
    fn finish_skipped(&mut self, skipped: SkippedLine) -> Progress {
        let line_number = self.next_line_number();
        if skipped.blank {
            return Progress::Blank;
        }
        self.head = skipped.head;
        Progress::Found(Found::Oversized {
            line_number,
            length: skipped.length,
        })
    }

    /// Frames the line at `start..end` of the read (or of the joined line), or skips it if blank.
    #[inline(always)]
    fn finish_line(&mut self, in_joined: bool, start: usize, end: usize) -> Progress {
        let line_number = self.next_line_number();
        let buffer = if in_joined { &self.joined } else { &self.read };
        let line = &buffer[start..end];
        if is_blank(line) {
            self.joined = Bytes::new();
            return Progress::Blank;
        }
        if line.len() > self.max_line_bytes {
            let length = line.len() as u64;
            self.head = Bytes::copy_from_slice(&line[..self.head_bytes]);
            self.joined = Bytes::new();
            return Progress::Found(Found::Oversized {
                line_number,
                length,
            });
        }
        Progress::Found(Found::Line {
            line_number,
            in_joined,
            start,
            end,
        })
    }

    #[inline]
    fn lend(&self, found: Found) -> Frame<'_> {
        match found {
            Found::Line {
                line_number,
                in_joined,
                start,
                end,
            } => {
                let buffer = if in_joined { &self.joined } else { &self.read };
                Frame {
                    line_number,
                    kind: FrameKind::Line(Line {
                        bytes: &buffer[start..end],
                        buffer: Some(buffer),
                    }),
                }
            }
            Found::Oversized {
                line_number,
                length,
            } => Frame {
                line_number,
                kind: FrameKind::Oversized {
                    head: &self.head,
                    length,
                },
            },
        }
    }

    /// Drops what the last frame lent, now that it is gone.
    #[inline]
    fn release_lent(&mut self) {
        if !self.joined.is_empty() {
            self.joined = Bytes::new();
        }
        if !self.head.is_empty() {
            self.head = Bytes::new();
        }
    }
}

/// Maps each frame of a body, given as a stream of reads, to an owned value as it is framed (a
/// frame only lives until the next one). A read error ends the stream with that error; the line
/// it cut short is not framed.
pub fn map_frames<S, F, T>(body: S, max_line_bytes: usize, map: F) -> MapFrames<S, F>
where
    F: FnMut(Frame<'_>) -> T,
{
    MapFrames {
        body,
        framer: LineFramer::new(max_line_bytes),
        state: BodyState::Reading,
        map,
    }
}

pub struct MapFrames<S, F> {
    body: S,
    framer: LineFramer,
    state: BodyState,
    map: F,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Reading,
    Ended,
    Failed,
}

impl<S, F, T> Stream for MapFrames<S, F>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
    F: FnMut(Frame<'_>) -> T + Unpin,
{
    type Item = io::Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.state {
                BodyState::Failed => return Poll::Ready(None),
                BodyState::Ended => {
                    return Poll::Ready(this.framer.finish().map(|frame| Ok((this.map)(frame))));
                }
                BodyState::Reading => {}
            }
            if let Some(frame) = this.framer.next_frame() {
                return Poll::Ready(Some(Ok((this.map)(frame))));
            }
            match ready!(Pin::new(&mut this.body).poll_next(cx)) {
                Some(Ok(read)) => this.framer.push(read),
                Some(Err(error)) => {
                    this.state = BodyState::Failed;
                    return Poll::Ready(Some(Err(error)));
                }
                None => this.state = BodyState::Ended,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame kept past the next call, to compare.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        line_number: u64,
        kind: OwnedKind,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum OwnedKind {
        Line(Vec<u8>),
        Oversized { head: Vec<u8>, length: u64 },
    }

    fn owned(frame: Frame<'_>) -> Owned {
        let kind = match frame.kind {
            FrameKind::Line(line) => OwnedKind::Line(line.bytes().to_vec()),
            FrameKind::Oversized { head, length } => OwnedKind::Oversized {
                head: head.to_vec(),
                length,
            },
        };
        Owned {
            line_number: frame.line_number,
            kind,
        }
    }

    /// Feeds `chunks` to a framer one read at a time, taking every frame of a read before the
    /// next, and checks the memory bound after every call: the framer never holds one maximal line
    /// plus the last read, and holds less than one maximal line whenever it waits for a read.
    fn frame_all(chunks: &[&[u8]], max: usize) -> Vec<Owned> {
        let mut framer = LineFramer::with_head_bytes(max, 8);
        let mut frames = Vec::new();
        for chunk in chunks {
            framer.push(Bytes::copy_from_slice(chunk));
            let limit = framer.max_buffered_bytes() + chunk.len();
            while let Some(frame) = framer.next_frame() {
                frames.push(owned(frame));
                assert!(framer.held_bytes() < limit, "holds {}", framer.held_bytes());
            }
            let held = framer.held_bytes();
            assert!(held < framer.max_buffered_bytes(), "waits holding {held}");
        }
        while let Some(frame) = framer.finish() {
            frames.push(owned(frame));
            assert!(framer.held_bytes() < framer.max_buffered_bytes());
        }
        assert_eq!(framer.held_bytes(), 0, "everything is framed at the end");
        frames
    }

    fn line(n: u64, text: &str) -> Owned {
        Owned {
            line_number: n,
            kind: OwnedKind::Line(text.as_bytes().to_vec()),
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
            Owned {
                line_number: 1,
                kind: OwnedKind::Oversized {
                    head: long.as_bytes()[..8].to_vec(),
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
            OwnedKind::Oversized { length: 1000, .. }
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
            OwnedKind::Oversized { length: 11, .. }
        ));
    }

    #[test]
    fn unterminated_oversized_last_line_is_reported() {
        let frames = frame_all(&[b"ok\n", &[b'q'; 40]], 10);
        assert_eq!(frames[0], line(1, "ok"));
        assert!(matches!(
            &frames[1].kind,
            OwnedKind::Oversized { length: 40, .. }
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

    #[test]
    fn a_line_inside_one_read_is_lent_from_it_and_a_cut_line_is_joined() {
        let read = Bytes::from_static(b"{\"a\":1}\n{\"b\"");
        let mut framer = LineFramer::new(100);
        framer.push(read.clone());
        let frame = framer.next_frame().expect("the first line is framed");
        let FrameKind::Line(first) = frame.kind else {
            panic!("a line");
        };
        assert_eq!(first.bytes().as_ptr(), read.as_ptr(), "no copy");
        let shared = first.share(&first.bytes()[1..4]);
        assert_eq!(
            (shared.as_ptr(), &shared[..]),
            (read[1..].as_ptr(), &b"\"a\""[..])
        );
        assert!(framer.next_frame().is_none());
        framer.push(Bytes::from_static(b":2}\r\n"));
        let joined = framer.next_frame().map(owned);
        assert_eq!(joined, Some(line(2, "{\"b\":2}")));
        assert!(framer.next_frame().is_none());
        assert!(framer.finish().is_none());
        assert_eq!(framer.held_bytes(), 0);
    }

    fn reads(chunks: &[&'static [u8]]) -> Vec<io::Result<Bytes>> {
        chunks
            .iter()
            .map(|&chunk| Ok(Bytes::from_static(chunk)))
            .collect()
    }

    #[tokio::test]
    async fn the_stream_frames_an_unterminated_last_line_at_the_end_of_the_body() {
        use futures::StreamExt;
        let body = futures::stream::iter(reads(&[b"a\nb", b"b\nc", b"c"]));
        let framed: Vec<Owned> = map_frames(body, 10, owned)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(framed, vec![line(1, "a"), line(2, "bb"), line(3, "cc")]);
    }

    #[tokio::test]
    async fn a_read_error_ends_the_stream_without_framing_the_line_it_cut() {
        use futures::StreamExt;
        let mut body = reads(&[b"a\nb"]);
        body.push(Err(io::Error::other("connection reset")));
        body.extend(reads(&[b"b\n"]));
        let framed: Vec<io::Result<Owned>> = map_frames(futures::stream::iter(body), 10, owned)
            .collect()
            .await;
        assert_eq!(framed.len(), 2);
        assert_eq!(framed[0].as_ref().unwrap(), &line(1, "a"));
        assert_eq!(
            framed[1].as_ref().unwrap_err().to_string(),
            "connection reset"
        );
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

        /// `frame_all` asserts the memory bound after every call; this feeds it the inputs
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
                    OwnedKind::Line(line) => prop_assert!(line.len() <= max && !is_blank(line)),
                    OwnedKind::Oversized { head, length } => {
                        prop_assert!(head.len() <= 8.min(max) && *length > max as u64);
                    }
                }
            }
            prop_assert_eq!(frames, frame_all(&[&body], max));
        }
    }
}
