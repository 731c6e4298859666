//! Retries with exponential backoff and jitter, within a time budget.
//!
//! The S3 client is built with the SDK's own retries disabled, so that each request is retried
//! by [`retry`] alone — one loop, whose reach covers reading a response body too (which the
//! SDK's retries do not). A request keeps being retried while its budget lasts, so a service
//! that throttles or fails for a while (a brown-out) slows a shard down without failing it.

use std::future::Future;
use std::time::Duration;

use crate::counters::Counters;
use crate::error::StorageError;

/// How often and how patiently retryable errors are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each later one.
    pub initial_backoff: Duration,
    /// Upper bound of a backoff.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt started.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// Backoff from 200 ms doubling up to 5 s, retries for up to 60 s (at most 64 attempts):
    /// a request survives a 30 s outage or throttling of the service with room to spare.
    fn default() -> Self {
        Self {
            max_attempts: 64,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            budget: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The exponential backoff before attempt `attempt + 1` (`attempt` ≥ 1), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The backoff with "equal jitter": uniformly drawn between half and all of
    /// [`Self::backoff`], so that many clients throttled at once do not retry in step.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let full = self.backoff(attempt);
        let half = full / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random_u64() % spread.saturating_add(1))
    }
}

/// A random number from the standard library's per-process random hashing keys.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether a request whose first attempt started `elapsed` ago and that failed with a
/// retryable error at attempt `attempt` is tried again after `wait`.
fn may_retry(policy: &RetryPolicy, attempt: u32, elapsed: Duration, wait: Duration) -> bool {
    attempt < policy.max_attempts.max(1) && elapsed.saturating_add(wait) <= policy.budget
}

/// Runs `op` until it succeeds, fails with a permanent error, or runs out of attempts or of
/// time (see [`RetryPolicy`]); counts each attempt in `counters`; `what` names the operation in
/// logs.
pub(crate) async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    counters: &Counters,
    what: &str,
    mut op: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt = 1;
    loop {
        counters.request();
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let wait = policy.jittered(attempt);
                let again = e.is_retryable() && may_retry(policy, attempt, started.elapsed(), wait);
                counters.failed(&e, again);
                if !again {
                    return Err(e.with_attempts(attempt));
                }
                tracing::debug!(operation = what, attempt, ?wait, error = %e, "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            budget: Duration::from_secs(10),
        };
        let b: Vec<u128> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(b, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
        for a in 1..=6 {
            let j = p.jittered(a);
            assert!(j >= p.backoff(a) / 2 && j <= p.backoff(a), "{j:?}");
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            budget: Duration::from_secs(10),
        }
    }

    /// An operation against a service that answers `kind` errors until `outage` has passed
    /// (on tokio's clock), then succeeds; returns the result and the attempts made.
    async fn through_outage(
        policy: &RetryPolicy,
        outage: Duration,
        kind: ErrorKind,
    ) -> (Result<(), StorageError>, u32) {
        let start = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let counters = Counters::default();
        let r = retry(policy, &counters, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            if start.elapsed() < outage {
                Err(StorageError::new(kind, "SlowDown"))
            } else {
                Ok(())
            }
        })
        .await;
        let counts = counters.snapshot();
        let calls = calls.load(Ordering::SeqCst);
        assert_eq!(counts.requests, u64::from(calls));
        assert_eq!(counts.retries, u64::from(calls - 1));
        if kind == ErrorKind::Throttled {
            let failures = calls - u32::from(r.is_ok());
            assert_eq!(counts.throttled, u64::from(failures));
        }
        (r, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_budget_outlasts_a_30_second_brown_out() {
        let policy = RetryPolicy::default();
        for kind in [ErrorKind::Throttled, ErrorKind::Transient] {
            let (r, calls) = through_outage(&policy, Duration::from_secs(30), kind).await;
            assert!(r.is_ok(), "{kind:?}: {r:?} after {calls} attempts");
            assert!(calls > 5, "{calls}");
        }
        // A service down for longer than the budget fails the request, saying how often it
        // was tried, no later than the budget and one last attempt.
        let start = tokio::time::Instant::now();
        let (r, calls) =
            through_outage(&policy, Duration::from_secs(600), ErrorKind::Throttled).await;
        let e = r.unwrap_err();
        assert_eq!(e.attempts(), calls);
        assert!(start.elapsed() <= policy.budget, "{:?}", start.elapsed());
        assert!(start.elapsed() >= policy.budget - policy.max_backoff);
    }

    #[tokio::test]
    async fn retries_transient_errors_a_bounded_number_of_times() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(&fast(3), &Counters::default(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::new(ErrorKind::Transient, "boom"))
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let e = r.unwrap_err();
        assert_eq!(e.attempts(), 3);
        assert!(e.is_retryable());
    }

    #[tokio::test]
    async fn permanent_errors_fail_at_once_and_successes_stop_retrying() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(&fast(5), &Counters::default(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::new(ErrorKind::AccessDenied, "no"))
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.unwrap_err().attempts(), 1);

        let calls = AtomicU32::new(0);
        let r = retry(&fast(5), &Counters::default(), "test", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StorageError::new(ErrorKind::Transient, "later"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
