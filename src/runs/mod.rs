//! Use cases after seal: materialising a sealed batch into runs, and reading and canceling them.
//! Plain async functions over the ports (`crate::ports`) that return domain results; the HTTP
//! layer maps them to answers. Nothing here knows HTTP.

pub mod batches;
pub mod decode;
pub mod id;
pub mod materialise;
pub mod read;
pub mod stats;
pub mod work;

use crate::dependency::DependencyError;
use crate::store::BatchStatus;

/// Most entries one page (of batches or runs) holds.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Entries in a page when the client does not say.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;

/// Why a use case after seal did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("{0}")]
    Invalid(String),
    #[error("no batch with this id")]
    BatchNotFound,
    #[error("no run with this id")]
    RunNotFound,
    #[error("this run has no payload")]
    NoPayload,
    #[error("batch is {} and can no longer be canceled", .0.as_str())]
    BatchFinal(BatchStatus),
    /// This node's status writes are queued to capacity (see [`crate::flusher::SubmitError`]).
    #[error("{0} writes are queued to capacity on this node")]
    Busy(&'static str),
    #[error(transparent)]
    Dependency(#[from] DependencyError),
}

impl From<crate::flusher::SubmitError> for RunsError {
    fn from(error: crate::flusher::SubmitError) -> Self {
        match error {
            crate::flusher::SubmitError::Busy(flusher) => Self::Busy(flusher),
            crate::flusher::SubmitError::Store(error) => Self::Dependency(error),
        }
    }
}

/// A page of results and where the next one starts, if there is more.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` entries read: an entry past the limit says there is more, and the
    /// next page starts after the last entry kept (`cursor_after` names where).
    fn of_read(mut data: Vec<T>, limit: u32, cursor_after: impl FnOnce(&T) -> String) -> Self {
        let more = data.len() > limit as usize;
        data.truncate(limit as usize);
        let next_cursor = more.then(|| data.last().map(cursor_after)).flatten();
        Self { data, next_cursor }
    }
}

/// A page size: `1..=MAX_PAGE_LIMIT`, the default when absent.
pub fn page_limit(limit: Option<i64>) -> Result<u32, RunsError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(limit) if (1..=i64::from(MAX_PAGE_LIMIT)).contains(&limit) => Ok(limit as u32),
        Some(limit) => Err(RunsError::Invalid(format!(
            "limit must be an integer from 1 to {MAX_PAGE_LIMIT}, got {limit}"
        ))),
    }
}
