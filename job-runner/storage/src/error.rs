//! Storage errors, classified into what a retry may fix and what it cannot.

use std::fmt;

/// What went wrong, as far as a caller deciding between "retry" and "give up" cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// May pass on a retry: 5xx, timeouts, refused or reset connections, bodies cut short,
    /// other dispatch failures.
    Transient,
    /// The service asks to slow down (`SlowDown`, HTTP 429 or 503): retried, and counted apart.
    Throttled,
    /// Credentials missing or rejected, or permission refused (403, `AccessDenied`,
    /// `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `ExpiredToken`, unreadable local file).
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The object (or local file or directory) does not exist.
    NotFound,
    /// A bad URI, key, pattern or configuration.
    Invalid,
    /// The object is not the one expected: a read conditioned on an ETag (`If-Match`) found
    /// another (HTTP 412, or a different ETag or stamp in the answer).
    Changed,
    /// The object is larger than the reader's limit.
    TooLarge,
    /// Any other failure that a retry will not fix (a 4xx, a full disk…).
    Other,
}

impl ErrorKind {
    /// Whether an operation that failed this way may pass when tried again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Throttled)
    }
}

/// An error of a storage operation. Its message names the operation and the bucket (with its
/// region) or path, and never a secret.
#[derive(Debug, thiserror::Error)]
pub struct StorageError {
    kind: ErrorKind,
    message: String,
    attempts: u32,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StorageError {
    /// An error of the given kind with a complete, human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            attempts: 1,
            source: None,
        }
    }

    /// Attaches the underlying error (for `source()` chains; it is not shown in the message).
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Records how many attempts were made before giving up.
    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// The classification of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a later retry (of the whole step, say by a new pod) may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// How many attempts were made (1 when the error was not retried).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The message, without the attempt count.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if self.attempts > 1 {
            write!(f, " (gave up after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

/// Maps a local I/O error on `path` during `op` (`read`, `write`, `list`…).
pub(crate) fn io_error(op: &str, path: &std::path::Path, err: std::io::Error) -> StorageError {
    use std::io::ErrorKind as Io;
    let kind = match err.kind() {
        Io::NotFound => ErrorKind::NotFound,
        Io::PermissionDenied => ErrorKind::AccessDenied,
        Io::Interrupted | Io::TimedOut | Io::WouldBlock => ErrorKind::Transient,
        Io::InvalidInput | Io::InvalidFilename => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    };
    let what = match kind {
        ErrorKind::NotFound => "not found",
        ErrorKind::AccessDenied => "permission denied",
        _ => "failed",
    };
    StorageError::new(kind, format!("{op} {}: {what}: {err}", path.display())).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_and_throttling_errors_are_retryable() {
        assert!(ErrorKind::Transient.is_retryable());
        assert!(ErrorKind::Throttled.is_retryable());
        for k in [
            ErrorKind::Changed,
            ErrorKind::TooLarge,
            ErrorKind::AccessDenied,
            ErrorKind::NoSuchBucket,
            ErrorKind::NotFound,
            ErrorKind::Invalid,
            ErrorKind::Other,
        ] {
            assert!(!k.is_retryable(), "{k:?}");
        }
    }

    #[test]
    fn message_counts_attempts() {
        let e = StorageError::new(ErrorKind::Transient, "s3:GetObject failed").with_attempts(4);
        assert_eq!(
            e.to_string(),
            "s3:GetObject failed (gave up after 4 attempts)"
        );
        let io = io_error(
            "read",
            std::path::Path::new("/x"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(io.kind(), ErrorKind::AccessDenied);
        assert!(io.to_string().starts_with("read /x: permission denied"));
    }
}
