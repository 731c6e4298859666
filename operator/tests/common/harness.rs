//! A run's fixture for the operator tests: the in-memory API server holding the Fruits-360
//! resource (10 images in 3 shards of up to 4) and the moves of Kubernetes' own controllers and of
//! the runner pods (Job status, pods and their one-line summaries). The operator reads no
//! storage: the plan's totals come from the plan pod's summary, as on a cluster.

#![allow(dead_code)]

use std::sync::Arc;

use kube::Client;
use kube::runtime::controller::Action;
use pomona_crds::contract::{PlanTotals, PodSummary, Step};
use pomona_crds::{FeatureExtraction, FeatureExtractionStatus, PcaResult};
use pomona_operator::controller::{Context, Error, reconcile};
use pomona_operator::metrics::Metrics;
use pomona_operator::settings::{List, Settings};
use serde_json::{Value, json};

use super::fake_api::{Call, FakeApi};

pub const NS: &str = "fruits";
pub const FX: &str = "/apis/pomona.dev/v1alpha1/namespaces/fruits/featureextractions/fruits-360";
pub const PLAN: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-plan";
pub const EXTRACT: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-extract";
pub const MERGE: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-merge";
pub const FIT: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-fit";
pub const PROJECT: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-project";
pub const REDUCE: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-reduce";
pub const PODS: &str = "/api/v1/namespaces/fruits/pods";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/fruits/events";

/// The plan of the fixture's run: 10 images (2 varieties) in shards of 4.
pub const TOTALS: PlanTotals = PlanTotals {
    images: 10,
    bytes: 40_960,
    shards: 3,
    images_per_shard: 4,
};

/// A run of 10 images in shards of 4: 3 shards of 4, 4 and 2 images.
pub struct Harness {
    pub api: FakeApi,
    pub client: Client,
    pub ctx: Arc<Context>,
}

impl Harness {
    pub fn new(patch: impl FnOnce(&mut FeatureExtraction)) -> Self {
        let (api, client) = FakeApi::start();
        let mut fx: FeatureExtraction = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../crds/examples/fruits-360.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        fx.metadata.namespace = Some(NS.into());
        fx.spec.sharding.images_per_shard = 4;
        patch(&mut fx);
        api.put(FX, serde_json::to_value(&fx).unwrap());
        let ctx = Self::context(&client);
        Self { api, client, ctx }
    }

    /// The settings of the chart's release `pomona` that the example is written for: its
    /// runner service account, and the example's MinIO endpoint allowed.
    pub fn settings() -> Settings {
        Settings {
            runner_service_account: "pomona-runner".into(),
            allowed_endpoints: List(vec!["http://minio.minio.svc:9000".into()]),
            ..Settings::default()
        }
    }

    pub fn context(client: &Client) -> Arc<Context> {
        Self::context_with(client, Self::settings())
    }

    pub fn context_with(client: &Client, settings: Settings) -> Arc<Context> {
        Arc::new(Context::new(
            client.clone(),
            settings,
            Arc::new(Metrics::default()),
            Some("pomona-operator-0".into()),
        ))
    }

    /// A new operator process: a fresh context (Event cache, metrics, backoff counts).
    pub fn restart(&mut self) {
        self.ctx = Self::context(&self.client);
    }

    /// A new operator process with other settings.
    pub fn restart_with(&mut self, settings: Settings) {
        self.ctx = Self::context_with(&self.client, settings);
    }

    pub fn fx(&self) -> FeatureExtraction {
        serde_json::from_value(self.api.object(FX).expect("the resource exists")).unwrap()
    }

    pub async fn reconcile(&self) -> Result<Action, Error> {
        reconcile(Arc::new(self.fx()), self.ctx.clone()).await
    }

    /// Reconciles and expects success.
    pub async fn step(&self) -> Action {
        match self.reconcile().await {
            Ok(action) => action,
            Err(e) => panic!("reconcile failed: {e}"),
        }
    }

    pub fn status(&self) -> FeatureExtractionStatus {
        self.fx().status.expect("a status is written")
    }

    pub fn condition(&self, type_: &str) -> (String, String, String) {
        let status = self.status();
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    pub fn job(&self, path: &str) -> Value {
        self.api
            .object(path)
            .unwrap_or_else(|| panic!("{path} missing"))
    }

    pub fn args(&self, path: &str) -> Vec<String> {
        let job = self.job(path);
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .unwrap()
    }

    /// Plays the Job controller: sets the Job's status.
    pub fn job_status(&self, path: &str, status: Value) {
        self.api.edit(path, json!({ "status": status }));
    }

    /// Plays the kubelet: a pod of `job` (index `index`), finished in `phase` with `exit` and
    /// `message` as its termination message.
    pub fn pod(&self, job: &str, index: u32, attempt: u32, phase: &str, exit: i32, message: &str) {
        let job_name = job.rsplit('/').next().unwrap();
        let template = &self.job(job)["spec"]["template"]["metadata"]["labels"];
        let mut labels = template.clone();
        labels["batch.kubernetes.io/job-name"] = json!(job_name);
        let name = format!("{job_name}-{index}-{attempt}");
        self.api.put(
            &format!("{PODS}/{name}"),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": NS, "labels": labels,
                    "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()}
                },
                "status": {
                    "phase": phase,
                    "containerStatuses": [{
                        "name": "pomona", "image": "pomona", "imageID": "", "ready": false,
                        "restartCount": 0,
                        "state": {"terminated": {
                            "exitCode": exit, "message": message,
                            "reason": if exit == 0 { "Completed" } else { "Error" },
                            "finishedAt": format!("2026-11-25T10:{:02}:00Z", 10 + index + attempt)
                        }}
                    }]
                }
            }),
        );
    }

    /// Plays the plan pod, its kubelet and the Job controller: the plan is written, the pod
    /// reported `TOTALS` and the plan Job is complete.
    pub fn planned(&self) {
        self.planned_as(TOTALS);
    }

    /// [`Self::planned`], with these totals.
    pub fn planned_as(&self, totals: PlanTotals) {
        let summary = PodSummary {
            images: totals.images,
            plan: Some(totals),
            ..PodSummary::new(Step::Plan)
        };
        self.pod(PLAN, 0, 0, "Succeeded", 0, &summary.to_line());
        self.job_status(PLAN, complete(json!({"succeeded": 1})));
    }

    /// The start of every run: the plan Job is created, its pod reports the plan, and the
    /// extract Job is created.
    pub async fn start(&self) -> Action {
        self.step().await;
        self.planned();
        self.step().await
    }

    /// Plays the kubelet for a successful extract pod: shard `index`, attempt `attempt`, with
    /// `failed` of its `images` dead-lettered.
    pub fn extracted(&self, index: u32, attempt: u32, images: u64, failed: u64) {
        let summary = Self::extract_summary(index, images, failed);
        self.pod(EXTRACT, index, attempt, "Succeeded", 0, &summary);
    }

    pub fn extract_summary(shard: u32, images: u64, failed: u64) -> String {
        PodSummary {
            shard: Some(shard),
            images,
            processed: images - failed,
            failed,
            seconds: 2.5,
            peak_rss_mib: Some(420),
            ..PodSummary::new(Step::Extract)
        }
        .to_line()
    }

    /// Plays the kubelet for the reduce pod: it read back all 10 images, `failed` of them
    /// dead-lettered, and fitted `pca`.
    pub fn reduced(&self, failed: u64, pca: PcaResult) {
        let summary = PodSummary {
            images: 10,
            processed: 10 - failed,
            failed,
            seconds: 1.0,
            peak_rss_mib: Some(110),
            pca: Some(pca),
            label_agreement: Some(0.987),
            ..PodSummary::new(Step::Reduce)
        };
        self.pod(REDUCE, 0, 0, "Succeeded", 0, &summary.to_line());
    }

    pub fn writes_to(&self, path: &str) -> Vec<Call> {
        self.api
            .writes()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.api
            .writes()
            .into_iter()
            .filter(|c| c.path.starts_with(EVENTS))
            .filter_map(|c| c.body?["reason"].as_str().map(String::from))
            .collect()
    }

    /// Every request the operator made to a path under `prefix`, reads included.
    pub fn requests_under(&self, prefix: &str) -> Vec<Call> {
        self.api
            .calls()
            .into_iter()
            .filter(|c| c.path.starts_with(prefix))
            .collect()
    }
}

/// A complete Job's status (completed now), with `extra` merged over it.
pub fn complete(extra: Value) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut status = json!({
        "completionTime": now,
        "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]
    });
    super::fake_api::merge(&mut status, &extra);
    status
}
