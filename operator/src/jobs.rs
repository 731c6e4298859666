//! The Jobs of a run, built by pure functions from the resource and the operator's settings.
//!
//! The extract Job is an Indexed Job with one index per shard; the reduce Job runs one pod.
//! Both run the `pomona` runner with a restricted security context, and their pod failure
//! policy ignores node disruptions and fails at once on the runner's permanent exit codes.

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pomona_crds::contract::{DEFAULT_MAX_IMAGE_BYTES, TERMINATION_LOG, exit};
use pomona_crds::{FeatureExtraction, ResizeFilter, TensorLayout};

use crate::names::{Component, job_name, labels, owner_reference};
use crate::settings::Settings;

/// Name of the runner container in both Jobs.
pub const CONTAINER: &str = "pomona";
/// Where the scratch emptyDir is mounted (`POMONA_SCRATCH`, and `TMPDIR`: the root filesystem
/// is read-only).
pub const SCRATCH_DIR: &str = "/scratch";
/// User and group the runner runs as when the image does not say (distroless `nonroot`).
pub const RUNNER_UID: i64 = 65532;

/// The extract Job: `shards` indexes, each running `pomona extract` on the shard
/// `$JOB_COMPLETION_INDEX` (which the runner reads from the environment).
pub fn extract_job(fx: &FeatureExtraction, shards: u32, settings: &Settings) -> Job {
    let spec = &fx.spec;
    let model = &spec.model;
    let mut args = vec![
        "extract".to_string(),
        format!("--output={}", spec.output.uri),
        format!("--model={}", model.uri),
    ];
    if let Some(sha) = &model.sha256 {
        args.push(format!("--model-sha256={sha}"));
    }
    args.extend([
        format!("--input-name={}", model.input.name),
        format!("--output-name={}", model.output),
        format!("--width={}", model.input.width),
        format!("--height={}", model.input.height),
        format!(
            "--layout={}",
            match model.input.layout {
                TensorLayout::NHWC => "nhwc",
                TensorLayout::NCHW => "nchw",
            }
        ),
        format!("--scale={}", model.input.scale),
        format!("--offset={}", model.input.offset),
    ]);
    // The runner resizes bilinearly unless told otherwise.
    if model.input.resize_filter != ResizeFilter::default() {
        args.push(format!(
            "--resize-filter={}",
            model.input.resize_filter.flag()
        ));
    }
    if let Some(batch) = spec.runner.batch_size {
        args.push(format!("--batch-size={batch}"));
    }
    // The runner's default is the contract's: only another cap is passed.
    if let Some(max) = spec.source.max_image_bytes
        && max != DEFAULT_MAX_IMAGE_BYTES
    {
        args.push(format!("--max-image-bytes={max}"));
    }
    let sharding = &spec.sharding;
    let mut job = job(fx, Component::Extract, args, settings);
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

/// The reduce Job: one pod running `pomona reduce` with the resource's PCA mode.
/// `failed_shards` are the extract indexes that failed for good (within
/// `spec.sharding.maxFailedShards`): the reduce step dead-letters their images, so that every
/// listed image is still accounted for.
pub fn reduce_job(fx: &FeatureExtraction, failed_shards: &[u32], settings: &Settings) -> Job {
    let spec = &fx.spec;
    let mut args = vec![
        "reduce".to_string(),
        format!("--output={}", spec.output.uri),
    ];
    let pca = &spec.pca;
    if let Some(k) = pca.components {
        args.push(format!("--components={k}"));
    } else if let Some(f) = pca.variance_to_keep {
        args.push(format!("--variance-to-keep={f}"));
    } else if let Some(from) = &pca.from {
        args.push(format!("--pca-from={from}"));
    }
    if spec.output.csv {
        args.push("--csv".into());
    }
    if !failed_shards.is_empty() {
        let list: Vec<String> = failed_shards.iter().map(u32::to_string).collect();
        args.push(format!("--failed-shards={}", list.join(",")));
    }
    let mut job = job(fx, Component::Reduce, args, settings);
    let job_spec = job.spec.as_mut().expect("job() sets a spec");
    job_spec.completions = Some(1);
    job_spec.parallelism = Some(1);
    job_spec.backoff_limit = Some(to_i32(spec.sharding.retries_per_shard));
    job_spec.pod_failure_policy = Some(failure_policy("FailJob"));
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

/// What both Jobs share: metadata, the pod template and the run-wide Job fields.
fn job(
    fx: &FeatureExtraction,
    component: Component,
    mut args: Vec<String>,
    settings: &Settings,
) -> Job {
    if let Some(path_style) = fx.spec.storage.force_path_style {
        args.push(format!("--path-style={path_style}"));
    }
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
        command: Some(vec!["pomona".into()]),
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
    let mut env = vec![value("AWS_REGION", &storage.region)];
    if let Some(endpoint) = &storage.endpoint {
        env.push(value("AWS_ENDPOINT_URL", endpoint));
    }
    if let Some(secret) = &storage.credentials_secret {
        for (key, optional) in [
            ("AWS_ACCESS_KEY_ID", false),
            ("AWS_SECRET_ACCESS_KEY", false),
            ("AWS_SESSION_TOKEN", true),
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
    env.push(value("POMONA_SCRATCH", SCRATCH_DIR));
    env.push(value("TMPDIR", SCRATCH_DIR));
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
    use super::*;

    #[test]
    fn a_size_cap_other_than_the_default_reaches_the_extractor() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/examples/fruits-360.yaml"
        );
        let mut fx: FeatureExtraction =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let args = |fx: &FeatureExtraction| {
            let job = extract_job(fx, 1, &Settings::default());
            let pod = job.spec.unwrap().template.spec.unwrap();
            pod.containers[0].args.clone().unwrap()
        };
        assert_eq!(
            fx.spec.source.max_image_bytes,
            Some(DEFAULT_MAX_IMAGE_BYTES)
        );
        assert!(!args(&fx).iter().any(|a| a.starts_with("--max-image-bytes")));
        fx.spec.source.max_image_bytes = Some(1_000_000);
        assert!(args(&fx).contains(&"--max-image-bytes=1000000".to_string()));
    }
}
