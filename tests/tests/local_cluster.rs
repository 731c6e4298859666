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
    let pid: i32 = std::fs::read_to_string(containers.join(format!("operator-{before}.pid")))
        .expect("the leader's pid file")
        .trim()
        .parse()
        .expect("a pid");
    let process = Pid::from_raw(pid).expect("a pid");
    kill_process(process, Signal::STOP).expect("pause the leader");
    eprintln!("paused the leader {leader} (pid {pid})");

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
    kill_process(process, Signal::CONT).expect("resume the old leader");
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
