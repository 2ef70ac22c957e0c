//! Framer throughput against its ceiling: a plain `memchr` newline scan of the same bytes.
//!
//! `cargo bench --bench framer`. The framer is fed 64 KiB reads, as the server reads a body: each
//! read is copied into the framer's buffer, as `FramedRead` does, and every frame is built and
//! dropped, as the pipeline would. `read_copy_only` is that copy alone and
//! `read_copy_and_line_search` the copy plus one `memchr` per line: the floor under any framer fed
//! by `FramedRead`, before the cost of a frame (a reference-counted `Bytes` per line).
//!
//! Groups:
//! - `framing`: 200 000 item lines of ~150 bytes.
//! - `blank_lines`: 4 MiB of blank lines (`\n` only, or a mix of `\r\n` and white space), the shape
//!   of a decompression bomb; they must cost about a `memchr` scan, not a frame each.
//! - `two_gib_of_newlines`: 2 GiB of `\n`, as 32 768 reads of one 64 KiB chunk.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::ingest::framer::NdjsonDecoder;
use tokio_util::codec::Decoder;

const READ_BYTES: usize = 64 * 1024;
const MAX_LINE_BYTES: usize = 3_145_728;

fn item_body(lines: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for index in 0..lines {
        body.extend_from_slice(
            format!(
                "{{\"index\":{index},\"task\":\"bench\",\"payload\":\"{}\"}}\n",
                "x".repeat(100)
            )
            .as_bytes(),
        );
    }
    body
}

/// `bytes` of blank lines cycling through the given line shapes.
fn blank_body(bytes: usize, shapes: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes + 16);
    for shape in shapes.iter().cycle() {
        if body.len() >= bytes {
            break;
        }
        body.extend_from_slice(shape);
    }
    body
}

/// Frames `reads` in order, as `FramedRead` would; returns how many frames came out.
fn frame<'a>(reads: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut decoder = NdjsonDecoder::new(MAX_LINE_BYTES);
    let mut buffer = BytesMut::with_capacity(2 * READ_BYTES);
    let mut frames = 0;
    for read in reads {
        buffer.extend_from_slice(read);
        while decoder
            .decode(&mut buffer)
            .expect("framing never fails")
            .is_some()
        {
            frames += 1;
        }
    }
    while decoder
        .decode_eof(&mut buffer)
        .expect("framing never fails")
        .is_some()
    {
        frames += 1;
    }
    frames
}

/// Only the copy of each read into a buffer, which framing cannot avoid behind `AsyncRead`.
fn copy_reads<'a>(reads: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut buffer = BytesMut::with_capacity(2 * READ_BYTES);
    let mut copied = 0;
    for read in reads {
        buffer.extend_from_slice(read);
        copied += std::hint::black_box(&buffer).len();
        buffer.clear();
    }
    copied
}

/// The copy plus finding each line's end, one `memchr` per line, and nothing else: what any
/// framer behind `FramedRead` pays before it makes a single frame.
fn copy_reads_and_find_lines<'a>(reads: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut buffer = BytesMut::with_capacity(2 * READ_BYTES);
    let mut lines = 0;
    for read in reads {
        buffer.extend_from_slice(read);
        let mut start = 0;
        while let Some(offset) = memchr::memchr(b'\n', &buffer[start..]) {
            start = std::hint::black_box(start + offset + 1);
            lines += 1;
        }
        buffer.advance(start);
    }
    lines
}

fn bench_item_lines(c: &mut Criterion) {
    let body = item_body(200_000);
    assert_eq!(frame(body.chunks(READ_BYTES)), 200_000);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("ndjson_decoder", |b| {
        b.iter(|| frame(std::hint::black_box(&body).chunks(READ_BYTES)))
    });
    group.bench_function("memchr_newline_scan", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', std::hint::black_box(&body)).count())
    });
    group.bench_function("read_copy_only", |b| {
        b.iter(|| copy_reads(std::hint::black_box(&body).chunks(READ_BYTES)))
    });
    group.bench_function("read_copy_and_line_search", |b| {
        b.iter(|| copy_reads_and_find_lines(std::hint::black_box(&body).chunks(READ_BYTES)))
    });
    group.finish();
}

fn bench_blank_lines(c: &mut Criterion) {
    const BYTES: usize = 4 << 20;
    let newlines = blank_body(BYTES, &[b"\n"]);
    let mixed = blank_body(BYTES, &[b"\n", b"\r\n", b"  \r\n", b"\t\n", b"\n\n"]);
    assert_eq!(frame(newlines.chunks(READ_BYTES)), 0);
    assert_eq!(frame(mixed.chunks(READ_BYTES)), 0);
    let mut group = c.benchmark_group("blank_lines");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.bench_function("ndjson_decoder_newlines", |b| {
        b.iter(|| frame(std::hint::black_box(&newlines).chunks(READ_BYTES)))
    });
    group.bench_function("ndjson_decoder_mixed_white_space", |b| {
        b.iter(|| frame(std::hint::black_box(&mixed).chunks(READ_BYTES)))
    });
    group.bench_function("memchr_newline_scan", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', std::hint::black_box(&newlines)).count())
    });
    group.finish();
}

fn bench_two_gib_of_newlines(c: &mut Criterion) {
    const READS: usize = 32_768;
    let chunk = vec![b'\n'; READ_BYTES];
    let mut group = c.benchmark_group("two_gib_of_newlines");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes((READS * READ_BYTES) as u64));
    group.bench_function("ndjson_decoder", |b| {
        b.iter(|| frame(std::iter::repeat_n(std::hint::black_box(&chunk[..]), READS)))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_item_lines,
    bench_blank_lines,
    bench_two_gib_of_newlines
);
criterion_main!(benches);
