//! Cluster tests of a run's lifecycle, on the real control plane (see `tests/tests/cluster.rs`
//! for how cluster tests run): what the Job and TTL controllers and the API server's validation
//! do to a run must never restart it, freeze it, or stop it silently.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pomona_crds::{FeatureExtraction, Phase};
use pomona_tests::cluster::{
    Run, assert_no_forbidden, assert_outputs, assert_succeeded, cluster, pick_images, shards,
};
use serde_json::json;

fn phase(fx: &FeatureExtraction) -> Option<Phase> {
    fx.status.as_ref().and_then(|s| s.phase)
}

/// A merge patch of the run `edited`.
async fn edit(api: &Api<FeatureExtraction>, patch: serde_json::Value) {
    api.patch("edited", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("edit the run with {patch}: {e}"));
}

/// How many times the run created its Job of `component` (its `JobCreated` Events).
async fn jobs_created(run: &Run, name: &str, component: &str) -> usize {
    let job = format!("created Job {name}-{component}");
    run.events(name)
        .await
        .iter()
        .filter(|(_, reason, message)| reason == "JobCreated" && message.starts_with(&job))
        .count()
}

/// `ttlSecondsAfterFinished: 0`: the TTL applies to the run, not to each Job. The extract Job
/// is not removed while the reduce step runs (which restarted the run), and once the run has
/// finished the operator removes both Jobs; the status stays.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_a_zero_ttl_removes_the_jobs_after_the_run_not_before() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 3, 20);
    let run = Run::new(cluster, "ttl", images).await;
    let n = run.images.len();
    let mut fx = run.resource(
        "expiring",
        json!({ "imagesPerShard": 30, "parallelism": 2 }),
    );
    fx.spec.ttl_seconds_after_finished = Some(0);
    let api = run.apply(&fx).await;
    let done = run.wait_finished(&api, "expiring").await;
    assert_succeeded(&done, n, 0, shards(n, 30));
    run.assert_event("expiring", "Normal", "Succeeded", "every output is written")
        .await;
    assert_eq!(
        jobs_created(&run, "expiring", "extract").await,
        1,
        "the extract Job was created once"
    );
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = jobs
            .list(&Default::default())
            .await
            .expect("list Jobs")
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run's Jobs are removed: {left:?} remain"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = api.get("expiring").await.expect("read the run");
    assert_eq!(phase(&after), Some(Phase::Succeeded), "the status stays");
    assert_eq!(
        jobs_created(&run, "expiring", "extract").await,
        1,
        "never recreated"
    );
    assert_outputs(&run.output().await, shards(n, 30)).await;
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// `maxFailedShards` above the number of shards: Kubernetes requires `maxFailedIndexes` ≤
/// `completions`, so the operator clamps it, says so in an Event, and the run goes on.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_max_failed_shards_above_the_shard_count_is_clamped() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 2, 20);
    let run = Run::new(cluster, "clamp", images).await;
    let n = run.images.len();
    let fx = run.resource(
        "clamped",
        json!({ "imagesPerShard": 20, "parallelism": 2, "maxFailedShards": 10 }),
    );
    let api = run.apply(&fx).await;
    let done = run.wait_finished(&api, "clamped").await;
    assert_succeeded(&done, n, 0, shards(n, 20));
    run.assert_event("clamped", "Normal", "Succeeded", "every output is written")
        .await;
    run.assert_event("clamped", "Normal", "MaxFailedShardsClamped", "10")
        .await;
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A runner edit mid-run, then suspend: the Job's pod template is immutable, so the operator
/// changes only the fields that may change (suspend, parallelism), says that the runner edit
/// applies to the next run, and suspend takes effect; resumed, the run completes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_suspend_works_after_a_runner_edit_mid_run() {
    let cluster = cluster().await;
    // Enough shards, one at a time, that the run is still extracting when it is suspended.
    let images = pick_images(&cluster.settings.images, usize::MAX, usize::MAX);
    let run = Run::new(cluster, "edit", images).await;
    let n = run.images.len();
    let fx = run.resource("edited", json!({ "imagesPerShard": 50, "parallelism": 1 }));
    let api = run.apply(&fx).await;
    run.wait_for(&api, "edited", "extraction", |fx| {
        phase(fx) == Some(Phase::Extracting)
    })
    .await;
    edit(&api, json!({ "spec": { "runner": { "batchSize": 4 } } })).await;
    edit(&api, json!({ "spec": { "suspend": true } })).await;

    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = jobs
            .get("edited-extract")
            .await
            .expect("read the extract Job");
        if job.spec.and_then(|s| s.suspend) == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the extract Job is suspended within 60 s: {:?}",
            api.get("edited").await.ok().and_then(|f| f.status)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.wait_for(&api, "edited", "Suspended", |fx| {
        phase(fx) == Some(Phase::Suspended)
    })
    .await;
    run.assert_event("edited", "Normal", "RunnerChanged", "next run")
        .await;

    edit(&api, json!({ "spec": { "suspend": false } })).await;
    let done = run.wait_finished(&api, "edited").await;
    assert_succeeded(&done, n, 0, shards(n, 50));
    run.assert_event("edited", "Normal", "Succeeded", "every output is written")
        .await;
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// An error that stops a run's progress shows in its status and in a Warning Event, not only in
/// the operator's log: here a Job of the run's name that belongs to someone else.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn cluster_an_error_that_stops_a_run_shows_in_its_status() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 1, 5);
    let run = Run::new(cluster, "blocked", images).await;
    let foreign: Job = serde_json::from_value(json!({
        "metadata": { "name": "clash-extract" },
        "spec": {
            "suspend": true,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "c", "image": "ghcr.io/pomona-dev/pomona:0.1.0" }]
            } }
        }
    }))
    .expect("a Job");
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    jobs.create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign Job");
    let fx = run.resource("clash", json!({ "imagesPerShard": 10 }));
    let api = run.apply(&fx).await;
    let blocked = run
        .wait_for(&api, "clash", "the error in the status", |fx| {
            fx.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.message.contains("clash-extract")
                })
            })
        })
        .await;
    let status = blocked.status.clone().unwrap_or_default();
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("a Progressing condition");
    assert_eq!(progressing.reason, "ForeignJob", "{status:?}");
    run.assert_event("clash", "Warning", "ForeignJob", "clash-extract")
        .await;
    assert_no_forbidden(&run.client, &run.settings).await;
}
