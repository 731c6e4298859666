//! Where a command reads or writes: an S3 prefix or a local directory.

use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, StorageError};

/// A storage location: every key handled by a [`crate::Storage`] is relative to it.
///
/// Locations are directory-like: an S3 location is a bucket and a key prefix that is empty or
/// ends with `/`, a local location is an absolute directory path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `s3://bucket/prefix/`.
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix: empty, or ending with `/`.
        prefix: String,
    },
    /// A local directory (absolute).
    Local {
        /// The directory.
        root: PathBuf,
    },
}

impl Location {
    /// Parses `s3://bucket/key-prefix`, `file:///abs/dir` or a plain path (made absolute against
    /// the current directory). A missing trailing `/` is implied: `s3://b/run` is `s3://b/run/`.
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let invalid = |why: &str| {
            StorageError::new(
                ErrorKind::Invalid,
                format!("invalid location {uri:?}: {why}"),
            )
        };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(invalid(
                    "bucket names have 3 to 63 characters among a-z, 0-9, '.' and '-'",
                ));
            }
            let prefix = key.trim_start_matches('/');
            if prefix.split('/').any(|s| s == "." || s == "..") {
                return Err(invalid("'.' and '..' are not allowed in an S3 prefix"));
            }
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        let path = if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file:// URI needs an absolute path (file:///dir)",
                ));
            }
            PathBuf::from(rest)
        } else if uri.contains("://") {
            return Err(invalid("only s3://, file:// and plain paths are supported"));
        } else if uri.is_empty() {
            return Err(invalid("empty"));
        } else {
            PathBuf::from(uri)
        };
        let root = if path.is_absolute() {
            path
        } else {
            std::env::current_dir()
                .map_err(|e| invalid(&format!("no current directory: {e}")))?
                .join(path)
        };
        Ok(Location::Local {
            root: normalize(&root),
        })
    }

    /// The canonical form: `s3://bucket/prefix/` or `/abs/dir/` (always ending with `/`), so that
    /// `format!("{}{key}", location.uri())` names an object.
    pub fn uri(&self) -> String {
        match self {
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Location::Local { root } => {
                let mut s = root.to_string_lossy().into_owned();
                if !s.ends_with('/') {
                    s.push('/');
                }
                s
            }
        }
    }

    /// Whether this is an S3 location.
    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }

    /// The key of `uri` relative to this location (`s3://b/run/x/y.json` under `s3://b/run/` is
    /// `x/y.json`), for URIs built by [`pomona_crds::contract::OutputLayout`].
    pub fn relative(&self, uri: &str) -> Result<String, StorageError> {
        let base = self.uri();
        let candidate = match self {
            Location::Local { .. } => uri.strip_prefix("file://").unwrap_or(uri),
            Location::S3 { .. } => uri,
        };
        candidate
            .strip_prefix(&base)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                StorageError::new(
                    ErrorKind::Invalid,
                    format!("{uri:?} is not an object under {base:?}"),
                )
            })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

/// S3 bucket naming rules (the subset that matters for parsing).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

/// Removes `.` and resolves `..` lexically (without touching the file system).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_uris() {
        let l = Location::parse("s3://fruits/images").unwrap();
        assert_eq!(
            l,
            Location::S3 {
                bucket: "fruits".into(),
                prefix: "images/".into()
            }
        );
        assert_eq!(l.uri(), "s3://fruits/images/");
        assert_eq!(Location::parse("s3://fruits/images/").unwrap(), l);
        assert_eq!(
            Location::parse("s3://fruits").unwrap().uri(),
            "s3://fruits/"
        );
        assert_eq!(
            Location::parse("s3://fruits/").unwrap().uri(),
            "s3://fruits/"
        );
        assert_eq!(
            Location::parse("s3://fruits/a/b")
                .unwrap()
                .relative("s3://fruits/a/b/c/d.json")
                .unwrap(),
            "c/d.json"
        );
    }

    #[test]
    fn parses_local_paths() {
        let l = Location::parse("file:///tmp/x/").unwrap();
        assert_eq!(
            l,
            Location::Local {
                root: "/tmp/x".into()
            }
        );
        assert_eq!(l.uri(), "/tmp/x/");
        assert_eq!(
            Location::parse("/tmp/x/../y/./z").unwrap().uri(),
            "/tmp/y/z/"
        );
        let rel = Location::parse("some/dir").unwrap();
        assert!(matches!(&rel, Location::Local { root } if root.is_absolute()));
        assert_eq!(l.relative("/tmp/x/a/b.jsonl").unwrap(), "a/b.jsonl");
        assert_eq!(l.relative("file:///tmp/x/a").unwrap(), "a");
        assert!(l.relative("/tmp/other/a").is_err());
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "s3://",
            "s3://A_B/x",
            "s3://ab",
            "http://x/y",
            "file://rel",
            "",
            "s3://bkt/../x",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
            assert!(!e.is_retryable());
        }
    }
}
