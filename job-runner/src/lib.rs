//! `pomona-runner`: the data path of pomona, behind the `pomona` binary.
//!
//! - [`preprocess`]: image bytes to a normalised tensor (decode, orientation, RGB, resize).
//! - [`infer`]: the ONNX Runtime session that turns tensors into feature vectors.
//! - [`pipeline`]: fetch → decode → batched inference → write, bounded at every stage.
//! - [`fetch`] and [`window`]: the fetch stage and the pure controller of its concurrency.
//! - [`finite`]: feature vectors with NaN or infinity become dead letters.
//! - [`extract`]: one shard of a plan to its feature, dead-letter and statistics files.
//! - [`stats`]: mergeable PCA statistics (count, mean, co-moment) written by every shard.
//! - [`reuse`]: `--reuse-from`: the features of previous runs copied for unchanged images.
//! - [`parquet_out`]: the feature and dead-letter Parquet files of a shard.
//! - [`reduce`]: `pomona reduce`: merges the statistics, fits (or reuses) the PCA, projects every
//!   shard, measures the label agreement, groups the images by k-means when asked, and closes
//!   the run's accounting.
//! - [`report`]: the pictures and summary of the reduce step.
//! - [`command`] and [`cli`]: the command line, its conversion into the job contract's step
//!   arguments, and what its subcommands share.
//! - [`sweep`]: `pomona sweep`: speed and label agreement of models × input sizes.
//!
//! Storage (S3 and local folders) and planning live in the `pomona-storage` crate, which the
//! operator shares.

/// `eprintln!` for the human lines of `pomona`: timestamped when stderr is not a terminal
/// ([`cli::say`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::say(format_args!($($arg)*))
    };
}

pub mod cli;
pub mod command;
pub mod extract;
pub mod fetch;
pub mod finite;
mod imgconv;
pub mod infer;
pub mod parquet_out;
pub mod pipeline;
pub mod preprocess;
pub mod reduce;
pub mod report;
pub mod resize;
pub mod reuse;
pub mod stats;
pub mod stored_parquet;
pub mod sweep;
pub mod window;

use pomona_crds::contract::exit;

pub use infer::{InferError, Model, ModelOptions, ModelSource, init_runtime, sha256_hex};
pub use preprocess::{ConfigError, DecodeError, Layout, Preprocess};

/// A failure no retry can fix (wrong checksum, unusable model, accounting that does not close):
/// the pod exits with [`exit::PERMANENT_ERROR`] and the shard is not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Arguments that do not fit the run (say a shard number past the plan's): the pod exits with
/// [`exit::USAGE`], as for a malformed command line, and is not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The process was asked to stop (SIGTERM, as Kubernetes sends before a pod's deletion): the
/// step's work in progress is dropped and the process exits with [`EXIT_TERMINATED`].
#[derive(Debug, thiserror::Error)]
#[error("stopped by SIGTERM before the step was done")]
pub struct Terminated;

/// The exit code after SIGTERM: 128 + 15, what a shell reports for a process SIGTERM killed.
pub const EXIT_TERMINATED: i32 = 143;

/// How the work of one process is spread over the CPUs it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threads {
    /// Inference threads, each with its own single-threaded ONNX Runtime session.
    pub inference: usize,
    /// Images decoded at once.
    pub decode: usize,
}

impl Threads {
    /// Sized from the CPUs available to this process (`available_parallelism` honours CPU
    /// affinity and cgroup quotas, so a pod limited to 2 CPUs gets 2), each overridable.
    pub fn detect(inference: Option<usize>, decode: Option<usize>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            inference: inference.unwrap_or(cpus).max(1),
            decode: decode.unwrap_or(cpus).max(1),
        }
    }
}

/// A failed step's reason in one CamelCase word, for its summary line (and from there the run's
/// condition): the planner's and storage's own reasons, `InvalidArguments`, `PermanentError`,
/// else `Error`.
pub fn failure_reason(error: &anyhow::Error) -> &'static str {
    for cause in error.chain() {
        if cause.downcast_ref::<Usage>().is_some() {
            return "InvalidArguments";
        }
        if let Some(e) = cause.downcast_ref::<pomona_storage::plan::PlanError>() {
            return e.reason();
        }
        if let Some(e) = cause.downcast_ref::<pomona_storage::StorageError>() {
            return pomona_storage::plan::storage_reason(e.kind());
        }
        if cause.downcast_ref::<Permanent>().is_some() {
            return "PermanentError";
        }
    }
    "Error"
}

/// The exit code for a failed step: retryable failures (storage after its retries, the
/// runtime) exit with [`exit::RETRYABLE`], permanent ones with [`exit::PERMANENT_ERROR`], and
/// arguments that do not fit the run with [`exit::USAGE`].
pub fn exit_code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.downcast_ref::<Terminated>().is_some() {
            return EXIT_TERMINATED;
        }
        if cause.downcast_ref::<Usage>().is_some() {
            return exit::USAGE;
        }
        if cause.downcast_ref::<Permanent>().is_some() {
            return exit::PERMANENT_ERROR;
        }
        if let Some(e) = cause.downcast_ref::<pomona_storage::StorageError>() {
            return if e.is_retryable() {
                exit::RETRYABLE
            } else {
                exit::PERMANENT_ERROR
            };
        }
        if let Some(e) = cause.downcast_ref::<pomona_storage::plan::PlanError>() {
            return if e.is_usage() {
                exit::USAGE
            } else if e.is_retryable() {
                exit::RETRYABLE
            } else {
                exit::PERMANENT_ERROR
            };
        }
    }
    exit::RETRYABLE
}
