//! `render` of the complete Fruits-360 example gives Jobs (and a ConfigMap) that pass
//! `kubernetes-validate --strict` for Kubernetes 1.33 (the binary comes from
//! scripts/tools.sh), with and without a projection Job, and refuses what the operator
//! refuses.

use std::path::Path;
use std::process::Command;

use pomona_operator::render::{PLACEHOLDER_UID, render};
use pomona_operator::settings::{List, Settings};

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples/fruits-360.yaml");
    std::fs::read_to_string(path).expect("the Fruits-360 example")
}

/// The settings of the chart's release `pomona` the example is written for: its runner service
/// account, and the example's MinIO endpoint allowed.
fn settings() -> Settings {
    Settings {
        runner_service_account: "pomona-runner".into(),
        allowed_endpoints: List(vec!["http://minio.minio.svc:9000".into()]),
        ..Settings::default()
    }
}

#[test]
fn rendered_fruits_360_jobs_pass_strict_validation_for_1_33() {
    // Three Jobs and the reduce Job's ConfigMap of failed shards; in 126 shards of 10, more
    // than a projection pod takes, a fit Job and a projection Job of two groups too.
    // (The projection Job of 10,000 shards has 157 groups of 64.)
    let one_pod_reduce = [
        "fruits-360-plan",
        "fruits-360-extract",
        "fruits-360-reduce-failed-shards",
        "fruits-360-reduce",
    ];
    let split_reduce = [
        "fruits-360-plan",
        "fruits-360-extract",
        "fruits-360-reduce-failed-shards",
        "fruits-360-fit",
        "fruits-360-project",
        "fruits-360-reduce",
    ];
    // In 10,000 shards of 1, more than a merge pod takes: a merge Job of three blocks first.
    let merged_reduce = [
        "fruits-360-plan",
        "fruits-360-extract",
        "fruits-360-reduce-failed-shards",
        "fruits-360-merge",
        "fruits-360-fit",
        "fruits-360-project",
        "fruits-360-reduce",
    ];
    for (images, per_shard, objects, completions) in [
        (1260, None, &one_pod_reduce[..], "completions: 3"),
        (1260, Some(10), &split_reduce[..], "completions: 2"),
        (10_000, Some(1), &merged_reduce[..], "completions: 157"),
    ] {
        let yaml = render(&example(), images, per_shard, &settings()).unwrap();
        assert_eq!(yaml.matches("\n---\n").count(), objects.len(), "{yaml}");
        assert!(yaml.starts_with("# Rendered by pomona-operator without a cluster"));
        assert!(yaml.contains(PLACEHOLDER_UID));
        for name in objects {
            assert!(yaml.contains(&format!("name: {name}\n")), "{name}");
        }
        assert!(yaml.contains(completions), "{completions}: {yaml}");
        validate_strictly(&yaml, objects.len());
    }
}

/// Runs `kubernetes-validate --strict` for Kubernetes 1.33 on the `objects` in `yaml`.
fn validate_strictly(yaml: &str, objects: usize) {
    let validator = std::env::var("POMONA_KUBERNETES_VALIDATE").unwrap_or_default();
    assert!(
        !validator.is_empty() && Path::new(&validator).is_file(),
        "POMONA_KUBERNETES_VALIDATE must name the kubernetes-validate binary: run the tests with \
         ./scripts/test.sh, or `source scripts/tools.sh && ensure_validators` first \
         (got {validator:?})"
    );
    let dir = tempdir();
    let file = dir.join("fruits-360-jobs.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(&validator)
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{yaml}");
    let text = format!("{stdout}{stderr}");
    assert_eq!(text.matches("passed").count(), objects, "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn render_overrides_the_shard_size_and_refuses_invalid_resources() {
    let yaml = render(&example(), 10_000, Some(1000), &settings()).unwrap();
    assert!(yaml.contains("completions: 10"), "{yaml}");
    let us = example().replace("region: eu-west-3", "region: us-east-1");
    let err = render(&us, 10, None, &settings()).unwrap_err();
    assert!(err.to_string().contains("us-east-1"), "{err}");
    // 10^9 images at 1 per shard would be 10^9 shards: raised to 10,000 per shard.
    let raised = render(&example(), 1_000_000_000, Some(1), &settings()).unwrap();
    assert!(raised.contains("completions: 100000"), "{raised}");
    assert!(
        raised.contains("in 100000 shards of up to 10000"),
        "{raised}"
    );
    // Past 100,000 shards of 1,000,000 images, the run is refused.
    let err = render(&example(), 100_000_000_001, None, &settings()).unwrap_err();
    assert!(err.to_string().contains("split the source"), "{err}");
    // The admin's policy: another runner image, or the example's endpoint not allowed.
    let other = example().replace(
        "image: ghcr.io/pomona-dev/pomona:0.1.0",
        "image: docker.io/someone/pomona:latest",
    );
    let err = render(&other, 10, None, &settings()).unwrap_err();
    assert!(err.to_string().contains("is not allowed"), "{err}");
    let err = render(
        &example(),
        10,
        None,
        &Settings {
            allowed_endpoints: List::default(),
            ..settings()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("config.allowedEndpoints"), "{err}");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pomona-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
