//! Scenario tests of the controller: whole runs reconciled against an in-memory API server
//! (kube's mocked service, `tower_test`) and a real S3 server (s3s-fs, credentials checked),
//! where the test plays Kubernetes' Job controller and kubelet by writing Job status and pods.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::harness::*;
use http::Method;
use kube::runtime::controller::Action;
use pomona_crds::contract::PodSummary;
use pomona_crds::{FeatureExtraction, PcaResult, Phase};
use pomona_operator::controller::{Error, error_policy, reconcile};
use pomona_operator::settings::Settings;
use pomona_storage::testing::{ACCESS_KEY, SECRET_KEY};
use serde_json::{Value, json};

#[tokio::test]
async fn a_whole_run_goes_from_plan_to_succeeded() {
    let h = Harness::new(|_| {});

    // 1. Plan and create the extract Job: one Job apply, one status write.
    let action = h.step().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let plan: Value = serde_json::from_slice(
        &std::fs::read(h.s3_file("runs/fruits-360/manifests/plan.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (plan["images"].as_u64(), plan["shards"].as_u64()),
        (Some(10), Some(3))
    );
    for shard in 0..3 {
        assert!(
            h.s3_file(&format!(
                "runs/fruits-360/manifests/shard-0000{shard}.jsonl"
            ))
            .is_file()
        );
    }
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Extracting));
    assert_eq!(status.observed_generation, Some(1));
    let images = status.images.unwrap();
    assert_eq!((images.total, images.processed, images.failed), (10, 0, 0));
    assert_eq!(status.shards.unwrap().total, 3);
    assert_eq!(h.condition("Planned").0, "True");
    assert_eq!(h.condition("Progressing").0, "True");
    assert_eq!(h.condition("Complete").0, "False");

    let applies = h.writes_to(EXTRACT);
    assert_eq!(applies.len(), 1, "{applies:?}");
    let apply = &applies[0];
    assert_eq!(apply.method, Method::PATCH);
    assert!(
        apply
            .content_type
            .as_deref()
            .unwrap()
            .starts_with("application/apply-patch"),
        "server-side apply"
    );
    assert!(
        apply.query.contains("fieldManager=pomona-operator"),
        "{}",
        apply.query
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    let job = h.job(EXTRACT);
    assert_eq!(job["spec"]["completions"], 3);
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["uid"],
        h.fx().metadata.uid.unwrap()
    );
    let status_writes = h.writes_to(&format!("{FX}/status"));
    assert_eq!(status_writes.len(), 1);
    assert!(
        status_writes[0]
            .query
            .contains("fieldManager=pomona-operator")
    );
    assert_eq!(
        status_writes[0].body.as_ref().unwrap()["kind"],
        "FeatureExtraction"
    );
    assert_eq!(h.event_reasons(), ["JobCreated", "Extracting"]);
    let created = h
        .api
        .writes()
        .into_iter()
        .find(|c| c.path.starts_with(EVENTS))
        .and_then(|c| c.body)
        .unwrap();
    assert_eq!(created["note"], "created Job fruits-360-extract: 3 shards");
    assert_eq!(created["type"], "Normal");
    assert_eq!(created["reportingController"], "pomona-operator");
    assert_eq!(created["regarding"]["kind"], "FeatureExtraction");

    // 2. Nothing changed: nothing is written.
    h.api.clear_calls();
    h.step().await;
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());

    // 3. Two shards done, one running.
    h.extracted(0, 0, 4, 0);
    h.extracted(1, 0, 4, 0);
    h.job_status(
        EXTRACT,
        json!({"active": 1, "succeeded": 2, "completedIndexes": "0-1"}),
    );
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Extracting));
    let images = status.images.unwrap();
    assert_eq!((images.processed, images.failed), (8, 0));
    let shards = status.shards.unwrap();
    assert_eq!((shards.succeeded, shards.failed, shards.active), (2, 0, 1));
    assert!(
        h.api.object(REDUCE).is_none(),
        "no reduce before extraction ends"
    );

    // 4. The last shard ends with one bad image: the reduce Job starts.
    h.extracted(2, 0, 2, 1);
    h.job_status(
        EXTRACT,
        complete(json!({"active": 0, "succeeded": 3, "completedIndexes": "0-2"})),
    );
    h.api.clear_calls();
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Reducing));
    let images = status.images.unwrap();
    assert_eq!((images.total, images.processed, images.failed), (10, 9, 1));
    let args = h.args(REDUCE);
    assert_eq!(args[0], "reduce");
    assert!(
        args.contains(&"--variance-to-keep=0.95".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--failed-shards")),
        "{args:?}"
    );
    assert_eq!(
        h.writes_to(EXTRACT).len(),
        0,
        "a finished Job is left alone"
    );
    assert_eq!(h.event_reasons(), ["JobCreated", "Reducing"]);

    // 5. The reduce pod reports its PCA: Succeeded, with outputs.
    let pca = PcaResult {
        components: 7,
        explained_variance: 0.951,
        reused: false,
    };
    h.reduced(1, pca.clone());
    h.job_status(REDUCE, complete(json!({"succeeded": 1})));
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(h.condition("Complete").0, "True");
    assert_eq!(h.condition("Progressing").0, "False");
    assert_eq!(h.condition("Failed").0, "False");
    assert_eq!(status.pca, Some(pca));
    assert_eq!(status.label_agreement, Some(0.987));
    let outputs = status.outputs.unwrap();
    assert_eq!(
        outputs.features.as_deref(),
        Some("s3://fruits/runs/fruits-360/features/")
    );
    assert!(outputs.csv.is_some());
    assert!(status.completion_time.is_some());
    assert_eq!(h.event_reasons(), ["Succeeded"]);

    // 6. The TTL is the run's: until it has passed, the finished run's Jobs stay and the
    // operator looks again when it will have; then it removes both Jobs (their pods go with
    // them), the status stays, and nothing is ever recreated.
    h.api.clear_calls();
    assert!(matches!(h.step().await, a if a != Action::await_change()));
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());
    h.api
        .edit(FX, json!({"spec": {"ttlSecondsAfterFinished": 0}}));
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    assert!(h.api.object(EXTRACT).is_none() && h.api.object(REDUCE).is_none());
    assert_eq!(h.event_reasons(), ["JobsRemoved"]);
    assert_eq!(h.status().phase, Some(Phase::Succeeded));
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());

    // The metrics saw the images.
    let text = h.ctx.metrics.render([Some(Phase::Succeeded)]);
    assert!(text.contains("pomona_images_processed_total 9"), "{text}");
    assert!(text.contains("pomona_images_failed_total 1"), "{text}");
}

#[tokio::test]
async fn a_restart_mid_run_neither_plans_again_nor_duplicates_the_job() {
    let mut h = Harness::new(|_| {});
    // The first status write is lost: the plan is written to S3 but not recorded.
    h.api.fail_next(Method::PATCH, &format!("{FX}/status"), 500);
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Api(_)), "{err}");
    let plan_file = h.s3_file("runs/fruits-360/manifests/plan.json");
    let first_plan = std::fs::read(&plan_file).unwrap();

    // Meanwhile a new image arrives; the next reconcile reuses the written plan.
    std::fs::write(
        h.s3_file("images/Training/Banana 1/99_100.jpg"),
        b"arrived after planning",
    )
    .unwrap();
    h.step().await;
    assert_eq!(std::fs::read(&plan_file).unwrap(), first_plan);
    assert_eq!(h.status().images.unwrap().total, 10);
    assert_eq!(h.api.paths("/apis/batch/v1/").len(), 1, "one Job");

    // The operator restarts, and S3 is unreachable: the run goes on from its status alone.
    h.s3.stop();
    h.restart();
    h.api.clear_calls();
    h.extracted(0, 0, 4, 0);
    h.job_status(
        EXTRACT,
        json!({"active": 2, "succeeded": 1, "completedIndexes": "0"}),
    );
    h.step().await;
    assert!(h.writes_to(EXTRACT).is_empty(), "no second Job apply");
    assert_eq!(h.api.paths("/apis/batch/v1/").len(), 1);
    let status = h.status();
    assert_eq!(status.shards.unwrap().succeeded, 1);
    assert_eq!(status.images.unwrap().processed, 4);
    let writes: Vec<String> = h.api.writes().into_iter().map(|c| c.path).collect();
    assert_eq!(writes, [format!("{FX}/status")], "only the status changed");
}

#[tokio::test]
async fn a_retried_index_counts_once_and_a_failed_index_fails_the_run() {
    let h = Harness::new(|_| {});
    h.step().await;
    // Shard 0 succeeded on its second try (the first pod was OOM-killed).
    h.pod(EXTRACT, 0, 0, "Failed", 137, "");
    h.extracted(0, 1, 4, 0);
    h.extracted(2, 0, 2, 0);
    // Shard 1 failed for good: the runner could not read its images.
    let failure = PodSummary {
        error: Some("AccessDenied reading s3://fruits/images/Training/Banana 1/0_100.jpg".into()),
        ..serde_json::from_str(&Harness::extract_summary(1, 4, 0)).unwrap()
    };
    h.pod(EXTRACT, 1, 0, "Failed", 3, &failure.to_line());
    h.job_status(
        EXTRACT,
        json!({
            "active": 0, "succeeded": 2, "failed": 2,
            "completedIndexes": "0,2", "failedIndexes": "1",
            "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]
        }),
    );
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Failed));
    let images = status.images.unwrap();
    assert_eq!(
        (images.processed, images.failed),
        (6, 4),
        "shard 0 counted once"
    );
    let (on, reason, message) = h.condition("Failed");
    assert_eq!((on.as_str(), reason.as_str()), ("True", "ShardsFailed"));
    assert!(message.contains("shard 1: AccessDenied"), "{message}");
    assert!(h.api.object(REDUCE).is_none());
    let warning = h
        .api
        .writes()
        .into_iter()
        .find(|c| c.path.starts_with(EVENTS))
        .unwrap();
    assert_eq!(warning.body.unwrap()["type"], "Warning");
}

#[tokio::test]
async fn a_failed_index_within_max_failed_shards_is_dead_lettered_by_reduce() {
    let h = Harness::new(|fx| fx.spec.sharding.max_failed_shards = 1);
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["maxFailedIndexes"], 1);
    h.extracted(0, 0, 4, 0);
    h.pod(EXTRACT, 1, 0, "Failed", 3, "");
    h.extracted(2, 0, 2, 0);
    h.job_status(
        EXTRACT,
        json!({
            "active": 0, "succeeded": 2, "failed": 1,
            "completedIndexes": "0,2", "failedIndexes": "1",
            "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]
        }),
    );
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Reducing));
    assert!(
        status
            .message
            .unwrap()
            .contains("within spec.sharding.maxFailedShards")
    );
    let args = h.args(REDUCE);
    assert!(args.contains(&"--failed-shards=1".to_string()), "{args:?}");
}

#[tokio::test]
async fn suspend_pauses_and_resume_continues() {
    // Suspended from the start: nothing is listed or created.
    let mut h = Harness::new(|fx| fx.spec.suspend = true);
    h.s3.stop();
    assert_eq!(h.step().await, Action::await_change());
    assert_eq!(h.status().phase, Some(Phase::Suspended));
    assert_eq!(h.condition("Suspended").0, "True");
    assert!(h.api.object(EXTRACT).is_none());

    // Resumed: planned and started.
    h = Harness::new(|fx| fx.spec.suspend = true);
    h.step().await;
    h.api.edit(FX, json!({"spec": {"suspend": false}}));
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Extracting));
    assert_eq!(h.status().observed_generation, Some(2));
    assert_eq!(h.job(EXTRACT)["spec"]["suspend"], false);

    // Suspended mid-run: the Job is suspended (its own suspend), and resumed again.
    h.api.edit(FX, json!({"spec": {"suspend": true}}));
    h.api.clear_calls();
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["suspend"], true);
    assert_eq!(h.writes_to(EXTRACT).len(), 1);
    assert_eq!(h.status().phase, Some(Phase::Suspended));
    assert_eq!(h.condition("Progressing").0, "False");
    assert!(h.event_reasons().contains(&"Suspended".to_string()));

    h.api.edit(FX, json!({"spec": {"suspend": false}}));
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["suspend"], false);
    assert_eq!(h.status().phase, Some(Phase::Extracting));
    assert_eq!(h.condition("Suspended").0, "False");
    assert_eq!(h.api.paths("/apis/batch/v1/").len(), 1);
}

#[tokio::test]
async fn parallelism_follows_the_spec() {
    let h = Harness::new(|_| {});
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["parallelism"], 3);
    h.api
        .edit(FX, json!({"spec": {"sharding": {"parallelism": 1}}}));
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["parallelism"], 1);
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let h = Harness::new(|_| {});
    h.step().await;
    let owner = &h.job(EXTRACT)["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "FeatureExtraction");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    // The TTL is the run's, not each Job's (see the whole-run scenario).
    assert!(h.job(EXTRACT)["spec"]["ttlSecondsAfterFinished"].is_null());

    // Deleted with a finalizer (a foreground deletion's, say): the resource stays, with a
    // deletionTimestamp, until the garbage collector has removed its Jobs.
    h.api.edit(
        FX,
        json!({"metadata": {"finalizers": ["foregroundDeletion"]}}),
    );
    h.api.remove(FX);
    assert!(h.fx().metadata.deletion_timestamp.is_some());
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());
}

#[tokio::test]
async fn a_region_outside_the_allowed_list_is_refused() {
    let h = Harness::new(|fx| fx.spec.storage.region = "us-east-1".into());
    assert_eq!(h.step().await, Action::await_change());
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Failed));
    let (on, reason, message) = h.condition("Failed");
    assert_eq!((on.as_str(), reason.as_str()), ("True", "RegionNotAllowed"));
    assert!(
        message.contains("us-east-1") && message.contains("eu-west-3"),
        "{message}"
    );
    assert!(h.api.object(EXTRACT).is_none());
    assert!(
        !h.s3_file("runs/fruits-360/manifests/plan.json").exists(),
        "nothing listed"
    );
    assert_eq!(h.event_reasons(), ["Failed"]);
}

#[tokio::test]
async fn an_empty_source_fails_the_run() {
    let h = Harness::new(|fx| fx.spec.source.uri = "s3://fruits/images/Nothing/".into());
    assert_eq!(h.step().await, Action::await_change());
    assert_eq!(h.status().phase, Some(Phase::Failed));
    let (_, reason, message) = h.condition("Failed");
    assert_eq!(reason, "EmptySource");
    assert!(message.contains("no images to process"), "{message}");
}

#[tokio::test]
async fn an_output_holding_another_runs_plan_is_refused() {
    let h = Harness::new(|_| {});
    h.step().await;
    // A second resource writes to the same output prefix, from another source.
    let other_path = "/apis/pomona.dev/v1alpha1/namespaces/fruits/featureextractions/other";
    let mut other = h.fx();
    other.metadata.name = Some("other".into());
    other.metadata.uid = None;
    other.status = None;
    other.spec.source.uri = "s3://fruits/images/".into();
    h.api.put(other_path, serde_json::to_value(&other).unwrap());
    let stored = || -> FeatureExtraction {
        serde_json::from_value(h.api.object(other_path).unwrap()).unwrap()
    };
    assert_eq!(
        reconcile(Arc::new(stored()), h.ctx.clone()).await.unwrap(),
        Action::await_change()
    );
    let status = stored().status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    let message = status.message.unwrap();
    assert!(
        message.contains("choose another spec.output.uri"),
        "{message}"
    );
    assert!(
        h.api
            .object("/apis/batch/v1/namespaces/fruits/jobs/other-extract")
            .is_none()
    );
}

#[tokio::test]
async fn storage_errors_are_retried_with_backoff_and_shown() {
    let h = Harness::new(|_| {});
    h.api.edit(
        SECRET,
        json!({"data": {"AWS_SECRET_ACCESS_KEY": "d3Jvbmc="}}), // "wrong"
    );
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Plan(_)), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "no secret in errors: {err}"
    );
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Planning));
    let message = status.message.unwrap();
    assert!(message.contains("planning will be retried"), "{message}");
    assert!(message.contains("fruits"), "names the bucket: {message}");
    assert!(h.event_reasons().contains(&"PlanningRetrying".to_string()));
    let fx = Arc::new(h.fx());
    let delays: Vec<Action> = (0..3)
        .map(|_| error_policy(fx.clone(), &err, h.ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    let text = h.ctx.metrics.render([]);
    assert!(
        text.contains("pomona_reconcile_errors_total{category=\"Storage\"} 1"),
        "{text}"
    );

    // A missing Secret is reported as such.
    h.api.remove(SECRET);
    let err = h.reconcile().await.unwrap_err();
    assert!(err.to_string().contains("was not found"), "{err}");

    // Fixed: the run is planned, and the backoff starts over.
    h.api.put(
        SECRET,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "fruits-s3", "namespace": NS},
               "stringData": {}, "data": {
                   "AWS_ACCESS_KEY_ID": b64(ACCESS_KEY), "AWS_SECRET_ACCESS_KEY": b64(SECRET_KEY)}}),
    );
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Extracting));
    assert_eq!(
        error_policy(fx, &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_run_refused_before_planning_starts_once_its_cause_is_fixed() {
    // No runner image anywhere: refused, nothing listed.
    let mut h = Harness::new(|fx| fx.spec.runner.image = None);
    h.restart_with(Settings {
        runner_image: String::new(),
        ..Settings::default()
    });
    assert_eq!(h.step().await, Action::await_change());
    assert_eq!(h.status().phase, Some(Phase::Failed));
    assert_eq!(h.condition("Failed").1, "NoRunnerImage");
    assert!(h.api.object(EXTRACT).is_none());

    // The user names an image: the run is planned and starts.
    h.api.edit(
        FX,
        json!({"spec": {"runner": {"image": "registry.example/pomona:1"}}}),
    );
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Extracting));
    assert_eq!(h.condition("Failed").0, "False");
    assert_eq!(
        h.job(EXTRACT)["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/pomona:1"
    );
    assert!(
        h.event_reasons()
            .ends_with(&["JobCreated".into(), "Extracting".into()])
    );
}

#[tokio::test]
async fn an_empty_source_is_listed_again_after_a_change() {
    let h = Harness::new(|fx| fx.spec.source.uri = "s3://fruits/images/Later/".into());
    h.step().await;
    assert_eq!(h.condition("Failed").1, "EmptySource");
    let dir = h.s3_file("images/Later/Kiwi 1");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..5 {
        std::fs::write(dir.join(format!("{i}.jpg")), b"uploaded later").unwrap();
    }
    h.api
        .edit(FX, json!({"spec": {"sharding": {"parallelism": 2}}}));
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Extracting));
    assert_eq!(status.images.unwrap().total, 5);
    assert_eq!(status.shards.unwrap().total, 2);
}
