//! Framer throughput against its ceiling: a plain `memchr` newline scan of the same bytes.
//!
//! `cargo bench --bench framer`. The framer is fed the body as 64 KiB reads (`Bytes`), as the
//! server hands it the chunks hyper or the decompressor made, and every frame is taken, as the
//! pipeline takes it. `line_search_only` is one `memchr` per line and nothing else: the floor under
//! any framer that hands out one line at a time.
//!
//! Groups:
//! - `framing`: 200 000 item lines of ~150 bytes.
//! - `blank_lines`: 4 MiB of blank lines (`\n` only, or a mix of `\r\n` and white space), the shape
//!   of a decompression bomb; they must cost about a `memchr` scan, not a frame each.
//! - `two_gib_of_newlines`: 2 GiB of `\n`, as 32 768 reads of one 64 KiB chunk.

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::protocol::framer::LineFramer;

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

/// `body` cut into reads of `READ_BYTES`, sharing its buffer as hyper's chunks share theirs.
fn reads(body: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..body.len())
        .step_by(READ_BYTES)
        .map(|start| body.slice(start..(start + READ_BYTES).min(body.len())))
}

/// Frames `reads` in order, as the pipeline does; returns how many frames came out.
fn frame(reads: impl Iterator<Item = Bytes>) -> usize {
    let mut framer = LineFramer::new(MAX_LINE_BYTES);
    let mut frames = 0;
    for read in reads {
        framer.push(read);
        while framer.next_frame().is_some() {
            frames += 1;
        }
    }
    while framer.finish().is_some() {
        frames += 1;
    }
    frames
}

/// Finding each line's end, one `memchr` per line, and nothing else.
fn find_lines(body: &[u8]) -> usize {
    let mut start = 0;
    let mut lines = 0;
    while let Some(offset) = memchr::memchr(b'\n', &body[start..]) {
        start = std::hint::black_box(start + offset + 1);
        lines += 1;
    }
    lines
}

fn bench_item_lines(c: &mut Criterion) {
    let body = Bytes::from(item_body(200_000));
    assert_eq!(frame(reads(&body)), 200_000);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("line_framer", |b| {
        b.iter(|| frame(reads(std::hint::black_box(&body))))
    });
    group.bench_function("memchr_newline_scan", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', std::hint::black_box(&body)).count())
    });
    group.bench_function("line_search_only", |b| {
        b.iter(|| find_lines(std::hint::black_box(&body)))
    });
    group.finish();
}

fn bench_blank_lines(c: &mut Criterion) {
    const BYTES: usize = 4 << 20;
    let newlines = Bytes::from(blank_body(BYTES, &[b"\n"]));
    let mixed = Bytes::from(blank_body(
        BYTES,
        &[b"\n", b"\r\n", b"  \r\n", b"\t\n", b"\n\n"],
    ));
    assert_eq!(frame(reads(&newlines)), 0);
    assert_eq!(frame(reads(&mixed)), 0);
    let mut group = c.benchmark_group("blank_lines");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.bench_function("line_framer_newlines", |b| {
        b.iter(|| frame(reads(std::hint::black_box(&newlines))))
    });
    group.bench_function("line_framer_mixed_white_space", |b| {
        b.iter(|| frame(reads(std::hint::black_box(&mixed))))
    });
    group.bench_function("memchr_newline_scan", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', std::hint::black_box(&newlines)).count())
    });
    group.finish();
}

fn bench_two_gib_of_newlines(c: &mut Criterion) {
    const READS: usize = 32_768;
    let chunk = Bytes::from(vec![b'\n'; READ_BYTES]);
    let mut group = c.benchmark_group("two_gib_of_newlines");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes((READS * READ_BYTES) as u64));
    group.bench_function("line_framer", |b| {
        b.iter(|| frame(std::iter::repeat_n(std::hint::black_box(&chunk), READS).cloned()))
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
