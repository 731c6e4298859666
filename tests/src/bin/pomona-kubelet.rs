//! `pomona-kubelet`: the node of the local cluster. See `pomona_tests::kubelet`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use pomona_tests::kubelet::images::Images;
use pomona_tests::kubelet::node::{self, Capacity};
use pomona_tests::kubelet::sandbox::Network;
use pomona_tests::kubelet::{Kubelet, run_pods, scheduler};

/// The node (kubelet, container runtime, scheduler) of the local cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Kubeconfig with the node's identity (user `system:node:<name>`, group `system:nodes`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Kubeconfig with the scheduler's identity (`system:kube-scheduler`).
    #[arg(long)]
    scheduler_kubeconfig: PathBuf,
    /// The node's name.
    #[arg(long, default_value = "pomona-local")]
    node_name: String,
    /// The image table (JSON; see `pomona_tests::kubelet::images`).
    #[arg(long)]
    images: PathBuf,
    /// The bridge pods join (it holds `<prefix>.0.1/16`).
    #[arg(long, default_value = "pomona0")]
    bridge: String,
    /// First two octets of the pod range.
    #[arg(long, default_value = "10.244")]
    pod_prefix: String,
    /// Where pods reach the API server, `host:port` (their `KUBERNETES_SERVICE_HOST` and `_PORT`).
    #[arg(long)]
    api_server: String,
    /// Folder for pods' volumes, `/dev` folders and logs.
    #[arg(long)]
    state_dir: PathBuf,
    /// The Kubernetes version the node reports.
    #[arg(long, default_value = "v1.34.4")]
    kubelet_version: String,
}

async fn client(path: &PathBuf) -> Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("read {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn prefix(s: &str) -> Result<[u8; 2]> {
    let mut parts = s.split('.').map(str::parse::<u8>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => Ok([a, b]),
        _ => anyhow::bail!("--pod-prefix {s:?}: expected two octets such as 10.244"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let images: Images = serde_json::from_slice(
        &std::fs::read(&args.images).with_context(|| format!("read {}", args.images.display()))?,
    )
    .with_context(|| format!("parse {}", args.images.display()))?;
    let network = Network {
        bridge: args.bridge.clone(),
        prefix: prefix(&args.pod_prefix)?,
    };
    // Nothing runs on the node yet: what an earlier, killed kubelet left goes.
    network.sweep().await;
    let (api_host, api_port) = args
        .api_server
        .rsplit_once(':')
        .context("--api-server host:port")?;
    let capacity = Capacity::of_this_machine();
    let node_client = client(&args.kubeconfig).await?;
    let scheduler_client = client(&args.scheduler_kubeconfig).await?;

    let desired = node::node(
        &args.node_name,
        &network.gateway(),
        &capacity,
        &args.kubelet_version,
        k8s_openapi::jiff::Timestamp::now(),
    );
    node::register(&node_client, &desired).await?;
    tracing::info!(
        "node {} registered: {} millicores, {} MiB",
        args.node_name,
        capacity.cpu_millis,
        capacity.memory_bytes >> 20
    );
    tokio::spawn(node::heartbeat(
        node_client.clone(),
        args.node_name.clone(),
        network.gateway(),
        capacity.clone(),
        args.kubelet_version.clone(),
    ));
    tokio::spawn(scheduler::run(scheduler_client, args.node_name.clone()));

    let kubelet = Arc::new(Kubelet::new(
        node_client,
        args.node_name.clone(),
        images,
        network,
        args.state_dir.clone(),
        api_host.to_string(),
        api_port.parse().context("--api-server port")?,
        &capacity,
    ));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: every pod's processes end with the node");
        let _ = stop_tx.send(true);
    });
    run_pods(kubelet, stop).await
}
