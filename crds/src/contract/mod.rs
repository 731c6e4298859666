//! The job contract between the operator and the `pomona` runner.
//!
//! Both sides read and write the same objects under a run's output prefix, and the operator
//! learns a pod's counts from the one-line summary the pod leaves as its termination message.
//! Everything they agree on is defined here, once: the output layout, the shard manifest line,
//! the plan document and the run's identity, the pod summary, the exit codes, the environment
//! of a runner pod, each step's command line ([`steps`]), and how a run's cost ([`cost`]) and
//! pace ([`progress`]) are computed from what its pods report.

pub mod cost;
pub mod progress;
pub mod steps;

use serde::{Deserialize, Serialize};

use crate::api::{LabelMode, TensorLayout};

/// Width of the zero-padded shard number in file names (`part-00042.parquet`).
pub const SHARD_DIGITS: usize = 5;

/// Largest number of shards in one run, the extract Job's `completions`. Kubernetes takes up
/// to 100,000 completions (and parallelism) for an Indexed Job; past 100,000 completions with
/// `backoffLimitPerIndex` it wants `maxFailedIndexes` set and at most 10,000, and parallelism
/// at most 10,000. Staying at 100,000 keeps every run out of that regime, and keeps the Job's
/// `.status.completedIndexes` and `.status.failedIndexes` within etcd's 1.5 MiB object even
/// when no two indexes are consecutive (see [`shard_plan`]).
pub const MAX_SHARDS: u32 = 100_000;

/// Largest `imagesPerShard`, asked for or raised to (the resource schema's bound): a run holds
/// at most [`MAX_SHARDS`] × this many images.
pub const MAX_IMAGES_PER_SHARD: u32 = 1_000_000;

/// How a run's images split into shards ([`shard_plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    /// Images per shard: the number asked for, or a multiple of it when that many shards
    /// would be more than one Job can run.
    pub images_per_shard: u32,
    /// Shards (the last one takes the rest; none when there is no image).
    pub shards: u32,
}

impl ShardPlan {
    /// Whether `imagesPerShard` was raised above `asked`.
    pub fn raised(&self, asked: u32) -> bool {
        self.images_per_shard != asked
    }
}

/// Why a run cannot be sharded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardPlanError {
    /// `imagesPerShard` is 0.
    #[error("imagesPerShard must be at least 1")]
    ZeroShardSize,
    /// More images than one run can hold: the run is refused, not split into several Jobs.
    #[error(
        "{images} images are more than one run can hold ({MAX_SHARDS} shards of at most \
         {MAX_IMAGES_PER_SHARD} images): split the source into several runs"
    )]
    TooManyImages {
        /// Images listed.
        images: u64,
    },
}

/// The shards of a run of `images` images asked to have `asked` images per shard: the only
/// definition of the shard arithmetic, which the planner writes in the plan and the operator
/// reads back.
///
/// When `asked` would make more than [`MAX_SHARDS`] shards, images per shard is raised to the
/// smallest multiple of `asked` that makes at most [`MAX_SHARDS`] (a multiple, so that a plan
/// streamed in shards of `asked` becomes the raised plan by joining neighbouring manifests),
/// unless that is above [`MAX_IMAGES_PER_SHARD`]: then the run is refused.
pub fn shard_plan(images: u64, asked: u32) -> Result<ShardPlan, ShardPlanError> {
    if asked == 0 {
        return Err(ShardPlanError::ZeroShardSize);
    }
    let chunks = images.div_ceil(u64::from(asked));
    let factor = chunks.div_ceil(u64::from(MAX_SHARDS)).max(1);
    let per_shard = u64::from(asked) * factor;
    let too_many = ShardPlanError::TooManyImages { images };
    if factor > 1 && per_shard > u64::from(MAX_IMAGES_PER_SHARD) {
        return Err(too_many);
    }
    Ok(ShardPlan {
        images_per_shard: u32::try_from(per_shard).map_err(|_| too_many)?,
        shards: u32::try_from(chunks.div_ceil(factor)).map_err(|_| too_many)?,
    })
}

/// Shards one projection pod projects unless the resource says otherwise
/// (`spec.sharding.shardsPerProjectionPod`): about 10 MB of features a shard of 2,000 images,
/// so 640 MB read a pod.
pub const DEFAULT_SHARDS_PER_PROJECTION_POD: u32 = 64;

/// Shards whose statistics one merge pod merges unless the resource says otherwise
/// (`spec.sharding.shardsPerMergePod`): 4,096 = 64², a block of the statistics' merge tree,
/// about 54 GB of statistics files at 1,280 values.
pub const DEFAULT_SHARDS_PER_MERGE_POD: u32 = 4096;

/// How the shards of a run split over the pods of an Indexed Job that works on groups of
/// shards (the projection Job, the merge Job): group `g` takes the shards `g·shards_per_pod` up
/// to the next group's first (the last takes the rest). The only definition of the grouping:
/// the operator sizes the Job with it, and each pod finds its shards with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardGroups {
    /// Shards of the run.
    pub shards: u32,
    /// Shards a group (a pod).
    pub shards_per_pod: u32,
}

impl ShardGroups {
    /// The groups of a Job of a run of `shards` shards at `shards_per_pod` a pod (for the merge
    /// Job a power of 64, so that each group is a block of the statistics' merge tree), when the
    /// run needs that Job: `None` when the PCA is reused (nothing is fitted, and the extract pods
    /// projected each shard as they wrote it) or when one group holds every shard (one pod, the
    /// fit or the reduce pod, does the work).
    pub fn of_job(shards: u32, shards_per_pod: u32, pca_reused: bool) -> Option<Self> {
        let groups = Self {
            shards,
            shards_per_pod: shards_per_pod.max(1),
        };
        (!pca_reused && groups.groups() > 1).then_some(groups)
    }

    /// Groups (the Job's completions).
    pub fn groups(&self) -> u32 {
        self.shards.div_ceil(self.shards_per_pod.max(1))
    }

    /// The shards of `group`; empty past the last group.
    pub fn shards_of(&self, group: u32) -> std::ops::Range<u32> {
        let per = self.shards_per_pod.max(1);
        let start = group.saturating_mul(per).min(self.shards);
        start..start.saturating_add(per).min(self.shards)
    }
}

/// What a merge pod merged: the block's shards, and those of them whose statistics it merged
/// (every complete shard: statistics, features and dead letters written), as
/// [`steps::ShardList`]s. The fit step merges a block's statistics file only when the block's
/// complete shards are these.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MergedBlock {
    /// `pomona-merge/1`.
    pub format: String,
    /// The block's shards, `first-last`.
    pub shards: String,
    /// The shards whose statistics were merged.
    pub merged: String,
}

impl MergedBlock {
    /// The format written.
    pub const FORMAT: &'static str = "pomona-merge/1";
}

/// Where the runner writes the one-line summary for Kubernetes to pick up as the container's
/// termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Images larger than this many bytes are dead-lettered unless the run says otherwise
/// (`spec.source.maxImageBytes`, the runner's `--max-image-bytes`): 50 MiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 50 * 1024 * 1024;

/// Kubernetes keeps at most this many bytes of a termination message.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// The environment variables through which a runner pod gets what is not on its command line.
/// The runner reads each of them (the AWS ones through the AWS SDK's default chain).
pub mod env {
    /// Region of the buckets.
    pub const REGION: &str = "AWS_REGION";
    /// Endpoint of an S3-compatible service.
    pub const ENDPOINT: &str = "AWS_ENDPOINT_URL";
    /// Static credentials: the key id (from the run's credentials Secret, when it names one).
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// Static credentials: the secret key.
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// Static credentials: a session token (optional).
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// The index of an Indexed Job's pod: an extract pod's shard, a projection pod's group.
    pub const SHARD: &str = "JOB_COMPLETION_INDEX";
    /// Scratch space for a shard's files before upload.
    pub const SCRATCH: &str = "POMONA_SCRATCH";
    /// Temporary files of libraries (the root filesystem is read-only): the scratch folder.
    pub const TMPDIR: &str = "TMPDIR";
    /// Where the one-line summary is written besides stdout (default [`super::TERMINATION_LOG`]).
    pub const TERMINATION_LOG: &str = "POMONA_TERMINATION_LOG";
    /// The reduce pod's: what the run's earlier pods used, its own requests and the admin's
    /// prices, as JSON ([`super::cost::CostSoFar`]), for the cost in `report/summary.json`.
    pub const COST_SO_FAR: &str = "POMONA_COST_SO_FAR";
}

/// Exit codes of the `pomona` runner. The operator's pod failure policy retries a shard on
/// [`exit::RETRYABLE`] (and on anything else unexpected, such as an OOM kill) and fails the
/// shard at once on the codes in [`exit::PERMANENT`].
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A failure that may pass on a retry: network, throttling, a 5xx from S3.
    pub const RETRYABLE: i32 = 1;
    /// The command line was wrong (clap's usage error code).
    pub const USAGE: i32 = 2;
    /// A failure no retry can fix: access denied, missing bucket or manifest, wrong model
    /// checksum, a PCA fitted for another model, accounting that does not close.
    pub const PERMANENT_ERROR: i32 = 3;
    /// Exit codes that fail a shard without retrying it.
    pub const PERMANENT: [i32; 2] = [USAGE, PERMANENT_ERROR];
}

/// One line of a shard manifest (`manifests/shard-NNNNN.jsonl`): one image to process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Path of the image relative to the plan's source URI (`Training/Banana 1/3_100.jpg`).
    pub key: String,
    /// Size in bytes when listed.
    pub size: u64,
    /// ETag (S3) or a modification stamp (local files) when listed, so that a changed object
    /// can be told apart from the listed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The image's label (its parent folder for `ParentDirectory`), empty for none.
    pub label: String,
}

/// The plan of a run (`manifests/plan.json`), written once before any shard runs so that a
/// restart never re-plans a run differently.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Version of this document's format.
    pub format: u32,
    /// The source URI every manifest key is relative to (ends with `/`).
    pub source: String,
    /// Images listed.
    pub images: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Images per shard (the last shard takes the rest).
    pub images_per_shard: u32,
    /// Number of shards (`manifests/shard-00000.jsonl` …).
    pub shards: u32,
    /// Which run the plan belongs to; absent from plans written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<RunIdentity>,
}

impl Plan {
    /// The current version of the plan format.
    pub const FORMAT: u32 = 1;

    /// Number of images in shard `shard` of this plan.
    pub fn shard_len(&self, shard: u32) -> u64 {
        self.totals().shard_len(shard)
    }

    /// The plan's totals.
    pub fn totals(&self) -> PlanTotals {
        PlanTotals {
            images: self.images,
            bytes: self.bytes,
            shards: self.shards,
            images_per_shard: self.images_per_shard,
        }
    }
}

/// The totals of a plan: what a plan pod reports and the operator records in the status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanTotals {
    /// Images listed.
    pub images: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Shards (the extract Job's completions).
    pub shards: u32,
    /// Images per shard (the last shard takes the rest).
    pub images_per_shard: u32,
}

impl PlanTotals {
    /// Number of images in shard `shard`.
    pub fn shard_len(&self, shard: u32) -> u64 {
        let start = u64::from(shard) * u64::from(self.images_per_shard);
        self.images
            .saturating_sub(start)
            .min(u64::from(self.images_per_shard))
    }
}

/// What makes a run this run: written with its plan, so that a second run with other inputs,
/// another model or other preprocessing is refused before it mixes its outputs with this one's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunIdentity {
    /// The uid of the `FeatureExtraction` that planned the run; absent for a run of the
    /// command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_uid: Option<String>,
    /// The source URI (ends with `/`).
    pub source: String,
    /// The include patterns.
    pub include: Vec<String>,
    /// How images are labelled.
    pub label: LabelMode,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// The model's input and output and the preprocessing that feeds it.
    pub preprocessing: Preprocessing,
    /// Images per shard.
    pub images_per_shard: u32,
}

/// The preprocessing of a run's images and the tensors it reads from the model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preprocessing {
    /// Name of the model input.
    pub input_name: String,
    /// Name of the output holding the features.
    pub output_name: String,
    /// Width the images are resized to.
    pub width: u32,
    /// Height the images are resized to.
    pub height: u32,
    /// Tensor layout of the input.
    pub layout: TensorLayout,
    /// Scale applied to each 0..=255 channel value.
    pub scale: f64,
    /// Offset added after scaling.
    pub offset: f64,
    /// How images are resized (absent from plans written before it could be chosen: bilinear).
    #[serde(default)]
    pub resize_filter: crate::api::ResizeFilter,
}

impl RunIdentity {
    /// The fields in which `other` differs from this identity, by name; empty when they are
    /// the same run.
    pub fn differences(&self, other: &RunIdentity) -> Vec<&'static str> {
        [
            (self.run_uid == other.run_uid, "run"),
            (self.source == other.source, "source"),
            (self.include == other.include, "include patterns"),
            (self.label == other.label, "label mode"),
            (self.model_sha256 == other.model_sha256, "model sha256"),
            (self.preprocessing == other.preprocessing, "preprocessing"),
            (
                self.images_per_shard == other.images_per_shard,
                "images per shard",
            ),
        ]
        .into_iter()
        .filter(|(same, _)| !same)
        .map(|(_, name)| name)
        .collect()
    }

    /// Names the run in messages: its resource's uid, or the command line.
    pub fn describe(&self) -> String {
        match &self.run_uid {
            Some(uid) => format!("the FeatureExtraction with uid {uid}"),
            None => "a run of the pomona command line".to_string(),
        }
    }
}

/// What a runner pod reports when it ends, as one line of JSON on stdout and in
/// [`TERMINATION_LOG`]: the operator sums these into the resource's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PodSummary {
    /// The step the pod ran.
    pub step: Step,
    /// The shard, for an extract pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Images in the pod's input (the shard manifest, or every shard for reduce).
    pub images: u64,
    /// Images turned into features.
    pub processed: u64,
    /// Images dead-lettered.
    pub failed: u64,
    /// Of the images with features, those whose features were copied from a previous run
    /// (`--reuse-from`) instead of being extracted; absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<u64>,
    /// Wall-clock seconds the step took.
    pub seconds: f64,
    /// Peak resident memory of the process, in MiB, where the system tells it.
    #[serde(
        default,
        rename = "peakRssMiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub peak_rss_mib: Option<u64>,
    /// CPU seconds the process used, user plus system, its children included (getrusage),
    /// where the system tells it.
    #[serde(
        default,
        rename = "cpuSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_seconds: Option<f64>,
    /// The PCA a reduce step fitted or reused (what the operator reports in `status.pca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pca: Option<crate::api::PcaResult>,
    /// The plan a plan step made or found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanTotals>,
    /// The leave-one-out 1-nearest-neighbour accuracy (cosine) of the labels on the reduced
    /// vectors, for a reduce step on labelled images (what the operator reports in
    /// `status.labelAgreement`).
    #[serde(
        default,
        rename = "labelAgreement",
        skip_serializing_if = "Option::is_none"
    )]
    pub label_agreement: Option<f64>,
    /// Why the step failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure's reason in one CamelCase word (`AccessDenied`, `NoSuchBucket`,
    /// `EmptySource`, `OutputInUse`, …): what the operator puts in the run's condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The steps of a run: the operator runs each as pods, and `pomona run` does the plan, the
/// extraction and the reduce step (which projects every shard itself).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Listing the source and writing the plan.
    Plan,
    /// `pomona extract`: one shard's images to features.
    Extract,
    /// `pomona reduce`: the PCA over all shards (or, in two pods around a projection Job, its
    /// fit and then the rest).
    Reduce,
    /// `pomona project`: one group of shards projected through the run's fitted PCA.
    Project,
    /// `pomona merge`: one block of shards' statistics merged.
    Merge,
}

/// What a step's requests to storage went through, added to its summary line as `"storage"`
/// (readers of [`PodSummary`] that do not know it ignore it).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageCounts {
    /// Requests sent (each attempt counts).
    pub requests: u64,
    /// Attempts that were retried after a retryable failure.
    pub retries: u64,
    /// Failures that were throttling (`SlowDown`, HTTP 429 or 503).
    pub throttled: u64,
    /// Attempts cut by the per-request timeout (no response, or a stalled body).
    pub timeouts: u64,
}

/// A summary line with the storage counts beside the summary's own fields.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    summary: &'a PodSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<&'a StorageCounts>,
}

impl PodSummary {
    /// The summary of a `step` that has counted nothing yet.
    pub fn new(step: Step) -> Self {
        Self {
            step,
            shard: None,
            images: 0,
            processed: 0,
            failed: 0,
            reused: None,
            seconds: 0.0,
            peak_rss_mib: None,
            cpu_seconds: None,
            pca: None,
            plan: None,
            label_agreement: None,
            error: None,
            reason: None,
        }
    }

    /// The summary as one line of JSON, shortened (by cutting `error`) to fit in a termination
    /// message.
    pub fn to_line(&self) -> String {
        self.to_line_with(None)
    }

    /// [`Self::to_line`] with the step's storage counts, when it has some.
    pub fn to_line_with(&self, storage: Option<&StorageCounts>) -> String {
        let line = |summary: &PodSummary| {
            serde_json::to_string(&Line { summary, storage }).expect("a summary serializes")
        };
        let full = line(self);
        if full.len() <= TERMINATION_MESSAGE_MAX {
            return full;
        }
        let mut short = self.clone();
        let error = short.error.take().unwrap_or_default();
        let room = TERMINATION_MESSAGE_MAX
            .saturating_sub(line(&short).len())
            .saturating_sub(32);
        let mut cut = room.min(error.len());
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        short.error = Some(format!("{}…", &error[..cut]));
        line(&short)
    }

    /// Reads a summary from a termination message: the last line that parses, so that a log
    /// line printed before it does not hide it.
    pub fn from_message(message: &str) -> Option<Self> {
        message
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str(line.trim()).ok())
    }
}

/// The objects of one run, as functions of its output prefix.
///
/// ```text
/// <output>/manifests/plan.json            the plan
/// <output>/manifests/shard-00000.jsonl    one ManifestEntry per line
/// <output>/features/part-00000.parquet    path, label, etag, features
/// <output>/stats/part-00000.safetensors   partial PCA statistics of the shard
/// <output>/deadletter/part-00000.parquet  path, reason, bytes
/// <output>/reuse/part-00000.json          features copied from previous runs (when some were)
/// <output>/pca/                           the fitted PCA
/// <output>/reduced/part-00000.parquet     path, label, pca
/// <output>/reduced.csv                    path, label, pc1..pcK (when asked for)
/// <output>/clusters/part-00000.parquet    path, label, cluster (when k-means is asked for)
/// <output>/report/                        pictures and summary.json
/// <output>/sweep.json                     a sweep's settings and figures (`pomona sweep`)
/// <output>/_SUCCESS                       written last
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLayout {
    root: String,
}

impl OutputLayout {
    /// The layout under `root`: an `s3://` URI or a local directory. A missing trailing `/` is
    /// added, so `s3://b/run` and `s3://b/run/` are the same run.
    pub fn new(root: &str) -> Self {
        let mut root = root.to_string();
        if !root.ends_with('/') {
            root.push('/');
        }
        Self { root }
    }

    /// The output prefix, ending with `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn join(&self, rel: &str) -> String {
        format!("{}{rel}", self.root)
    }

    fn part(&self, dir: &str, shard: u32, ext: &str) -> String {
        self.join(&format!("{dir}/part-{shard:0SHARD_DIGITS$}.{ext}"))
    }

    /// Prefix of the plan and the shard manifests.
    pub fn manifests(&self) -> String {
        self.join("manifests/")
    }
    /// The plan document.
    pub fn plan(&self) -> String {
        self.join("manifests/plan.json")
    }
    /// The manifest of one shard.
    pub fn manifest(&self, shard: u32) -> String {
        self.join(&format!("manifests/shard-{shard:0SHARD_DIGITS$}.jsonl"))
    }
    /// Prefix of the feature files.
    pub fn features_dir(&self) -> String {
        self.join("features/")
    }
    /// The feature file of one shard.
    pub fn features(&self, shard: u32) -> String {
        self.part("features", shard, "parquet")
    }
    /// Prefix of the dead-letter files.
    pub fn deadletter_dir(&self) -> String {
        self.join("deadletter/")
    }
    /// The dead-letter file of one shard.
    pub fn deadletter(&self, shard: u32) -> String {
        self.part("deadletter", shard, "parquet")
    }
    /// The record of the features shard `shard` copied from previous runs (`--reuse-from`),
    /// present only when it copied some.
    pub fn reuse(&self, shard: u32) -> String {
        self.part("reuse", shard, "json")
    }
    /// Prefix of the partial PCA statistics.
    pub fn stats_dir(&self) -> String {
        self.join("stats/")
    }
    /// The partial PCA statistics of one shard.
    pub fn stats(&self, shard: u32) -> String {
        self.part("stats", shard, "safetensors")
    }
    /// The statistics of one block of shards, merged by a pod of the merge Job (absent when no
    /// shard of the block has statistics).
    pub fn merged_stats(&self, block: u32) -> String {
        self.join(&format!(
            "stats/blocks/block-{block:0SHARD_DIGITS$}.safetensors"
        ))
    }
    /// What the merge pod of one block merged: a [`MergedBlock`] (JSON), written after the
    /// statistics.
    pub fn merged_record(&self, block: u32) -> String {
        self.join(&format!("stats/blocks/block-{block:0SHARD_DIGITS$}.json"))
    }
    /// Prefix of the fitted PCA.
    pub fn pca_dir(&self) -> String {
        self.join("pca/")
    }
    /// Prefix of the reduced vectors.
    pub fn reduced_dir(&self) -> String {
        self.join("reduced/")
    }
    /// The reduced vectors of one shard.
    pub fn reduced(&self, shard: u32) -> String {
        self.part("reduced", shard, "parquet")
    }
    /// The reduced vectors as one CSV.
    pub fn csv(&self) -> String {
        self.join("reduced.csv")
    }
    /// Prefix of the cluster assignments.
    pub fn clusters_dir(&self) -> String {
        self.join("clusters/")
    }
    /// The cluster of each image of one shard.
    pub fn clusters(&self, shard: u32) -> String {
        self.part("clusters", shard, "parquet")
    }
    /// Prefix of the report (pictures, summary).
    pub fn report_dir(&self) -> String {
        self.join("report/")
    }
    /// The reduce step's summary (also the content of `_SUCCESS`).
    pub fn summary_json(&self) -> String {
        self.join("report/summary.json")
    }
    /// The explained-variance picture.
    pub fn explained_variance_png(&self) -> String {
        self.join("report/explained_variance.png")
    }
    /// The scatter of the first two components, coloured by label.
    pub fn scatter_png(&self) -> String {
        self.join("report/scatter.png")
    }
    /// The first two components coloured by cluster, beside the scatter by label.
    pub fn clusters_png(&self) -> String {
        self.join("report/clusters.png")
    }
    /// A sweep's settings and figures.
    pub fn sweep_json(&self) -> String {
        self.join("sweep.json")
    }
    /// A sweep's picture: speed against agreement, one point per setting.
    pub fn sweep_png(&self) -> String {
        self.join("report/sweep.png")
    }
    /// The output prefix of one setting of a sweep (a run of its own).
    pub fn sweep_setting(&self, name: &str) -> String {
        self.join(&format!("settings/{name}/"))
    }
    /// The marker written last, when the whole run is complete.
    pub fn success(&self) -> String {
        self.join("_SUCCESS")
    }

    /// The shard number of a per-shard file name (`part-00042.parquet` or
    /// `shard-00042.jsonl`), wherever it sits.
    pub fn shard_of(path: &str) -> Option<u32> {
        let name = path.rsplit('/').next()?;
        let stem = name.split('.').next()?;
        let digits = stem
            .strip_prefix("part-")
            .or_else(|| stem.strip_prefix("shard-"))?;
        if digits.len() < SHARD_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_every_output_under_the_prefix() {
        let s3 = OutputLayout::new("s3://fruits/runs/a");
        assert_eq!(s3.root(), "s3://fruits/runs/a/");
        assert_eq!(s3, OutputLayout::new("s3://fruits/runs/a/"));
        assert_eq!(s3.plan(), "s3://fruits/runs/a/manifests/plan.json");
        assert_eq!(
            s3.manifest(7),
            "s3://fruits/runs/a/manifests/shard-00007.jsonl"
        );
        assert_eq!(
            s3.features(7),
            "s3://fruits/runs/a/features/part-00007.parquet"
        );
        assert_eq!(
            s3.deadletter(0),
            "s3://fruits/runs/a/deadletter/part-00000.parquet"
        );
        assert_eq!(
            s3.stats(12345),
            "s3://fruits/runs/a/stats/part-12345.safetensors"
        );
        assert_eq!(
            s3.reduced(3),
            "s3://fruits/runs/a/reduced/part-00003.parquet"
        );
        assert_eq!(s3.success(), "s3://fruits/runs/a/_SUCCESS");
        assert_eq!(s3.reuse(2), "s3://fruits/runs/a/reuse/part-00002.json");
        let local = OutputLayout::new("/tmp/out");
        assert_eq!(local.features(1), "/tmp/out/features/part-00001.parquet");
        assert_eq!(local.csv(), "/tmp/out/reduced.csv");
        assert_eq!(local.report_dir(), "/tmp/out/report/");
        assert_eq!(
            s3.clusters(2),
            "s3://fruits/runs/a/clusters/part-00002.parquet"
        );
        assert_eq!(local.summary_json(), "/tmp/out/report/summary.json");
        assert_eq!(local.clusters_png(), "/tmp/out/report/clusters.png");
        assert_eq!(local.sweep_json(), "/tmp/out/sweep.json");
        assert_eq!(local.sweep_png(), "/tmp/out/report/sweep.png");
        assert_eq!(
            local.sweep_setting("int8-160"),
            "/tmp/out/settings/int8-160/"
        );
    }

    #[test]
    fn shard_numbers_round_trip_through_file_names() {
        let l = OutputLayout::new("s3://b/r/");
        for shard in [0, 1, 99_999] {
            assert_eq!(OutputLayout::shard_of(&l.features(shard)), Some(shard));
            assert_eq!(OutputLayout::shard_of(&l.manifest(shard)), Some(shard));
            assert_eq!(OutputLayout::shard_of(&l.stats(shard)), Some(shard));
        }
        for other in [
            "plan.json",
            "part-12.parquet",
            "part-0000x.parquet",
            "_SUCCESS",
            "",
        ] {
            assert_eq!(OutputLayout::shard_of(other), None, "{other}");
        }
    }

    #[test]
    fn shards_are_as_asked_up_to_the_job_limit() {
        let plan = |images, asked| shard_plan(images, asked).unwrap();
        assert_eq!(
            plan(1260, 500),
            ShardPlan {
                images_per_shard: 500,
                shards: 3
            }
        );
        assert_eq!(plan(0, 500).shards, 0);
        assert_eq!(plan(1, 500).shards, 1);
        // Exactly 100,000 shards is still one Job as asked.
        let limit = u64::from(MAX_SHARDS);
        let full = plan(limit * 2000, 2000);
        assert_eq!((full.images_per_shard, full.shards), (2000, MAX_SHARDS));
        assert!(!full.raised(2000));
        assert_eq!(shard_plan(5, 0), Err(ShardPlanError::ZeroShardSize));
    }

    #[test]
    fn images_per_shard_is_raised_past_the_job_limit_to_a_multiple_of_the_asked() {
        let plan = |images, asked| shard_plan(images, asked).unwrap();
        let limit = u64::from(MAX_SHARDS);
        // One image more than 100,000 shards hold: twice the shard size.
        let over = plan(limit * 2000 + 1, 2000);
        assert_eq!(over.images_per_shard, 4000);
        assert_eq!(over.shards, 50_001);
        assert!(over.raised(2000));
        // 10^8 images at 1 per shard: 1,000 per shard, exactly 100,000 shards.
        let fine = plan(100_000_000, 1);
        assert_eq!((fine.images_per_shard, fine.shards), (1000, MAX_SHARDS));
        // Whatever the count, never more shards than one Job runs, never a smaller shard.
        for images in [limit + 1, 3 * limit + 7, 123_456_789, 10_000_000_000] {
            for asked in [1, 7, 2000, 999_999] {
                let Ok(p) = shard_plan(images, asked) else {
                    continue;
                };
                assert!(p.shards <= MAX_SHARDS, "{images} {asked}");
                assert_eq!(p.images_per_shard % asked, 0, "{images} {asked}");
                assert_eq!(
                    u64::from(p.shards),
                    images.div_ceil(u64::from(p.images_per_shard))
                );
                // The raise is the smallest one that fits.
                let smaller = u64::from(p.images_per_shard - asked).max(u64::from(asked));
                if p.raised(asked) {
                    assert!(images.div_ceil(smaller) > limit, "{images} {asked}");
                }
            }
        }
    }

    #[test]
    fn runs_beyond_the_largest_shards_are_refused_not_split() {
        let most = u64::from(MAX_SHARDS) * u64::from(MAX_IMAGES_PER_SHARD);
        let p = shard_plan(most, 1_000_000).unwrap();
        assert_eq!((p.images_per_shard, p.shards), (1_000_000, MAX_SHARDS));
        let err = shard_plan(most + 1, 1_000_000).unwrap_err();
        assert_eq!(err, ShardPlanError::TooManyImages { images: most + 1 });
        assert!(err.to_string().contains("split the source"), "{err}");
        // A raise past the largest shard is refused too.
        assert!(shard_plan(most, 2000).is_ok());
        assert!(shard_plan(most + 1, 2000).is_err());
        assert!(shard_plan(u64::MAX, 1).is_err());
    }

    #[test]
    fn the_job_s_index_lists_fit_in_etcd_at_the_shard_limit() {
        // `.status.completedIndexes` and `.status.failedIndexes` list disjoint indexes, as
        // ranges (`1-5,7`); their longest form is every index alone, comma-separated, which
        // both lists together cannot exceed. etcd refuses objects above 1.5 MiB.
        let longest: usize = (0..MAX_SHARDS).map(|i| i.to_string().len() + 1).sum();
        assert!(longest < 1_572_864 / 2, "{longest} bytes");
    }

    #[test]
    fn shard_lengths_cover_the_plan_exactly() {
        let plan = Plan {
            format: Plan::FORMAT,
            source: "s3://b/p/".into(),
            images: 1260,
            bytes: 1,
            images_per_shard: 500,
            shards: 3,
            identity: None,
        };
        let lens: Vec<u64> = (0..plan.shards).map(|s| plan.shard_len(s)).collect();
        assert_eq!(lens, [500, 500, 260]);
        assert_eq!(plan.shard_len(3), 0);
    }

    #[test]
    fn summary_is_one_line_that_fits_a_termination_message() {
        let summary = PodSummary {
            step: Step::Extract,
            shard: Some(4),
            images: 2000,
            processed: 1998,
            failed: 2,
            reused: None,
            seconds: 41.5,
            peak_rss_mib: Some(212),
            cpu_seconds: Some(38.25),
            pca: None,
            plan: None,
            label_agreement: None,
            error: None,
            reason: None,
        };
        let line = summary.to_line();
        assert_eq!(
            line,
            r#"{"step":"extract","shard":4,"images":2000,"processed":1998,"failed":2,"seconds":41.5,"peakRssMiB":212,"cpuSeconds":38.25}"#
        );
        let message = format!("some log line\n{line}\n");
        assert_eq!(PodSummary::from_message(&message), Some(summary.clone()));
        assert_eq!(PodSummary::from_message("no summary here"), None);

        let long = PodSummary {
            error: Some("é".repeat(5000)),
            ..summary
        };
        let line = long.to_line();
        assert!(line.len() <= TERMINATION_MESSAGE_MAX, "{}", line.len());
        assert!(!line.contains('\n'));
        let back = PodSummary::from_message(&line).expect("the shortened line still parses");
        assert!(back.error.unwrap().ends_with('…'));
    }

    #[test]
    fn storage_counts_ride_along_and_old_readers_ignore_them() {
        let summary = PodSummary {
            step: Step::Plan,
            shard: None,
            images: 0,
            processed: 0,
            failed: 0,
            reused: None,
            seconds: 0.5,
            peak_rss_mib: None,
            cpu_seconds: None,
            pca: None,
            plan: None,
            label_agreement: None,
            error: Some("listing failed".into()),
            reason: None,
        };
        let counts = StorageCounts {
            requests: 9,
            retries: 4,
            throttled: 3,
            timeouts: 1,
        };
        let line = summary.to_line_with(Some(&counts));
        assert_eq!(
            line,
            r#"{"step":"plan","images":0,"processed":0,"failed":0,"seconds":0.5,"error":"listing failed","storage":{"requests":9,"retries":4,"throttled":3,"timeouts":1}}"#
        );
        assert_eq!(PodSummary::from_message(&line), Some(summary.clone()));
        let long = PodSummary {
            error: Some("x".repeat(5000)),
            ..summary
        };
        let line = long.to_line_with(Some(&counts));
        assert!(line.len() <= TERMINATION_MESSAGE_MAX, "{}", line.len());
        assert!(line.ends_with(r#""timeouts":1}}"#), "{line}");
    }

    #[test]
    fn a_reduce_summary_carries_the_pca() {
        let summary = PodSummary {
            step: Step::Reduce,
            shard: None,
            images: 1260,
            processed: 1259,
            failed: 1,
            reused: None,
            seconds: 0.8,
            peak_rss_mib: None,
            cpu_seconds: None,
            pca: Some(crate::api::PcaResult {
                components: 50,
                explained_variance: 0.854,
                reused: false,
            }),
            plan: None,
            label_agreement: Some(0.987),
            error: None,
            reason: None,
        };
        let line = summary.to_line();
        assert!(
            line.ends_with(
                r#""pca":{"components":50,"explainedVariance":0.854,"reused":false},"labelAgreement":0.987}"#
            ),
            "{line}"
        );
        assert_eq!(PodSummary::from_message(&line), Some(summary));
    }

    #[test]
    fn manifest_line_format_is_stable() {
        let entry = ManifestEntry {
            key: "Training/Banana 1/3_100.jpg".into(),
            size: 3673,
            etag: Some("\"0ec64a\"".into()),
            label: "Banana 1".into(),
        };
        let line = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            line,
            r#"{"key":"Training/Banana 1/3_100.jpg","size":3673,"etag":"\"0ec64a\"","label":"Banana 1"}"#
        );
        assert_eq!(serde_json::from_str::<ManifestEntry>(&line).unwrap(), entry);
    }

    #[test]
    fn shard_groups_cover_every_shard_once() {
        assert_eq!(
            ShardGroups::of_job(64, 64, false),
            None,
            "one group: the reduce pod projects"
        );
        assert_eq!(ShardGroups::of_job(65, 64, true), None, "a reused PCA");
        assert_eq!(
            ShardGroups::of_job(4096, 4096, false),
            None,
            "one pod merges"
        );
        assert_eq!(
            ShardGroups::of_job(4097, 4096, false).map(|g| g.groups()),
            Some(2)
        );
        let g = ShardGroups::of_job(130, 64, false).expect("three groups");
        assert_eq!(g.groups(), 3);
        assert_eq!(
            [
                g.shards_of(0),
                g.shards_of(1),
                g.shards_of(2),
                g.shards_of(3)
            ],
            [0..64, 64..128, 128..130, 130..130]
        );
        for (shards, per) in [(1, 1), (7, 2), (100_000, 64), (99_999, 1), (5, 0)] {
            let g = ShardGroups {
                shards,
                shards_per_pod: per,
            };
            let covered: Vec<u32> = (0..g.groups()).flat_map(|i| g.shards_of(i)).collect();
            assert_eq!(
                covered,
                (0..shards).collect::<Vec<_>>(),
                "{shards} at {per}"
            );
        }
    }
}
