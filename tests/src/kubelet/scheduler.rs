//! The local cluster has one node and no kube-scheduler: this binds each pending pod of the
//! default scheduler to the node when it fits (node selector, required node affinity, taints,
//! and the CPU, memory and pod count left), as the scheduler's filters would, or marks it
//! `PodScheduled=False` / `Unschedulable` with the reason and tries again later. It acts under
//! the scheduler's own identity (`system:kube-scheduler`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Node, NodeSelectorRequirement, ObjectReference, Pod, PodCondition, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

use super::quantity;

/// What to do with one pending pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind it to the node: (namespace, name, uid).
    Bind(String, String, String),
    /// Leave it pending, saying why: (namespace, name, message).
    Unschedulable(String, String, String),
}

/// CPU millicores and memory bytes a pod requests.
fn requests(pod: &Pod) -> (u64, u64) {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.containers.iter().fold((0, 0), |(cpu, mem), c| {
        let r = c.resources.clone().unwrap_or_default();
        let list = r.requests.or(r.limits).unwrap_or_default();
        let get = |k: &str, parse: fn(&str) -> Option<u64>| {
            list.get(k).and_then(|q| parse(&q.0)).unwrap_or(0)
        };
        (
            cpu + get("cpu", quantity::millicores),
            mem + get("memory", quantity::units),
        )
    })
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether `tolerations` tolerate `taint`.
fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        key_ok && value_ok && effect_ok
    })
}

/// Whether node `labels` satisfy one node-selector requirement.
fn satisfies(labels: &BTreeMap<String, String>, r: &NodeSelectorRequirement) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Why `pod` cannot go on `node` by its labels and taints, if it cannot.
fn mismatch(pod: &Pod, node: &Node) -> Option<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .is_none_or(|required| {
            required.node_selector_terms.iter().any(|term| {
                term.match_expressions
                    .iter()
                    .flatten()
                    .all(|r| satisfies(&labels, r))
            })
        });
    if !selector_ok || !affinity_ok {
        return Some("1 node(s) didn't match Pod's node affinity/selector".into());
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    let node_spec = node.spec.clone().unwrap_or_default();
    let untolerated = node_spec.taints.iter().flatten().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&tolerations, t)
    });
    untolerated.map(|t| {
        format!(
            "1 node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.clone().unwrap_or_default()
        )
    })
}

/// Decides, in creation order, which pending pods fit on `node` given every pod in `pods`.
pub fn decide(node: &Node, pods: &[Arc<Pod>]) -> Vec<Decision> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    let get = |k: &str, parse: fn(&str) -> Option<u64>| {
        allocatable.get(k).and_then(|q| parse(&q.0)).unwrap_or(0)
    };
    let (cpu_cap, mem_cap, pods_cap) = (
        get("cpu", quantity::millicores),
        get("memory", quantity::units),
        get("pods", quantity::units),
    );
    let bound: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                && !terminal(p)
        })
        .collect();
    let (mut cpu, mut mem) = bound.iter().fold((0, 0), |(c, m), p| {
        let (pc, pm) = requests(p);
        (c + pc, m + pm)
    });
    let mut count = bound.len() as u64;
    let mut pending: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            let spec = p.spec.clone().unwrap_or_default();
            spec.node_name.is_none()
                && spec
                    .scheduler_name
                    .as_deref()
                    .is_none_or(|s| s == "default-scheduler")
                && p.metadata.deletion_timestamp.is_none()
                && !terminal(p)
        })
        .collect();
    pending.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    let mut decisions = Vec::new();
    for pod in pending {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let (pc, pm) = requests(pod);
        let mut reasons = Vec::new();
        if let Some(why) = mismatch(pod, node) {
            reasons.push(why);
        }
        if cpu + pc > cpu_cap {
            reasons.push("1 Insufficient cpu".into());
        }
        if mem + pm > mem_cap {
            reasons.push("1 Insufficient memory".into());
        }
        if count + 1 > pods_cap {
            reasons.push("1 Too many pods".into());
        }
        if reasons.is_empty() {
            cpu += pc;
            mem += pm;
            count += 1;
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            decisions.push(Decision::Bind(ns, pod_name, uid));
        } else {
            let message = format!("0/1 nodes are available: {}.", reasons.join(", "));
            decisions.push(Decision::Unschedulable(ns, pod_name, message));
        }
    }
    decisions
}

/// Runs the scheduling loop until the process ends: after any change of a pod, and every 2 s.
pub async fn run(client: Client, node_name: String) {
    let (store, writer) = reflector::store::<Pod>();
    let pods: Api<Pod> = Api::all(client.clone());
    let stream = reflector(writer, watcher(pods, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!("scheduler watch: {e}");
            }
            let _ = wake_tx.try_send(());
        }
    });
    if store.wait_until_ready().await.is_err() {
        tracing::error!("the scheduler's pod cache never filled");
        return;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let mut told: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(2), wake.recv()).await;
        let Ok(Some(node)) = nodes.get_opt(&node_name).await else {
            continue;
        };
        for decision in decide(&node, &store.state()) {
            match decision {
                Decision::Bind(ns, name, uid) => {
                    told.remove(&(ns.clone(), name.clone()));
                    bind(&client, &ns, &name, &uid, &node_name).await;
                }
                Decision::Unschedulable(ns, name, message) => {
                    let key = (ns.clone(), name.clone());
                    if told.get(&key) != Some(&message) {
                        unschedulable(&client, &ns, &name, &message).await;
                        told.insert(key, message);
                    }
                }
            }
        }
    }
}

async fn bind(client: &Client, ns: &str, name: &str, uid: &str, node: &str) {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api
        .create_subresource::<Binding, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => tracing::info!("bound pod {ns}/{name} to {node}"),
        Err(e) => tracing::debug!("bind {ns}/{name}: {e}"),
    }
}

async fn unschedulable(client: &Client, ns: &str, name: &str, message: &str) {
    let condition = PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.into()),
        last_transition_time: Some(Time(Timestamp::now())),
        ..PodCondition::default()
    };
    let patch = Patch::Strategic(json!({ "status": { "conditions": [condition] } }));
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &patch)
        .await
    {
        tracing::debug!("mark {ns}/{name} unschedulable: {e}");
    }
}
