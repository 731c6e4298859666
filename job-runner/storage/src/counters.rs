//! Counts of what a storage's requests went through: sent, retried, throttled, timed out.
//! Shared by every clone of a [`Storage`](crate::Storage), read for progress lines and the
//! step's summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pomona_crds::contract::StorageCounts;

use crate::error::{ErrorKind, StorageError};

/// Request counters, cheap to clone (the clones share the counts).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    timeouts: AtomicU64,
}

impl Counters {
    /// One request sent.
    pub(crate) fn request(&self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt cut by the per-request timeout.
    pub(crate) fn timeout(&self) {
        self.0.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt failed with `error`; `retried` tells whether another attempt follows.
    pub(crate) fn failed(&self, error: &StorageError, retried: bool) {
        if error.kind() == ErrorKind::Throttled {
            self.0.throttled.fetch_add(1, Ordering::Relaxed);
        }
        if retried {
            self.0.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> StorageCounts {
        StorageCounts {
            requests: self.0.requests.load(Ordering::Relaxed),
            retries: self.0.retries.load(Ordering::Relaxed),
            throttled: self.0.throttled.load(Ordering::Relaxed),
            timeouts: self.0.timeouts.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_counts() {
        let c = Counters::default();
        let d = c.clone();
        c.request();
        d.request();
        d.timeout();
        c.failed(&StorageError::new(ErrorKind::Throttled, "SlowDown"), true);
        c.failed(&StorageError::new(ErrorKind::Transient, "reset"), true);
        c.failed(&StorageError::new(ErrorKind::Throttled, "SlowDown"), false);
        assert_eq!(
            d.snapshot(),
            StorageCounts {
                requests: 2,
                retries: 2,
                throttled: 2,
                timeouts: 1
            }
        );
    }
}
