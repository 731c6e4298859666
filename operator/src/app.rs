//! `pomona-operator run`: the operator process. It serves its HTTP endpoints at once, waits to
//! lead (when leader election is on), then runs the controller until it is told to stop or
//! loses the Lease.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use pomona_crds::FeatureExtraction;

use crate::controller::{Context, error_policy, reconcile};
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::names::{MANAGED_BY_SELECTOR, RUN_NAME_ANNOTATION};
use crate::serve::{Health, serve};
use crate::settings::Settings;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// How the operator process runs (beyond the [`Settings`] of what it builds).
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "POMONA_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace (empty: every namespace).
    #[arg(long, env = "POMONA_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Elect a leader among the replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "POMONA_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "POMONA_LEASE_NAME", default_value = "pomona-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace, `POD_NAMESPACE`, else the
    /// client's default namespace).
    #[arg(long, env = "POMONA_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease lasts without renewal, in seconds.
    #[arg(long, env = "POMONA_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// This replica's identity in the Lease and in Events (default: `POD_NAME`, else the host
    /// name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log filter (tracing syntax: `info`, `pomona_operator=debug,kube=info`…).
    #[arg(long, env = "POMONA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "POMONA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Sets up logging from the arguments.
pub fn init_logging(args: &RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs the operator until SIGTERM/SIGINT, or until this replica loses the Lease (an error:
/// the pod restarts as a standby).
pub async fn run(args: RunArgs, settings: Settings) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes API to talk to (in a pod: its service account; else KUBECONFIG)")?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pomona-operator".into());
    let metrics = Arc::new(Metrics::default());
    let store: Arc<OnceLock<Store<FeatureExtraction>>> = Arc::default();
    let phases = {
        let store = store.clone();
        move || {
            store.get().map_or_else(Vec::new, |s| {
                s.state()
                    .iter()
                    .map(|fx| fx.status.as_ref().and_then(|st| st.phase))
                    .collect()
            })
        }
    };
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
        phases: Box::new(phases),
    });
    // Bound before leading, so a taken port fails at start.
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(serve(listener, health.clone()));

    let elector = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let elector = LeaderElector::new(
            leases,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds.max(3)),
        );
        tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting to lead");
        let ready = || health.ready.store(true, Ordering::Relaxed);
        tokio::select! {
            () = elector.acquire(ready) => {}
            () = shutdown_signal() => return Ok(()),
        }
        tracing::info!(%identity, "leading");
        Some(elector)
    } else {
        client.apiserver_version().await?;
        health.ready.store(true, Ordering::Relaxed);
        None
    };
    metrics.set_leader(true);

    let (fxs, jobs, pods): (Api<FeatureExtraction>, Api<Job>, Api<Pod>) =
        if args.watch_namespace.is_empty() {
            (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            )
        } else {
            let ns = &args.watch_namespace;
            (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            )
        };
    let mut ctx = Context::new(client.clone(), settings, metrics.clone(), Some(identity));
    if let Some(elector) = &elector {
        ctx = ctx.with_leadership(elector.leadership());
    }
    // The runs' pods come from a watch cache: no LIST per reconcile. Only what the status
    // reads is kept (metadata without managed fields, the status, the containers' requests).
    // The same watch wakes the run a pod belongs to when the pod changes.
    let (pod_cache, pod_writer) = reflector::store::<Pod>();
    let pod_watch = reflector(
        pod_writer,
        watcher(pods, watcher::Config::default().labels(MANAGED_BY_SELECTOR))
            .modify(crate::observe::keep_what_the_status_reads)
            .default_backoff(),
    )
    .touched_objects();
    let ctx = Arc::new(ctx.with_pod_cache(pod_cache));
    let controller = Controller::new(fxs, watcher::Config::default().any_semantic())
        .owns(jobs, watcher::Config::default().labels(MANAGED_BY_SELECTOR))
        .watches_stream(pod_watch, |pod: Pod| run_of(&pod));
    let _ = store.set(controller.store());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = controller
        .graceful_shutdown_on(async move {
            let _ = stop_rx.await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(fx = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    let lost = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(controller, lost);
    let lost_leadership = |why: String| Err(anyhow::anyhow!("lost leadership: {why}"));
    let outcome = tokio::select! {
        () = &mut controller => Ok(()),
        why = &mut lost => lost_leadership(why),
        () = shutdown_signal() => {
            tracing::info!("shutting down: finishing the reconciles under way");
            let _ = stop_tx.send(());
            // The Lease is still renewed while the reconciles under way finish.
            tokio::select! {
                () = &mut controller => Ok(()),
                why = &mut lost => lost_leadership(why),
            }
        }
    };
    metrics.set_leader(false);
    if let (Ok(()), Some(elector)) = (&outcome, &elector) {
        match elector.release().await {
            Ok(()) => tracing::info!(identity = elector.identity(), "released the Lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the Lease failed"),
        }
    }
    outcome
}

/// The run a pod of the operator's belongs to.
fn run_of(pod: &Pod) -> Option<ObjectRef<FeatureExtraction>> {
    let name = pod.annotations().get(RUN_NAME_ANNOTATION)?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
