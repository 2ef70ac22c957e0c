//! Framer throughput against its ceiling: a plain `memchr` newline scan of the same bytes.
//!
//! `cargo bench --bench framer`. The framer is fed 64 KiB reads, as the server reads a body.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::ingest::framer::NdjsonDecoder;
use tokio_util::codec::Decoder;

const READ_BYTES: usize = 64 * 1024;

fn body(lines: usize) -> Vec<u8> {
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

fn frame(body: &[u8]) -> usize {
    let mut decoder = NdjsonDecoder::new(3_145_728);
    let mut buffer = BytesMut::with_capacity(2 * READ_BYTES);
    let mut frames = 0;
    for read in body.chunks(READ_BYTES) {
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

fn bench_framer(c: &mut Criterion) {
    let body = body(200_000);
    assert_eq!(frame(&body), 200_000);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("ndjson_decoder", |b| {
        b.iter(|| frame(std::hint::black_box(&body)))
    });
    group.bench_function("memchr_newline_scan", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', std::hint::black_box(&body)).count())
    });
    group.finish();
}

criterion_group!(benches, bench_framer);
criterion_main!(benches);
