//! The job contract holds end to end: every Job the operator renders for the examples runs a
//! command line that the runner's own parser accepts and turns back into the same typed step
//! arguments the operator built it from. A flag renamed on one side fails here, not on a
//! cluster.

use std::path::Path;

use clap::Parser;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use pomona_crds::FeatureExtraction;
use pomona_crds::contract::steps::{
    self, ExtractArgs, FailedShards, MergeArgs, ProjectArgs, ReduceStage, ShardList,
};
use pomona_operator::jobs::{
    CONTAINER, FAILED_SHARDS_DIR, FAILED_SHARDS_KEY, ReduceStepJob, extract_args, merge_args,
    plan_args, project_args, reduce_args, reduce_step,
};
use pomona_operator::render::render;
use pomona_operator::settings::{List, Settings};
use pomona_runner::command::{Cli, Command};

/// The settings of a release that allows every example's endpoint and service account.
fn settings() -> Settings {
    Settings {
        runner_service_account: "pomona-runner".into(),
        allowed_endpoints: List(vec![
            "http://minio.minio.svc:9000".into(),
            "http://10.244.0.1:9000".into(),
        ]),
        ..Settings::default()
    }
}

/// The container's command line of a rendered Job, program first.
fn command_line(job: &Job) -> Vec<String> {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = pod.containers.iter().find(|c| c.name == CONTAINER).unwrap();
    let mut argv = container.command.clone().unwrap();
    argv.extend(container.args.clone().unwrap());
    argv
}

#[test]
fn every_rendered_job_parses_with_the_runner_s_parser_into_its_contract() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
    let mut examples = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        examples += 1;
        let yaml = std::fs::read_to_string(&path).unwrap();
        // The run as written; in 126 shards, more than a projection pod takes; in 10,000,
        // more than a merge pod takes: a run that fits its PCA has those Jobs too.
        for (images, images_per_shard) in [(1260, None), (1260, Some(10)), (10_000, Some(1))] {
            check_rendered(&path, &yaml, images, images_per_shard);
        }
    }
    assert!(examples >= 3, "the examples in {}", dir.display());
}

/// Checks the Jobs `render` makes of the example at `path` for `images` images.
fn check_rendered(path: &Path, yaml: &str, images: u64, images_per_shard: Option<u32>) {
    let rendered = render(yaml, images, images_per_shard, &settings())
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let docs: Vec<serde_yaml::Value> = rendered
        .split("\n---\n")
        .skip(1)
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect();
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind).cloned();
    let jobs: Vec<Job> = of_kind("Job")
        .map(|d| serde_yaml::from_value(d).unwrap())
        .collect();
    let mut fx: FeatureExtraction = serde_yaml::from_str(yaml).unwrap();
    fx.metadata.uid = Some(pomona_operator::render::PLACEHOLDER_UID.into());
    if let Some(per_shard) = images_per_shard {
        fx.spec.sharding.images_per_shard = per_shard;
    }
    let shards =
        u32::try_from(images.div_ceil(u64::from(fx.spec.sharding.images_per_shard))).unwrap();
    // Plan and extract, then the reduce step's Jobs in order.
    let steps = reduce_step(&fx.spec, shards);
    let fits = fx.spec.pca.from.is_none();
    let expected_steps = match (images_per_shard, fits) {
        (None, _) | (_, false) => 1,
        (Some(10), true) => 3,
        (_, true) => 4,
    };
    assert_eq!(steps.len(), expected_steps, "{}", path.display());
    assert_eq!(jobs.len(), 2 + steps.len(), "{}", path.display());
    // The reduce step's file of failed shards, as the runner reads it: none here.
    let lists: Vec<ConfigMap> = of_kind("ConfigMap")
        .map(|d| serde_yaml::from_value(d).unwrap())
        .collect();
    let data = lists[0].data.as_ref().unwrap();
    assert_eq!(
        data[FAILED_SHARDS_KEY].parse::<ShardList>(),
        Ok(ShardList::default())
    );
    // What the operator built each Job from (render stamps a placeholder uid).
    let file = FailedShards::File(format!("{FAILED_SHARDS_DIR}/{FAILED_SHARDS_KEY}"));
    for (i, job) in jobs.iter().enumerate() {
        let argv = command_line(job);
        assert_eq!(argv[0], steps::PROGRAM);
        let parsed = Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()))
            .command;
        let step = i.checked_sub(2).map(|s| steps[s]);
        match (parsed, step) {
            (Command::Plan(c), None) => assert_eq!(c.contract(), Some(plan_args(&fx))),
            (Command::Extract(c), None) => {
                assert_eq!(ExtractArgs::from(&c), extract_args(&fx))
            }
            (Command::Merge(c), Some(ReduceStepJob::Merge(_))) => {
                assert_eq!(MergeArgs::from(&c), merge_args(&fx))
            }
            (Command::Reduce(c), Some(ReduceStepJob::Fit { merged_blocks })) => {
                let stage = (ReduceStage::Fit, merged_blocks);
                assert_eq!(c.contract(), Some(reduce_args(&fx, file.clone(), stage)))
            }
            (Command::Project(c), Some(ReduceStepJob::Project(_))) => {
                assert_eq!(ProjectArgs::from(&c), project_args(&fx))
            }
            (
                Command::Reduce(c),
                Some(ReduceStepJob::Reduce {
                    stage,
                    merged_blocks,
                }),
            ) => {
                let stage = (stage, merged_blocks);
                assert_eq!(c.contract(), Some(reduce_args(&fx, file.clone(), stage)))
            }
            (command, step) => panic!("{}: {command:?} for {step:?}", path.display()),
        }
    }
}
