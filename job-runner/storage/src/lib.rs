//! `pomona-storage`: where pomona reads images and writes results, and how a run is planned.
//!
//! - [`Storage`]: objects under an S3 prefix or a local directory, behind one API, with
//!   retries of transient failures and errors classified by [`ErrorKind`].
//! - [`listing`]: list a source by prefix, concurrently, in key order.
//! - [`plan`]: list a source, keep the images, label them, split them into shards and write
//!   the plan and shard manifests of [`pomona_crds::contract`].
//! - `testing` (cargo feature `testing`): a real S3-compatible server for tests.

mod body;
mod counters;
mod error;
pub mod listing;
mod local;
mod location;
pub mod pattern;
pub mod plan;
mod retry;
mod s3;
mod s3_error;
mod s3_get;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{ErrorKind, StorageError};
pub use location::Location;
pub use pomona_crds::contract::StorageCounts;
pub use retry::RetryPolicy;
pub use storage::{
    CHILDREN_PAGE, GetOptions, Listing, MULTIPART_THRESHOLD, ObjectMeta, PART_SIZE, Probe,
    REQUEST_TIMEOUT, S3Config, StaticCredentials, Storage,
};
