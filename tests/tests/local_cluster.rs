//! Scenarios that need the local cluster itself (`scripts/local-cluster.sh`), whose pods are
//! processes of this machine: a test can pause one. `scripts/test.sh` runs them with the cluster
//! tests; on kind they do not apply (`POMONA_E2E_POD_LOGS` is the local node's pod folder).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use pomona_crds::{FeatureExtraction, Phase};
use pomona_tests::cluster::{
    Run, assert_no_forbidden, assert_succeeded, cluster, pick_images, shards,
};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::json;

/// The holder of the operator's Lease.
async fn holder(leases: &Api<Lease>) -> String {
    let list = leases
        .list(&Default::default())
        .await
        .expect("list the Leases");
    list.into_iter()
        .find(|l| {
            l.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("pomona"))
        })
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_default()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// A process paused (SIGSTOP) for as long as this lives; resumed (SIGCONT) when dropped, also
/// when the test fails, so that a failed test leaves no part of the cluster stopped.
struct Paused {
    process: Pid,
    what: &'static str,
}

impl Paused {
    fn pause(process: Pid, what: &'static str) -> Self {
        kill_process(process, Signal::STOP).unwrap_or_else(|e| panic!("pause {what}: {e}"));
        Self { process, what }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(e) = kill_process(self.process, Signal::CONT) {
            eprintln!("resume {}: {e}", self.what);
        }
    }
}

/// The pid written in `file`.
fn read_pid(file: &std::path::Path) -> Pid {
    let pid: i32 = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: not a pid: {e}", file.display()));
    Pid::from_raw(pid).expect("a pid above zero")
}

/// The operator's Deployment scaled to zero until [`Stopped::start`] scales it back.
struct Stopped {
    deployments: Api<k8s_openapi::api::apps::v1::Deployment>,
    name: String,
    replicas: i32,
}

impl Stopped {
    /// Scales the operator's Deployment in `namespace` to zero and waits for its pods to go.
    async fn stop(client: &kube::Client, namespace: &str) -> Self {
        use kube::api::ListParams;
        let selector = "app.kubernetes.io/name=pomona";
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), namespace);
        let deployment = deployments
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list the operator's Deployment")
            .items
            .into_iter()
            .next()
            .expect("the operator's Deployment");
        let stopped = Self {
            deployments,
            name: deployment.metadata.name.unwrap_or_default(),
            replicas: deployment.spec.and_then(|s| s.replicas).unwrap_or(1),
        };
        stopped.scale(0).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        eventually(Duration::from_secs(120), "no operator pod", || async {
            pods.list(&ListParams::default().labels(selector))
                .await
                .is_ok_and(|l| l.items.is_empty())
        })
        .await;
        stopped
    }

    /// Scales the Deployment back to its replicas.
    async fn start(self) {
        self.scale(self.replicas).await;
    }

    async fn scale(&self, replicas: i32) {
        use kube::api::{Patch, PatchParams};
        let patch = json!({ "spec": { "replicas": replicas } });
        self.deployments
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("scale {} to {replicas}: {e}", self.name));
    }
}

/// A label on the local node that one run's pods select (`spec.runner.nodeSelector`): while it
/// is off, the run's new pods stay unscheduled and its placed pods go on, and no other test's
/// pods are affected.
struct NodeGate {
    nodes: Api<k8s_openapi::api::core::v1::Node>,
    node: String,
    key: String,
}

impl NodeGate {
    /// Labels the (one) node with a gate named after `namespace`.
    async fn open(client: &kube::Client, namespace: &str) -> Self {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let node = nodes
            .list(&Default::default())
            .await
            .expect("list the nodes")
            .items
            .into_iter()
            .next()
            .and_then(|n| n.metadata.name)
            .expect("the local cluster's node");
        let gate = Self {
            nodes,
            node,
            key: format!("gate.e2e.pomona.dev/{namespace}"),
        };
        gate.set(Some("open")).await;
        gate
    }

    /// The node selector of the run's pods.
    fn selector(&self) -> std::collections::BTreeMap<String, String> {
        [(self.key.clone(), "open".to_string())].into()
    }

    async fn close(&self) {
        self.set(Some("closed")).await;
    }

    async fn reopen(&self) {
        self.set(Some("open")).await;
    }

    async fn remove(&self) {
        self.set(None).await;
    }

    async fn set(&self, value: Option<&str>) {
        use kube::api::{Patch, PatchParams};
        let patch = json!({ "metadata": { "labels": { &self.key: value } } });
        self.nodes
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("label the node {} with {}: {e}", self.node, self.key));
    }
}

/// Waits up to `limit` for `check`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    check: impl Fn() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The leading operator replica paused (SIGSTOP) past its Lease mid-run: the standby takes
/// the Lease and goes on with the run; resumed (SIGCONT), the old leader is past its renew
/// deadline, stops acting and exits (its container restarts as a standby); the run finishes
/// once, with its Job created once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "local cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn local_a_paused_leader_is_replaced_and_stops_acting_when_resumed() {
    let cluster = cluster().await;
    let pod_logs: PathBuf = cluster
        .settings
        .pod_logs
        .clone()
        .expect("POMONA_E2E_POD_LOGS: this test pauses a process of the local cluster's node");
    let images = pick_images(&cluster.settings.images, usize::MAX, usize::MAX);
    let run = Run::new(cluster, "paused", images).await;
    let n = run.images.len();
    let fx = run.resource("paused", json!({ "imagesPerShard": 50, "parallelism": 1 }));
    let api = run.apply(&fx).await;
    run.wait_for(&api, "paused", "extraction", |fx: &FeatureExtraction| {
        fx.status.as_ref().and_then(|s| s.phase) == Some(Phase::Extracting)
    })
    .await;

    let ns = run.settings.operator_namespace.clone();
    let leases: Api<Lease> = Api::namespaced(run.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &ns);
    let leader = holder(&leases).await;
    let pod = pods.get(&leader).await.expect("the leading operator pod");
    let before = restarts(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let containers = pod_logs.join(uid).join("containers");
    let paused = Paused::pause(operator_pid(&pod_logs, &pod), "the leader");
    eprintln!("paused the leader {leader}");

    eventually(
        Duration::from_secs(60),
        "the standby takes the Lease",
        || async {
            let now = holder(&leases).await;
            !now.is_empty() && now != leader
        },
    )
    .await;
    let standby = holder(&leases).await;
    drop(paused);
    eprintln!("{standby} took the Lease; resumed {leader}");

    eventually(
        Duration::from_secs(60),
        "the resumed leader exits",
        || async {
            pods.get(&leader)
                .await
                .map(|p| restarts(&p) > before)
                .unwrap_or(false)
        },
    )
    .await;
    let log = std::fs::read_to_string(containers.join(format!("operator-{before}.log")))
        .expect("the old leader's log");
    assert!(
        log.contains("lost leadership"),
        "the old leader says why it stopped:\n{log}"
    );
    assert_eq!(
        holder(&leases).await,
        standby,
        "the standby keeps the Lease"
    );

    let done = run.wait_finished(&api, "paused").await;
    assert_succeeded(&done, n, 0, shards(n, 50));
    let created = run
        .events("paused")
        .await
        .into_iter()
        .filter(|(_, reason, message)| {
            reason == "JobCreated" && message.starts_with("created Job paused-extract")
        })
        .count();
    assert_eq!(created, 1, "the extract Job was created once");
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// The pid of the operator container of `pod`, from the local kubelet's pid file.
fn operator_pid(pod_logs: &std::path::Path, pod: &Pod) -> Pid {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let file = pod_logs
        .join(uid)
        .join("containers")
        .join(format!("operator-{}.pid", restarts(pod)));
    read_pid(&file)
}

/// The reduce pod removed before any operator read its summary (no operator ran while the
/// reduce step ran): the run is not reported Succeeded without its final counts and PCA; the
/// operator runs the reduce Job again and reports them.
///
/// The order is forced, not raced: the run's pods may go only on a node labelled with this
/// run's gate; the label is taken off once the shards' pods are placed, so the reduce pod waits
/// unscheduled until the operator is stopped, and the label is put back.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "local cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn local_a_reduce_summary_lost_runs_the_reduce_step_again() {
    use k8s_openapi::api::batch::v1::Job;
    use kube::api::{DeleteParams, ListParams};

    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 2, 10);
    let run = Run::new(cluster, "lost", images).await;
    let n = run.images.len();
    let gate = NodeGate::open(&run.client, &run.ns.name).await;
    let mut fx = run.resource("lost", json!({ "imagesPerShard": 10, "parallelism": 2 }));
    fx.spec.runner.node_selector = gate.selector();
    let api = run.apply(&fx).await;

    // Every shard's pod placed: the gate closes, so the reduce pod the operator asks for next
    // stays unscheduled.
    let jobs: Api<Job> = Api::namespaced(run.client.clone(), &run.ns.name);
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &run.ns.name);
    let shard_count = shards(n, 10) as usize;
    let placed = |selector: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels(selector))
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                        .count()
                })
                .unwrap_or(0)
        }
    };
    eventually(
        Duration::from_secs(240),
        "every shard's pod placed",
        || async { placed("batch.kubernetes.io/job-name=lost-extract").await == shard_count },
    )
    .await;
    gate.close().await;
    let selector = "batch.kubernetes.io/job-name=lost-reduce";
    eventually(
        Duration::from_secs(240),
        "the reduce pod, unscheduled",
        || async {
            pods.list(&ListParams::default().labels(selector))
                .await
                .is_ok_and(|l| !l.items.is_empty())
        },
    )
    .await;
    assert_eq!(
        placed(selector).await,
        0,
        "the closed gate holds the reduce pod"
    );

    // No operator at all (its Deployment scaled to zero, every replica gone), then the gate
    // opened: the reduce step runs unobserved. Replicas merely paused would still receive the
    // pod's last status from their open watch when resumed; new ones list what is left.
    let operator = Stopped::stop(&run.client, &run.settings.operator_namespace).await;
    gate.reopen().await;

    // The reduce step ends; its pod is removed before anyone read it.
    eventually(
        Duration::from_secs(120),
        "the reduce Job completes",
        || async {
            jobs.get_opt("lost-reduce")
                .await
                .ok()
                .flatten()
                .and_then(|j| j.status)
                .is_some_and(|s| s.succeeded == Some(1))
        },
    )
    .await;
    for pod in pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list the reduce pods")
    {
        let name = pod.metadata.name.unwrap_or_default();
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .expect("delete the reduce pod");
    }
    eventually(
        Duration::from_secs(60),
        "the reduce pod is gone",
        || async {
            pods.list(&ListParams::default().labels(selector))
                .await
                .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    operator.start().await;

    let done = run.wait_finished(&api, "lost").await;
    gate.remove().await;
    // Succeeded, with the counts and the PCA the second reduce pod reported.
    assert_succeeded(&done, n, 0, shards(n, 10));
    let logs = pomona_tests::cluster::operator_logs(&run.client, &run.settings).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("reduce Job removed to run again")),
        "the operator ran the reduce step again"
    );
    assert_no_forbidden(&run.client, &run.settings).await;
}

/// A step that never ends (here a plan pod whose model file is a FIFO nobody writes: its read
/// blocks for ever, as one on a server that trickles its answer) is stopped at the pod's
/// deadline by the kubelet, and the run fails with `DeadlineExceeded` instead of hanging.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "local cluster test: scripts/local-cluster.sh up, then scripts/test.sh runs it"]
async fn local_a_step_that_never_ends_is_stopped_at_its_deadline() {
    let cluster = cluster().await;
    let images = pick_images(&cluster.settings.images, 1, 2);
    let run = Run::new(cluster, "stuck", images).await;
    // The pods of the local cluster see this machine's files.
    let fifo = std::env::temp_dir().join(format!("{}-model.onnx", run.ns.name));
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "0666"])
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let mut fx = run.resource(
        "stuck",
        json!({ "imagesPerShard": 10, "retriesPerShard": 0 }),
    );
    fx.spec.model.uri = format!("file://{}", fifo.display());
    fx.spec.runner.active_deadline_seconds = Some(60);
    let api = run.apply(&fx).await;
    let started = Instant::now();
    let failed = run.wait_finished(&api, "stuck").await;
    let waited = started.elapsed();
    std::fs::remove_file(&fifo).ok();
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("a Failed condition");
    assert_eq!(condition.reason, "DeadlineExceeded", "{status:?}");
    assert!(
        waited >= Duration::from_secs(55),
        "stopped at its deadline, not before: {waited:?}"
    );
    assert_no_forbidden(&run.client, &run.settings).await;
}
