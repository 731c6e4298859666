//! Cluster tests: FeatureExtraction runs on a real Kubernetes cluster with pomona installed — the
//! local cluster of `scripts/local-cluster.sh` (in `scripts/test.sh`), or kind with MinIO
//! (`.github/workflows/e2e.yml`).
//!
//! Each test makes its own namespace (removed when the test ends, pass or fail), a credentials
//! Secret, and a prefix of its own in the bucket holding the model and the images; it applies
//! FeatureExtractions and checks their status, Events and outputs, and that the operator was
//! never refused by the API server. They are `#[ignore]`d: without a cluster they show as
//! skipped (`scripts/test.sh` runs them with `--run-ignored only`), and once asked to run,
//! anything missing fails them. See `pomona_tests::e2e` for the settings.

use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_crds::{FeatureExtraction, Phase};
use pomona_storage::Storage;
use pomona_tests::cluster::{
    Run, assert_no_forbidden, assert_operator_holds_no_data_access, assert_outputs,
    assert_outputs_of, assert_succeeded, assert_succeeded_with, cluster, feature_rows, pick_images,
    shards, storage, upload_all,
};
use serde_json::json;

/// The phase of a resource.
fn phase(fx: &FeatureExtraction) -> Option<Phase> {
    fx.status.as_ref().and_then(|s| s.phase)
}

/// Whether the resource's condition `kind` is True.
fn condition(fx: &FeatureExtraction, kind: &str) -> bool {
    fx.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == kind && c.status == "True")
    })
}

/// Patches `spec.suspend`.
async fn set_suspend(api: &Api<FeatureExtraction>, name: &str, suspend: bool) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": suspend } })),
    )
    .await
    .unwrap_or_else(|e| panic!("set suspend={suspend} on {name}: {e}"));
}

/// Waits until an extract pod of `name` runs, and returns it.
async fn running_extract_pod(run: &Run, api: &Api<FeatureExtraction>, name: &str) -> Pod {
    let deadline = Instant::now() + run.timeout();
    loop {
        let running = run.pods(name, "extract").await.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if let Some(pod) = running {
            return pod;
        }
        let phase = phase(&api.get(name).await.expect("read the FeatureExtraction"));
        assert!(
            !phase.is_some_and(Phase::is_finished) && Instant::now() < deadline,
            "no extract pod of {name} was seen running before the run ended ({phase:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The completion index of a Job pod.
fn index(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()?
        .get("batch.kubernetes.io/job-completion-index")
        .cloned()
}

/// Asserts that completion index `index` of run `name` ran again, in a pod other than `gone`,
/// and succeeded.
async fn assert_index_reran(run: &Run, name: &str, index_of_gone: &str, gone: &str) {
    let reran = run
        .pods(name, "extract")
        .await
        .into_iter()
        .filter(|p| index(p).as_deref() == Some(index_of_gone))
        .filter(|p| p.metadata.name.as_deref() != Some(gone))
        .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
    assert!(
        reran,
        "index {index_of_gone} ran again after {gone} and succeeded"
    );
}

/// The whole sample (or whatever `POMONA_E2E_IMAGES` holds) in four shards, two at a time.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_run_succeeds_and_writes_every_output() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, usize::MAX, usize::MAX);
    let run = Run::new(cluster, "happy", images).await;
    let n = run.images.len();
    let per_shard = n.div_ceil(4).max(1);
    let fx = run.resource(
        "fruits",
        json!({ "imagesPerShard": per_shard, "parallelism": 2 }),
    );
    let api = run.apply(&fx).await;
    let done = run.wait_finished(&api, "fruits").await;
    let expected_shards = shards(n, per_shard);
    assert_succeeded(&done, n, 0, expected_shards);
    // The cost of every pod (plan, each shard, reduce), measured and as reserved (each pod
    // requests 250m and 512Mi); no amount, as the chart sets no rates.
    let status = done.status.as_ref().expect("a status");
    let cost = status.cost.as_ref().expect("status.cost");
    assert!(cost.pods >= expected_shards + 2, "{cost:?}");
    assert!(cost.cpu_seconds > 0.0, "{cost:?}");
    assert!(
        cost.requested_core_seconds.is_some_and(|s| s > 0.0)
            && cost.requested_memory_gib_seconds.is_some_and(|s| s > 0.0),
        "{cost:?}"
    );
    assert!(
        cost.images_per_core_hour.is_some_and(|r| r > 0.0),
        "{cost:?}"
    );
    assert_eq!(cost.estimated, None, "{cost:?}");
    assert_eq!(status.progress, None, "no pace once finished");
    let out = run.output().await;
    // The report has the run's cost too: the operator handed the reduce pod what the plan and
    // extract pods used, and it added its own up to writing the report. The status counts the
    // reduce pod to its end, but from pod times in whole seconds: a second of its 250m is the
    // most the report may be above it by.
    let report: serde_json::Value = serde_json::from_slice(
        &out.get("report/summary.json")
            .await
            .expect("report/summary.json"),
    )
    .expect("a JSON summary");
    let reported: pomona_crds::Cost =
        serde_json::from_value(report["cost"].clone()).expect("a cost in report/summary.json");
    assert_eq!(reported.pods, cost.pods, "{reported:?} against {cost:?}");
    assert!(
        reported.cpu_seconds > 0.0 && reported.cpu_seconds <= cost.cpu_seconds,
        "{reported:?} against {cost:?}"
    );
    assert!(
        reported
            .requested_core_seconds
            .is_some_and(|s| s > 0.0 && s <= cost.requested_core_seconds.unwrap_or(0.0) + 0.25),
        "{reported:?} against {cost:?}"
    );
    let dead = assert_outputs(&out, expected_shards).await;
    assert!(
        dead.is_empty(),
        "no image of the sample is dead-lettered: {dead:?}"
    );
    run.assert_event(
        "fruits",
        "Normal",
        "JobCreated",
        &format!("{expected_shards} shards"),
    )
    .await;
    run.assert_event("fruits", "Normal", "Succeeded", "").await;
    // The plan was made by the run's own plan pod; the operator can read no Secret and holds
    // no storage credentials.
    run.assert_event("fruits", "Normal", "JobCreated", "created Job fruits-plan")
        .await;
    assert_eq!(run.pods("fruits", "plan").await.len(), 1, "one plan pod");
    assert_operator_holds_no_data_access(&run.client, &run.settings, &run.ns.name).await;
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A run of more shards than `shardsPerProjectionPod` reduces in three Jobs: the fit pod, a
/// projection Job of one index per group of shards, then the reduce pod, which reads the
/// PCA and the reduced files they wrote. Every reduced file comes from the one PCA, every image
/// is accounted for, and the cost counts every pod of the five Jobs.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_run_of_many_shards_projects_in_a_job_of_its_own() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 3, 20);
    let run = Run::new(cluster, "project", images).await;
    let n = run.images.len();
    let per_shard = n.div_ceil(5);
    let expected_shards = shards(n, per_shard);
    let fx = run.resource(
        "many",
        json!({ "imagesPerShard": per_shard, "parallelism": 2, "shardsPerProjectionPod": 2 }),
    );
    let api = run.apply(&fx).await;
    let done = run.wait_finished(&api, "many").await;
    assert_succeeded(&done, n, 0, expected_shards);

    let groups = expected_shards.div_ceil(2);
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    let job = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            jobs.get(&format!("many-{name}"))
                .await
                .unwrap_or_else(|e| panic!("the {name} Job: {e}"))
        }
    };
    let project = job("project").await;
    let spec = project.spec.clone().expect("a spec");
    assert_eq!(spec.completions, Some(groups as i32));
    let status = project.status.clone().expect("a status");
    assert_eq!(status.succeeded, Some(groups as i32), "{status:?}");
    let args = |job: &Job| -> Vec<String> {
        let pod = job
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("a pod");
        pod.containers[0].args.clone().unwrap_or_default()
    };
    assert!(args(&job("fit").await).contains(&"--fit-only".to_string()));
    assert!(args(&job("reduce").await).contains(&"--after-projection".to_string()));
    assert_eq!(run.pods("many", "project").await.len(), groups as usize);
    run.assert_event(
        "many",
        "Normal",
        "JobCreated",
        &format!("created Job many-project: {groups} groups"),
    )
    .await;

    let out = run.output().await;
    let dead = assert_outputs(&out, expected_shards).await;
    assert!(dead.is_empty(), "{dead:?}");
    let report: serde_json::Value = serde_json::from_slice(
        &out.get("report/summary.json")
            .await
            .expect("report/summary.json"),
    )
    .expect("a JSON summary");
    assert_eq!(report["pcaMode"], "fit");
    assert_eq!(report["fittedOn"].as_u64(), Some(n as u64));
    assert_eq!(report["processed"].as_u64(), Some(n as u64));
    let pca_sha256 = report["pcaSha256"].as_str().expect("pcaSha256").to_string();
    for shard in 0..expected_shards {
        let key = format!("reduced/part-{shard:05}.parquet");
        let data = out.get(&key).await.expect("a reduced file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(data).expect("Parquet");
        let kv = reader.metadata().file_metadata().key_value_metadata();
        let made_by = kv
            .into_iter()
            .flatten()
            .find(|k| k.key == "pomona.pca_sha256")
            .and_then(|k| k.value.clone());
        assert_eq!(made_by.as_deref(), Some(pca_sha256.as_str()), "{key}");
    }
    // Every pod of the five Jobs is counted, and the report's cost is the status's.
    let cost = done
        .status
        .as_ref()
        .and_then(|s| s.cost.clone())
        .expect("status.cost");
    let pods: u32 = [1, expected_shards, 1, groups, 1].iter().sum();
    assert!(cost.pods >= pods, "{cost:?}");
    let reported: pomona_crds::Cost =
        serde_json::from_value(report["cost"].clone()).expect("a cost in report/summary.json");
    assert_eq!(reported.pods, cost.pods, "{reported:?} against {cost:?}");
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A run of more shards than `shardsPerMergePod` merges its statistics in a Job of its own, one
/// pod a block of 64 shards, before the fit pod, which fits on the blocks: the run succeeds
/// with every image in the PCA, and each block's record names the shards it merged.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_run_of_very_many_shards_merges_its_statistics_in_blocks() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 3, 24);
    let run = Run::new(cluster, "merge", images).await;
    let n = run.images.len();
    let fx = run.resource(
        "blocks",
        json!({ "imagesPerShard": 1, "parallelism": 8, "shardsPerMergePod": 64 }),
    );
    let api = run.apply(&fx).await;
    let done = run.wait_finished(&api, "blocks").await;
    let expected_shards = n as u32;
    assert_succeeded(&done, n, 0, expected_shards);

    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    let merge = jobs.get("blocks-merge").await.expect("the merge Job");
    let blocks = expected_shards.div_ceil(64) as i32;
    assert_eq!(
        merge.spec.as_ref().and_then(|s| s.completions),
        Some(blocks)
    );
    assert_eq!(
        merge.status.as_ref().and_then(|s| s.succeeded),
        Some(blocks)
    );
    let fit = jobs.get("blocks-fit").await.expect("the fit Job");
    let args = fit
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(args.contains(&"--merged-blocks=64".to_string()), "{args:?}");
    run.assert_event(
        "blocks",
        "Normal",
        "JobCreated",
        &format!("created Job blocks-merge: {blocks} blocks"),
    )
    .await;

    let out = run.output().await;
    assert_outputs(&out, expected_shards).await;
    for (block, merged) in [(0, "0-63".to_string()), (1, format!("64-{}", n - 1))] {
        let key = format!("stats/blocks/block-{block:05}.json");
        let record: serde_json::Value =
            serde_json::from_slice(&out.get(&key).await.expect("a block's record")).expect("JSON");
        assert_eq!(record["merged"], merged, "{key}");
    }
    let report: serde_json::Value = serde_json::from_slice(
        &out.get("report/summary.json")
            .await
            .expect("report/summary.json"),
    )
    .expect("a JSON summary");
    assert_eq!(report["fittedOn"].as_u64(), Some(n as u64));
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A bucket the run's identity cannot read fails the run at planning, with `AccessDenied` in
/// its status and a Warning Event; a runner image outside the admin's allow-list is refused
/// before any Job exists.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_bucket_the_runner_cannot_read_fails_with_access_denied() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 1, 3);
    let run = Run::new(cluster, "denied", images).await;
    let wrong: Secret = serde_json::from_value(json!({
        "metadata": { "name": "wrong-s3" },
        "stringData": {
            "AWS_ACCESS_KEY_ID": run.settings.access_key,
            "AWS_SECRET_ACCESS_KEY": "not-the-secret-key",
        },
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(run.client.clone(), &run.ns.name)
        .create(&PostParams::default(), &wrong)
        .await
        .expect("create the wrong Secret");
    let mut fx = run.resource("denied", json!({ "imagesPerShard": 10 }));
    fx.spec.storage.credentials_secret = Some(pomona_crds::SecretReference {
        name: "wrong-s3".into(),
    });
    let api = run.apply(&fx).await;
    let failed = run.wait_finished(&api, "denied").await;
    assert_eq!(phase(&failed), Some(Phase::Failed));
    let status = failed.status.clone().unwrap_or_default();
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("a Failed condition");
    assert_eq!(condition.reason, "AccessDenied", "{status:?}");
    assert!(
        condition.message.contains("access denied")
            && !condition.message.contains("not-the-secret"),
        "{}",
        condition.message
    );
    run.assert_event("denied", "Warning", "Failed", "access denied")
        .await;
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    assert!(
        jobs.get_opt("denied-extract")
            .await
            .expect("read Jobs")
            .is_none(),
        "nothing extracted"
    );

    // An image the admin did not allow: refused before any Job exists.
    let mut other = run.resource("foreign-image", json!({ "imagesPerShard": 10 }));
    other.spec.runner.image = Some("docker.io/someone/pomona:latest".into());
    let api = run.apply(&other).await;
    let refused = run.wait_finished(&api, "foreign-image").await;
    let status = refused.status.clone().unwrap_or_default();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True" && c.reason == "ImageNotAllowed"),
        "{status:?}"
    );
    assert!(
        jobs.get_opt("foreign-image-plan")
            .await
            .expect("read Jobs")
            .is_none(),
        "no Job for a refused run"
    );
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A text file and a truncated JPEG among good images: the run succeeds and dead-letters
/// exactly those two.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_bad_images_are_dead_lettered() {
    let cluster = cluster().await;
    let mut images = pick_images(&cluster.settings.images, 3, 20);
    let variety = images[0]
        .0
        .split('/')
        .next()
        .expect("a variety")
        .to_string();
    let truncated = images[0].1.slice(..images[0].1.len().min(400));
    let bad = [
        (
            format!("{variety}/zz-not-an-image.jpg"),
            Bytes::from_static(b"this is a text file with a .jpg name\n"),
        ),
        (format!("{variety}/zz-truncated.jpg"), truncated),
    ];
    let bad_keys: Vec<String> = bad.iter().map(|(k, _)| k.clone()).collect();
    images.extend(bad);
    let run = Run::new(cluster, "bad", images).await;
    let n = run.images.len();
    let fx = run.resource(
        "with-bad",
        json!({ "imagesPerShard": 25, "parallelism": 2 }),
    );
    let api = run.apply(&fx).await;
    let done = run.wait_finished(&api, "with-bad").await;
    assert_succeeded(&done, n, bad_keys.len(), shards(n, 25));
    run.assert_event("with-bad", "Normal", "Succeeded", "every output is written")
        .await;
    let mut dead = assert_outputs(&run.output().await, shards(n, 25)).await;
    dead.sort();
    assert_eq!(dead.len(), bad_keys.len(), "dead-lettered: {dead:?}");
    for key in &bad_keys {
        assert!(
            dead.iter().any(|p| p.ends_with(key.as_str())),
            "{key} is in the dead-letter files: {dead:?}"
        );
    }
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// The weekly case: a second run over the same photos and a few new ones names the first
/// run's output in `spec.source.reuseFrom` and its PCA in `spec.pca.from`. Its extract pods
/// read the first run (under the run's own identity), copy the rows of the photos that did not
/// change, extract the rest, and project every shard through the reused PCA as they write it.
/// A photo can only be matched when the store listed it with an ETag both times: S3 and MinIO
/// do, s3s-fs (the local cluster's store) does not, and there every photo is extracted again,
/// which the pods say. Either way the rows are the first run's, bit for bit. A run whose
/// preprocessing differs from the first run's is refused with the reason.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_rerun_reuses_the_features_of_the_previous_run() {
    let cluster = cluster().await;
    let mut images = pick_images(&cluster.settings.images, 3, 20);
    let new_photos: Vec<(String, Bytes)> = images.split_off(images.len() - 4);
    let run = Run::new(cluster, "weekly", images).await;
    let old = run.images.len();
    let sharding = json!({ "imagesPerShard": 20, "parallelism": 2 });
    let first = run.resource("week-1", sharding.clone());
    let api = run.apply(&first).await;
    let done = run.wait_finished(&api, "week-1").await;
    assert_succeeded(&done, old, 0, shards(old, 20));

    upload_all(
        &storage(&run.settings, &run.root).await,
        "images/",
        new_photos,
    )
    .await;
    let n = old + 4;
    // This week reuses last week's PCA too: the extract pods project each shard through it.
    let mut second = run.resource("week-2", sharding.clone());
    second.spec.source.reuse_from = vec![run.output_uri()];
    second.spec.output.uri = format!("{}week-2/", run.root);
    second.spec.pca.components = None;
    second.spec.pca.from = Some(format!("{}pca/", run.output_uri()));
    let done = run.wait_finished(&run.apply(&second).await, "week-2").await;
    assert_succeeded_with(&done, n, 0, shards(n, 20), true);
    let week_2 = storage(&run.settings, &second.spec.output.uri).await;
    let summary = |out: Storage| async move {
        let json = out.get("report/summary.json").await.expect("a summary");
        serde_json::from_slice::<serde_json::Value>(&json).expect("JSON")
    };
    let pca_sha256 = summary(run.output().await).await["pcaSha256"].clone();
    assert_eq!(summary(week_2.clone()).await["pcaSha256"], pca_sha256);
    for shard in 0..shards(n, 20) {
        let reduced = week_2
            .get(&format!("reduced/part-{shard:05}.parquet"))
            .await
            .expect("a reduced file");
        let made_by = ParquetRecordBatchReaderBuilder::try_new(reduced)
            .expect("a Parquet file")
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == "pomona.pca_sha256").cloned())
            .and_then(|k| k.value);
        assert_eq!(made_by.as_deref(), pca_sha256.as_str(), "shard {shard}");
    }
    // The old photos this run listed with an ETag: those are copied.
    let mut matchable = 0;
    for shard in 0..shards(n, 20) {
        let manifest = week_2
            .get(&format!("manifests/shard-{shard:05}.jsonl"))
            .await
            .expect("read a manifest");
        for line in String::from_utf8_lossy(&manifest).lines() {
            let entry: serde_json::Value = serde_json::from_str(line).expect("a manifest line");
            let key = entry["key"].as_str().expect("a key");
            if entry.get("etag").is_some() && run.images.iter().any(|k| k == key) {
                matchable += 1;
            }
        }
    }
    let counts = done.status.as_ref().and_then(|s| s.images);
    assert_eq!(
        counts.map(|c| (c.processed, c.reused)),
        Some((n as u64, matchable)),
        "every photo processed; the old ones listed with an ETag copied"
    );
    let before = feature_rows(&run.output().await).await;
    let after = feature_rows(&week_2).await;
    assert_eq!(after.len(), n);
    for (path, row) in &before {
        assert_eq!(
            after.get(path),
            Some(row),
            "{path}: the row is the first run's"
        );
    }

    // Features of another preprocessing are never mixed in.
    let mut other = run.resource("other-scale", sharding);
    other.spec.source.reuse_from = vec![run.output_uri()];
    other.spec.output.uri = format!("{}other-scale/", run.root);
    other.spec.model.input.offset = 0.0;
    let refused = run
        .wait_finished(&run.apply(&other).await, "other-scale")
        .await;
    let status = refused.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.message.contains("cannot reuse the features of")),
        "{status:?}"
    );
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// An extract pod deleted while it runs: its shard is run again and the run still accounts for
/// every image.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_run_survives_a_deleted_extract_pod() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 10, 60);
    let run = Run::new(cluster, "podkill", images).await;
    let n = run.images.len();
    let per_shard = n.div_ceil(2).max(1);
    let fx = run.resource(
        "podkill",
        json!({ "imagesPerShard": per_shard, "parallelism": 1, "retriesPerShard": 3 }),
    );
    let api = run.apply(&fx).await;
    let pod = running_extract_pod(&run, &api, "podkill").await;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let deleted_index = index(&pod).expect("a completion index");
    Api::<Pod>::namespaced(run.client.clone(), &run.ns.name)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete pod {name}: {e}"));
    eprintln!("deleted the running extract pod {name}");

    let done = run.wait_finished(&api, "podkill").await;
    let expected_shards = shards(n, per_shard);
    assert_succeeded(&done, n, 0, expected_shards);
    run.assert_event("podkill", "Normal", "Succeeded", "every output is written")
        .await;
    assert_index_reran(&run, "podkill", &deleted_index, &name).await;
    let dead = assert_outputs(&run.output().await, expected_shards).await;
    assert!(dead.is_empty(), "no image is dead-lettered: {dead:?}");
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// An extract pod evicted mid-shard (the Eviction API, as a node drain does): the API server
/// marks it `DisruptionTarget`, the Job's pod failure policy ignores it, and the index runs
/// again without counting a failure.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_evicted_extract_pod_is_retried_without_a_failure() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 10, 60);
    let run = Run::new(cluster, "evict", images).await;
    let n = run.images.len();
    let per_shard = n.div_ceil(2).max(1);
    // No retry at all: an eviction counted as a failure would fail the run.
    let fx = run.resource(
        "evict",
        json!({ "imagesPerShard": per_shard, "parallelism": 1, "retriesPerShard": 0 }),
    );
    let api = run.apply(&fx).await;
    let pod = running_extract_pod(&run, &api, "evict").await;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let evicted_index = index(&pod).expect("a completion index");
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &run.ns.name);
    pods.evict(&name, &EvictParams::default())
        .await
        .unwrap_or_else(|e| panic!("evict pod {name}: {e}"));
    eprintln!("evicted the running extract pod {name} (index {evicted_index})");
    // The eviction marks the pod before its deletion starts; the Job's tracking finalizer
    // keeps the object until the Job controller has counted it.
    let marked = pods.get(&name).await.expect("read the evicted pod");
    let disruption = marked
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget");
    assert!(
        disruption.as_ref().is_some_and(|c| c.status == "True"),
        "the evicted pod has DisruptionTarget=True: {disruption:?}"
    );

    let done = run.wait_finished(&api, "evict").await;
    let expected_shards = shards(n, per_shard);
    assert_succeeded(&done, n, 0, expected_shards);
    run.assert_event("evict", "Normal", "Succeeded", "every output is written")
        .await;
    assert_index_reran(&run, "evict", &evicted_index, &name).await;
    let job = Api::<Job>::namespaced(run.client.clone(), &run.ns.name)
        .get("evict-extract")
        .await
        .expect("read the extract Job");
    let status = job.status.unwrap_or_default();
    assert_eq!(
        status.failed_indexes.as_deref().unwrap_or(""),
        "",
        "no index failed: {status:?}"
    );
    assert_outputs(&run.output().await, expected_shards).await;
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A run of three shards, one at a time, whose shard 1 manifest is taken away once the plan is
/// written (shard 0 runs first): shard 1's pod exits 3 (the manifest is missing, a permanent
/// error) and its index fails at once, without retries. Returns the run, its API and the
/// manifest to put back.
async fn run_with_a_failing_shard(
    base: &str,
    name: &str,
    max_failed: u32,
) -> (Run, Api<FeatureExtraction>, Bytes) {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 3, 100);
    let run = Run::new(cluster, base, images).await;
    let per_shard = run.images.len().div_ceil(3);
    let fx = run.resource(
        name,
        json!({ "imagesPerShard": per_shard, "parallelism": 1, "retriesPerShard": 2,
                "maxFailedShards": max_failed }),
    );
    let api = run.apply(&fx).await;
    run.wait_for(&api, name, "planning", |fx| condition(fx, "Planned"))
        .await;
    let out = run.output().await;
    let manifest = "manifests/shard-00001.jsonl";
    let saved = out.get(manifest).await.expect("read shard 1's manifest");
    let removed = out
        .delete_prefix(manifest)
        .await
        .expect("take shard 1's manifest away");
    assert_eq!(removed, 1, "{manifest} removed");
    assert!(
        run.pods(name, "extract")
            .await
            .iter()
            .all(|p| index(p).as_deref() == Some("0")),
        "shard 1 had not started when its manifest was taken away"
    );
    (run, api, saved)
}

/// Waits until index 1 of the extract Job has failed for good, and checks that its pod exited 3.
async fn wait_index_1_failed(run: &Run, name: &str) {
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    let deadline = Instant::now() + run.timeout();
    loop {
        let failed = jobs
            .get_opt(&format!("{name}-extract"))
            .await
            .expect("read the extract Job")
            .and_then(|j| j.status)
            .and_then(|s| s.failed_indexes)
            .unwrap_or_default();
        if failed == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "index 1 never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods = run.pods(name, "extract").await;
    let exit_codes: Vec<i32> = pods
        .iter()
        .filter(|p| index(p).as_deref() == Some("1"))
        .filter_map(|p| {
            p.status
                .clone()?
                .container_statuses?
                .first()?
                .state
                .clone()?
                .terminated
        })
        .map(|t| t.exit_code)
        .collect();
    assert_eq!(
        exit_codes,
        vec![3],
        "index 1 ran once and exited 3 (permanent): not retried"
    );
}

/// A shard that fails for good within `maxFailedShards`: the run goes on, the reduce step
/// dead-letters the shard's images with the reason, and every image is accounted for.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_shard_failing_for_good_within_the_tolerance_is_dead_lettered() {
    let (run, api, manifest) = run_with_a_failing_shard("shardok", "tolerant", 1).await;
    wait_index_1_failed(&run, "tolerant").await;
    // Put the manifest back for the reduce step, which dead-letters the shard's listed images.
    run.output()
        .await
        .put("manifests/shard-00001.jsonl", manifest.clone())
        .await
        .expect("put shard 1's manifest back");
    let done = run.wait_finished(&api, "tolerant").await;
    let n = run.images.len();
    let in_shard_1 = manifest
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let status = done.status.clone().unwrap_or_default();
    let shown = serde_json::to_string_pretty(&status).unwrap_or_default();
    assert_eq!(phase(&done), Some(Phase::Succeeded), "{shown}");
    let counts = status.images.expect("status.images");
    assert_eq!(
        (counts.total, counts.processed, counts.failed),
        (n as u64, (n - in_shard_1) as u64, in_shard_1 as u64),
        "{shown}"
    );
    let s = status.shards.expect("status.shards");
    assert_eq!((s.total, s.succeeded, s.failed), (3, 2, 1), "{shown}");
    let dead = assert_outputs_of(&run.output().await, 3, 2).await;
    assert_eq!(dead.len(), in_shard_1, "shard 1's images are dead-lettered");
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A shard that fails for good beyond `maxFailedShards`: the run fails with the shard's reason
/// in its status and a Warning Event, and no reduce step runs.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_shard_failing_for_good_beyond_the_tolerance_fails_the_run() {
    let (run, api, _) = run_with_a_failing_shard("shardfail", "strict", 0).await;
    let done = run.wait_finished(&api, "strict").await;
    let status = done.status.clone().unwrap_or_default();
    let shown = serde_json::to_string_pretty(&status).unwrap_or_default();
    assert_eq!(phase(&done), Some(Phase::Failed), "{shown}");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("shard 1") && message.contains("shard-00001"),
        "the status names the shard and why it failed: {shown}"
    );
    run.assert_event("strict", "Warning", "Failed", "shard 1")
        .await;
    assert!(
        run.pods("strict", "reduce").await.is_empty(),
        "no reduce pod for a failed run"
    );
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// The operator pod holding the Lease deleted mid-run: another pod (the standby replica, or the
/// one the Deployment starts in its place) takes the Lease and finishes the run.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_run_survives_the_leading_operator_pod_deleted() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 10, 60);
    let run = Run::new(cluster, "leader", images).await;
    let n = run.images.len();
    let per_shard = n.div_ceil(3).max(1);
    let fx = run.resource(
        "leader",
        json!({ "imagesPerShard": per_shard, "parallelism": 1 }),
    );
    let api = run.apply(&fx).await;
    running_extract_pod(&run, &api, "leader").await;

    let ns = run.settings.operator_namespace.clone();
    let leases: Api<Lease> = Api::namespaced(run.client.clone(), &ns);
    let holder = |lease: Lease| {
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
    };
    let lease_name = leases
        .list(&Default::default())
        .await
        .expect("list the Leases")
        .into_iter()
        .map(|l| l.metadata.name.clone().unwrap_or_default())
        .find(|n| n.contains("pomona"))
        .expect("the operator's Lease");
    let leader = holder(leases.get(&lease_name).await.expect("read the Lease"));
    assert!(!leader.is_empty(), "the Lease has a holder");
    Api::<Pod>::namespaced(run.client.clone(), &ns)
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete the leading operator pod {leader}: {e}"));
    eprintln!("deleted the leading operator pod {leader}");

    let done = run.wait_finished(&api, "leader").await;
    let expected_shards = shards(n, per_shard);
    assert_succeeded(&done, n, 0, expected_shards);
    run.assert_event("leader", "Normal", "Succeeded", "every output is written")
        .await;
    let now = holder(leases.get(&lease_name).await.expect("read the Lease"));
    assert!(
        !now.is_empty() && now != leader,
        "another replica holds the Lease ({now:?}, was {leader:?})"
    );
    assert_outputs(&run.output().await, expected_shards).await;
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A run created suspended starts no Job; resumed, it is planned and completes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_suspend_then_resume() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 2, 20);
    let run = Run::new(cluster, "suspend", images).await;
    let n = run.images.len();
    let mut fx = run.resource("paused", json!({ "imagesPerShard": 20, "parallelism": 2 }));
    fx.spec.suspend = true;
    let api = run.apply(&fx).await;
    let suspended = run
        .wait_for(&api, "paused", "Suspended", |fx| {
            phase(fx) == Some(Phase::Suspended) && condition(fx, "Suspended")
        })
        .await;
    // The operator writes the status after it has acted on the Jobs: seeing Suspended, the
    // decision not to create one is made.
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    assert!(
        jobs.get_opt("paused-extract")
            .await
            .expect("read Jobs")
            .is_none()
            && run.pods("paused", "extract").await.is_empty(),
        "no extract Job and no pod while suspended: {:?}",
        suspended.status
    );
    run.assert_event("paused", "Normal", "Suspended", "").await;
    let pace = suspended.status.as_ref().and_then(|s| s.progress.as_ref());
    assert!(
        pace.is_some_and(|p| p.images_per_second.is_none()
            && p.estimated_completion_time.is_none()
            && p.note
                .as_deref()
                .is_some_and(|n| n.starts_with("suspended"))),
        "no rate or estimate while suspended, and a note that says so: {pace:?}"
    );

    set_suspend(&api, "paused", false).await;
    let done = run.wait_finished(&api, "paused").await;
    assert_succeeded(&done, n, 0, shards(n, 20));
    run.assert_event("paused", "Normal", "Succeeded", "every output is written")
        .await;
    assert!(!condition(&done, "Suspended"), "no longer suspended");
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// The API server refuses malformed resources with the CRD's own messages, and immutable fields
/// cannot change, before the operator sees anything.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_invalid_resources_and_immutable_edits_are_refused() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 1, 2);
    let run = Run::new(cluster, "invalid", images).await;
    let valid = serde_json::to_value(run.resource("valid", json!({ "imagesPerShard": 10 })))
        .expect("a resource as JSON");
    let with = |name: &str, pointer: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        v["metadata"]["name"] = json!(name);
        *v.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} in the resource")) = value;
        serde_json::from_value::<FeatureExtraction>(v).expect("a FeatureExtraction")
    };
    let cases = [
        (
            with(
                "two-pcas",
                "/spec/pca",
                json!({ "components": 5, "varianceToKeep": 0.9 }),
            ),
            "pca needs exactly one of components, varianceToKeep and from",
        ),
        (
            with("variance", "/spec/pca", json!({ "varianceToKeep": 1.5 })),
            "varianceToKeep must be in (0, 1]",
        ),
        (
            with(
                "not-s3",
                "/spec/source/uri",
                json!("https://example.com/images/"),
            ),
            "source.uri must be an S3 URI: s3://bucket/prefix/",
        ),
        (
            with(
                "inside",
                "/spec/output/uri",
                json!(format!("{}images/out/", run.root)),
            ),
            "output.uri must not lie inside source.uri",
        ),
        (
            with(
                "endpoint",
                "/spec/storage/endpoint",
                json!("http://10.0.0.1:9000/path"),
            ),
            "endpoint must be http(s)://host[:port] with no path",
        ),
    ];
    let api: Api<FeatureExtraction> = Api::namespaced(run.client.clone(), &run.ns.name);
    for (fx, message) in cases {
        let name = fx.metadata.name.clone().unwrap_or_default();
        let err = api
            .create(&Default::default(), &fx)
            .await
            .expect_err(&format!("{name} is refused"));
        match err {
            kube::Error::Api(e) => {
                assert_eq!(e.code, 422, "{name}: {e:?}");
                assert!(
                    e.message.contains(message),
                    "{name}: {:?} says {message:?}",
                    e.message
                );
            }
            other => panic!("{name}: not an API refusal: {other}"),
        }
    }

    // Immutable fields of a created (suspended) resource.
    let mut fx = run.resource("fixed", json!({ "imagesPerShard": 10, "parallelism": 1 }));
    fx.spec.suspend = true;
    run.apply(&fx).await;
    let edits = [
        (
            json!({ "spec": { "source": { "uri": format!("{}other/", run.root) } } }),
            "source is immutable: create a new FeatureExtraction for other images",
        ),
        (
            json!({ "spec": { "sharding": { "imagesPerShard": 11 } } }),
            "only sharding.parallelism can change after creation",
        ),
        (
            json!({ "spec": { "pca": { "components": 9 } } }),
            "pca is immutable",
        ),
    ];
    for (patch, message) in edits {
        let err = api
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err(&format!("{patch} is refused"));
        match err {
            kube::Error::Api(e) => {
                assert_eq!(e.code, 422, "{patch}: {e:?}");
                assert!(
                    e.message.contains(message),
                    "{patch}: {:?} says {message:?}",
                    e.message
                );
            }
            other => panic!("{patch}: not an API refusal: {other}"),
        }
    }
    api.patch(
        "fixed",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "sharding": { "parallelism": 3 } } })),
    )
    .await
    .expect("parallelism may change");
    assert_no_forbidden(&run.client, &run.settings).await;
}
