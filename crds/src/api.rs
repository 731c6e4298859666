//! The `pomona.dev/v1alpha1` `FeatureExtraction` custom resource.
//!
//! Every doc comment on these types ends up in the CRD's OpenAPI schema, so it is what
//! `kubectl explain featureextraction.spec.<field>` prints: write them for users.
//!
//! Validation lives in the schema (OpenAPI bounds and CEL `x-kubernetes-validations`), so that
//! `kubectl apply` refuses a bad resource before the operator sees it. The rules are exercised,
//! each with a valid and an invalid object, by `crds/tests/schema.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CEL fragment: an S3 URI `s3://bucket[/prefix]` with a valid bucket name.
macro_rules! s3_uri_rule {
    () => {
        "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')"
    };
}

/// Turns a set of images into MobileNetV2 features, a fitted PCA and the reduced vectors.
///
/// The operator lists `source`, splits the images into shards, runs one Indexed Job of
/// extractor pods (one index per shard) and then one reduce pod; everything lands under
/// `output.uri` (see the README for the layout) and is summarised in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pomona.dev",
    version = "v1alpha1",
    kind = "FeatureExtraction",
    doc = "A run of pomona: images under an S3 prefix become MobileNetV2 features, a PCA and reduced vectors, written under an output prefix and summarised in status.",
    plural = "featureextractions",
    singular = "featureextraction",
    shortname = "fx",
    category = "pomona",
    namespaced,
    status = "FeatureExtractionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the run is"}"#,
    printcolumn = r#"{"name":"Images","type":"integer","jsonPath":".status.images.total","description":"Images listed in the source"}"#,
    printcolumn = r#"{"name":"Processed","type":"integer","jsonPath":".status.images.processed","description":"Images turned into features"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.images.failed","description":"Images sent to the dead-letter output"}"#,
    printcolumn = r#"{"name":"ETA","type":"string","jsonPath":".status.progress.estimatedCompletionTime","description":"When extraction is expected to end (UTC), from the recent rate"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new(
        "!((self.output.uri + '/').startsWith(self.source.uri.endsWith('/') ? self.source.uri : self.source.uri + '/'))"
    ).message("output.uri must not lie inside source.uri: the run's own files would be listed as images by the next run"),
)]
#[serde(rename_all = "camelCase")]
pub struct FeatureExtractionSpec {
    /// Connection to the S3 service that holds the source, model and output. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: create a new FeatureExtraction to use another S3 service"))]
    pub storage: StorageSpec,

    /// The images to extract features from. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("source is immutable: create a new FeatureExtraction for other images"))]
    pub source: SourceSpec,

    /// The ONNX model that turns one image into one feature vector. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("model is immutable: features of two models must not mix in one output"))]
    pub model: ModelSpec,

    /// How the images are split into shards (one Indexed Job index each) and how failures are
    /// tolerated.
    #[serde(default)]
    pub sharding: ShardingSpec,

    /// The PCA: fit one keeping a number of components or a fraction of the variance, or reuse
    /// a PCA saved by an earlier run. Exactly one of `components`, `varianceToKeep`, `from`.
    /// Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("pca is immutable: create a new FeatureExtraction for another PCA"))]
    pub pca: PcaSpec,

    /// Where every output of the run is written. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("output is immutable: an edit mid-run would mix two runs in one output"))]
    pub output: OutputSpec,

    /// Group the images, without their labels, by k-means of their reduced vectors: the reduce
    /// step writes `clusters/` (path, label, cluster) and `report/clusters.png`, and scores
    /// the grouping in `report/summary.json`. Unset: no grouping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustering: Option<ClusteringSpec>,

    /// How the runner pods (extractor and reduce) are scheduled and sized.
    #[serde(default)]
    pub runner: RunnerSpec,

    /// Pause the run: no new pods start and running extractor pods are stopped (the Job's own
    /// `suspend`). Shards already written are kept; setting it back to false resumes.
    #[serde(default)]
    pub suspend: bool,

    /// Seconds after the run finished (Succeeded or Failed) when its Jobs and their pods are
    /// deleted. The FeatureExtraction and the outputs stay. Unset: the Jobs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// Connection to an S3 (or S3-compatible) service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Region of the buckets, e.g. `eu-west-3`. The operator refuses regions outside its
    /// allowed list (by default the EU regions) to keep data where it must stay.
    #[schemars(length(max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,

    /// Endpoint of an S3-compatible service (MinIO, Ceph, …), e.g.
    /// `http://minio.minio.svc:9000`. Unset: AWS S3 of `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/]+/?$')").message("endpoint must be http(s)://host[:port] with no path"))]
    #[schemars(length(max = 512))]
    pub endpoint: Option<String>,

    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`. Unset: path
    /// style when `endpoint` is set (what MinIO expects), virtual-hosted style on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,

    /// A Secret in the resource's namespace holding static credentials under the keys
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`).
    /// Unset: the pods use the default AWS credential chain of their service account (IRSA,
    /// EKS Pod Identity, instance role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretReference>,
}

/// A Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Where the images are and how they are labelled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// S3 prefix listed recursively for images, e.g. `s3://fruits-eu/images/Training/`.
    #[x_kube(validation = Rule::new(s3_uri_rule!()).message("source.uri must be an S3 URI: s3://bucket/prefix/"))]
    #[schemars(length(max = 2048))]
    pub uri: String,

    /// File-name patterns of the objects to take as images (`*` matches any run of characters,
    /// compared case-insensitively, so `*.jpg` also takes `X.JPG`). Other objects are ignored.
    #[serde(default = "default_include")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 256)))]
    pub include: Vec<String>,

    /// How each image gets its label: `ParentDirectory` (the Fruits-360 layout
    /// `Training/<Variety>/x.jpg` gives `<Variety>`) or `None`.
    #[serde(default)]
    pub label: LabelMode,

    /// Images larger than this many bytes are dead-lettered from their listed size, without
    /// being downloaded (default 52428800, 50 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_image_bytes: Option<u64>,

    /// Output prefixes of previous runs made with the same model and preprocessing, e.g.
    /// `s3://fruits-eu/runs/week-47/`. An image whose key, ETag and size match a row of their
    /// features is not read nor inferred again: its row is copied into this run's features,
    /// which stay complete. A run made with another model or preprocessing is refused.
    /// Each must be an S3 URI, `s3://bucket/prefix/` (the pattern of `source.uri`'s rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(max = 2048),
            regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
        )
    )]
    pub reuse_from: Vec<String>,
}

/// How an image gets its label.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelMode {
    /// The name of the folder that holds the image.
    #[default]
    ParentDirectory,
    /// No label (an empty string in the outputs).
    None,
}

impl LabelMode {
    /// Every mode, in the order of [`Self::as_arg`]'s names.
    pub const ALL: [LabelMode; 2] = [LabelMode::ParentDirectory, LabelMode::None];

    /// The mode's name on the runner's command line.
    pub fn as_arg(self) -> &'static str {
        match self {
            LabelMode::ParentDirectory => "parent-directory",
            LabelMode::None => "none",
        }
    }
}

impl std::str::FromStr for LabelMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_arg(&Self::ALL, Self::as_arg, s)
    }
}

/// The feature model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The ONNX file: `s3://bucket/key.onnx`, or `file:///path.onnx` for a model baked into
    /// the runner image.
    #[x_kube(validation = Rule::new("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$') || self.matches('^file:///.+$')").message("model.uri must be s3://bucket/key or file:///path"))]
    #[schemars(length(max = 2048))]
    pub uri: String,

    /// Expected sha256 of the ONNX file (64 lowercase hex digits). When set, a pod refuses a
    /// model with another checksum. It is recorded in every output either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,

    /// The model's input and the preprocessing that feeds it.
    #[serde(default)]
    pub input: ModelInput,

    /// Name of the model output that holds the feature vector (shape `[N, D]`).
    #[serde(default = "default_output_name")]
    #[schemars(length(min = 1, max = 256))]
    pub output: String,
}

/// A model input and its preprocessing: each image is decoded to RGB, resized to
/// `width`×`height` (with `resizeFilter`, bilinear by default), and every channel value `x` in
/// 0..=255 becomes
/// `x * scale + offset`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelInput {
    /// Name of the model input.
    #[serde(default = "default_input_name")]
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// Width the images are resized to, in pixels.
    #[serde(default = "default_side")]
    #[schemars(range(min = 1, max = 4096))]
    pub width: u32,

    /// Height the images are resized to, in pixels.
    #[serde(default = "default_side")]
    #[schemars(range(min = 1, max = 4096))]
    pub height: u32,

    /// Tensor layout: `NHWC` (channels last, as MobileNetV2 from TensorFlow) or `NCHW`.
    #[serde(default)]
    pub layout: TensorLayout,

    /// Factor applied to each 0..=255 channel value. MobileNetV2: 1/127.5.
    #[serde(default = "default_scale")]
    #[x_kube(validation = Rule::new("self != 0.0").message("scale must not be 0"))]
    pub scale: f64,

    /// Added after scaling. MobileNetV2: -1 (so pixels span [-1, 1]).
    #[serde(default = "default_offset")]
    pub offset: f64,

    /// How images are resized to `width` × `height`, exactly as PIL's `Image.resize` does with
    /// that filter: `Bilinear` (the default model was validated with it), `Nearest` (Keras'
    /// `load_img` default) or `Bicubic` (PIL's own default), for parity with an existing
    /// pipeline.
    #[serde(default, skip_serializing_if = "ResizeFilter::is_default")]
    pub resize_filter: ResizeFilter,
}

/// The resize filter of [`ModelInput`], as PIL defines each.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResizeFilter {
    /// PIL's `Image.BILINEAR`.
    #[default]
    Bilinear,
    /// PIL's `Image.NEAREST`.
    Nearest,
    /// PIL's `Image.BICUBIC`.
    Bicubic,
}

impl ResizeFilter {
    /// Every filter.
    pub const ALL: [ResizeFilter; 3] = [Self::Bilinear, Self::Nearest, Self::Bicubic];

    /// The filter's name on the runner's command line and in the preprocessing metadata.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Bilinear => "bilinear",
            Self::Nearest => "nearest",
            Self::Bicubic => "bicubic",
        }
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl std::str::FromStr for ResizeFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_arg(&Self::ALL, Self::as_arg, s)
    }
}

impl Default for ModelInput {
    fn default() -> Self {
        Self {
            name: default_input_name(),
            width: default_side(),
            height: default_side(),
            layout: TensorLayout::default(),
            scale: default_scale(),
            offset: default_offset(),
            resize_filter: ResizeFilter::default(),
        }
    }
}

/// Memory layout of the image tensor.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum TensorLayout {
    /// `[N, height, width, 3]`.
    #[default]
    NHWC,
    /// `[N, 3, height, width]`.
    NCHW,
}

impl TensorLayout {
    /// Every layout.
    pub const ALL: [TensorLayout; 2] = [TensorLayout::NHWC, TensorLayout::NCHW];

    /// The layout's name on the runner's command line.
    pub fn as_arg(self) -> &'static str {
        match self {
            TensorLayout::NHWC => "nhwc",
            TensorLayout::NCHW => "nchw",
        }
    }
}

impl std::str::FromStr for TensorLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_arg(&Self::ALL, Self::as_arg, s)
    }
}

/// The value of `all` whose command-line name is `s` (case-insensitive), or the list of names.
fn from_arg<T: Copy>(all: &[T], name: fn(T) -> &'static str, s: &str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v).eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("{s:?} is not one of {}", names.join(", "))
        })
}

/// Sharding and failure tolerance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.imagesPerShard == oldSelf.imagesPerShard && self.retriesPerShard == oldSelf.retriesPerShard && self.maxFailedShards == oldSelf.maxFailedShards && self.shardsPerProjectionPod == oldSelf.shardsPerProjectionPod && self.shardsPerMergePod == oldSelf.shardsPerMergePod").message("only sharding.parallelism can change after creation: the plan, the Jobs and their failure policy are fixed when the run starts"))]
pub struct ShardingSpec {
    /// Images per shard (the last shard takes the rest). One extractor pod processes one
    /// shard; a retry redoes one shard only.
    #[serde(default = "default_images_per_shard")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub images_per_shard: u32,

    /// How many extractor pods run at once.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 10_000))]
    pub parallelism: u32,

    /// How many times a failed shard is retried before it counts as failed (the Job's
    /// `backoffLimitPerIndex`). Node disruptions (preemption, spot reclaim) do not count.
    #[serde(default = "default_retries_per_shard")]
    #[schemars(range(min = 0, max = 100))]
    pub retries_per_shard: u32,

    /// How many shards may fail for good while the run still goes on to the reduce step (the
    /// Job's `maxFailedIndexes`). Their images are reported as failed. 0: any failed shard fails
    /// the run.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100_000))]
    pub max_failed_shards: u32,

    /// Shards one projection pod projects through a PCA fitted by the run. A run of more shards
    /// than this projects them in a Job of its own, one pod per this many shards, between the
    /// fit pod and the reduce pod; a smaller run (or one that reuses a PCA, which its extract
    /// pods apply) has its reduce pod do it.
    #[serde(default = "default_shards_per_projection_pod")]
    #[schemars(range(min = 1, max = 100_000))]
    pub shards_per_projection_pod: u32,

    /// Shards whose statistics one merge pod merges: 64, 4096 or 262144 (a block of the merge
    /// tree, so that the PCA has the bytes of one pod's merge). A run of more shards that fits
    /// its PCA merges them in a Job of their own, one pod a block, before the fit pod.
    #[serde(default = "default_shards_per_merge_pod")]
    #[x_kube(validation = Rule::new("self == 64 || self == 4096 || self == 262144").message("shardsPerMergePod must be 64, 4096 or 262144: a block of the statistics' merge tree"))]
    pub shards_per_merge_pod: u32,
}

impl Default for ShardingSpec {
    fn default() -> Self {
        Self {
            images_per_shard: default_images_per_shard(),
            parallelism: default_parallelism(),
            retries_per_shard: default_retries_per_shard(),
            max_failed_shards: 0,
            shards_per_projection_pod: default_shards_per_projection_pod(),
            shards_per_merge_pod: default_shards_per_merge_pod(),
        }
    }
}

/// The PCA: exactly one of `components`, `varianceToKeep` and `from`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.components) ? 1 : 0) + (has(self.varianceToKeep) ? 1 : 0) + (has(self.from) ? 1 : 0) == 1").message("pca needs exactly one of components, varianceToKeep and from"))]
pub struct PcaSpec {
    /// Fit a PCA keeping this many components (at most the feature dimension, 1280 for
    /// MobileNetV2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65_536))]
    pub components: Option<u32>,

    /// Fit a PCA keeping the fewest components whose cumulative explained variance reaches this
    /// fraction, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("varianceToKeep must be in (0, 1]"))]
    pub variance_to_keep: Option<f64>,

    /// Reuse a saved PCA instead of fitting one: the `pca/` prefix of an earlier run's output,
    /// e.g. `s3://fruits-eu/runs/2026-11/pca/`, which must have been fitted on the same model;
    /// or the prefix of a Spark ML `PCAModel` saved with `model.save(path)`, which projects as
    /// Spark does, without centring (see docs/from-spark.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(s3_uri_rule!()).message("pca.from must be an S3 URI: s3://bucket/prefix/"))]
    #[schemars(length(max = 2048))]
    pub from: Option<String>,
}

/// The k-means grouping of the reduced vectors.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusteringSpec {
    /// Number of clusters, from 2 to 1000, or `auto`: the k from 2 to 30 with the largest
    /// silhouette on a sample of the images.
    #[x_kube(validation = Rule::new("string(self) == 'auto' || (string(self).matches('^[0-9]{1,4}$') && int(string(self)) >= 2 && int(string(self)) <= 1000)").message("clustering.k must be a number from 2 to 1000, or auto"))]
    pub k: IntOrString,
}

impl ClusteringSpec {
    /// `k` as the reduce step takes it.
    pub fn count(&self) -> Result<crate::contract::steps::ClusterCount, String> {
        match &self.k {
            IntOrString::Int(k) => k.to_string().parse(),
            IntOrString::String(s) => s.parse(),
        }
    }
}

/// Where the run writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// S3 prefix of this run's outputs, e.g. `s3://fruits-eu/runs/2026-11/`. Use one prefix
    /// per run.
    #[x_kube(validation = Rule::new(s3_uri_rule!()).message("output.uri must be an S3 URI: s3://bucket/prefix/"))]
    #[schemars(length(max = 2048))]
    pub uri: String,

    /// Also write the reduced vectors as one CSV (`path,label,pc1,…,pcK`).
    #[serde(default)]
    pub csv: bool,
}

/// Scheduling and sizing of the runner pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSpec {
    /// Container image of the `pomona` runner. Unset: the operator's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Images per inference batch, per inference thread (the runner's default: 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch_size: Option<u32>,

    /// CPU and memory of each runner pod. The extractor sizes its inference and decode threads
    /// from the CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the runner pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the runner pods tolerate (e.g. spot or GPU node pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Seconds a runner pod may run before Kubernetes stops it (the pods'
    /// `activeDeadlineSeconds`), so that a pod stuck on a server that trickles data ends and its
    /// step is retried. Unset: from the pod's work — 1 hour for the plan pod, 15 minutes plus
    /// 1 second per image of its shard for an extract pod, 30 minutes plus 1 second per 100
    /// images for the reduce pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 2_592_000))]
    pub active_deadline_seconds: Option<u32>,

    /// Service account of the runner pods: the one bound to the IAM role that reads the source
    /// and writes the output (IRSA / Pod Identity). Unset: the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// Observed state of a run, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureExtractionStatus {
    /// Where the run is: Pending, Planning, Extracting, Reducing, Succeeded, Failed or
    /// Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: Planned, Progressing, Complete, Failed, Suspended. Wait for a run
    /// with `kubectl wait --for=condition=Complete fx/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// When the operator started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the run reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Image counts: listed, turned into features, dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageCounts>,

    /// Shard counts of the extract Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardCounts>,

    /// Where the outputs are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,

    /// The PCA that was fitted or reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pca: Option<PcaResult>,

    /// How well the reduced vectors keep the labels apart: the leave-one-out
    /// 1-nearest-neighbour accuracy (cosine) of the labels, on a fixed-seed sample of up to
    /// 10,000 images, in [0, 1]. Set when the run succeeded on labelled images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_agreement: Option<f64>,

    /// How fast the run goes and when its extraction should end, while it extracts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,

    /// What the run's finished pods used and, with the cluster admin's rates, what that cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,

    /// A human-readable account of the last transition or of what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The pace of a run's extraction, from the summaries and times of its finished extract pods
/// (so it survives an operator restart).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Images per second over the last 10 minutes of finished shards (over the whole
    /// extraction when it is younger); absent until a shard has finished since extraction
    /// started or resumed, and while suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_second: Option<f64>,
    /// When the last shard should finish at that rate (UTC, RFC 3339); the reduce step follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion_time: Option<String>,
    /// Why there is no rate or estimate, when there is none (suspended, no shard finished yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a run used, summed over its pods (every attempt), and what it cost at the rates the
/// cluster admin set. The same figures are in `report/summary.json` and the Prometheus metrics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// CPU seconds the runner processes used, user plus system, their children included, as
    /// each measured itself (getrusage).
    pub cpu_seconds: f64,
    /// Cores requested times the seconds each pod ran (pod start to container end): what the
    /// scheduler reserved. Absent outside Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_core_seconds: Option<f64>,
    /// GiB of memory requested times the seconds each pod ran. Absent outside Kubernetes.
    #[serde(
        default,
        rename = "requestedMemoryGiBSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub requested_memory_gib_seconds: Option<f64>,
    /// Images turned into features per hour of measured CPU (`processed / cpuSeconds × 3600`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_core_hour: Option<f64>,
    /// Pods counted: those that ended, every attempt (for `pomona run`, its one process).
    pub pods: u32,
    /// The requested core-seconds and GiB-seconds at the operator's rates; absent when it has no
    /// rates (no rate is ever guessed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated: Option<CostEstimate>,
}

/// An amount of money for a run: requested core-hours × `perCoreHour` + requested GiB-hours ×
/// `perGiBHour`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CostEstimate {
    /// The amount, in `currency`.
    pub amount: f64,
    /// The currency of the rates (`EUR`, `USD`, …).
    pub currency: String,
    /// The rate per requested core-hour used.
    pub per_core_hour: f64,
    /// The rate per requested GiB-hour of memory used.
    #[serde(rename = "perGiBHour")]
    pub per_gib_hour: f64,
}

/// Phase of a run: Pending, Planning, Extracting, Reducing, Succeeded, Failed or Suspended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, not started.
    Pending,
    /// Listing the source and writing the shard manifests.
    Planning,
    /// Extractor pods are turning images into features.
    Extracting,
    /// The reduce pod is fitting or applying the PCA.
    Reducing,
    /// Every output is written and `_SUCCESS` marks the run complete.
    Succeeded,
    /// The run stopped; `message` and the Failed condition say why.
    Failed,
    /// `spec.suspend` is true.
    Suspended,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Planning,
        Phase::Extracting,
        Phase::Reducing,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Suspended,
    ];

    /// The name used in the API (`Pending`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Planning => "Planning",
            Phase::Extracting => "Extracting",
            Phase::Reducing => "Reducing",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Suspended => "Suspended",
        }
    }

    /// True once the run can no longer change (Succeeded or Failed).
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Image counts. Accounting closes when `total == processed + failed`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageCounts {
    /// Images listed in the source (after the include patterns).
    pub total: u64,
    /// Images turned into a feature vector.
    pub processed: u64,
    /// Images in the dead-letter output (unreadable, undecodable, too large…), plus the images
    /// of shards that failed for good.
    pub failed: u64,
    /// Of the processed images, those whose features were copied from a previous run
    /// (`spec.source.reuseFrom`) instead of extracted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Shard counts of the extract Job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounts {
    /// Shards planned (the Job's completions).
    pub total: u32,
    /// Shards whose pod finished and wrote its outputs.
    pub succeeded: u32,
    /// Shards that failed after every retry.
    pub failed: u32,
    /// Shards with a pod running now.
    pub active: u32,
}

/// Locations of the outputs (S3 URIs).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outputs {
    /// Feature Parquet files, one per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    /// Dead-letter Parquet files: every image that could not become a feature, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// The fitted PCA (mean, components, explained variance, provenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pca_model: Option<String>,
    /// Reduced vectors, one Parquet file per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduced: Option<String>,
    /// Pictures and summary of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The reduced vectors as one CSV, when `output.csv` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
}

/// The PCA of the run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PcaResult {
    /// Components kept.
    pub components: u32,
    /// Fraction of the variance the kept components explain, in [0, 1].
    pub explained_variance: f64,
    /// Whether the PCA was fitted by this run or reused from `spec.pca.from`.
    #[serde(default)]
    pub reused: bool,
}

fn default_include() -> Vec<String> {
    ["*.jpg", "*.jpeg", "*.png", "*.webp"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn default_output_name() -> String {
    "features".into()
}
fn default_input_name() -> String {
    "input".into()
}
fn default_side() -> u32 {
    224
}
fn default_scale() -> f64 {
    1.0 / 127.5
}
fn default_offset() -> f64 {
    -1.0
}
fn default_images_per_shard() -> u32 {
    2000
}
fn default_parallelism() -> u32 {
    4
}
fn default_shards_per_projection_pod() -> u32 {
    crate::contract::DEFAULT_SHARDS_PER_PROJECTION_POD
}
fn default_shards_per_merge_pod() -> u32 {
    crate::contract::DEFAULT_SHARDS_PER_MERGE_POD
}
fn default_retries_per_shard() -> u32 {
    3
}
