//! When `sluice send` tries again and how long it waits first: exponential backoff with jitter,
//! `Retry-After` honoured, and which answers are worth another attempt at all.
//!
//! Pure functions of their inputs (the random draw is passed in), so the rules are unit-tested
//! without clocks or servers.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Longest `Retry-After` honoured as given; a larger one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Error code of a body that did not arrive whole (a cut connection seen by the server).
const UNREADABLE_BODY: &str = "UNREADABLE_BODY";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts in a row tolerated before giving up; an attempt that lands items resets
    /// the count.
    pub max_retries: u32,
    /// Backoff before the first retry; it doubles each time, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 10,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Backoff after `failures` failures in a row (≥ 1): `base × 2^(failures−1)`, capped, then
    /// "equal jitter": half of it fixed, half drawn by `unit` in `[0, 1)`, so retries spread out
    /// without ever retrying at once.
    pub fn backoff(&self, failures: u32, unit: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// What to wait before the next attempt: the server's `Retry-After` when it gave one (capped
    /// at `MAX_RETRY_AFTER`), else the jittered backoff.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        match retry_after {
            Some(wait) => wait.min(MAX_RETRY_AFTER),
            None => self.backoff(failures, unit),
        }
    }
}

/// Whether an error status is transient: 408, 429, every 5xx, and a 400 whose code says the body
/// was cut on its way (items already read are kept, so sending again is safe).
pub fn is_retryable_status(status: StatusCode, code: Option<&str>) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || (status == StatusCode::BAD_REQUEST && code == Some(UNREADABLE_BODY))
}

/// `Retry-After` in delta-seconds (what Sluice sends). An HTTP-date is not read: the caller then
/// falls back to its backoff.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let seconds: u64 = value.parse().ok()?;
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_per_failure_and_stops_at_the_cap() {
        let policy = policy();
        let upper: Vec<_> = (1..=6).map(|n| policy.backoff(n, 1.0)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            upper,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(
            policy.backoff(40, 1.0),
            ms(1000),
            "no overflow on many failures"
        );
    }

    #[test]
    fn jitter_keeps_the_delay_between_half_and_all_of_the_backoff() {
        let policy = policy();
        assert_eq!(policy.backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(300));
        for unit in [0.0, 0.1, 0.77, 0.999] {
            let delay = policy.backoff(3, unit);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&delay));
        }
    }

    #[test]
    fn retry_after_wins_over_backoff_and_is_capped() {
        let policy = policy();
        let given = Some(Duration::from_secs(7));
        assert_eq!(policy.delay(1, given, 0.3), Duration::from_secs(7));
        assert_eq!(policy.delay(9, Some(Duration::ZERO), 0.3), Duration::ZERO);
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600)), 0.3),
            MAX_RETRY_AFTER
        );
        assert_eq!(policy.delay(2, None, 1.0), Duration::from_millis(200));
    }

    #[test]
    fn retry_after_reads_delta_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 2 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn transient_statuses_are_retried_and_client_errors_are_not() {
        for status in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(is_retryable_status(status, None), "{status}");
        }
        for status in [400, 401, 404, 409, 413, 415, 422] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(!is_retryable_status(status, Some("X")), "{status}");
        }
        assert!(is_retryable_status(
            StatusCode::BAD_REQUEST,
            Some("UNREADABLE_BODY")
        ));
    }
}
