//! Retries with exponential backoff and jitter.
//!
//! The S3 client is built with the SDK's own retries disabled, so that each request is tried
//! exactly `max_attempts` times by [`retry`] — one loop, whose reach covers reading a response
//! body too (which the SDK's retries do not).

use std::future::Future;
use std::time::Duration;

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
}

impl Default for RetryPolicy {
    /// 5 attempts, backoff from 200 ms doubling up to 5 s (about 3 s of waiting in the worst
    /// case before the last attempt).
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
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

/// Runs `op` until it succeeds, fails with a permanent error, or has been tried
/// `policy.max_attempts` times; `what` names the operation in logs.
pub(crate) async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut op: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let max = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < max => {
                let wait = policy.jittered(attempt);
                tracing::warn!(operation = what, attempt, ?wait, error = %e, "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e.with_attempts(attempt)),
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
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_a_bounded_number_of_times() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(&fast(3), "test", || async {
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
        let r: Result<(), _> = retry(&fast(5), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::new(ErrorKind::AccessDenied, "no"))
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.unwrap_err().attempts(), 1);

        let calls = AtomicU32::new(0);
        let r = retry(&fast(5), "test", || async {
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
