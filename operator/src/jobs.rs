//! The Jobs of a run, built by pure functions from the resource and the operator's settings.
//!
//! The plan Job runs one pod that lists the source and writes the plan; the extract Job is an
//! Indexed Job with one index per shard; the reduce Job runs one pod. A run of more shards than
//! `spec.sharding.shardsPerProjectionPod` (fitting its own PCA) splits the reduce step: a fit
//! Job of one pod, a projection Job with one index per group of shards, then the reduce Job.
//! Each pod's arguments are the job contract's typed step arguments
//! ([`pomona_crds::contract::steps`]). All of them run the `pomona` runner under the run's
//! service account with a restricted security context, and their pod failure policy ignores
//! node disruptions and fails at once on the runner's permanent exit codes.

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pomona_crds::contract::cost::{CostSoFar, Usage};
use pomona_crds::contract::steps::{
    self, DEFAULT_COMPONENTS, ExtractArgs, FailedShards, MergeArgs, PcaMode, PlanArgs, ProjectArgs,
    ReduceArgs, ReduceStage, ShardList, StorageArgs,
};
use pomona_crds::contract::{
    DEFAULT_MAX_IMAGE_BYTES, PlanTotals, Preprocessing, ShardGroups, ShardPlan, TERMINATION_LOG,
    env, exit,
};
use pomona_crds::{FeatureExtraction, FeatureExtractionSpec};

use crate::names::{
    Component, RUN_NAME_ANNOTATION, failed_shards_name, job_name, labels, owner_reference,
};
use crate::observe::Requests;
use crate::settings::Settings;

/// Name of the runner container in every Job.
pub const CONTAINER: &str = "pomona";
/// Where the scratch emptyDir is mounted (`POMONA_SCRATCH`, and `TMPDIR`: the root filesystem
/// is read-only).
pub const SCRATCH_DIR: &str = "/scratch";
/// User and group the runner runs as when the image does not say (distroless `nonroot`).
pub const RUNNER_UID: i64 = 65532;

/// The model and preprocessing of a resource, as every step that needs them takes them.
fn model_args(fx: &FeatureExtraction) -> steps::ModelArgs {
    let model = &fx.spec.model;
    steps::ModelArgs {
        uri: model.uri.clone(),
        sha256: model.sha256.clone(),
        preprocessing: Preprocessing {
            input_name: model.input.name.clone(),
            output_name: model.output.clone(),
            width: model.input.width,
            height: model.input.height,
            layout: model.input.layout,
            scale: model.input.scale,
            offset: model.input.offset,
            resize_filter: model.input.resize_filter,
        },
    }
}

fn storage_args(fx: &FeatureExtraction) -> StorageArgs {
    StorageArgs {
        path_style: fx.spec.storage.force_path_style,
    }
}

/// The plan step of a resource: its source, patterns, labels and shard size, its uid and
/// model for the plan's identity.
pub fn plan_args(fx: &FeatureExtraction) -> PlanArgs {
    let spec = &fx.spec;
    PlanArgs {
        input: spec.source.uri.clone(),
        output: spec.output.uri.clone(),
        include: spec.source.include.clone(),
        label: spec.source.label,
        images_per_shard: spec.sharding.images_per_shard,
        run_uid: fx.metadata.uid.clone(),
        model: model_args(fx),
        storage: storage_args(fx),
    }
}

/// The extract step of a resource (each pod's shard comes from its Job index).
pub fn extract_args(fx: &FeatureExtraction) -> ExtractArgs {
    let spec = &fx.spec;
    ExtractArgs {
        output: spec.output.uri.clone(),
        model: model_args(fx),
        batch_size: spec.runner.batch_size,
        max_image_bytes: spec
            .source
            .max_image_bytes
            .unwrap_or(DEFAULT_MAX_IMAGE_BYTES),
        reuse_from: spec.source.reuse_from.clone(),
        // A reused PCA is applied by the extract pods as they go: the reduce pod then reads the
        // small reduced files, not the features again.
        pca_from: spec.pca.from.clone(),
        storage: storage_args(fx),
    }
}

/// The reduce step of a resource (whole, or its part before or after the projection Job), told
/// where the shards that failed for good are.
pub fn reduce_args(
    fx: &FeatureExtraction,
    failed_shards: FailedShards,
    (stage, merged_blocks): (ReduceStage, Option<u32>),
) -> ReduceArgs {
    let spec = &fx.spec;
    let pca = &spec.pca;
    let mode = match (&pca.from, pca.components, pca.variance_to_keep) {
        (Some(from), _, _) => PcaMode::From(from.clone()),
        (None, Some(k), _) => PcaMode::Components(k),
        (None, None, Some(f)) => PcaMode::VarianceToKeep(f),
        // The schema requires exactly one mode; a resource that slipped past it gets the
        // runner's default.
        (None, None, None) => PcaMode::Components(DEFAULT_COMPONENTS),
    };
    ReduceArgs {
        output: spec.output.uri.clone(),
        pca: mode,
        csv: spec.output.csv,
        // The schema admits only counts the runner takes.
        clusters: spec.clustering.as_ref().and_then(|c| c.count().ok()),
        failed_shards,
        stage,
        merged_blocks,
        storage: storage_args(fx),
    }
}

/// How the projection of a run of `shards` shards splits over the pods of a projection Job, when
/// the run has one: it fits its own PCA and has more shards than
/// `spec.sharding.shardsPerProjectionPod`.
pub fn projection(spec: &FeatureExtractionSpec, shards: u32) -> Option<ShardGroups> {
    ShardGroups::of_job(
        shards,
        spec.sharding.shards_per_projection_pod,
        spec.pca.from.is_some(),
    )
}

/// How the merge of the statistics of a run of `shards` shards splits over the pods of a merge
/// Job, when the run has one: it fits its own PCA and has more shards than
/// `spec.sharding.shardsPerMergePod`.
pub fn merge_blocks(spec: &FeatureExtractionSpec, shards: u32) -> Option<ShardGroups> {
    ShardGroups::of_job(
        shards,
        spec.sharding.shards_per_merge_pod,
        spec.pca.from.is_some(),
    )
}

/// A Job of a run's reduce step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceStepJob {
    /// The merge Job of these blocks of shards.
    Merge(ShardGroups),
    /// The fit Job, with the merge Job's blocks of this many shards if there was one.
    Fit {
        /// Shards a block of the merge Job.
        merged_blocks: Option<u32>,
    },
    /// The projection Job of these groups of shards.
    Project(ShardGroups),
    /// The reduce Job: the whole step, or the part after the projection Job.
    Reduce {
        /// Which part.
        stage: ReduceStage,
        /// Shards a block of the merge Job, when the reduce Job fits the PCA from them.
        merged_blocks: Option<u32>,
    },
}

impl ReduceStepJob {
    /// The component (and so the name) of the Job.
    pub fn component(self) -> Component {
        match self {
            Self::Merge(_) => Component::Merge,
            Self::Fit { .. } => Component::Fit,
            Self::Project(_) => Component::Project,
            Self::Reduce { .. } => Component::Reduce,
        }
    }
}

/// The Jobs of the reduce step of a run of `shards` shards, in the order they run, each once
/// the one before it completed: the reduce Job alone; or, for a run of many shards that fits
/// its PCA, a merge Job (more shards than `shardsPerMergePod`) and a fit Job, a projection Job
/// (more than `shardsPerProjectionPod`) and the reduce Job, as many of them as it needs.
pub fn reduce_step(spec: &FeatureExtractionSpec, shards: u32) -> Vec<ReduceStepJob> {
    let merge = merge_blocks(spec, shards);
    let merged_blocks = merge.map(|m| m.shards_per_pod);
    let mut jobs: Vec<ReduceStepJob> = merge.map(ReduceStepJob::Merge).into_iter().collect();
    match projection(spec, shards) {
        None => jobs.push(ReduceStepJob::Reduce {
            stage: ReduceStage::Whole,
            merged_blocks,
        }),
        Some(groups) => jobs.extend([
            ReduceStepJob::Fit { merged_blocks },
            ReduceStepJob::Project(groups),
            ReduceStepJob::Reduce {
                stage: ReduceStage::AfterProjection,
                merged_blocks: None,
            },
        ]),
    }
    jobs
}

/// The Job of `step` for a run planned as `plan`; `earlier` is what the run's pods before the
/// reduce pod used (for [`reduce_job`]).
pub fn reduce_step_job(
    fx: &FeatureExtraction,
    step: ReduceStepJob,
    plan: PlanTotals,
    earlier: Usage,
    settings: &Settings,
) -> Job {
    match step {
        ReduceStepJob::Merge(blocks) => merge_job(fx, blocks, plan.images_per_shard, settings),
        ReduceStepJob::Fit { merged_blocks } => fit_job(fx, plan.images, merged_blocks, settings),
        ReduceStepJob::Project(groups) => project_job(fx, groups, plan.images_per_shard, settings),
        ReduceStepJob::Reduce {
            stage,
            merged_blocks,
        } => reduce_job(fx, plan.images, earlier, settings, (stage, merged_blocks)),
    }
}

/// The projection step of a resource (each pod's group comes from its Job index).
pub fn project_args(fx: &FeatureExtraction) -> ProjectArgs {
    ProjectArgs {
        output: fx.spec.output.uri.clone(),
        shards_per_pod: fx.spec.sharding.shards_per_projection_pod,
        storage: storage_args(fx),
    }
}

/// The merge step of a resource (each pod's block comes from its Job index).
pub fn merge_args(fx: &FeatureExtraction) -> MergeArgs {
    MergeArgs {
        output: fx.spec.output.uri.clone(),
        shards_per_pod: fx.spec.sharding.shards_per_merge_pod,
        storage: storage_args(fx),
    }
}

/// How long a plan pod may run unless the resource says otherwise: listing at 3,000 keys/s (one
/// ListObjectsV2 stream) covers ten million keys in that time.
pub const PLAN_DEADLINE_SECONDS: u32 = 3600;
/// An extract pod's deadline: this long to start (model load, first fetches)…
pub const EXTRACT_BASE_SECONDS: u32 = 900;
/// …plus this long per image of its shard (a tenth of the slowest rate measured per core).
pub const EXTRACT_SECONDS_PER_IMAGE: u32 = 1;
/// The reduce pod's deadline: this long for the merge and the fit…
pub const REDUCE_BASE_SECONDS: u32 = 1800;
/// …plus a second per this many images to project.
pub const REDUCE_IMAGES_PER_SECOND: u64 = 100;

/// The `activeDeadlineSeconds` of a step's pods: `spec.runner.activeDeadlineSeconds`, else
/// derived from the pod's work: `images` is a shard's (as planned, raised or not) for an
/// extract pod, a group's for a projection or merge pod, the whole run's for the fit and reduce
/// pods.
pub fn pod_deadline(fx: &FeatureExtraction, component: Component, images: u64) -> i64 {
    if let Some(seconds) = fx.spec.runner.active_deadline_seconds {
        return i64::from(seconds);
    }
    let seconds = match component {
        Component::Plan => u64::from(PLAN_DEADLINE_SECONDS),
        Component::Extract => {
            u64::from(EXTRACT_BASE_SECONDS) + images * u64::from(EXTRACT_SECONDS_PER_IMAGE)
        }
        Component::Merge | Component::Fit | Component::Project | Component::Reduce => {
            u64::from(REDUCE_BASE_SECONDS) + images.div_ceil(REDUCE_IMAGES_PER_SECOND)
        }
    };
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// The plan Job: one pod running `pomona plan`, under the run's service account and with its
/// storage settings, like the extract pods. Its summary (the termination message) gives the
/// plan's totals; run again, it finds the plan it wrote and reports it.
pub fn plan_job(fx: &FeatureExtraction, settings: &Settings) -> Job {
    one_pod(
        fx,
        job(fx, Component::Plan, plan_args(fx).to_args(), settings, 0),
    )
}

/// `job` as a Job of one pod, retried `retriesPerShard` times, ended at once by a permanent
/// failure.
fn one_pod(fx: &FeatureExtraction, mut job: Job) -> Job {
    let job_spec = job.spec.as_mut().expect("job() sets a spec");
    job_spec.completions = Some(1);
    job_spec.parallelism = Some(1);
    job_spec.backoff_limit = Some(to_i32(fx.spec.sharding.retries_per_shard));
    job_spec.pod_failure_policy = Some(failure_policy("FailJob"));
    job
}

/// The extract Job of the plan's `shards`: one index per shard, each running `pomona extract`
/// on the shard `$JOB_COMPLETION_INDEX` (which the runner reads from the environment).
pub fn extract_job(fx: &FeatureExtraction, planned: ShardPlan, settings: &Settings) -> Job {
    let sharding = &fx.spec.sharding;
    let shards = planned.shards;
    let mut job = job(
        fx,
        Component::Extract,
        extract_args(fx).to_args(),
        settings,
        u64::from(planned.images_per_shard),
    );
    let job_spec = job.spec.as_mut().expect("job() sets a spec");
    job_spec.completion_mode = Some("Indexed".into());
    job_spec.completions = Some(to_i32(shards));
    job_spec.parallelism = Some(to_i32(sharding.parallelism));
    job_spec.backoff_limit_per_index = Some(to_i32(sharding.retries_per_shard));
    job_spec.max_failed_indexes = Some(to_i32(max_failed_indexes(
        sharding.max_failed_shards,
        shards,
    )));
    job_spec.pod_failure_policy = Some(failure_policy("FailIndex"));
    job
}

/// The extract Job's `maxFailedIndexes`: `spec.sharding.maxFailedShards`, at most the number of
/// shards (Kubernetes refuses `maxFailedIndexes` above `completions`; tolerating every shard
/// failing is the same as tolerating more).
pub fn max_failed_indexes(max_failed_shards: u32, shards: u32) -> u32 {
    max_failed_shards.min(shards)
}

/// The projection Job of a run's `groups` of shards of `images_per_shard` images: one index per
/// group, each running `pomona project` on the group `$JOB_COMPLETION_INDEX`. A group that
/// fails for good fails the Job at once (`maxFailedIndexes` 0): no image may go unprojected.
pub fn project_job(
    fx: &FeatureExtraction,
    groups: ShardGroups,
    images_per_shard: u32,
    settings: &Settings,
) -> Job {
    let args = project_args(fx).to_args();
    groups_job(
        fx,
        Component::Project,
        args,
        (groups, images_per_shard),
        settings,
    )
}

/// The merge Job of a run's `blocks` of shards of `images_per_shard` images: one index per
/// block, each running `pomona merge` on the block `$JOB_COMPLETION_INDEX`. A block that fails
/// for good fails the Job at once.
pub fn merge_job(
    fx: &FeatureExtraction,
    blocks: ShardGroups,
    images_per_shard: u32,
    settings: &Settings,
) -> Job {
    let args = merge_args(fx).to_args();
    groups_job(
        fx,
        Component::Merge,
        args,
        (blocks, images_per_shard),
        settings,
    )
}

/// The Job of `component` running `args` as an Indexed Job of one index per group of `groups`
/// (of shards of `images_per_shard` images, for its pods' deadline), at most `parallelism` at
/// once, retried per index, and failed as soon as one group fails for good
/// (`maxFailedIndexes` 0).
fn groups_job(
    fx: &FeatureExtraction,
    component: Component,
    args: Vec<String>,
    (groups, images_per_shard): (ShardGroups, u32),
    settings: &Settings,
) -> Job {
    let images = u64::from(groups.shards_per_pod) * u64::from(images_per_shard);
    let mut job = job(fx, component, args, settings, images);
    let sharding = &fx.spec.sharding;
    let job_spec = job.spec.as_mut().expect("job() sets a spec");
    job_spec.completion_mode = Some("Indexed".into());
    job_spec.completions = Some(to_i32(groups.groups()));
    job_spec.parallelism = Some(to_i32(sharding.parallelism.min(groups.groups())));
    job_spec.backoff_limit_per_index = Some(to_i32(sharding.retries_per_shard));
    job_spec.max_failed_indexes = Some(0);
    job_spec.pod_failure_policy = Some(failure_policy("FailIndex"));
    job
}

/// Where the reduce pod finds the [`failed_shards_config_map`].
pub const FAILED_SHARDS_DIR: &str = "/etc/pomona/failed-shards";
/// The key of the list in it (and so the file's name).
pub const FAILED_SHARDS_KEY: &str = "shards";
/// The reduce pod's volume of it.
const FAILED_SHARDS_VOLUME: &str = "failed-shards";

/// The ConfigMap that hands the reduce pod the extract indexes that failed for good (within
/// `spec.sharding.maxFailedShards`), as a [`ShardList`]: a file, since tens of thousands of
/// them would not fit in one argument. Owned by the resource, like its Jobs.
pub fn failed_shards_config_map(fx: &FeatureExtraction, failed_shards: &[u32]) -> ConfigMap {
    let name = fx.metadata.name.as_deref().unwrap_or_default();
    let list = ShardList(failed_shards.iter().copied().collect());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(failed_shards_name(name)),
            namespace: fx.metadata.namespace.clone(),
            labels: Some(labels(fx, Component::Reduce)),
            owner_references: Some(vec![owner_reference(fx)]),
            ..ObjectMeta::default()
        },
        data: Some([(FAILED_SHARDS_KEY.to_string(), list.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// The reduce Job: one pod running `pomona reduce` with the resource's PCA mode, over the run's
/// `images`. The extract indexes that failed for good reach it in a file, from the
/// [`failed_shards_config_map`]: the reduce step dead-letters their images, so that every
/// listed image is still accounted for. `earlier` is what the run's earlier pods used (plan,
/// extract, and fit and projection if any): with the pod's own requests and the admin's prices
/// it reaches the pod in [`env::COST_SO_FAR`], for the run's cost in `report/summary.json`.
/// (The environment is no part of what makes a runner edit, so a later reconcile's other figure
/// changes nothing.) `stage` is [`ReduceStage::Whole`] (with the merge Job's blocks of that
/// many shards, if any), or [`ReduceStage::AfterProjection`] after a projection Job.
pub fn reduce_job(
    fx: &FeatureExtraction,
    images: u64,
    earlier: Usage,
    settings: &Settings,
    stage: (ReduceStage, Option<u32>),
) -> Job {
    let mut job = one_reduce_pod(fx, Component::Reduce, stage, images, settings);
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        let requests = Requests::of_spec(pod);
        let so_far = CostSoFar {
            earlier,
            cpu_request_cores: requests.cpu_cores,
            memory_request_bytes: requests.memory_bytes,
            rates: settings.cost_rates(),
        };
        let value = serde_json::to_string(&so_far).expect("numbers and strings serialize");
        for container in &mut pod.containers {
            container.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: env::COST_SO_FAR.into(),
                value: Some(value.clone()),
                value_from: None,
            });
        }
    }
    job
}

/// The fit Job of a run with a projection Job: one pod running `pomona reduce --fit-only` over
/// the run's `images`, which dead-letters the failed shards (from the
/// [`failed_shards_config_map`]) and writes the PCA the projection pods project through.
/// With `merged_blocks`, it fits from the merge Job's blocks of that many shards.
pub fn fit_job(
    fx: &FeatureExtraction,
    images: u64,
    merged_blocks: Option<u32>,
    settings: &Settings,
) -> Job {
    let stage = (ReduceStage::Fit, merged_blocks);
    one_reduce_pod(fx, Component::Fit, stage, images, settings)
}

/// A one-pod Job running `stage` of `pomona reduce` (with the merge Job's blocks, if any) over
/// the run's `images`, reading the failed shards from the [`failed_shards_config_map`],
/// mounted at [`FAILED_SHARDS_DIR`].
fn one_reduce_pod(
    fx: &FeatureExtraction,
    component: Component,
    stage: (ReduceStage, Option<u32>),
    images: u64,
    settings: &Settings,
) -> Job {
    let name = fx.metadata.name.as_deref().unwrap_or_default();
    let file = format!("{FAILED_SHARDS_DIR}/{FAILED_SHARDS_KEY}");
    let args = reduce_args(fx, FailedShards::File(file), stage).to_args();
    let mut job = one_pod(fx, job(fx, component, args, settings, images));
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        for container in &mut pod.containers {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: FAILED_SHARDS_VOLUME.into(),
                    mount_path: FAILED_SHARDS_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
        }
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: FAILED_SHARDS_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: failed_shards_name(name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    job
}

/// The pod failure policy: disruptions (preemption, eviction, spot reclaim) do not count
/// against the retries; the runner's permanent exit codes end the index (or Job) at once.
fn failure_policy(permanent_action: &str) -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
                on_exit_codes: None,
            },
            PodFailurePolicyRule {
                action: permanent_action.into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.into()),
                    operator: "In".into(),
                    values: exit::PERMANENT.to_vec(),
                }),
                on_pod_conditions: None,
            },
        ],
    }
}

/// What the Jobs share: metadata, the pod template (with its deadline, from the run's
/// `images` where it depends on them) and the run-wide Job fields.
fn job(
    fx: &FeatureExtraction,
    component: Component,
    args: Vec<String>,
    settings: &Settings,
    images: u64,
) -> Job {
    let name = fx.metadata.name.as_deref().unwrap_or_default();
    let labels = labels(fx, component);
    let image = fx
        .spec
        .runner
        .image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .or(settings.default_image())
        .unwrap_or_default()
        .to_string();
    let spec = &fx.spec;
    let runner = &spec.runner;
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image),
        command: Some(vec![steps::PROGRAM.into()]),
        args: Some(args),
        env: Some(env(fx)),
        resources: runner.resources.clone(),
        security_context: Some(container_security()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        active_deadline_seconds: Some(pod_deadline(fx, component, images)),
        service_account_name: runner
            .service_account_name
            .clone()
            .or_else(|| settings.default_service_account().map(String::from)),
        // The runner needs S3, never the Kubernetes API: no token in its pods. (IRSA and Pod
        // Identity inject their own projected token, unaffected by this.)
        automount_service_account_token: Some(false),
        node_selector: (!runner.node_selector.is_empty()).then(|| runner.node_selector.clone()),
        tolerations: (!runner.tolerations.is_empty()).then(|| runner.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            fs_group: Some(RUNNER_UID),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(name, component)),
            namespace: fx.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner_reference(fx)]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            suspend: Some(spec.suspend),
            // No ttlSecondsAfterFinished: the TTL is the run's, not each Job's (the TTL controller
            // would remove the extract Job while the reduce step runs). The operator removes
            // the Jobs once the whole run has finished and the time has passed.
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some([(RUN_NAME_ANNOTATION.to_string(), name.to_string())].into()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The runner's environment: storage connection, credentials, scratch.
fn env(fx: &FeatureExtraction) -> Vec<EnvVar> {
    let storage = &fx.spec.storage;
    let value = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let mut env = vec![value(env::REGION, &storage.region)];
    if let Some(endpoint) = &storage.endpoint {
        env.push(value(env::ENDPOINT, endpoint));
    }
    if let Some(secret) = &storage.credentials_secret {
        // The Secret's keys are named as the variables they become; the kubelet reads them,
        // never the operator.
        for (key, optional) in [
            (env::ACCESS_KEY_ID, false),
            (env::SECRET_ACCESS_KEY, false),
            (env::SESSION_TOKEN, true),
        ] {
            env.push(EnvVar {
                name: key.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: key.into(),
                        optional: optional.then_some(true),
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
    }
    env.push(value(env::SCRATCH, SCRATCH_DIR));
    env.push(value(env::TMPDIR, SCRATCH_DIR));
    env
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// API bounds keep these counts far below `i32::MAX`; saturate rather than wrap regardless.
fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    #[test]
    fn the_size_cap_reaches_the_extractor() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/examples/fruits-360.yaml"
        );
        let mut fx: FeatureExtraction =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let args = |fx: &FeatureExtraction| {
            let one = ShardPlan {
                images_per_shard: 500,
                shards: 1,
            };
            let job = extract_job(fx, one, &Settings::default());
            let pod = job.spec.unwrap().template.spec.unwrap();
            pod.containers[0].args.clone().unwrap()
        };
        assert_eq!(
            fx.spec.source.max_image_bytes,
            Some(DEFAULT_MAX_IMAGE_BYTES)
        );
        assert!(args(&fx).contains(&format!("--max-image-bytes={DEFAULT_MAX_IMAGE_BYTES}")));
        fx.spec.source.max_image_bytes = Some(1_000_000);
        assert!(args(&fx).contains(&"--max-image-bytes=1000000".to_string()));
    }

    #[test]
    fn an_extract_pod_s_deadline_follows_the_shard_size_as_planned() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/examples/minimal.yaml");
        let fx: FeatureExtraction =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let asked = fx.spec.sharding.images_per_shard;
        // 10^9 images at the default 2,000 per shard: raised to 10,000 per shard.
        let raised = pomona_crds::contract::shard_plan(1_000_000_000, asked).unwrap();
        assert_eq!((asked, raised.images_per_shard), (2000, 10_000));
        let job = extract_job(&fx, raised, &Settings::default());
        let spec = job.spec.unwrap();
        assert_eq!(spec.completions, Some(100_000));
        let deadline = spec.template.spec.unwrap().active_deadline_seconds;
        assert_eq!(deadline, Some(900 + 10_000));
    }

    #[test]
    fn the_reduce_pod_is_told_the_cost_so_far_its_requests_and_the_prices() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/examples/fruits-360.yaml"
        );
        let mut fx: FeatureExtraction =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let settings = Settings {
            cost_per_core_hour: Some(0.04),
            cost_per_gib_hour: Some(0.005),
            cost_currency: Some("EUR".into()),
            ..Settings::default()
        };
        let earlier = Usage {
            pods: 5,
            cpu_seconds: 300.0,
            core_seconds: Some(400.0),
            gib_seconds: Some(200.0),
        };
        let so_far = |fx: &FeatureExtraction, settings: &Settings| -> CostSoFar {
            let job = reduce_job(fx, 1000, earlier, settings, (ReduceStage::Whole, None));
            let pod = job.spec.unwrap().template.spec.unwrap();
            let env = pod.containers[0].env.clone().unwrap();
            let var = env.iter().find(|v| v.name == env::COST_SO_FAR).unwrap();
            serde_json::from_str(var.value.as_deref().unwrap()).unwrap()
        };
        // The example requests 2 cores and 1Gi.
        let told = so_far(&fx, &settings);
        assert_eq!(told.earlier, earlier);
        assert_eq!(
            (told.cpu_request_cores, told.memory_request_bytes),
            (2.0, 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(told.rates, settings.cost_rates());
        // Only limits: the requests the API server will default from them. No prices, none.
        let resources = fx.spec.runner.resources.as_mut().unwrap();
        resources.requests = None;
        resources
            .limits
            .as_mut()
            .unwrap()
            .insert("cpu".into(), Quantity("1500m".into()));
        let told = so_far(&fx, &Settings::default());
        assert_eq!(told.cpu_request_cores, 1.5);
        assert_eq!(told.rates, None);
    }
}
