//! Reading a response body into one bounded buffer, and telling whether an answer is the
//! object that was asked for: pure decisions, without I/O.

use bytes::{Bytes, BytesMut};

/// Why a body cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// More than `limit` bytes (declared or received).
    TooLarge { limit: u64 },
    /// Fewer bytes than declared arrived before the end.
    Short { declared: u64, received: u64 },
}

/// A body being received: one chunk is kept as is; several are copied into one buffer sized
/// from the declared length. Never holds more than `limit` bytes.
#[derive(Debug)]
pub(crate) struct BoundedBody {
    declared: Option<u64>,
    limit: u64,
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    received: u64,
}

impl BoundedBody {
    /// A body that declares `declared` bytes (`Content-Length`), accepted up to `limit`.
    pub(crate) fn new(declared: Option<u64>, limit: Option<u64>) -> Result<Self, BodyError> {
        let limit = limit.unwrap_or(u64::MAX);
        if declared.is_some_and(|d| d > limit) {
            return Err(BodyError::TooLarge { limit });
        }
        Ok(Self {
            declared,
            limit,
            first: None,
            rest: None,
            received: 0,
        })
    }

    /// Takes the next chunk.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Result<(), BodyError> {
        self.received += chunk.len() as u64;
        if self.received > self.limit {
            return Err(BodyError::TooLarge { limit: self.limit });
        }
        if let Some(rest) = &mut self.rest {
            rest.extend_from_slice(&chunk);
        } else if let Some(first) = self.first.take() {
            let size = self.declared.unwrap_or(self.received).max(self.received);
            let mut rest = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
            rest.extend_from_slice(&first);
            rest.extend_from_slice(&chunk);
            self.rest = Some(rest);
        } else {
            self.first = Some(chunk);
        }
        Ok(())
    }

    /// The whole body, once the stream has ended.
    pub(crate) fn finish(self) -> Result<Bytes, BodyError> {
        if let Some(declared) = self.declared
            && self.received != declared
        {
            return Err(BodyError::Short {
                declared,
                received: self.received,
            });
        }
        Ok(match (self.rest, self.first) {
            (Some(rest), _) => rest.freeze(),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        })
    }
}

/// Whether the ETag of an answer (`got`) differs from the `expected` one. A missing ETag
/// proves nothing; quotes and a weak `W/` prefix are ignored.
pub(crate) fn etag_differs(expected: Option<&str>, got: Option<&str>) -> bool {
    fn bare(tag: &str) -> &str {
        tag.trim().trim_start_matches("W/").trim_matches('"')
    }
    match (expected, got) {
        (Some(e), Some(g)) => bare(e) != bare(g),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_is_kept_several_are_joined() {
        let mut b = BoundedBody::new(Some(5), Some(10)).unwrap();
        b.push(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(b.finish().unwrap(), Bytes::from_static(b"hello"));

        let mut b = BoundedBody::new(None, None).unwrap();
        for part in [&b"he"[..], b"ll", b"o"] {
            b.push(Bytes::copy_from_slice(part)).unwrap();
        }
        assert_eq!(b.finish().unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(
            BoundedBody::new(Some(0), None).unwrap().finish().unwrap(),
            ""
        );
    }

    #[test]
    fn a_body_above_the_limit_is_refused_declared_or_not() {
        assert_eq!(
            BoundedBody::new(Some(11), Some(10)).unwrap_err(),
            BodyError::TooLarge { limit: 10 }
        );
        // A server that declares nothing, or lies, is cut as soon as the limit is passed.
        let mut b = BoundedBody::new(None, Some(10)).unwrap();
        b.push(Bytes::from(vec![0; 6])).unwrap();
        assert_eq!(
            b.push(Bytes::from(vec![0; 6])),
            Err(BodyError::TooLarge { limit: 10 })
        );
        let mut b = BoundedBody::new(Some(4), Some(10)).unwrap();
        assert!(b.push(Bytes::from(vec![0; 11])).is_err());
    }

    #[test]
    fn a_body_cut_short_is_refused() {
        let mut b = BoundedBody::new(Some(10), None).unwrap();
        b.push(Bytes::from(vec![0; 4])).unwrap();
        assert_eq!(
            b.finish().unwrap_err(),
            BodyError::Short {
                declared: 10,
                received: 4
            }
        );
    }

    #[test]
    fn etags_compare_without_quotes_and_a_missing_one_proves_nothing() {
        assert!(!etag_differs(Some("\"abc\""), Some("abc")));
        assert!(!etag_differs(Some("\"abc\""), Some("W/\"abc\"")));
        assert!(etag_differs(Some("\"abc\""), Some("\"abd\"")));
        assert!(!etag_differs(None, Some("\"abc\"")));
        assert!(!etag_differs(Some("\"abc\""), None));
    }
}
