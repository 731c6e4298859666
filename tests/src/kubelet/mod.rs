//! `pomona-kubelet`: the node of the local cluster (`scripts/local-cluster.sh`). It stands in for
//! a node's kubelet and container runtime, and for the scheduler of a one-node cluster, and
//! behaves as they do seen from the API server:
//!
//! - registers one Node (Ready, this machine's cores and memory) and keeps its Lease renewed
//!   ([`node`]);
//! - binds pending pods to it when they fit ([`scheduler`]);
//! - runs each container as a local process in a network namespace of the pod's own, with its
//!   volumes, user, environment (downward API, Secrets, ConfigMaps) and termination-message
//!   file, the image mapped to a local binary by a table ([`images`], `container`,
//!   [`sandbox`]);
//! - reports the pod's status as a kubelet does (Pending → Running → Succeeded or Failed, with
//!   exit codes, reasons and termination messages), honours restart policies with back-off,
//!   readiness and liveness probes, `activeDeadlineSeconds`, and deletion: SIGTERM, then
//!   SIGKILL after the grace period ([`worker`], [`status`]).
//!
//! What it does not do: pull images, enforce CPU and memory limits (no cgroups), give
//! containers a root filesystem of their own (they see the host's, with their volumes mounted),
//! run init containers, exec probes, or serve logs and exec (`kubectl logs` does not work; each
//! container's output is in `<state>/pods/<uid>/containers/<name>-<restart>.log`, its process id
//! in `<name>-<restart>.pid` beside it). The folders a container's volumes are mounted on are
//! made, empty, on the host's filesystem (`/scratch`, say).

mod container;
pub mod env;
pub mod images;
pub mod node;
pub mod probe;
pub use pomona_crds::quantity;
pub mod sandbox;
pub mod scheduler;
pub mod status;
mod volumes;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use images::Images;
use sandbox::Network;

/// The node's settings and what its pods share.
pub struct Kubelet {
    /// A client with the node's identity (`system:node:<name>`).
    pub client: Client,
    /// The node's name.
    pub node: String,
    /// The image table.
    pub images: Images,
    /// The pod network.
    pub network: Network,
    /// Where pods' folders live.
    pub state_dir: PathBuf,
    /// Where pods reach the API server (`KUBERNETES_SERVICE_HOST`, `_PORT`).
    pub api_host: String,
    /// See `api_host`.
    pub api_port: u16,
    /// The node's CPU (millicores) and memory (bytes).
    pub cpu_millis: u64,
    /// See `cpu_millis`.
    pub memory_bytes: u64,
    /// Network slots in use, and the last one taken.
    slots: Mutex<(BTreeSet<u16>, u16)>,
}

impl Kubelet {
    /// A kubelet with no pod yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        node: String,
        images: Images,
        network: Network,
        state_dir: PathBuf,
        api_host: String,
        api_port: u16,
        capacity: &node::Capacity,
    ) -> Self {
        Self {
            client,
            node,
            images,
            network,
            state_dir,
            api_host,
            api_port,
            cpu_millis: capacity.cpu_millis,
            memory_bytes: capacity.memory_bytes,
            slots: Mutex::new((BTreeSet::new(), 0)),
        }
    }

    /// A free network slot: `preferred` when it is free (a pod keeps its address across a
    /// kubelet restart), else the next one after the last taken, so that an address just given
    /// up is not handed out again at once.
    pub fn take_slot(&self, preferred: Option<u16>) -> u16 {
        let mut slots = self.slots.lock().expect("the slot set");
        let (used, last) = &mut *slots;
        let next = (1..u16::MAX)
            .map(|i| (u32::from(*last) + u32::from(i)) % u32::from(u16::MAX))
            .map(|s| s as u16)
            .find(|s| *s != 0 && !used.contains(s));
        let slot = preferred
            .filter(|p| !used.contains(p))
            .or(next)
            .expect("a free slot");
        used.insert(slot);
        *last = slot;
        slot
    }

    /// Gives a slot back.
    pub fn free_slot(&self, slot: u16) {
        self.slots.lock().expect("the slot set").0.remove(&slot);
    }
}

/// Runs the pods bound to the node until `shutdown` turns true; then stops them all.
pub async fn run_pods(k: Arc<Kubelet>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let pods: Api<Pod> = Api::all(k.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", k.node));
    let stream = watcher(pods, config);
    futures::pin_mut!(stream);
    let mut workers: BTreeMap<String, watch::Sender<Option<Pod>>> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut tasks: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else { break };
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!("pod watch: {e}");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        listed.insert(uid.clone());
                        if done.contains(&uid) {
                            continue;
                        }
                        if let Some(tx) = workers.get(&uid) {
                            let _ = tx.send(Some(pod));
                            continue;
                        }
                        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                            done.insert(uid);
                            continue;
                        }
                        let (tx, rx) = watch::channel(Some(pod));
                        workers.insert(uid.clone(), tx);
                        let (k, shutdown) = (k.clone(), shutdown.clone());
                        tasks.spawn(async move {
                            worker::run(k, rx, shutdown).await;
                            uid
                        });
                    }
                    watcher::Event::Delete(pod) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(tx) = workers.remove(&uid) {
                            let _ = tx.send(None);
                        }
                        done.remove(&uid);
                    }
                    watcher::Event::InitDone => {
                        let gone: Vec<String> = workers.keys().filter(|u| !listed.contains(*u)).cloned().collect();
                        for uid in gone {
                            if let Some(tx) = workers.remove(&uid) {
                                let _ = tx.send(None);
                            }
                        }
                        done.retain(|u| listed.contains(u));
                    }
                }
            }
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => match ended {
                // A pod whose object is still there stays done until it goes.
                Ok(uid) => {
                    if workers.remove(&uid).is_some() {
                        done.insert(uid);
                    }
                }
                Err(e) => tracing::error!("a pod worker failed: {e}"),
            },
            _ = shutdown.changed() => break,
        }
    }
    // Every worker sees the shutdown and stops its processes.
    while tasks.join_next().await.is_some() {}
    Ok(())
}
