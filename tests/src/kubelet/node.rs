//! The Node the local kubelet registers, and its heartbeat: a Lease in `kube-node-lease`
//! renewed every 10 s and the Ready condition refreshed every minute, which is what the node
//! lifecycle controller of kube-controller-manager watches.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// What the node offers.
#[derive(Clone, Debug)]
pub struct Capacity {
    /// Cores × 1000.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Pods at most.
    pub pods: u32,
}

impl Capacity {
    /// This machine's cores and memory (from `/proc/meminfo`), and 110 pods, a kubelet's default.
    pub fn of_this_machine() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as u64;
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Self {
            cpu_millis: cores * 1000,
            memory_bytes: memory_kib * 1024,
            pods: 110,
        }
    }

    fn quantities(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".into(), Quantity(format!("{}m", self.cpu_millis))),
            (
                "memory".into(),
                Quantity(format!("{}Ki", self.memory_bytes / 1024)),
            ),
            ("pods".into(), Quantity(self.pods.to_string())),
            ("ephemeral-storage".into(), Quantity("100Gi".into())),
        ])
    }
}

/// The Node object: its labels, address, capacity and a Ready status.
pub fn node(name: &str, ip: &str, capacity: &Capacity, version: &str, now: Timestamp) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(status(name, ip, capacity, version, now)),
    }
}

fn status(name: &str, ip: &str, capacity: &Capacity, version: &str, now: Timestamp) -> NodeStatus {
    let condition = |kind: &str, ok: bool, reason: &str, message: &str| NodeCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    NodeStatus {
        capacity: Some(capacity.quantities()),
        allocatable: Some(capacity.quantities()),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                true,
                "KubeletReady",
                "the local kubelet is posting ready status",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: String::new(),
            container_runtime_version: "pomona-local://processes".into(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            kube_proxy_version: String::new(),
            kubelet_version: version.into(),
            machine_id: String::new(),
            operating_system: "linux".into(),
            os_image: "pomona local kubelet".into(),
            system_uuid: String::new(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Registers the node (or takes over the one of an earlier run) and posts its status.
pub async fn register(client: &Client, desired: &Node) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let name = desired.metadata.name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_none() {
        api.create(&PostParams::default(), desired)
            .await
            .with_context(|| format!("register node {name}"))?;
    }
    post_status(client, desired).await
}

/// Posts the node's status (a merge of the desired one).
pub async fn post_status(client: &Client, desired: &Node) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let name = desired.metadata.name.clone().unwrap_or_default();
    let patch = Patch::Strategic(json!({ "status": desired.status }));
    api.patch_status(&name, &PatchParams::default(), &patch)
        .await
        .with_context(|| format!("post the status of node {name}"))
}

/// Renews the node's Lease every 10 s and posts its status every 60 s, until the process ends.
/// Each call has 5 s: a slow API server delays a beat, it never stops the heartbeat.
pub async fn heartbeat(
    client: Client,
    name: String,
    ip: String,
    capacity: Capacity,
    version: String,
) {
    const CALL: Duration = Duration::from_secs(5);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut node_uid = None;
    let mut beats: u64 = 0;
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        if node_uid.is_none()
            && let Ok(Ok(Some(node))) = tokio::time::timeout(CALL, nodes.get_opt(&name)).await
        {
            node_uid = node.metadata.uid;
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                owner_references: node_uid.clone().map(|uid| {
                    vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid,
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply("pomona-kubelet").force();
        match tokio::time::timeout(CALL, leases.patch(&name, &params, &Patch::Apply(&lease))).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("renew the node lease: {e}"),
            Err(_) => tracing::warn!("renew the node lease: no answer within {CALL:?}"),
        }
        if beats.is_multiple_of(6) && beats > 0 {
            let node = node(&name, &ip, &capacity, &version, now);
            match tokio::time::timeout(CALL, post_status(&client, &node)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("{e:#}"),
                Err(_) => tracing::warn!("post the node status: no answer within {CALL:?}"),
            }
        }
        beats += 1;
    }
}
