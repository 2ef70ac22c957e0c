//! Missing index ranges, built from what an adapter learns about a batch in index order.
//!
//! An adapter walks `0..run_count` upwards in stretches it knows to be taken or missing (bits of a
//! bitmap, whole chunks, the indexes of one chunk) and stops once `limit` ranges are found. A
//! missing stretch that continues the one before it, across a read boundary, extends the same
//! range. Only the ranges are held, never the indexes.

use super::IndexRange;

#[derive(Debug)]
pub struct MissingRanges {
    run_count: u32,
    limit: usize,
    ranges: Vec<IndexRange>,
    /// Every index below this one has been accounted for.
    cursor: u32,
    /// The first index of a missing stretch that runs up to `cursor` and may go on.
    open: Option<u32>,
}

impl MissingRanges {
    pub fn new(run_count: u32, limit: usize) -> Self {
        Self {
            run_count,
            limit,
            ranges: Vec::new(),
            cursor: 0,
            open: None,
        }
    }

    /// The first index not yet accounted for.
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    /// Whether reading further can still change the answer.
    pub fn needs_more(&self) -> bool {
        self.ranges.len() < self.limit && self.cursor < self.run_count
    }

    /// The indexes from the cursor up to `end` (exclusive) are taken.
    pub fn taken_until(&mut self, end: u32) {
        let end = end.min(self.run_count);
        if end <= self.cursor {
            return;
        }
        self.close();
        self.cursor = end;
    }

    /// The indexes from the cursor up to `end` (exclusive) are missing.
    pub fn missing_until(&mut self, end: u32) {
        let end = end.min(self.run_count);
        if end <= self.cursor {
            return;
        }
        self.open.get_or_insert(self.cursor);
        self.cursor = end;
    }

    /// The ranges found; every index from the cursor to `run_count` counts as missing.
    pub fn finish(mut self) -> Vec<IndexRange> {
        self.missing_until(self.run_count);
        self.close();
        self.ranges
    }

    fn close(&mut self) {
        if let Some(start) = self.open.take()
            && self.ranges.len() < self.limit
        {
            self.ranges.push((start, self.cursor - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_merge_into_ranges_across_reads() {
        let mut ranges = MissingRanges::new(20, 10);
        ranges.missing_until(2);
        ranges.taken_until(5);
        // Two reads that each end in a missing stretch give one range.
        ranges.missing_until(8);
        ranges.missing_until(9);
        ranges.taken_until(12);
        assert_eq!(ranges.cursor(), 12);
        assert_eq!(ranges.finish(), vec![(0, 1), (5, 8), (12, 19)]);
    }

    #[test]
    fn unread_indexes_count_as_missing_and_nothing_passes_run_count() {
        assert_eq!(MissingRanges::new(3, 10).finish(), vec![(0, 2)]);
        let mut ranges = MissingRanges::new(10, 10);
        ranges.taken_until(16);
        assert!(!ranges.needs_more());
        assert_eq!(ranges.finish(), vec![]);
        let mut ranges = MissingRanges::new(10, 10);
        ranges.taken_until(4);
        ranges.missing_until(16);
        assert_eq!(ranges.finish(), vec![(4, 9)]);
    }

    #[test]
    fn stops_at_the_limit() {
        let mut ranges = MissingRanges::new(100, 2);
        for start in (0..100).step_by(2) {
            if !ranges.needs_more() {
                break;
            }
            ranges.missing_until(start + 1);
            ranges.taken_until(start + 2);
        }
        assert!(!ranges.needs_more());
        assert!(ranges.cursor() < 10, "read on past the limit");
        assert_eq!(ranges.finish(), vec![(0, 0), (2, 2)]);
    }

    #[test]
    fn stretches_already_accounted_for_change_nothing() {
        let mut ranges = MissingRanges::new(10, 10);
        ranges.taken_until(5);
        ranges.missing_until(3);
        ranges.taken_until(5);
        assert_eq!(ranges.finish(), vec![(5, 9)]);
    }
}
