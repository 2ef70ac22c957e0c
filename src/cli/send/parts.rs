//! How `sluice send` cuts an input into parts, each its own batch: consecutive runs of items, each
//! within the server's item cap (or `--batch-size`) and with room under its body caps, measured
//! on the bytes the body will carry before compression (gzip only ever makes them smaller, but
//! for a few bytes of framing that the room covers).

use crate::protocol::wire::LimitsResponse;

/// Share of the body cap a part may fill: the rest is room for gzip framing and rounding.
const BODY_ROOM_DIVISOR: u64 = 16;
/// Bytes of an item's envelope besides its index digits, task and payload:
/// `{"index":` `,"task":` `,"payload":` `}\n`.
const ITEM_ENVELOPE_BYTES: u64 = 9 + 8 + 11 + 2;

/// The most one part may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartCaps {
    pub max_items: u64,
    /// Most body bytes (before compression); `None` when the server did not say.
    pub max_body_bytes: Option<u64>,
}

impl PartCaps {
    /// The caps from the server's limits (`None`: an older server that does not publish them)
    /// and `--batch-size`, whichever is smaller.
    pub fn new(limits: Option<&LimitsResponse>, batch_size: Option<u64>) -> Self {
        let server_items = limits.map(|limits| u64::from(limits.max_items_per_batch));
        let max_items = match (server_items, batch_size) {
            (Some(server), Some(asked)) => server.min(asked),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => u64::MAX,
        };
        let max_body_bytes = limits.map(|limits| {
            let cap = limits.max_body_bytes.min(limits.max_encoded_body_bytes);
            (cap - cap / BODY_ROOM_DIVISOR).max(1)
        });
        Self {
            max_items: max_items.max(1),
            max_body_bytes,
        }
    }
}

/// A run of consecutive items of the input, sent as one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based.
    pub number: u32,
    /// Index in the whole input of the part's first item; item `first_item + i` is the part's
    /// index `i`.
    pub first_item: u64,
    pub items: u64,
    /// Byte offset in the input of the part's first line, and its 1-based line number; `None`
    /// when the input was not read first (`--count`): the part is then found by skipping items.
    pub start: Option<(u64, u64)>,
    /// Body bytes before compression, when the input was read first.
    pub body_bytes: Option<u64>,
}

impl Part {
    /// The batch's idempotency key: the input's key alone when the input is one part (so a batch
    /// sent whole before is found again), else the key, the part's number and its items.
    pub fn idempotency_key(&self, input_key: &str, parts: usize) -> String {
        match parts {
            1 => input_key.to_owned(),
            _ => format!(
                "{input_key}-part-{}-items-{}-{}",
                self.number,
                self.first_item,
                self.first_item + self.items - 1
            ),
        }
    }
}

/// Cuts the input into parts as its lines go by, in the counting pass.
#[derive(Debug)]
pub struct Splitter {
    caps: PartCaps,
    /// Envelope bytes of an item besides its index digits (items mode), or `None` with `--raw`
    /// (a line is sent as it is).
    envelope: Option<u64>,
    parts: Vec<Part>,
    current: Option<Part>,
}

impl Splitter {
    /// `task_json`: the task as JSON text (items mode), `None` with `--raw`.
    pub fn new(caps: PartCaps, task_json: Option<&str>) -> Self {
        Self {
            caps,
            envelope: task_json.map(|task| ITEM_ENVELOPE_BYTES + task.len() as u64),
            parts: Vec::new(),
            current: None,
        }
    }

    /// Body bytes of the line as the part's item number `local_index`.
    fn body_bytes(&self, content: u64, local_index: u64) -> u64 {
        match self.envelope {
            Some(envelope) => envelope + decimal_digits(local_index) + content,
            None => content + 1,
        }
    }

    /// A non-blank line of `content` bytes (without its line end), at byte `offset` of the input,
    /// on line `line`.
    pub fn item(&mut self, offset: u64, line: u64, content: u64) {
        let next_item = self
            .current
            .as_ref()
            .map_or(0, |part| part.first_item + part.items);
        let fits = self.current.as_ref().is_some_and(|part| {
            let bytes = self.body_bytes(content, part.items);
            part.items < self.caps.max_items
                && self
                    .caps
                    .max_body_bytes
                    .is_none_or(|cap| part.body_bytes.unwrap_or(0) + bytes <= cap)
        });
        if !fits {
            let number = self.parts.len() as u32 + 1 + u32::from(self.current.is_some());
            if let Some(done) = self.current.take() {
                self.parts.push(done);
            }
            self.current = Some(Part {
                number,
                first_item: next_item,
                items: 0,
                start: Some((offset, line)),
                body_bytes: Some(0),
            });
        }
        let local_index = self.current.as_ref().map_or(0, |part| part.items);
        let bytes = self.body_bytes(content, local_index);
        let part = self.current.as_mut().expect("a part is open");
        part.items += 1;
        part.body_bytes = Some(part.body_bytes.unwrap_or(0) + bytes);
    }

    /// A blank line: `--raw` bodies keep it (so the server's line numbers are the file's).
    pub fn blank(&mut self) {
        if self.envelope.is_none()
            && let Some(part) = self.current.as_mut()
        {
            part.body_bytes = Some(part.body_bytes.unwrap_or(0) + 1);
        }
    }

    pub fn finish(mut self) -> Vec<Part> {
        self.parts.extend(self.current.take());
        self.parts
    }
}

/// Parts of `items` items by count alone, for an input not read first (`--count`).
pub fn by_count(items: u64, caps: PartCaps) -> Vec<Part> {
    let size = caps.max_items;
    (0..items.div_ceil(size))
        .map(|n| Part {
            number: n as u32 + 1,
            first_item: n * size,
            items: size.min(items - n * size),
            start: None,
            body_bytes: None,
        })
        .collect()
}

fn decimal_digits(value: u64) -> u64 {
    u64::from(value.checked_ilog10().unwrap_or(0)) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_items: u32, max_body_bytes: u64) -> LimitsResponse {
        LimitsResponse {
            max_items_per_batch: max_items,
            max_item_bytes: 1 << 20,
            offload_threshold_bytes: 1 << 19,
            max_body_bytes,
            max_encoded_body_bytes: max_body_bytes * 2,
        }
    }

    #[test]
    fn caps_take_the_smaller_of_the_server_and_batch_size() {
        let server = limits(1_000, 1_600);
        assert_eq!(PartCaps::new(Some(&server), None).max_items, 1_000);
        assert_eq!(PartCaps::new(Some(&server), Some(10)).max_items, 10);
        assert_eq!(PartCaps::new(Some(&server), Some(5_000)).max_items, 1_000);
        assert_eq!(
            PartCaps::new(Some(&server), None).max_body_bytes,
            Some(1_500)
        );
        let old_server = PartCaps::new(None, Some(7));
        assert_eq!((old_server.max_items, old_server.max_body_bytes), (7, None));
        assert_eq!(PartCaps::new(None, None).max_items, u64::MAX);
    }

    #[test]
    fn parts_respect_the_item_cap_and_keep_every_item_once() {
        let caps = PartCaps::new(Some(&limits(3, 1 << 30)), None);
        let mut splitter = Splitter::new(caps, Some("\"t\""));
        for n in 0..8u64 {
            splitter.item(n * 10, n + 1, 9);
        }
        let parts = splitter.finish();
        let shape: Vec<_> = parts
            .iter()
            .map(|part| (part.number, part.first_item, part.items, part.start))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0, 3, Some((0, 1))),
                (2, 3, 3, Some((30, 4))),
                (3, 6, 2, Some((60, 7)))
            ]
        );
        // `{"index":0,"task":"t","payload":123456789}\n` is 43 bytes.
        assert_eq!(parts[2].body_bytes, Some(43 * 2));
        assert_eq!(by_count(8, caps), {
            let mut expected = parts.clone();
            for part in &mut expected {
                (part.start, part.body_bytes) = (None, None);
            }
            expected
        });
    }

    #[test]
    fn parts_stay_under_the_body_cap_and_a_huge_line_goes_alone() {
        // Cap 1 600 bytes → 1 500 of room; each item is 30 + 3 (task) + digits + 500.
        let caps = PartCaps::new(Some(&limits(1_000, 1_600)), None);
        let mut splitter = Splitter::new(caps, Some("\"t\""));
        for n in 0..5 {
            splitter.item(n * 501, n + 1, 500);
        }
        splitter.item(5 * 501, 6, 4_000);
        splitter.item(5 * 501 + 4_001, 7, 10);
        let parts = splitter.finish();
        let items: Vec<_> = parts.iter().map(|part| part.items).collect();
        assert_eq!(items, vec![2, 2, 1, 1, 1]);
        for part in &parts[..3] {
            assert!(part.body_bytes.unwrap() <= 1_500, "{part:?}");
        }
        assert_eq!(parts[3].body_bytes, Some(34 + 4_000));
    }

    #[test]
    fn one_part_keeps_the_input_key_and_parts_get_their_own() {
        let part = Part {
            number: 2,
            first_item: 1_000,
            items: 1_000,
            start: None,
            body_bytes: None,
        };
        assert_eq!(part.idempotency_key("send-ab", 1), "send-ab");
        assert_eq!(
            part.idempotency_key("send-ab", 3),
            "send-ab-part-2-items-1000-1999"
        );
    }
}
