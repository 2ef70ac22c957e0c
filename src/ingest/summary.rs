//! What one request did to a batch, tallied as items are enqueued.

use super::item::{LineCode, Rejection};
use crate::metrics;

/// At most this many rejections are listed in a response (all are counted).
pub const MAX_LISTED_REJECTIONS: usize = 100;

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
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
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
