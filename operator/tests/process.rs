//! The `pomona-operator run` process itself, against the in-memory API server served over HTTP
//! (through a kubeconfig, as on a cluster) and a real S3 server: it serves its endpoints, takes
//! the leader Lease, watches the resource and its Jobs and drives the run to Succeeded as the
//! test plays Kubernetes, then on SIGTERM finishes and releases the Lease.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::*;
use pomona_crds::Phase;
use serde_json::json;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/pomona-system/leases/pomona-operator";

/// The operator process, killed if the test ends early.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The operator's `/metrics` text.
fn metrics(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Waits up to 60 s for `what` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_process_runs_a_whole_run_and_hands_its_lease_back() {
    let h = Harness::new(|_| {});
    let addr = h.api.serve_http().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: nobody\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n    namespace: default\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_pomona-operator"))
            .args(["run", "--lease-namespace", "pomona-system"])
            .env("KUBECONFIG", &kubeconfig)
            .env("POMONA_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("POD_NAME", "pomona-operator-7d9f-abcde")
            .env("POMONA_LEASE_SECONDS", "6")
            // The chart's settings for the example resource: its runner service account and
            // its MinIO endpoint.
            .env("POMONA_RUNNER_SERVICE_ACCOUNT", "pomona-runner")
            .env("POMONA_ALLOWED_ENDPOINTS", "http://minio.minio.svc:9000")
            .env("POMONA_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pomona-operator"),
    );

    // It serves its endpoints, leads, starts the plan Job and, once its pod reported the plan,
    // the extract Job.
    eventually("/healthz", || {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    eventually("the plan Job", || h.api.object(PLAN).is_some()).await;
    h.planned();
    eventually("the extract Job", || h.api.object(EXTRACT).is_some()).await;
    let lease = h.api.object(LEASE).expect("the Lease");
    assert_eq!(
        lease["spec"]["holderIdentity"],
        "pomona-operator-7d9f-abcde"
    );
    eventually("status Extracting", || {
        h.api
            .object(FX)
            .is_some_and(|fx| fx["status"]["phase"] == "Extracting")
    })
    .await;
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    // The runs gauge counts from the watch cache, which sees the status a moment later.
    for line in ["pomona_leader 1", "pomona_runs{phase=\"Extracting\"} 1"] {
        eventually(line, || metrics(port).contains(line)).await;
    }

    // Kubernetes runs the shards: the Job's change wakes the operator, which starts reduce.
    for (index, images) in [(0, 4), (1, 4), (2, 2)] {
        h.extracted(index, 0, images, 0);
    }
    h.job_status(
        EXTRACT,
        complete(json!({"active": 0, "succeeded": 3, "completedIndexes": "0-2"})),
    );
    eventually("the reduce Job", || h.api.object(REDUCE).is_some()).await;

    let pca = pomona_crds::PcaResult {
        components: 5,
        explained_variance: 0.96,
        reused: false,
    };
    h.reduced(0, pca.clone());
    h.job_status(REDUCE, complete(json!({"succeeded": 1})));
    eventually("status Succeeded", || {
        h.api
            .object(FX)
            .is_some_and(|fx| fx["status"]["phase"] == "Succeeded")
    })
    .await;
    let status = h.status();
    assert_eq!(status.pca, Some(pca));
    assert_eq!(status.images.unwrap().processed, 10);
    for line in [
        "pomona_runs{phase=\"Succeeded\"} 1",
        "pomona_images_processed_total 10",
    ] {
        eventually(line, || metrics(port).contains(line)).await;
    }
    assert_eq!(h.api.paths("/apis/batch/v1/").len(), 3, "one Job of each");
    // The pods come from a watch cache: listed once when the watch starts, never per reconcile.
    let pod_lists: Vec<String> = h
        .api
        .calls()
        .into_iter()
        .filter(|c| c.method == http::Method::GET && c.path.ends_with("/pods"))
        .filter(|c| !c.query.contains("watch=true"))
        .map(|c| format!("{}?{}", c.path, c.query))
        .collect();
    assert!(
        pod_lists.len() <= 2 && pod_lists.iter().all(|l| l.starts_with("/api/v1/pods?")),
        "pods listed per reconcile: {pod_lists:?}"
    );
    let reasons = h.event_reasons();
    for reason in [
        "JobCreated",
        "Planning",
        "Extracting",
        "Reducing",
        "Succeeded",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }

    // SIGTERM: a clean exit that hands the Lease back.
    let pid = operator.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = operator.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(code.success(), "{code}");
    let lease = h.api.object(LEASE).unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    assert_eq!(h.status().phase, Some(Phase::Succeeded));
}
