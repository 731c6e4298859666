//! The Job builders carry every field the operator issue lists.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pomona_crds::FeatureExtraction;
use pomona_crds::contract::cost::Usage;
use pomona_crds::contract::steps::ReduceStage;
use pomona_crds::contract::{ShardGroups, ShardPlan};
use pomona_operator::jobs::{
    CONTAINER, ReduceStepJob, SCRATCH_DIR, extract_job, fit_job, merge_job, plan_job, project_job,
    projection, reduce_job, reduce_step,
};
use pomona_operator::settings::{DEFAULT_RUNNER_IMAGE, Settings};

fn fx(yaml_patch: impl FnOnce(&mut FeatureExtraction)) -> FeatureExtraction {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/examples/fruits-360.yaml"
    );
    let mut fx: FeatureExtraction =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fx.metadata.namespace = Some("fruits".into());
    fx.metadata.uid = Some("uid-1".into());
    yaml_patch(&mut fx);
    fx
}

/// A plan of `n` shards of the example's 500 images.
fn shards(n: u32) -> ShardPlan {
    ShardPlan {
        images_per_shard: 500,
        shards: n,
    }
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container(job: &Job) -> &Container {
    let pod = pod(job);
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

fn env(job: &Job, name: &str) -> Option<serde_json::Value> {
    let c = container(job);
    let var = c.env.as_ref()?.iter().find(|e| e.name == name)?;
    Some(serde_json::to_value(var).unwrap())
}

#[test]
fn extract_job_is_an_indexed_job_with_the_failure_policy() {
    let job = extract_job(&fx(|_| {}), shards(3), &Settings::default());
    let v = serde_json::to_value(&job).unwrap();
    assert_eq!(v["apiVersion"], "batch/v1");
    assert_eq!(v["kind"], "Job");
    let spec = &v["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 3);
    assert_eq!(spec["parallelism"], 3);
    assert_eq!(spec["backoffLimitPerIndex"], 3);
    assert_eq!(spec["maxFailedIndexes"], 0);
    assert_eq!(spec["suspend"], false);
    assert!(
        spec["ttlSecondsAfterFinished"].is_null(),
        "the TTL is the run's: the operator removes the Jobs after the whole run"
    );
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    let rules = spec["podFailurePolicy"]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["action"], "Ignore");
    assert_eq!(rules[0]["onPodConditions"][0]["type"], "DisruptionTarget");
    assert_eq!(rules[0]["onPodConditions"][0]["status"], "True");
    assert_eq!(rules[1]["action"], "FailIndex");
    assert_eq!(rules[1]["onExitCodes"]["operator"], "In");
    assert_eq!(rules[1]["onExitCodes"]["containerName"], CONTAINER);
    assert_eq!(
        rules[1]["onExitCodes"]["values"],
        serde_json::json!(pomona_crds::contract::exit::PERMANENT)
    );
    let args = container(&job).args.clone().unwrap();
    assert_eq!(
        args,
        [
            "extract",
            "--output=s3://fruits/runs/fruits-360/",
            "--model=s3://fruits/models/mobilenetv2_features.onnx",
            "--model-sha256=5353f63fa16e6c2d25805d6201db45bb040868bad6a3751ed13602136780629a",
            "--input-name=input",
            "--output-name=features",
            "--width=224",
            "--height=224",
            "--layout=nhwc",
            "--scale=0.00784313725490196",
            "--offset=-1",
            "--resize-filter=bilinear",
            "--batch-size=32",
            "--max-image-bytes=52428800",
            "--path-style=true",
        ]
    );
    assert!(
        !args.iter().any(|a| a.contains("shard")),
        "JOB_COMPLETION_INDEX gives the shard"
    );
}

#[test]
fn every_job_shares_metadata_pod_security_env_and_scheduling() {
    let fx = fx(|fx| fx.spec.runner.active_deadline_seconds = None);
    let groups = ShardGroups {
        shards: 130,
        shards_per_pod: 64,
    };
    let settings = Settings::default();
    for (job, component, step) in [
        (plan_job(&fx, &settings), "plan", "plan"),
        (extract_job(&fx, shards(3), &settings), "extract", "extract"),
        (fit_job(&fx, 1260, None, &settings), "fit", "reduce"),
        (merge_job(&fx, groups, 500, &settings), "merge", "merge"),
        (
            project_job(&fx, groups, 500, &settings),
            "project",
            "project",
        ),
        (
            reduce_job(
                &fx,
                1260,
                Usage::default(),
                &settings,
                (ReduceStage::Whole, None),
            ),
            "reduce",
            "reduce",
        ),
    ] {
        let v = serde_json::to_value(&job).unwrap();
        let meta = &v["metadata"];
        assert_eq!(meta["name"], format!("fruits-360-{component}"));
        assert_eq!(meta["namespace"], "fruits");
        let labels = &meta["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "pomona");
        assert_eq!(labels["app.kubernetes.io/instance"], "fruits-360");
        assert_eq!(labels["app.kubernetes.io/component"], component);
        assert_eq!(labels["app.kubernetes.io/managed-by"], "pomona-operator");
        assert_eq!(labels["app.kubernetes.io/part-of"], "fruits");
        assert_eq!(
            labels["pomona.dev/run"], "fruits-360",
            "cost attribution by run"
        );
        assert_eq!(v["spec"]["template"]["metadata"]["labels"], *labels);
        let owner = &meta["ownerReferences"][0];
        assert_eq!(owner["apiVersion"], "pomona.dev/v1alpha1");
        assert_eq!(owner["kind"], "FeatureExtraction");
        assert_eq!(owner["name"], "fruits-360");
        assert_eq!(owner["uid"], "uid-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);

        let p = &v["spec"]["template"]["spec"];
        assert_eq!(p["restartPolicy"], "Never");
        // Each step's pods end at a deadline derived from their work: 1 h to plan, 15 min +
        // 1 s per image of a 500-image shard, 30 min + 1 s per 100 of the 1,260 images (or of
        // a projection group's 64 shards of 500).
        let deadline = match component {
            "plan" => 3600,
            "extract" => 900 + 500,
            "project" | "merge" => 1800 + 320,
            _ => 1800 + 13,
        };
        assert_eq!(p["activeDeadlineSeconds"], deadline, "{component}");
        assert_eq!(p["serviceAccountName"], "pomona-runner");
        assert_eq!(p["nodeSelector"]["kubernetes.io/os"], "linux");
        assert_eq!(p["tolerations"][0]["key"], "pomona.dev/batch");
        assert_eq!(p["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            p["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(p["volumes"][0]["name"], "scratch");
        assert!(p["volumes"][0]["emptyDir"].is_object());
        let c = &p["containers"][0];
        assert_eq!(c["name"], CONTAINER);
        assert_eq!(c["image"], "ghcr.io/pomona-dev/pomona:0.1.0");
        assert_eq!(c["command"][0], "pomona");
        assert_eq!(c["args"][0], step);
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(c["resources"]["limits"]["cpu"], "2");
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(c["volumeMounts"][0]["mountPath"], SCRATCH_DIR);

        assert_eq!(env(&job, "AWS_REGION").unwrap()["value"], "eu-west-3");
        assert_eq!(
            env(&job, "AWS_ENDPOINT_URL").unwrap()["value"],
            "http://minio.minio.svc:9000"
        );
        assert_eq!(env(&job, "POMONA_SCRATCH").unwrap()["value"], SCRATCH_DIR);
        for (key, optional) in [
            ("AWS_ACCESS_KEY_ID", None),
            ("AWS_SECRET_ACCESS_KEY", None),
            ("AWS_SESSION_TOKEN", Some(true)),
        ] {
            let r = &env(&job, key).unwrap()["valueFrom"]["secretKeyRef"];
            assert_eq!(r["name"], "fruits-s3");
            assert_eq!(r["key"], key);
            assert_eq!(r.get("optional").and_then(|o| o.as_bool()), optional);
        }
    }
}

#[test]
fn reduce_job_runs_one_pod_with_the_pca_mode() {
    type Patch = fn(&mut FeatureExtraction);
    let cases: [(Patch, &[&str]); 5] = [
        (
            |_| {},
            &["--variance-to-keep=0.95", "--csv", "--clusters=21"],
        ),
        (
            |fx| {
                fx.spec.pca.variance_to_keep = None;
                fx.spec.pca.components = Some(50);
                fx.spec.output.csv = false;
            },
            &["--components=50", "--clusters=21"],
        ),
        (
            |fx| {
                fx.spec.pca.variance_to_keep = None;
                fx.spec.pca.from = Some("s3://fruits/runs/old/pca/".into());
            },
            &[
                "--pca-from=s3://fruits/runs/old/pca/",
                "--csv",
                "--clusters=21",
            ],
        ),
        (
            |fx| {
                fx.spec.clustering = Some(pomona_crds::ClusteringSpec {
                    k: IntOrString::String("auto".into()),
                });
            },
            &["--variance-to-keep=0.95", "--csv", "--clusters=auto"],
        ),
        (
            |fx| fx.spec.clustering = None,
            &["--variance-to-keep=0.95", "--csv"],
        ),
    ];
    for (patch, mode) in cases {
        let job = reduce_job(
            &fx(patch),
            1260,
            Usage::default(),
            &Settings::default(),
            (ReduceStage::Whole, None),
        );
        let mut want = vec!["reduce", "--output=s3://fruits/runs/fruits-360/"];
        want.extend(mode);
        want.push("--failed-shards-file=/etc/pomona/failed-shards/shards");
        want.push("--path-style=true");
        assert_eq!(container(&job).args.clone().unwrap(), want);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.parallelism), (Some(1), Some(1)));
        assert_eq!(spec.completion_mode, None);
        assert_eq!(spec.backoff_limit, Some(3));
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        assert_eq!(rules[1].action, "FailJob");
    }
}

#[test]
fn a_run_of_many_shards_splits_its_reduce_step_around_a_projection_job() {
    let settings = Settings::default();
    // More shards than a projection pod takes: fit, project in groups, then reduce.
    let many = fx(|fx| fx.spec.sharding.shards_per_projection_pod = 4);
    assert_eq!(
        projection(&many.spec, 4),
        None,
        "one group: the reduce pod projects"
    );
    let groups = projection(&many.spec, 10).expect("three groups");
    assert_eq!((groups.groups(), groups.shards_of(2)), (3, 8..10));
    let reused = fx(|fx| {
        fx.spec.sharding.shards_per_projection_pod = 4;
        fx.spec.pca.variance_to_keep = None;
        fx.spec.pca.from = Some("s3://fruits/runs/old/pca/".into());
    });
    assert_eq!(
        projection(&reused.spec, 10),
        None,
        "a reused PCA is applied by the extract pods"
    );

    let file = "--failed-shards-file=/etc/pomona/failed-shards/shards";
    let fit = fit_job(&many, 5000, None, &settings);
    let args = container(&fit).args.clone().unwrap();
    assert_eq!(args[0], "reduce");
    assert!(args.contains(&"--fit-only".to_string()), "{args:?}");
    assert!(args.contains(&file.to_string()), "{args:?}");
    assert_eq!(pod(&fit).volumes.as_ref().unwrap()[1].name, "failed-shards");
    assert!(
        env(&fit, "POMONA_COST_SO_FAR").is_none(),
        "only the last pod reports the cost"
    );

    let project = project_job(&many, groups, 500, &settings);
    assert_eq!(
        container(&project).args.clone().unwrap(),
        [
            "project",
            "--output=s3://fruits/runs/fruits-360/",
            "--shards-per-pod=4",
            "--path-style=true"
        ]
    );
    let spec = project.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(spec.completions, Some(3));
    assert_eq!(spec.parallelism, Some(3), "at most the groups");
    assert_eq!(
        spec.max_failed_indexes,
        Some(0),
        "no image left unprojected"
    );
    assert_eq!(spec.backoff_limit_per_index, Some(3));
    let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
    assert_eq!(rules[1].action, "FailIndex");

    let last = reduce_job(
        &many,
        5000,
        Usage::default(),
        &settings,
        (ReduceStage::AfterProjection, None),
    );
    let args = container(&last).args.clone().unwrap();
    assert!(args.contains(&"--after-projection".to_string()), "{args:?}");
    assert!(args.contains(&file.to_string()), "{args:?}");
    assert!(env(&last, "POMONA_COST_SO_FAR").is_some());
}

#[test]
fn a_run_of_very_many_shards_merges_its_statistics_in_blocks_first() {
    use ReduceStepJob::{Fit, Merge, Project, Reduce};
    let settings = Settings::default();
    let spec = fx(|_| {}).spec;
    let whole = Reduce {
        stage: ReduceStage::Whole,
        merged_blocks: None,
    };
    let after = Reduce {
        stage: ReduceStage::AfterProjection,
        merged_blocks: None,
    };
    let groups = |shards, shards_per_pod| ShardGroups {
        shards,
        shards_per_pod,
    };
    assert_eq!(reduce_step(&spec, 64), [whole]);
    assert_eq!(
        reduce_step(&spec, 65),
        [
            Fit {
                merged_blocks: None
            },
            Project(groups(65, 64)),
            after
        ]
    );
    assert_eq!(
        reduce_step(&spec, 5000),
        [
            Merge(groups(5000, 4096)),
            Fit {
                merged_blocks: Some(4096)
            },
            Project(groups(5000, 64)),
            after
        ]
    );
    let one_projection_pod = fx(|fx| fx.spec.sharding.shards_per_projection_pod = 100_000).spec;
    assert_eq!(
        reduce_step(&one_projection_pod, 5000),
        [
            Merge(groups(5000, 4096)),
            Reduce {
                stage: ReduceStage::Whole,
                merged_blocks: Some(4096)
            }
        ]
    );
    let reused = fx(|fx| {
        fx.spec.pca.variance_to_keep = None;
        fx.spec.pca.from = Some("s3://fruits/runs/old/pca/".into());
    })
    .spec;
    assert_eq!(reduce_step(&reused, 5000), [whole], "nothing to fit");

    let fx = fx(|_| {});
    let merge = merge_job(&fx, groups(5000, 4096), 2000, &settings);
    assert_eq!(
        container(&merge).args.clone().unwrap(),
        [
            "merge",
            "--output=s3://fruits/runs/fruits-360/",
            "--shards-per-pod=4096",
            "--path-style=true"
        ]
    );
    let spec = merge.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    assert_eq!(spec.max_failed_indexes, Some(0));
    let fit = fit_job(&fx, 10_000_000, Some(4096), &settings);
    let args = container(&fit).args.clone().unwrap();
    assert_eq!(
        args[args.len() - 3..],
        ["--fit-only", "--merged-blocks=4096", "--path-style=true"]
    );
}

#[test]
fn minimal_resources_fall_back_to_the_operator_defaults() {
    let fx = fx(|fx| {
        fx.spec.runner = Default::default();
        fx.spec.storage.endpoint = None;
        fx.spec.storage.force_path_style = None;
        fx.spec.storage.credentials_secret = None;
        fx.spec.model.sha256 = None;
        fx.spec.suspend = true;
        fx.spec.ttl_seconds_after_finished = None;
        fx.spec.sharding.max_failed_shards = 2;
    });
    let job = extract_job(&fx, shards(7), &Settings::default());
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.suspend, Some(true));
    assert_eq!(spec.ttl_seconds_after_finished, None);
    assert_eq!(spec.max_failed_indexes, Some(2));
    // Kubernetes refuses maxFailedIndexes above completions: it is clamped to the shards.
    let few = extract_job(&fx, shards(1), &Settings::default());
    assert_eq!(few.spec.as_ref().unwrap().max_failed_indexes, Some(1));
    let c = container(&job);
    assert_eq!(c.image.as_deref(), Some(DEFAULT_RUNNER_IMAGE));
    let args = c.args.clone().unwrap();
    assert!(!args.iter().any(|a| a.starts_with("--model-sha256")
        || a.starts_with("--batch-size")
        || a.starts_with("--path-style")));
    assert!(env(&job, "AWS_ENDPOINT_URL").is_none());
    assert!(env(&job, "AWS_ACCESS_KEY_ID").is_none());
    let p = pod(&job);
    assert_eq!(p.service_account_name, None);
    assert_eq!(
        (p.node_selector.as_ref(), p.tolerations.as_ref()),
        (None, None)
    );
    assert_eq!(c.resources, None);
}

#[test]
fn the_spec_overrides_every_pod_deadline() {
    let fx = fx(|fx| fx.spec.runner.active_deadline_seconds = Some(600));
    for job in [
        plan_job(&fx, &Settings::default()),
        extract_job(&fx, shards(3), &Settings::default()),
        reduce_job(
            &fx,
            1260,
            Usage::default(),
            &Settings::default(),
            (ReduceStage::Whole, None),
        ),
    ] {
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.active_deadline_seconds, Some(600));
    }
}

#[test]
fn the_resize_filter_reaches_the_plan_and_the_extractor() {
    use pomona_crds::ResizeFilter;
    let args = |filter| {
        let job = extract_job(
            &fx(|fx| fx.spec.model.input.resize_filter = filter),
            shards(1),
            &Settings::default(),
        );
        container(&job).args.clone().unwrap()
    };
    for (filter, flag) in [
        (ResizeFilter::Bilinear, "--resize-filter=bilinear"),
        (ResizeFilter::Nearest, "--resize-filter=nearest"),
        (ResizeFilter::Bicubic, "--resize-filter=bicubic"),
    ] {
        assert!(args(filter).iter().any(|a| a == flag), "{filter:?}");
    }
    // The resource names it `resizeFilter`, in Kubernetes' enum style.
    let fx: FeatureExtraction = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/examples/fruits-360.yaml"
        ))
        .unwrap()
        .replace("resizeFilter: Bilinear", "resizeFilter: Nearest"),
    )
    .unwrap();
    assert_eq!(fx.spec.model.input.resize_filter, ResizeFilter::Nearest);
}
