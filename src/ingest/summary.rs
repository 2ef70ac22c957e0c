//! What one request did to a batch, tallied as items are enqueued.

use super::item::Rejection;

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
}

impl IngestSummary {
    pub fn record_enqueued(&mut self, failed: bool, newly_stored: bool) {
        if newly_stored {
            self.accepted += 1;
            self.failed += u64::from(failed);
        } else {
            self.deduplicated += 1;
        }
    }

    pub fn record_rejection(&mut self, rejection: Rejection) {
        self.rejected_total += 1;
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(rejection);
        }
    }
}
