//! The [`Storage`] every command reads and writes through.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use pomona_crds::contract::StorageCounts;

use crate::counters::Counters;
use crate::error::StorageError;
use crate::local::LocalStore;
use crate::location::Location;
use crate::retry::RetryPolicy;
use crate::s3::S3Store;

/// Objects above this size are uploaded in parts (by default).
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Size of a part of a multipart upload (by default).
pub const PART_SIZE: u64 = 16 * 1024 * 1024;
/// Default [`S3Config::request_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Conditions of a read ([`Storage::get_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetOptions<'a> {
    /// Read the object only if its ETag (S3: `If-Match`, and the answer's ETag is checked too)
    /// or its stamp (local files) is this one; otherwise fail with
    /// [`ErrorKind::Changed`](crate::ErrorKind::Changed).
    pub if_match: Option<&'a str>,
    /// Fail with [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) rather than read more than
    /// this many bytes.
    pub max_bytes: Option<u64>,
    /// Read only these bytes of the object (S3: a `Range` request), cut at its end; a range
    /// that starts at or past the end is an error ([`ErrorKind::Other`](crate::ErrorKind::Other)).
    pub range: Option<ByteRange>,
}

/// The bytes `start` up to (not including) `end` of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl From<std::ops::Range<u64>> for ByteRange {
    fn from(r: std::ops::Range<u64>) -> Self {
        Self {
            start: r.start,
            end: r.end,
        }
    }
}

/// How to reach S3. Everything unset comes from the default AWS configuration chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// Region; else `AWS_REGION` / the profile; else `us-east-1` when an endpoint is set.
    pub region: Option<String>,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); else `AWS_ENDPOINT_URL` or AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); defaults to true when an endpoint is set.
    pub force_path_style: Option<bool>,
    /// Static credentials (from a Kubernetes secret, say) instead of the default provider chain
    /// (environment, profile, IRSA web identity, Pod Identity, instance metadata).
    pub credentials: Option<StaticCredentials>,
    /// Retries of retryable failures.
    pub retry: RetryPolicy,
    /// Longest wait for a response's headers, and for each piece of its body: an attempt that
    /// waits longer is cut and retried.
    pub request_timeout: Duration,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (at least 5 MiB).
    pub part_size: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            force_path_style: None,
            credentials: None,
            retry: RetryPolicy::default(),
            request_timeout: REQUEST_TIMEOUT,
            multipart_threshold: MULTIPART_THRESHOLD,
            part_size: PART_SIZE,
        }
    }
}

/// An access key pair. Its `Debug` form hides the secret and the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id (not a secret).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// An object found by a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the storage's location, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// S3 ETag (quoted, as S3 returns it), or a modification stamp for local files.
    pub etag: Option<String>,
}

/// The result of [`Storage::list_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Objects, sorted by key.
    pub objects: Vec<ObjectMeta>,
    /// List requests made (pages, for S3).
    pub requests: u32,
}

/// The most names [`Storage::children`] and [`Storage::probe`] return: one S3 listing page.
pub const CHILDREN_PAGE: usize = 1000;

/// What is directly under a folder-like prefix ([`Storage::probe`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// The objects directly under it, sorted by key (relative to the storage's location).
    pub objects: Vec<ObjectMeta>,
    /// Its sub-prefixes, sorted, each the prefix asked for, a name and `/`.
    pub prefixes: Vec<String>,
    /// Whether there is more than one page ([`CHILDREN_PAGE`]) of them: then `objects` and
    /// `prefixes` are a part only.
    pub truncated: bool,
}

#[derive(Clone, Debug)]
enum Backend {
    S3(S3Store),
    Local(LocalStore),
}

/// Objects under a [`Location`]: an S3 prefix or a local directory. Cheap to clone and
/// shareable between tasks. Keys are relative to the location and `/`-separated.
#[derive(Clone, Debug)]
pub struct Storage {
    location: Location,
    backend: Backend,
}

impl Storage {
    /// Storage at `location`; `config` is used for S3 locations only.
    pub async fn new(location: &Location, config: &S3Config) -> Result<Self, StorageError> {
        let backend = match location {
            Location::S3 { bucket, prefix } => {
                Backend::S3(S3Store::new(bucket, prefix, config).await?)
            }
            Location::Local { root } => Backend::Local(LocalStore::new(root.clone())),
        };
        Ok(Self {
            location: location.clone(),
            backend,
        })
    }

    /// Parses `uri` (see [`Location::parse`]) and opens storage there.
    pub async fn open(uri: &str, config: &S3Config) -> Result<Self, StorageError> {
        Self::new(&Location::parse(uri)?, config).await
    }

    /// The location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The location's URI, ending with `/`.
    pub fn uri(&self) -> String {
        self.location.uri()
    }

    /// The region requests are signed for (S3 only).
    pub fn region(&self) -> Option<&str> {
        match &self.backend {
            Backend::S3(s) => Some(s.region()),
            Backend::Local(_) => None,
        }
    }

    /// The key of a full URI under this location (see [`Location::relative`]).
    pub fn relative(&self, uri: &str) -> Result<String, StorageError> {
        self.location.relative(uri)
    }

    /// Every object whose key starts with `prefix` (`""` for all), sorted by key. S3 listings
    /// follow every page; local listings walk the folders, following symlinks.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        Ok(self.list_with(prefix, None).await?.objects)
    }

    /// [`Self::list`] with S3 pages of at most `page_size` keys (S3's default is 1,000),
    /// also telling how many requests were made.
    pub async fn list_with(
        &self,
        prefix: &str,
        page_size: Option<i32>,
    ) -> Result<Listing, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.list(prefix, page_size).await,
            Backend::Local(l) => l.list(prefix).await,
        }
    }

    /// The whole content of object `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.get_with(key, &GetOptions::default()).await
    }

    /// The whole content of object `key`, read only under `options`' conditions. The body is
    /// read into one buffer sized from the declared length, never past `max_bytes`.
    pub async fn get_with(
        &self,
        key: &str,
        options: &GetOptions<'_>,
    ) -> Result<Bytes, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.get_with(key, options).await,
            Backend::Local(l) => l.get_with(key, options).await,
        }
    }

    /// The bytes `range` of object `key` (one ranged read: how a Parquet file is read a row
    /// group at a time).
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StorageError> {
        let options = GetOptions {
            range: Some(range.into()),
            ..GetOptions::default()
        };
        self.get_with(key, &options).await
    }

    /// What this storage's requests (and its clones') went through so far: zero for local
    /// folders.
    pub fn counts(&self) -> StorageCounts {
        match &self.backend {
            Backend::S3(s) => s.counters().snapshot(),
            Backend::Local(_) => Counters::default().snapshot(),
        }
    }

    /// Writes object `key`. It appears only when complete: S3 single PUT (or multipart upload,
    /// completed at the end), local temporary file + fsync + rename.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        match &self.backend {
            Backend::S3(s) => s.put(key, data).await,
            Backend::Local(l) => l.put(key, data).await,
        }
    }

    /// Writes object `key` from a local file, with the same all-or-nothing guarantee as
    /// [`put`](Self::put). Memory stays bounded by one multipart part whatever the file size.
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> Result<(), StorageError> {
        match &self.backend {
            Backend::S3(s) => s.put_file(key, file).await,
            Backend::Local(l) => l.put_file(key, file).await,
        }
    }

    /// The size and ETag (or stamp) of object `key`, or `None` if there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.head(key).await,
            Backend::Local(l) => l.head(key).await,
        }
    }

    /// The names directly under `prefix` (a folder-like prefix, empty or ending with `/`):
    /// objects by name and sub-prefixes ending with `/`, sorted, at most [`CHILDREN_PAGE`] of
    /// them (one S3 request with a delimiter, or one directory read). A missing prefix has none.
    pub async fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let probe = self.probe(prefix).await?;
        let objects = probe.objects.into_iter().map(|o| o.key);
        let mut names: Vec<String> = objects
            .chain(probe.prefixes)
            .filter_map(|k| k.strip_prefix(prefix).map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The objects and sub-prefixes directly under `prefix` (a folder-like prefix, empty or
    /// ending with `/`), at most [`CHILDREN_PAGE`] of them: one S3 request with a delimiter, or
    /// one directory read. A missing prefix has none.
    pub async fn probe(&self, prefix: &str) -> Result<Probe, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.probe(prefix).await,
            Backend::Local(l) => l.probe(prefix).await,
        }
    }

    /// Every object whose key starts with `prefix`, sent to `pages` one page at a time, in key
    /// order (S3's pages of at most `page_size` keys as they arrive; a folder's walk, sorted,
    /// in pages of [`CHILDREN_PAGE`]); returns the number of requests. Memory stays bounded by
    /// the channel's capacity for S3. Stops early, without an error, when the receiver is gone.
    pub async fn pages(
        &self,
        prefix: &str,
        page_size: Option<i32>,
        pages: tokio::sync::mpsc::Sender<Vec<ObjectMeta>>,
    ) -> Result<u32, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.pages(prefix, page_size, pages).await,
            Backend::Local(l) => l.pages(prefix, pages).await,
        }
    }

    /// Deletes object `key`; deleting an object that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match &self.backend {
            Backend::S3(s) => s.delete(key).await,
            Backend::Local(l) => l.delete(key).await,
        }
    }

    /// Whether object `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.head(key).await?.is_some())
    }

    /// Deletes every object whose key starts with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.delete_prefix(prefix).await,
            Backend::Local(l) => l.delete_prefix(prefix).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}

    #[test]
    fn storage_is_clone_send_sync_and_hides_secrets() {
        assert_clone_send_sync::<Storage>();
        let c = StaticCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "s3cr3t".into(),
            session_token: Some("tok".into()),
        };
        let shown = format!(
            "{:?}",
            S3Config {
                credentials: Some(c),
                ..S3Config::default()
            }
        );
        assert!(shown.contains("AKID") && !shown.contains("s3cr3t") && !shown.contains("tok\""));
    }
}
