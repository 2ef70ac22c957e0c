//! Generated NDJSON bodies for the load generator, produced chunk by chunk: a body of any size is
//! never held in memory.

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a generated body holds.
#[derive(Debug, Clone, Copy)]
pub struct BodyShape {
    pub items: u32,
    /// Bytes of each item's payload string.
    pub payload_bytes: usize,
    /// Share of items sent as a line longer than `oversized_bytes` (they become failed items).
    pub oversized_share: f64,
    pub oversized_bytes: usize,
    /// Share of items sent twice (the second copy is deduplicated).
    pub duplicate_share: f64,
    /// Share of indexes left out, so the batch stays unsealed with that many missing.
    pub missing_share: f64,
    /// Leave out the last `missing_share` of the indexes instead of indexes drawn at random.
    pub missing_tail: bool,
    pub chunk_bytes: usize,
    pub seed: u64,
}

struct Generator {
    shape: BodyShape,
    next_index: u32,
    rng: StdRng,
    padding: Bytes,
    oversized_padding: Bytes,
}

impl Generator {
    /// The indexes the body holds: all of them, or all before the missing tail.
    fn end(&self) -> u32 {
        if self.shape.missing_tail {
            let left_out = (f64::from(self.shape.items) * self.shape.missing_share).round() as u32;
            self.shape.items - left_out.min(self.shape.items)
        } else {
            self.shape.items
        }
    }

    fn write_line(&self, out: &mut BytesMut, index: u32, oversized: bool) {
        let padding = if oversized {
            &self.oversized_padding
        } else {
            &self.padding
        };
        out.put_slice(b"{\"index\":");
        out.put_slice(index.to_string().as_bytes());
        out.put_slice(b",\"task\":\"bench\",\"payload\":\"");
        out.put_slice(padding);
        out.put_slice(b"\"}\n");
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        let end = self.end();
        if self.next_index >= end {
            return None;
        }
        let mut chunk =
            BytesMut::with_capacity(self.shape.chunk_bytes + self.shape.payload_bytes + 64);
        while chunk.len() < self.shape.chunk_bytes && self.next_index < end {
            let index = self.next_index;
            self.next_index += 1;
            if !self.shape.missing_tail && self.rng.random_bool(self.shape.missing_share) {
                continue;
            }
            let oversized = self.rng.random_bool(self.shape.oversized_share);
            self.write_line(&mut chunk, index, oversized);
            if self.rng.random_bool(self.shape.duplicate_share) {
                self.write_line(&mut chunk, index, false);
            }
        }
        Some(chunk.freeze())
    }
}

/// The body as a stream of chunks of about `chunk_bytes`.
pub fn generate(shape: BodyShape) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let generator = Generator {
        shape,
        next_index: 0,
        rng: StdRng::seed_from_u64(shape.seed),
        padding: Bytes::from(vec![b'x'; shape.payload_bytes]),
        oversized_padding: Bytes::from(vec![b'y'; shape.oversized_bytes]),
    };
    futures::stream::unfold(generator, |mut generator| async move {
        generator.next_chunk().map(|chunk| (Ok(chunk), generator))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn generated_body_has_every_index_once_plus_duplicates() {
        let shape = BodyShape {
            items: 1000,
            payload_bytes: 10,
            oversized_share: 0.0,
            oversized_bytes: 0,
            duplicate_share: 0.5,
            missing_share: 0.0,
            missing_tail: false,
            chunk_bytes: 256,
            seed: 7,
        };
        let chunks: Vec<Bytes> = generate(shape).map(Result::unwrap).collect().await;
        assert!(chunks.len() > 10, "the body comes in chunks");
        let body: Vec<u8> = chunks.concat();
        let mut seen = vec![0u32; 1000];
        for line in body.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let item: serde_json::Value = serde_json::from_slice(line).unwrap();
            seen[item["index"].as_u64().unwrap() as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1 || n == 2));
        let twice = seen.iter().filter(|&&n| n == 2).count();
        assert!((400..600).contains(&twice), "{twice}");
    }

    async fn indexes_in(shape: BodyShape) -> Vec<u32> {
        let body: Vec<u8> = generate(shape)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .await
            .concat();
        body.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice::<serde_json::Value>(line).unwrap()["index"]
                    .as_u64()
                    .unwrap() as u32
            })
            .collect()
    }

    #[tokio::test]
    async fn missing_indexes_are_left_out_at_random_or_as_a_tail() {
        let shape = BodyShape {
            items: 1000,
            payload_bytes: 10,
            oversized_share: 0.0,
            oversized_bytes: 0,
            duplicate_share: 0.0,
            missing_share: 0.1,
            missing_tail: true,
            chunk_bytes: 256,
            seed: 7,
        };
        assert_eq!(indexes_in(shape).await, (0..900).collect::<Vec<u32>>());
        let random = indexes_in(BodyShape {
            missing_tail: false,
            ..shape
        })
        .await;
        assert!((850..950).contains(&random.len()), "{}", random.len());
        assert!(random.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(*random.last().unwrap() > 900);
    }
}
