//! What the cluster tests (`tests/tests/cluster.rs`) share: the cluster and its settings, a
//! namespace per test (deleted when the test ends, pass or fail), the S3 prefix holding the
//! test's model and images, FeatureExtraction resources over them, waiting, and the checks of
//! a finished run's status, Events, outputs and the operator's logs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use bytes::Bytes;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_crds::{FeatureExtraction, Phase};
use pomona_storage::{S3Config, StaticCredentials, Storage};
use serde_json::json;

use crate::e2e::{E2eSettings, KEEP_FAILED, process_env};

/// A cluster to run on, with the settings.
pub struct Cluster {
    /// A client of the cluster's API server.
    pub client: Client,
    /// The settings.
    pub settings: E2eSettings,
}

/// How long [`Run::assert_event`] waits for an Event to appear.
pub const EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The cluster and settings of a cluster test.
///
/// # Panics
/// When a setting is missing or the API server does not answer: a cluster test asked to run
/// (they are `#[ignore]`d otherwise) that cannot run fails, it never passes.
pub async fn cluster() -> Cluster {
    let settings = E2eSettings::from_env(&process_env()).unwrap_or_else(|e| panic!("{e}"));
    let client = connect()
        .await
        .unwrap_or_else(|e| panic!("no reachable Kubernetes API server: {e}"));
    Cluster { client, settings }
}

/// A client from `KUBECONFIG` (or the in-cluster config) whose API server answers.
pub async fn connect() -> Result<Client, String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no client configuration: {e}"))?;
    let version = tokio::time::timeout(Duration::from_secs(15), client.apiserver_version())
        .await
        .map_err(|_| "the API server did not answer within 15 s".to_string())?
        .map_err(|e| e.to_string())?;
    eprintln!("cluster: Kubernetes {}", version.git_version);
    Ok(client)
}

/// A name unique to this test run: `<base>-<base36 time>`.
pub fn unique(base: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    let mut n = (nanos / 1_000) as u64 ^ u64::from(std::process::id());
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    format!("{base}-{}", String::from_utf8(digits).expect("ASCII"))
}

/// A namespace of the test's own, deleted when dropped (also when the test panics: then its
/// FeatureExtractions and pods are printed first, and with `POMONA_E2E_KEEP_FAILED=1` it is
/// kept for the workflow to dump).
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    keep_failed: bool,
}

impl TestNamespace {
    /// Creates `pomona-e2e-<base>-<unique>`.
    pub async fn create(client: &Client, base: &str, keep_failed: bool) -> Self {
        let name = unique(&format!("pomona-e2e-{base}"));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_string(),
                    "pomona-e2e".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        eprintln!("namespace {name}");
        Self { name, keep_failed }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let keep = failed && self.keep_failed;
        let name = self.name.clone();
        // The test's runtime may be unwinding: clean up from a runtime and client of our own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            runtime.block_on(async {
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                if failed {
                    dump(&client, &name).await;
                }
                if keep {
                    eprintln!("keeping namespace {name} ({KEEP_FAILED}=1)");
                } else if let Err(e) = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                {
                    eprintln!("could not delete namespace {name}: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Prints what a failed test leaves behind: each FeatureExtraction's status and each pod's
/// state and termination message.
pub async fn dump(client: &Client, ns: &str) {
    let fxs: Api<FeatureExtraction> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = fxs.list(&ListParams::default()).await {
        for fx in list {
            let status = serde_json::to_string_pretty(&fx.status).unwrap_or_default();
            eprintln!(
                "featureextraction {}/{}: {status}",
                ns,
                fx.metadata.name.unwrap_or_default()
            );
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for pod in list {
            let name = pod.metadata.name.unwrap_or_default();
            let status = pod.status.unwrap_or_default();
            eprintln!("pod {ns}/{name}: {}", status.phase.unwrap_or_default());
            for cs in status.container_statuses.unwrap_or_default() {
                if let Some(t) = cs.state.and_then(|s| s.terminated) {
                    eprintln!(
                        "  {}: exit {} {} {}",
                        cs.name,
                        t.exit_code,
                        t.reason.unwrap_or_default(),
                        t.message.unwrap_or_default().trim()
                    );
                }
            }
        }
    }
}

/// Everything one test sets up: its namespace, the Secret, the model and images uploaded
/// under a unique prefix of the bucket.
pub struct Run {
    /// A client of the cluster.
    pub client: Client,
    /// The settings.
    pub settings: E2eSettings,
    /// The test's namespace.
    pub ns: TestNamespace,
    /// `s3://bucket/e2e/<namespace>/`.
    pub root: String,
    /// The images uploaded, by key relative to the source prefix.
    pub images: Vec<String>,
}

/// The credentials Secret each test makes in its namespace.
pub const SECRET: &str = "e2e-s3";

impl Run {
    /// Makes the namespace, the credentials Secret (and the runner service account when the
    /// settings name one), and uploads the model and `images` under a prefix of its own.
    pub async fn new(cluster: Cluster, base: &str, images: Vec<(String, Bytes)>) -> Self {
        let Cluster { client, settings } = cluster;
        let ns = TestNamespace::create(&client, base, settings.keep_failed).await;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.into()),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([
                ("AWS_ACCESS_KEY_ID".to_string(), settings.access_key.clone()),
                (
                    "AWS_SECRET_ACCESS_KEY".to_string(),
                    settings.secret_key.clone(),
                ),
            ])),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the credentials Secret");
        if let Some(name) = &settings.runner_service_account {
            let account: ServiceAccount = serde_json::from_value(json!({
                "metadata": { "name": name },
                "automountServiceAccountToken": false,
            }))
            .expect("a ServiceAccount");
            Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
                .create(&PostParams::default(), &account)
                .await
                .expect("create the runner ServiceAccount");
        }

        let root = format!("s3://{}/e2e/{}/", settings.bucket, ns.name);
        let bucket = storage(&settings, &root).await;
        let model = std::fs::read(&settings.model)
            .unwrap_or_else(|e| panic!("{}: {e}", settings.model.display()));
        bucket
            .put("model/model.onnx", Bytes::from(model))
            .await
            .expect("upload the model");
        let keys: Vec<String> = images.iter().map(|(k, _)| k.clone()).collect();
        let started = Instant::now();
        upload_all(&bucket, "images/", images).await;
        eprintln!(
            "uploaded the model and {} images under {root} in {:.1} s",
            keys.len(),
            started.elapsed().as_secs_f64()
        );
        Self {
            client,
            settings,
            ns,
            root,
            images: keys,
        }
    }

    /// `<root>run/`: where the run writes.
    pub fn output_uri(&self) -> String {
        format!("{}run/", self.root)
    }

    /// A FeatureExtraction over this run's images with the given sharding and runner settings.
    pub fn resource(&self, name: &str, sharding: serde_json::Value) -> FeatureExtraction {
        serde_json::from_value(json!({
            "apiVersion": "pomona.dev/v1alpha1",
            "kind": "FeatureExtraction",
            "metadata": { "name": name, "namespace": self.ns.name },
            "spec": {
                "storage": {
                    "region": self.settings.region,
                    "endpoint": self.settings.s3_cluster_endpoint,
                    "forcePathStyle": true,
                    "credentialsSecret": { "name": SECRET },
                },
                "source": { "uri": format!("{}images/", self.root), "label": "ParentDirectory" },
                "model": { "uri": format!("{}model/model.onnx", self.root) },
                "sharding": sharding,
                "pca": { "components": 8 },
                "output": { "uri": self.output_uri(), "csv": true },
                "runner": {
                    "batchSize": 8,
                    "resources": {
                        "requests": { "cpu": "250m", "memory": "512Mi" },
                        "limits": { "cpu": "1", "memory": "1Gi" },
                    },
                },
            },
        }))
        .expect("a valid FeatureExtraction")
    }

    /// Creates `fx` in the namespace.
    pub async fn apply(&self, fx: &FeatureExtraction) -> Api<FeatureExtraction> {
        let api: Api<FeatureExtraction> = Api::namespaced(self.client.clone(), &self.ns.name);
        api.create(&PostParams::default(), fx)
            .await
            .expect("create the FeatureExtraction");
        api
    }

    /// How long a run may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_secs)
    }

    /// Waits until the run's Complete or Failed condition is true, or the timeout.
    pub async fn wait_finished(
        &self,
        api: &Api<FeatureExtraction>,
        name: &str,
    ) -> FeatureExtraction {
        let deadline = Instant::now() + self.timeout();
        let mut last_phase = None;
        loop {
            let fx = api.get(name).await.expect("read the FeatureExtraction");
            let status = fx.status.clone().unwrap_or_default();
            if status.phase != last_phase {
                eprintln!("{name}: phase {:?}", status.phase);
                last_phase = status.phase;
            }
            let finished = status
                .conditions
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
            if finished {
                return fx;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not finish within {} s: {}",
                self.settings.timeout_secs,
                serde_json::to_string_pretty(&fx.status).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Storage at this run's output prefix.
    pub async fn output(&self) -> Storage {
        storage(&self.settings, &self.output_uri()).await
    }

    /// Waits until `check` holds for the resource `name` (or the timeout); returns it then.
    pub async fn wait_for(
        &self,
        api: &Api<FeatureExtraction>,
        name: &str,
        what: &str,
        check: impl Fn(&FeatureExtraction) -> bool,
    ) -> FeatureExtraction {
        let deadline = Instant::now() + self.timeout();
        loop {
            let fx = api.get(name).await.expect("read the FeatureExtraction");
            if check(&fx) {
                return fx;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what} did not happen within {} s: {}",
                self.settings.timeout_secs,
                serde_json::to_string_pretty(&fx.status).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The Events of the resource `name`: (type, reason, message), oldest first.
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        let selector = format!("involvedObject.kind=FeatureExtraction,involvedObject.name={name}");
        let mut events = api
            .list(&ListParams::default().fields(&selector))
            .await
            .expect("list the Events");
        events.items.sort_by_key(|e| {
            e.last_timestamp
                .clone()
                .or(e.first_timestamp.clone())
                .map(|t| t.0)
        });
        events
            .items
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Asserts that the resource `name` has an Event of `reason` whose message contains `part`,
    /// within [`EVENT_WAIT`]: the operator publishes a phase's Event just after writing the
    /// status that a test may have seen first.
    pub async fn assert_event(&self, name: &str, kind: &str, reason: &str, part: &str) {
        let deadline = std::time::Instant::now() + EVENT_WAIT;
        loop {
            let events = self.events(name).await;
            let found = events
                .iter()
                .any(|(t, r, m)| t == kind && r == reason && m.contains(part));
            if found {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: a {kind} Event {reason} saying {part:?} among {events:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The run's pods of `component` (`extract`, `reduce`).
    pub async fn pods(&self, name: &str, component: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let selector =
            format!("app.kubernetes.io/instance={name},app.kubernetes.io/component={component}");
        pods.list(&ListParams::default().labels(&selector))
            .await
            .expect("list the run's pods")
            .items
    }
}

/// Storage at `uri` on the test's S3 service.
pub async fn storage(settings: &E2eSettings, uri: &str) -> Storage {
    let config = S3Config {
        region: Some(settings.region.clone()),
        endpoint: Some(settings.s3_endpoint.clone()),
        force_path_style: Some(true),
        credentials: Some(StaticCredentials {
            access_key_id: settings.access_key.clone(),
            secret_access_key: settings.secret_key.clone(),
            session_token: None,
        }),
        ..S3Config::default()
    };
    Storage::open(uri, &config)
        .await
        .unwrap_or_else(|e| panic!("open {uri}: {e}"))
}

/// Uploads `files` under `prefix`, 16 at a time.
pub async fn upload_all(storage: &Storage, prefix: &str, files: Vec<(String, Bytes)>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (key, data) in files {
        while tasks.len() >= 16 {
            tasks.join_next().await.expect("a task").expect("upload");
        }
        let storage = storage.clone();
        let key = format!("{prefix}{key}");
        tasks.spawn(async move {
            storage
                .put(&key, data)
                .await
                .unwrap_or_else(|e| panic!("upload {key}: {e}"))
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("upload");
    }
}

/// Up to `per_variety` JPEGs of each of the first `varieties` folders of `dir` (sorted by
/// name), as `<Variety>/<file>` keys with their bytes.
pub fn pick_images(dir: &Path, varieties: usize, per_variety: usize) -> Vec<(String, Bytes)> {
    let sorted = |dir: &Path| -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a folder entry").path())
            .collect();
        entries.sort();
        entries
    };
    let mut picked = Vec::new();
    for variety in sorted(dir)
        .into_iter()
        .filter(|p| p.is_dir())
        .take(varieties)
    {
        let label = variety
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        let jpegs = sorted(&variety).into_iter().filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        });
        for file in jpegs.take(per_variety) {
            let name = file
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .to_string();
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            picked.push((format!("{label}/{name}"), Bytes::from(data)));
        }
    }
    assert!(
        !picked.is_empty(),
        "no images under {} (expected <Variety>/*.jpg)",
        dir.display()
    );
    picked
}

/// Asserts that `fx` succeeded with every one of `images` accounted for, `bad` of them
/// dead-lettered, in `shards` shards, with a PCA of 8 components.
pub fn assert_succeeded(fx: &FeatureExtraction, images: usize, bad: usize, shards: u32) {
    assert_succeeded_with(fx, images, bad, shards, false);
}

/// [`assert_succeeded`], for a run whose PCA was fitted (`pca_reused` false) or reused.
pub fn assert_succeeded_with(
    fx: &FeatureExtraction,
    images: usize,
    bad: usize,
    shards: u32,
    pca_reused: bool,
) {
    let name = fx.metadata.name.as_deref().unwrap_or_default();
    let status = fx.status.clone().unwrap_or_default();
    let shown = serde_json::to_string_pretty(&status).unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{name}: {shown}");
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True"),
        "{name} has Complete=True: {shown}"
    );
    let counts = status.images.expect("status.images");
    assert_eq!(
        counts.total, images as u64,
        "{name}: images listed: {shown}"
    );
    assert_eq!(
        counts.processed + counts.failed,
        counts.total,
        "{name}: every image processed or dead-lettered: {shown}"
    );
    assert_eq!(counts.failed, bad as u64, "{name}: images failed: {shown}");
    let s = status.shards.expect("status.shards");
    assert_eq!(
        (s.total, s.succeeded, s.failed, s.active),
        (shards, shards, 0, 0),
        "{name}: shards (total, succeeded, failed, active): {shown}"
    );
    let pca = status.pca.expect("status.pca");
    assert_eq!(pca.components, 8, "{name}: {shown}");
    assert_eq!(pca.reused, pca_reused, "{name}: {shown}");
    assert!(
        pca.explained_variance > 0.0 && pca.explained_variance <= 1.0,
        "{name}: explained variance: {shown}"
    );
    let outputs = status.outputs.expect("status.outputs");
    for (what, uri) in [
        ("features", &outputs.features),
        ("deadLetter", &outputs.dead_letter),
        ("pcaModel", &outputs.pca_model),
        ("reduced", &outputs.reduced),
        ("report", &outputs.report),
    ] {
        assert!(
            uri.as_deref().is_some_and(|u| u.starts_with("s3://")),
            "{name}: status.outputs.{what}: {shown}"
        );
    }
}

/// Asserts the objects of a complete run under its output prefix; returns the paths in its
/// dead-letter files.
pub async fn assert_outputs(out: &Storage, shards: u32) -> Vec<String> {
    assert_outputs_of(out, shards, shards).await
}

/// Asserts the objects of a run of `shards` shards of which `complete` were extracted (the
/// others failed for good and were dead-lettered whole); returns the dead-lettered paths.
pub async fn assert_outputs_of(out: &Storage, shards: u32, complete: u32) -> Vec<String> {
    let keys: BTreeSet<String> = out
        .list("")
        .await
        .expect("list the output")
        .into_iter()
        .map(|o| o.key)
        .collect();
    let shown = keys.iter().cloned().collect::<Vec<_>>().join("\n");
    let count = |dir: &str, ext: &str| {
        keys.iter()
            .filter(|k| k.starts_with(dir) && k.ends_with(ext))
            .count()
    };
    assert!(keys.contains("_SUCCESS"), "_SUCCESS in:\n{shown}");
    assert_eq!(
        count("features/part-", ".parquet"),
        complete as usize,
        "{shown}"
    );
    assert_eq!(
        count("deadletter/part-", ".parquet"),
        shards as usize,
        "{shown}"
    );
    assert_eq!(
        count("reduced/part-", ".parquet"),
        complete as usize,
        "{shown}"
    );
    assert!(count("pca/", "") >= 1, "a fitted PCA in:\n{shown}");
    assert!(keys.contains("reduced.csv"), "reduced.csv in:\n{shown}");
    for file in [
        "report/explained_variance.png",
        "report/scatter.png",
        "report/summary.json",
    ] {
        assert!(keys.contains(file), "{file} in:\n{shown}");
    }
    let png = out
        .get("report/scatter.png")
        .await
        .expect("read the scatter");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "scatter.png is a PNG"
    );

    let mut dead = Vec::new();
    for key in keys.iter().filter(|k| k.starts_with("deadletter/")) {
        for batch in parquet_batches(out, key).await {
            let paths = paths_of(&batch, key);
            dead.extend((0..paths.len()).map(|i| paths.value(i).to_string()));
        }
    }
    dead
}

/// Every record batch of the Parquet object `key`.
async fn parquet_batches(out: &Storage, key: &str) -> Vec<RecordBatch> {
    let data = out.get(key).await.expect("read a Parquet object");
    ParquetRecordBatchReaderBuilder::try_new(data)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .map(|batch| batch.unwrap_or_else(|e| panic!("{key}: {e}")))
        .collect()
}

/// The `path` column of a batch of the Parquet object `key`.
fn paths_of<'a>(batch: &'a RecordBatch, key: &str) -> &'a StringArray {
    batch
        .column_by_name("path")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .unwrap_or_else(|| panic!("{key}: a string column `path`"))
}

/// Every feature row under a run's output, by image path: its vector's bits, so that rows can
/// be compared exactly.
pub async fn feature_rows(out: &Storage) -> BTreeMap<String, Vec<u32>> {
    let mut rows = BTreeMap::new();
    let listed = out.list("features/").await.expect("list the features");
    for key in listed.into_iter().map(|o| o.key) {
        for batch in parquet_batches(out, &key).await {
            let paths = paths_of(&batch, &key);
            let vectors = batch
                .column_by_name("features")
                .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
                .unwrap_or_else(|| panic!("{key}: a list column `features`"));
            for i in 0..paths.len() {
                let values = vectors.value(i);
                let values = values
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap_or_else(|| panic!("{key}: float features"));
                let bits = values.values().iter().map(|v| v.to_bits()).collect();
                rows.insert(paths.value(i).to_string(), bits);
            }
        }
    }
    rows
}

/// The number of shards of `images` images at `per_shard` a shard.
pub fn shards(images: usize, per_shard: usize) -> u32 {
    images.div_ceil(per_shard) as u32
}

/// Every line the operator's containers logged: from the local kubelet's log files when the
/// settings name them (it serves no logs), else from the API.
pub async fn operator_logs(client: &Client, settings: &E2eSettings) -> Vec<String> {
    if let Some(dir) = &settings.pod_logs {
        let mut lines = Vec::new();
        for pod in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let containers = pod.path().join("containers");
            for log in std::fs::read_dir(containers)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = log.file_name().to_string_lossy().to_string();
                if name.starts_with("operator-") && name.ends_with(".log") {
                    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                    lines.extend(text.lines().map(String::from));
                }
            }
        }
        return lines;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.operator_namespace);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=pomona"))
        .await
        .expect("list the operator pods");
    let mut lines = Vec::new();
    for pod in list {
        let name = pod.metadata.name.unwrap_or_default();
        // The restarted container's previous run too.
        for previous in [false, true] {
            let params = LogParams {
                previous,
                ..LogParams::default()
            };
            if let Ok(text) = pods.logs(&name, &params).await {
                lines.extend(text.lines().map(String::from));
            }
        }
    }
    lines
}

/// Asserts that the operator was never refused by the API server (403 Forbidden): its RBAC
/// covers every call it makes.
pub async fn assert_no_forbidden(client: &Client, settings: &E2eSettings) {
    let lines = operator_logs(client, settings).await;
    assert!(!lines.is_empty(), "no operator log was found");
    let forbidden: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden") || l.contains(" 403"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the operator was refused by the API server:\n{}",
        forbidden
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Asserts that the operator cannot touch a run's data: its service account may not read or
/// list Secrets in the run's namespace (asked of the API server's authorizer), and its
/// containers carry no storage credentials. Planning, extraction and reduce happen in the
/// run's pods under the run's identity.
pub async fn assert_operator_holds_no_data_access(
    client: &Client,
    settings: &E2eSettings,
    ns: &str,
) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let deployments: Api<Deployment> =
        Api::namespaced(client.clone(), &settings.operator_namespace);
    let list = deployments
        .list(&ListParams::default().labels("app.kubernetes.io/name=pomona"))
        .await
        .expect("list the operator's Deployment");
    let deployment = list.items.first().expect("the operator's Deployment");
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template");
    let account = pod
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    for container in &pod.containers {
        for var in container.env.iter().flatten() {
            assert!(
                !var.name.starts_with("AWS_"),
                "the operator's container {} has {}",
                container.name,
                var.name
            );
        }
    }
    let user = format!(
        "system:serviceaccount:{}:{account}",
        settings.operator_namespace
    );
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    for verb in ["get", "list", "watch"] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.into()),
                    verb: Some(verb.into()),
                    resource: Some("secrets".into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("ask the API server's authorizer");
        let allowed = answer.status.is_some_and(|s| s.allowed);
        assert!(!allowed, "{user} may {verb} Secrets in {ns}");
    }
}
