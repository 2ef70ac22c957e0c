//! What one request did to a batch, tallied as items are enqueued.

use crate::metrics;
use crate::protocol::item::{LineCode, Rejection};

/// At most this many rejections are listed in a response (all are counted).
pub const MAX_LISTED_REJECTIONS: usize = 100;
/// At most this many bytes of rejection messages are listed in a response: each message is already
/// bounded, and this keeps the whole list small however long the messages are.
pub const MAX_LISTED_REJECTION_BYTES: usize = 16 * 1024;

#[derive(Debug, Default, Clone)]
pub struct IngestSummary {
    /// Indexes this request newly stored, failed items included.
    pub accepted: u64,
    /// Of those, failed items.
    pub failed: u64,
    /// Items whose index was already taken.
    pub deduplicated: u64,
    /// The first rejections, in the order they were decided.
    pub rejected: Vec<Rejection>,
    /// Bytes of the messages in `rejected`.
    pub rejected_bytes: usize,
    pub rejected_total: u64,
    /// The most indexes of the batch seen taken after one of this request's enqueue calls, when
    /// the queue reported it.
    pub taken_after: Option<u64>,
}

impl IngestSummary {
    /// One item sent to the queue; `failure` is the code of a failed item.
    pub fn record_enqueued(&mut self, failure: Option<LineCode>, newly_stored: bool) {
        if newly_stored {
            self.accepted += 1;
            if let Some(code) = failure {
                self.failed += 1;
                metrics::item_error("failed", code.as_str());
            }
        } else {
            self.deduplicated += 1;
        }
    }

    pub fn record_taken(&mut self, taken_after: Option<u64>) {
        self.taken_after = self.taken_after.max(taken_after);
    }

    pub fn record_rejection(&mut self, rejection: Rejection) {
        self.rejected_total += 1;
        metrics::item_error("rejected", rejection.code.as_str());
        let bytes = self.rejected_bytes + rejection.message.len();
        if self.rejected.len() < MAX_LISTED_REJECTIONS && bytes <= MAX_LISTED_REJECTION_BYTES {
            self.rejected_bytes = bytes;
            self.rejected.push(rejection);
        }
    }

    /// Adds this request's items to the metrics, by outcome.
    pub fn record_metrics(&self) {
        metrics::items("accepted", self.accepted - self.failed);
        metrics::items("failed", self.failed);
        metrics::items("deduplicated", self.deduplicated);
        metrics::items("rejected", self.rejected_total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(message_bytes: usize) -> Rejection {
        Rejection {
            line: 1,
            index: None,
            code: LineCode::InvalidIndex,
            message: "m".repeat(message_bytes),
        }
    }

    #[test]
    fn the_listed_rejections_are_bounded_in_count_and_bytes_and_all_are_counted() {
        let mut short = IngestSummary::default();
        for _ in 0..150 {
            short.record_rejection(rejection(10));
        }
        assert_eq!((short.rejected.len(), short.rejected_total), (100, 150));

        let mut long = IngestSummary::default();
        for _ in 0..100 {
            long.record_rejection(rejection(500));
        }
        assert_eq!(long.rejected.len(), MAX_LISTED_REJECTION_BYTES / 500);
        assert!(long.rejected_bytes <= MAX_LISTED_REJECTION_BYTES);
        assert_eq!(long.rejected_total, 100);
    }
}
