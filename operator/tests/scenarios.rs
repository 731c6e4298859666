//! Scenario tests of the controller: whole runs reconciled against an in-memory API server
//! (kube's mocked service, `tower_test`), where the test plays Kubernetes' Job controller, the
//! kubelet and the runner pods by writing Job status and pods with their summaries. The
//! operator never touches storage: the runner's side is tested in its own crate and on the
//! local cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::harness::*;
use http::Method;
use kube::runtime::controller::Action;
use pomona_crds::contract::PodSummary;
use pomona_crds::contract::Step;
use pomona_crds::{FeatureExtraction, PcaResult, Phase};
use pomona_operator::controller::{Error, RECONCILE_TIMEOUT, error_policy};
use pomona_operator::settings::{List, Settings};
use serde_json::json;

#[tokio::test]
async fn a_whole_run_goes_from_plan_to_succeeded() {
    let h = Harness::new(|_| {});

    // 1. The plan Job: one pod of `pomona plan` under the run's service account, with the
    // run's uid for the plan's identity.
    assert_eq!(h.step().await, Action::requeue(Duration::from_secs(300)));
    assert_eq!(h.status().phase, Some(Phase::Planning));
    assert_eq!(h.condition("Planned").0, "False");
    let args = h.args(PLAN);
    assert_eq!(args[0], "plan");
    let uid = h.fx().metadata.uid.unwrap();
    for arg in [
        "--input=s3://fruits/images/Training/".to_string(),
        "--output=s3://fruits/runs/fruits-360/".to_string(),
        "--images-per-shard=4".to_string(),
        format!("--run-uid={uid}"),
    ] {
        assert!(args.contains(&arg), "{arg} in {args:?}");
    }
    let pod = &h.job(PLAN)["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "pomona-runner");
    assert_eq!(h.job(PLAN)["spec"]["completions"], 1);
    assert_eq!(h.event_reasons(), ["JobCreated", "Planning"]);
    assert!(
        h.api.object(EXTRACT).is_none(),
        "no extract Job before the plan"
    );

    // 2. The plan pod reports the plan: its totals are recorded and the extract Job created,
    // one Job apply and one status write.
    h.planned();
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::requeue(Duration::from_secs(300)));
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
    assert!(
        h.writes_to(PLAN).is_empty(),
        "a finished plan Job is left alone"
    );
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

    // 3. Nothing changed: nothing is written.
    h.api.clear_calls();
    h.step().await;
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());

    // 4. Two shards done, one running.
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

    // 5. The last shard ends with one bad image: the reduce Job starts.
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
    // No shard failed: the reduce pod's file of failed shards is empty.
    let list = h
        .api
        .object("/api/v1/namespaces/fruits/configmaps/fruits-360-reduce-failed-shards")
        .expect("the ConfigMap of failed shards");
    assert_eq!(list["data"]["shards"], "");
    assert_eq!(
        h.writes_to(EXTRACT).len(),
        0,
        "a finished Job is left alone"
    );
    assert_eq!(h.event_reasons(), ["JobCreated", "Reducing"]);

    // 6. The reduce pod reports its PCA: Succeeded, with outputs.
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

    // 7. The TTL is the run's: until it has passed, the finished run's Jobs stay and the
    // operator looks again when it will have; then it removes its three Jobs (their pods go
    // with them), the status stays, and nothing is ever recreated.
    h.api.clear_calls();
    assert!(matches!(h.step().await, a if a != Action::await_change()));
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());
    h.api
        .edit(FX, json!({"spec": {"ttlSecondsAfterFinished": 0}}));
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    for job in [PLAN, EXTRACT, REDUCE] {
        assert!(h.api.object(job).is_none(), "{job} removed");
    }
    assert_eq!(h.event_reasons(), ["JobsRemoved"]);
    assert_eq!(h.status().phase, Some(Phase::Succeeded));
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());

    // The operator read no Secret and no storage over the whole run.
    assert!(
        h.requests_under("/api/v1/namespaces/fruits/secrets")
            .is_empty()
    );

    // The metrics saw the images.
    let text = h.ctx.metrics.render([Some(Phase::Succeeded)]);
    assert!(text.contains("pomona_images_processed_total 9"), "{text}");
    assert!(text.contains("pomona_images_failed_total 1"), "{text}");
}

#[tokio::test]
async fn a_restart_mid_run_neither_plans_again_nor_duplicates_the_job() {
    let mut h = Harness::new(|_| {});
    h.step().await;
    h.planned();
    // The status write that records the plan is lost: the extract Job exists, the status
    // does not say the run is planned.
    h.api.fail_next(Method::PATCH, &format!("{FX}/status"), 500);
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Api(_)), "{err}");
    assert_eq!(h.writes_to(EXTRACT).len(), 1);

    // The next reconcile reads the plan pod's summary again: the same totals, the same Job.
    h.api.clear_calls();
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Extracting));
    assert_eq!(h.status().images.unwrap().total, 10);
    assert!(h.writes_to(EXTRACT).is_empty(), "no second Job apply");
    assert!(h.writes_to(PLAN).is_empty(), "the plan Job is not rerun");

    // The operator restarts and the plan pod is garbage-collected: the run goes on from its
    // status alone.
    h.api.remove(&format!("{PODS}/fruits-360-plan-0-0"));
    h.restart();
    h.api.clear_calls();
    h.extracted(0, 0, 4, 0);
    h.job_status(
        EXTRACT,
        json!({"active": 2, "succeeded": 1, "completedIndexes": "0"}),
    );
    h.step().await;
    assert_eq!(
        h.api.paths("/apis/batch/v1/").len(),
        2,
        "the plan and extract Jobs"
    );
    let status = h.status();
    assert_eq!(status.shards.unwrap().succeeded, 1);
    assert_eq!(status.images.unwrap().processed, 4);
    let writes: Vec<String> = h.api.writes().into_iter().map(|c| c.path).collect();
    assert_eq!(writes, [format!("{FX}/status")], "only the status changed");
}

#[tokio::test]
async fn a_plan_pod_gone_before_its_summary_was_read_is_run_again() {
    let h = Harness::new(|_| {});
    h.step().await;
    // The plan Job just completed and its pod's summary is not in sight: the operator waits a
    // moment (a watch cache may show the Job's completion before the pod's last change)...
    h.job_status(PLAN, complete(json!({"succeeded": 1})));
    h.api.clear_calls();
    let action = h.step().await;
    assert!(h.api.object(PLAN).is_some(), "not rerun at once");
    assert_ne!(
        action,
        Action::requeue(Duration::from_secs(300)),
        "looked at again soon"
    );
    // ...and once the grace has passed, the summary counts as lost: the plan Job runs again.
    h.job_status(PLAN, json!({"completionTime": "2026-01-01T00:00:00Z"}));
    h.step().await;
    assert!(h.api.object(PLAN).is_none(), "the plan Job is removed");
    assert_eq!(h.status().phase, Some(Phase::Planning));
    // Run again, the plan pod finds its own plan and reports it.
    h.step().await;
    assert!(h.api.object(PLAN).is_some(), "and created again");
    h.planned();
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Extracting));
    assert_eq!(h.job(EXTRACT)["spec"]["completions"], 3);
}

#[tokio::test]
async fn a_failed_plan_attempt_is_retried_by_the_job_and_a_failed_plan_fails_the_run() {
    let h = Harness::new(|_| {});
    h.step().await;
    // A first attempt fails on a transient error: the Job retries, the status says why.
    let unavailable = PodSummary {
        error: Some("s3:ListObjectsV2 on bucket \"fruits\" failed: connection refused".into()),
        reason: Some("StorageUnavailable".into()),
        ..PodSummary::new(Step::Plan)
    };
    h.pod(PLAN, 0, 0, "Failed", 1, &unavailable.to_line());
    h.job_status(PLAN, json!({"active": 1, "failed": 1}));
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Planning));
    let message = status.message.unwrap();
    assert!(message.contains("planning will be retried"), "{message}");
    assert!(message.contains("connection refused"), "{message}");
    assert!(h.event_reasons().contains(&"PlanningRetrying".to_string()));

    // Then the bucket refuses the runner's identity: the Job fails at once (permanent exit
    // code), and the run fails with the pod's reason.
    let denied = PodSummary {
        error: Some(
            "access denied: s3:ListObjectsV2 on bucket \"fruits\" (region eu-west-3)".into(),
        ),
        reason: Some("AccessDenied".into()),
        ..PodSummary::new(Step::Plan)
    };
    h.pod(PLAN, 0, 1, "Failed", 3, &denied.to_line());
    h.job_status(
        PLAN,
        json!({"failed": 2, "conditions": [
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}),
    );
    h.api.clear_calls();
    assert_eq!(h.step().await, Action::await_change());
    assert_eq!(h.status().phase, Some(Phase::Failed));
    let (on, reason, message) = h.condition("Failed");
    assert_eq!((on.as_str(), reason.as_str()), ("True", "AccessDenied"));
    assert!(
        message.starts_with("planning failed: access denied"),
        "{message}"
    );
    assert!(h.api.object(EXTRACT).is_none());
    assert_eq!(h.event_reasons(), ["Failed"]);

    // Nothing changes until the resource does, not even when the failed plan Job goes away
    // (removed by hand, or with its namespace).
    h.api.clear_calls();
    h.step().await;
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());
    h.api.remove(PLAN);
    h.api.clear_calls();
    h.step().await;
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());
    assert!(h.api.object(PLAN).is_none(), "not planned again");
}

#[tokio::test]
async fn a_retried_index_counts_once_and_a_failed_index_fails_the_run() {
    let h = Harness::new(|_| {});
    h.start().await;
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
    h.start().await;
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
    // The failed index reaches the reduce pod in a file: the ConfigMap its Job mounts,
    // applied before it.
    let list = h
        .api
        .object("/api/v1/namespaces/fruits/configmaps/fruits-360-reduce-failed-shards")
        .expect("the ConfigMap of failed shards");
    assert_eq!(list["data"]["shards"], "1");
    assert_eq!(list["metadata"]["ownerReferences"][0]["name"], "fruits-360");
    let args = h.args(REDUCE);
    assert!(
        args.contains(&"--failed-shards-file=/etc/pomona/failed-shards/shards".to_string()),
        "{args:?}"
    );
    let volumes = &h.job(REDUCE)["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "fruits-360-reduce-failed-shards"),
        "{volumes}"
    );
}

/// Plays the extract pods and the Job controller: shards 0 and 2 done, shard 1 failed for good
/// within the tolerance of one.
async fn extracted_with_shard_1_failed(h: &Harness) {
    h.start().await;
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
}

#[tokio::test]
async fn a_run_of_many_shards_fits_then_projects_in_groups_then_reduces() {
    let h = Harness::new(|fx| {
        fx.spec.sharding.max_failed_shards = 1;
        fx.spec.sharding.shards_per_projection_pod = 2;
    });
    extracted_with_shard_1_failed(&h).await;

    // 1. The fit Job first, with the failed shard in the ConfigMap it mounts.
    h.api.clear_calls();
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Reducing));
    let args = h.args(FIT);
    assert_eq!(args[0], "reduce");
    for arg in [
        "--fit-only",
        "--variance-to-keep=0.95",
        "--failed-shards-file=/etc/pomona/failed-shards/shards",
    ] {
        assert!(args.contains(&arg.to_string()), "{arg} in {args:?}");
    }
    let list = h
        .api
        .object("/api/v1/namespaces/fruits/configmaps/fruits-360-reduce-failed-shards")
        .expect("the ConfigMap of failed shards");
    assert_eq!(list["data"]["shards"], "1");
    for later in [PROJECT, REDUCE] {
        assert!(h.api.object(later).is_none(), "{later} before the fit");
    }
    assert_eq!(h.event_reasons(), ["JobCreated", "Reducing"]);
    h.job_status(FIT, json!({"active": 1}));
    h.step().await;
    assert_eq!(h.condition("Progressing").1, "Fitting");
    h.api.clear_calls();
    h.step().await;
    assert!(h.api.writes().is_empty(), "{:?}", h.api.writes());

    // 2. The fit pod wrote the PCA: the projection Job, one index per group of two shards.
    let fit = PodSummary {
        images: 10,
        processed: 6,
        failed: 4,
        seconds: 1.0,
        pca: Some(PcaResult {
            components: 5,
            explained_variance: 0.95,
            reused: false,
        }),
        ..PodSummary::new(Step::Reduce)
    };
    h.pod(FIT, 0, 0, "Succeeded", 0, &fit.to_line());
    h.job_status(FIT, complete(json!({"succeeded": 1})));
    h.api.clear_calls();
    h.step().await;
    let job = h.job(PROJECT);
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 2);
    assert_eq!(job["spec"]["maxFailedIndexes"], 0);
    let created = h
        .api
        .writes()
        .into_iter()
        .find(|c| c.path.starts_with(EVENTS))
        .and_then(|c| c.body)
        .unwrap();
    assert_eq!(created["note"], "created Job fruits-360-project: 2 groups");
    assert_eq!(created["action"], "CreateProjectJob");
    assert_eq!(
        h.args(PROJECT),
        [
            "project",
            "--output=s3://fruits/runs/fruits-360/",
            "--shards-per-pod=2",
            "--path-style=true"
        ]
    );
    assert!(
        h.api.object(REDUCE).is_none(),
        "no reduce before the projection"
    );
    assert_eq!(h.writes_to(FIT).len(), 0, "a finished Job is left alone");
    assert_eq!(h.condition("Progressing").1, "Fitted");
    h.job_status(PROJECT, json!({"active": 2}));
    h.step().await;
    let status = h.status();
    assert!(
        status.pca.is_none(),
        "the run's PCA is the reduce pod's to report"
    );
    assert_eq!(
        status.message.as_deref(),
        Some("0 of 2 groups of shards projected through the PCA, 2 running")
    );

    // 3. Suspended while it projects, then resumed.
    h.job_status(PROJECT, json!({"active": 1, "completedIndexes": "0"}));
    h.step().await;
    assert_eq!(
        h.status().message.as_deref(),
        Some("1 of 2 groups of shards projected through the PCA, 1 running")
    );
    h.api.edit(FX, json!({"spec": {"suspend": true}}));
    h.step().await;
    assert_eq!(h.job(PROJECT)["spec"]["suspend"], true);
    assert_eq!(h.status().phase, Some(Phase::Suspended));
    h.api.edit(FX, json!({"spec": {"suspend": false}}));
    h.step().await;
    assert_eq!(h.job(PROJECT)["spec"]["suspend"], false);

    // 4. Every group projected: the reduce Job reads the fit pod's PCA and the reduced files.
    h.job_status(
        PROJECT,
        complete(json!({"succeeded": 2, "completedIndexes": "0-1"})),
    );
    h.step().await;
    let args = h.args(REDUCE);
    for arg in [
        "--after-projection",
        "--variance-to-keep=0.95",
        "--failed-shards-file=/etc/pomona/failed-shards/shards",
    ] {
        assert!(args.contains(&arg.to_string()), "{arg} in {args:?}");
    }
    assert_eq!(h.status().phase, Some(Phase::Reducing));

    // 5. The reduce pod reports: Succeeded; the TTL removes all five Jobs.
    let pca = PcaResult {
        components: 5,
        explained_variance: 0.95,
        reused: false,
    };
    h.reduced(4, pca.clone());
    h.job_status(REDUCE, complete(json!({"succeeded": 1})));
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.pca, Some(pca));
    h.api
        .edit(FX, json!({"spec": {"ttlSecondsAfterFinished": 0}}));
    h.step().await;
    for job in [PLAN, EXTRACT, FIT, PROJECT, REDUCE] {
        assert!(h.api.object(job).is_none(), "{job} removed");
    }
}

#[tokio::test]
async fn a_run_of_very_many_shards_merges_in_blocks_then_fits_projects_and_reduces() {
    let h = Harness::new(|fx| fx.spec.sharding.shards_per_merge_pod = 64);
    h.step().await;
    // 520 images in 130 shards of 4: three blocks of 64 shards to merge, three groups to
    // project.
    h.planned_as(pomona_crds::contract::PlanTotals {
        images: 520,
        bytes: 0,
        shards: 130,
        images_per_shard: 4,
    });
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["completions"], 130);
    h.job_status(
        EXTRACT,
        complete(json!({"succeeded": 130, "completedIndexes": "0-129"})),
    );
    h.step().await;

    // 1. The merge Job first, with the ConfigMap of failed shards before it.
    let job = h.job(MERGE);
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 3);
    assert_eq!(
        h.args(MERGE),
        [
            "merge",
            "--output=s3://fruits/runs/fruits-360/",
            "--shards-per-pod=64",
            "--path-style=true"
        ]
    );
    assert!(
        h.api
            .object("/api/v1/namespaces/fruits/configmaps/fruits-360-reduce-failed-shards")
            .is_some()
    );
    for later in [FIT, PROJECT, REDUCE] {
        assert!(h.api.object(later).is_none(), "{later} before the merge");
    }
    h.job_status(MERGE, json!({"active": 2, "completedIndexes": "1"}));
    h.step().await;
    assert_eq!(
        h.status().message.as_deref(),
        Some("1 of 3 blocks of statistics merged, 2 running")
    );

    // 2. Merged: the fit Job reads the blocks.
    h.job_status(
        MERGE,
        complete(json!({"succeeded": 3, "completedIndexes": "0-2"})),
    );
    h.step().await;
    let args = h.args(FIT);
    for arg in ["--fit-only", "--merged-blocks=64"] {
        assert!(args.contains(&arg.to_string()), "{arg} in {args:?}");
    }

    // 3. Then the projection Job and the reduce Job, as for a run of fewer shards.
    h.pod(FIT, 0, 0, "Succeeded", 0, "");
    h.job_status(FIT, complete(json!({"succeeded": 1})));
    h.step().await;
    assert_eq!(h.job(PROJECT)["spec"]["completions"], 3);
    h.job_status(
        PROJECT,
        complete(json!({"succeeded": 3, "completedIndexes": "0-2"})),
    );
    h.step().await;
    let args = h.args(REDUCE);
    assert!(args.contains(&"--after-projection".to_string()), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--merged-blocks")),
        "{args:?}"
    );
    let pca = PcaResult {
        components: 5,
        explained_variance: 0.95,
        reused: false,
    };
    let summary = PodSummary {
        images: 520,
        processed: 520,
        pca: Some(pca.clone()),
        ..PodSummary::new(Step::Reduce)
    };
    h.pod(REDUCE, 0, 0, "Succeeded", 0, &summary.to_line());
    h.job_status(REDUCE, complete(json!({"succeeded": 1})));
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Succeeded));
    assert_eq!(h.status().pca, Some(pca));
    h.api
        .edit(FX, json!({"spec": {"ttlSecondsAfterFinished": 0}}));
    h.step().await;
    for job in [PLAN, EXTRACT, MERGE, FIT, PROJECT, REDUCE] {
        assert!(h.api.object(job).is_none(), "{job} removed");
    }
}

#[tokio::test]
async fn a_failed_projection_group_fails_the_run_with_its_shards() {
    let h = Harness::new(|fx| {
        fx.spec.sharding.max_failed_shards = 1;
        fx.spec.sharding.shards_per_projection_pod = 2;
    });
    extracted_with_shard_1_failed(&h).await;
    h.step().await;
    h.pod(FIT, 0, 0, "Succeeded", 0, "");
    h.job_status(FIT, complete(json!({"succeeded": 1})));
    h.step().await;
    let broke = PodSummary {
        error: Some("s3://fruits/runs/fruits-360/features/part-00002.parquet: truncated".into()),
        ..PodSummary::new(Step::Project)
    };
    h.pod(PROJECT, 1, 0, "Failed", 3, &broke.to_line());
    h.job_status(
        PROJECT,
        json!({
            "completedIndexes": "0", "failedIndexes": "1",
            "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]
        }),
    );
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(h.condition("Failed").1, "ReduceFailed");
    let message = status.message.unwrap();
    assert!(
        message.starts_with("reduce failed: projecting group 1 (shards 2 to 2): "),
        "{message}"
    );
    assert!(message.contains("truncated"), "{message}");
    assert!(
        h.api.object(REDUCE).is_none(),
        "no reduce after a failed projection"
    );
}

#[tokio::test]
async fn suspend_pauses_and_resume_continues() {
    // Suspended from the start: nothing is listed or created.
    let h = Harness::new(|fx| fx.spec.suspend = true);
    assert_eq!(h.step().await, Action::await_change());
    assert_eq!(h.status().phase, Some(Phase::Suspended));
    assert_eq!(h.condition("Suspended").0, "True");
    assert!(h.api.paths("/apis/batch/v1/").is_empty(), "no Job");

    // Resumed: planned and started.
    h.api.edit(FX, json!({"spec": {"suspend": false}}));
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Planning));
    assert_eq!(h.job(PLAN)["spec"]["suspend"], false);
    h.planned();
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
    assert_eq!(h.api.paths("/apis/batch/v1/").len(), 2);
}

#[tokio::test]
async fn suspending_while_planning_suspends_the_plan_job() {
    let h = Harness::new(|_| {});
    h.step().await;
    h.api.edit(FX, json!({"spec": {"suspend": true}}));
    h.step().await;
    assert_eq!(h.job(PLAN)["spec"]["suspend"], true);
    assert_eq!(h.status().phase, Some(Phase::Suspended));
    h.api.edit(FX, json!({"spec": {"suspend": false}}));
    h.step().await;
    assert_eq!(h.job(PLAN)["spec"]["suspend"], false);
    assert_eq!(h.status().phase, Some(Phase::Planning));
}

#[tokio::test]
async fn parallelism_follows_the_spec() {
    let h = Harness::new(|_| {});
    h.start().await;
    assert_eq!(h.job(EXTRACT)["spec"]["parallelism"], 3);
    h.api
        .edit(FX, json!({"spec": {"sharding": {"parallelism": 1}}}));
    h.step().await;
    assert_eq!(h.job(EXTRACT)["spec"]["parallelism"], 1);
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let h = Harness::new(|_| {});
    h.start().await;
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
    assert!(
        h.api.paths("/apis/batch/v1/").is_empty(),
        "no Job, nothing listed"
    );
    assert_eq!(h.event_reasons(), ["Failed"]);
}

#[tokio::test]
async fn images_service_accounts_and_endpoints_outside_the_policy_are_refused() {
    type Patch = fn(&mut FeatureExtraction);
    let cases: [(Patch, &str, &str); 3] = [
        (
            |fx| fx.spec.runner.image = Some("docker.io/someone/miner:latest".into()),
            "ImageNotAllowed",
            "config.runner.allowedImages",
        ),
        (
            |fx| fx.spec.runner.service_account_name = Some("default".into()),
            "ServiceAccountNotAllowed",
            "pomona-runner",
        ),
        (
            |fx| fx.spec.storage.endpoint = Some("https://s3.example.com".into()),
            "EndpointNotAllowed",
            "config.allowedEndpoints",
        ),
    ];
    for (patch, reason, hint) in cases {
        let h = Harness::new(patch);
        assert_eq!(h.step().await, Action::await_change());
        let (on, why, message) = h.condition("Failed");
        assert_eq!((on.as_str(), why.as_str()), ("True", reason));
        assert!(message.contains(hint), "{message}");
        assert!(
            h.api.paths("/apis/batch/v1/").is_empty(),
            "{reason}: no Job"
        );
    }
    // The admin's lists widen what is allowed.
    let h = Harness::new(|fx| {
        fx.spec.runner.image = Some("registry.example.com/pomona:2".into());
        fx.spec.runner.service_account_name = Some("fruits-runner".into());
    });
    let mut h = h;
    h.restart_with(Settings {
        allowed_images: List(vec!["registry.example.com/pomona:*".into()]),
        allowed_service_accounts: List(vec!["fruits-runner".into()]),
        ..Harness::settings()
    });
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Planning));
    let pod = &h.job(PLAN)["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fruits-runner");
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example.com/pomona:2"
    );
}

/// Plays a plan pod that failed for good with `reason` and `error`, and its Job.
fn plan_failed(h: &Harness, reason: &str, error: &str) {
    let summary = PodSummary {
        error: Some(error.into()),
        reason: Some(reason.into()),
        ..PodSummary::new(Step::Plan)
    };
    h.pod(PLAN, 0, 0, "Failed", 3, &summary.to_line());
    h.job_status(
        PLAN,
        json!({"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}),
    );
}

#[tokio::test]
async fn an_output_holding_another_runs_plan_is_refused() {
    let h = Harness::new(|_| {});
    h.step().await;
    // The runner found another run's plan under the output prefix.
    plan_failed(
        &h,
        "OutputInUse",
        "s3://fruits/runs/fruits-360/ holds the plan of another run (the FeatureExtraction with \
         uid 1234, source s3://fruits/images/), which differs from this one in run, source: \
         choose another output prefix, or remove that run's outputs first",
    );
    assert_eq!(h.step().await, Action::await_change());
    assert_eq!(h.status().phase, Some(Phase::Failed));
    let (_, reason, message) = h.condition("Failed");
    assert_eq!(reason, "OutputInUse");
    assert!(message.contains("uid 1234"), "{message}");
    assert!(h.api.object(EXTRACT).is_none());
}

#[tokio::test]
async fn api_errors_are_retried_with_backoff_and_shown() {
    let h = Harness::new(|_| {});
    h.api.fail_next(Method::PATCH, PLAN, 500);
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Api(_)), "{err}");
    let (on, reason, _) = h.condition("Progressing");
    assert_eq!(
        (on.as_str(), reason.as_str()),
        ("False", "KubernetesApiError")
    );
    assert!(
        h.event_reasons()
            .contains(&"KubernetesApiError".to_string())
    );
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
        text.contains("pomona_reconcile_errors_total{category=\"Api\"} 1"),
        "{text}"
    );
    // Fixed: the run goes on, and the backoff starts over.
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Planning));
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
        allowed_images: List(vec!["registry.example/pomona:*".into()]),
        ..Harness::settings()
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
    h.start().await;
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
    let h = Harness::new(|_| {});
    h.step().await;
    plan_failed(
        &h,
        "EmptySource",
        "no images to process under s3://fruits/images/Training/: 0 objects listed",
    );
    h.step().await;
    assert_eq!(h.condition("Failed").1, "EmptySource");
    // Nothing is tried again until the resource changes (images uploaded meanwhile are not
    // seen): then the plan Job runs again.
    h.step().await;
    assert!(h.api.object(PLAN).is_some());
    h.api
        .edit(FX, json!({"spec": {"sharding": {"parallelism": 2}}}));
    h.step().await;
    assert!(
        h.api.object(PLAN).is_none(),
        "the failed plan Job is removed"
    );
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Planning));
    h.planned();
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Extracting));
    assert_eq!(status.images.unwrap().total, 10);
    assert_eq!(status.shards.unwrap().total, 3);
}

#[tokio::test]
async fn a_run_never_succeeds_without_the_reduce_pod_s_counts_and_pca() {
    let h = Harness::new(|_| {});
    h.start().await;
    for (index, images) in [(0, 4), (1, 4), (2, 2)] {
        h.extracted(index, 0, images, 0);
    }
    h.job_status(
        EXTRACT,
        complete(json!({"active": 0, "succeeded": 3, "completedIndexes": "0-2"})),
    );
    h.step().await;
    assert!(h.api.object(REDUCE).is_some());
    // The reduce Job completed long ago, but its pod was removed before the operator read it.
    h.job_status(
        REDUCE,
        complete(json!({"succeeded": 1, "completionTime": "2026-01-01T00:00:00Z"})),
    );
    h.step().await;
    let status = h.status();
    assert_eq!(
        status.phase,
        Some(Phase::Reducing),
        "not Succeeded without a PCA"
    );
    assert_eq!(status.pca, None);
    assert!(h.api.object(REDUCE).is_none(), "the reduce Job runs again");
    h.step().await;
    assert!(h.api.object(REDUCE).is_some());
    let pca = PcaResult {
        components: 7,
        explained_variance: 0.95,
        reused: false,
    };
    h.reduced(0, pca.clone());
    h.job_status(REDUCE, complete(json!({"succeeded": 1})));
    h.step().await;
    let status = h.status();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.pca, Some(pca));
    assert_eq!(status.images.unwrap().processed, 10);
}

#[tokio::test(start_paused = true)]
async fn an_api_server_that_never_answers_cannot_hold_a_reconcile() {
    let h = Harness::new(|_| {});
    h.api.hang_next(Method::GET, PLAN);
    let started = tokio::time::Instant::now();
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err}");
    assert_eq!(started.elapsed(), RECONCILE_TIMEOUT);
    // Retried with backoff like any other error; the next reconcile gets through.
    h.step().await;
    assert_eq!(h.status().phase, Some(Phase::Planning));
}
