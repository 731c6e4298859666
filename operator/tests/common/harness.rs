//! A run's fixture for the operator tests: a real S3 server (s3s-fs) holding 10 images, the
//! in-memory API server holding the Fruits-360 resource (3 shards of up to 4 images) and its
//! credentials Secret, and the moves of Kubernetes' own controllers (Job status, pods).

#![allow(dead_code)]

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::runtime::controller::Action;
use pomona_crds::contract::{PodSummary, Step};
use pomona_crds::{FeatureExtraction, FeatureExtractionStatus, PcaResult};
use pomona_operator::controller::{Context, Error, reconcile};
use pomona_operator::metrics::Metrics;
use pomona_operator::settings::Settings;
use pomona_storage::testing::{ACCESS_KEY, BUCKET, REGION, S3Server, SECRET_KEY};
use serde_json::{Value, json};

use super::fake_api::{Call, FakeApi};

pub const NS: &str = "fruits";
pub const FX: &str = "/apis/pomona.dev/v1alpha1/namespaces/fruits/featureextractions/fruits-360";
pub const EXTRACT: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-extract";
pub const REDUCE: &str = "/apis/batch/v1/namespaces/fruits/jobs/fruits-360-reduce";
pub const PODS: &str = "/api/v1/namespaces/fruits/pods";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/fruits/events";
pub const SECRET: &str = "/api/v1/namespaces/fruits/secrets/fruits-s3";

/// A run of 10 images (2 varieties) in shards of 4: 3 shards of 4, 4 and 2 images.
pub struct Harness {
    pub api: FakeApi,
    pub client: Client,
    pub s3: S3Server,
    pub ctx: Arc<Context>,
}

impl Harness {
    pub fn new(patch: impl FnOnce(&mut FeatureExtraction)) -> Self {
        let s3 = S3Server::start();
        for (variety, n) in [("Apple Red 1", 6), ("Banana 1", 4)] {
            let dir = s3.root().join(BUCKET).join("images/Training").join(variety);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                std::fs::write(
                    dir.join(format!("{i}_100.jpg")),
                    b"not decoded by the planner",
                )
                .unwrap();
            }
        }
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
        fx.spec.storage.endpoint = Some(s3.endpoint.clone());
        fx.spec.storage.region = REGION.into();
        fx.spec.sharding.images_per_shard = 4;
        patch(&mut fx);
        api.put(FX, serde_json::to_value(&fx).unwrap());
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("fruits-s3".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            data: Some(
                [
                    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
            ),
            ..Default::default()
        };
        api.put(SECRET, serde_json::to_value(&secret).unwrap());
        let ctx = Self::context(&client);
        Self {
            api,
            client,
            s3,
            ctx,
        }
    }

    pub fn context(client: &Client) -> Arc<Context> {
        Self::context_with(client, Settings::default())
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

    /// Plays the kubelet for a successful extract pod: shard `index`, attempt `attempt`, with
    /// `failed` of its `images` dead-lettered.
    pub fn extracted(&self, index: u32, attempt: u32, images: u64, failed: u64) {
        let summary = Self::extract_summary(index, images, failed);
        self.pod(EXTRACT, index, attempt, "Succeeded", 0, &summary);
    }

    pub fn extract_summary(shard: u32, images: u64, failed: u64) -> String {
        PodSummary {
            step: Step::Extract,
            shard: Some(shard),
            images,
            processed: images - failed,
            failed,
            seconds: 2.5,
            peak_rss_mib: Some(420),
            pca: None,
            label_agreement: None,
            error: None,
        }
        .to_line()
    }

    /// Plays the kubelet for the reduce pod: it read back all 10 images, `failed` of them
    /// dead-lettered, and fitted `pca`.
    pub fn reduced(&self, failed: u64, pca: PcaResult) {
        let summary = PodSummary {
            step: Step::Reduce,
            shard: None,
            images: 10,
            processed: 10 - failed,
            failed,
            seconds: 1.0,
            peak_rss_mib: Some(110),
            pca: Some(pca),
            label_agreement: Some(0.987),
            error: None,
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

    pub fn s3_file(&self, key: &str) -> std::path::PathBuf {
        self.s3.root().join(BUCKET).join(key)
    }
}

pub fn complete(extra: Value) -> Value {
    let mut status = json!({
        "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]
    });
    super::fake_api::merge(&mut status, &extra);
    status
}

/// A Secret value as the API carries it (base64).
pub fn b64(s: &str) -> Value {
    serde_json::to_value(ByteString(s.as_bytes().to_vec())).unwrap()
}
