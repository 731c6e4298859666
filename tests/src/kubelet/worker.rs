//! One pod's life on the node: sandbox, volumes, containers started, watched, probed,
//! restarted by the pod's policy, stopped on deletion (SIGTERM, then SIGKILL after the grace
//! period) or deadline, and its status reported to the API server after every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use rustix::process::Signal;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::Kubelet;
use super::container::{self, Failure};
use super::probe::{self, Counter};
use super::sandbox::{self, Launch, PodNetwork};
use super::status::{self, Ended, Record, Snapshot, State};
use super::volumes;

/// What a container's process ended with: (container index, generation, exit code).
type Exit = (usize, u32, i32);

/// One container of the pod and its process.
struct ContainerRun {
    spec: Container,
    record: Record,
    /// The process of the current generation, while it runs.
    pid: Option<u32>,
    /// Bumped at each start; an exit of an older generation is stale.
    generation: u32,
    started: Option<Instant>,
    /// The termination-message file and log of the current generation.
    message_file: Option<PathBuf>,
    log: Option<PathBuf>,
    /// Not before this instant (restart back-off, or retry of a failed start).
    retry_at: Option<Instant>,
    readiness: Option<Counter>,
    liveness: Option<Counter>,
    /// SIGKILL after this instant (SIGTERM was sent).
    kill_at: Option<Instant>,
}

/// The pod's whole state on the node.
struct PodWork {
    k: Arc<Kubelet>,
    pod: Pod,
    dir: PathBuf,
    net: Option<PodNetwork>,
    volumes: BTreeMap<String, PathBuf>,
    containers: Vec<ContainerRun>,
    start_time: Timestamp,
    /// Set when the pod must end whatever its containers do (deadline), with why.
    failed: Option<(String, String)>,
    /// SIGTERM was sent to everything for a deletion.
    deleting: bool,
    /// The sandbox and volumes are made; until then, when to try again.
    ready: bool,
    setup_at: Option<Instant>,
    /// The status as last reported and accepted.
    last_sent: Option<PodStatus>,
    exits: mpsc::UnboundedSender<Exit>,
}

/// Runs `pod` until it is finished (terminal and reported, or deleted and removed) or the
/// kubelet shuts down.
pub async fn run(
    k: Arc<Kubelet>,
    mut updates: watch::Receiver<Option<Pod>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(pod) = updates.borrow().clone() else {
        return;
    };
    let name = pod_name(&pod);
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut work = PodWork::new(k, pod, exits_tx);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            changed = updates.changed() => {
                let current = if changed.is_ok() { updates.borrow().clone() } else { None };
                match current {
                    Some(pod) => work.updated(pod),
                    None => {
                        // The object is gone: stop at once, nothing left to report to.
                        work.kill_all(Signal::KILL);
                        work.cleanup().await;
                        return;
                    }
                }
            }
            Some(exit) = exits.recv() => work.exited(exit),
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                tracing::info!("pod {name}: stopping with the kubelet");
                work.stop_for_shutdown(&mut exits).await;
                work.cleanup().await;
                return;
            }
        }
        work.step().await;
        work.report().await;
        if work.terminal_reported() {
            // A deleted pod's object goes once its final status is in (grace 0, this uid).
            if work.pod.metadata.deletion_timestamp.is_some() && !work.remove().await {
                continue;
            }
            work.cleanup().await;
            tracing::info!("pod {name}: finished ({})", work.phase());
            return;
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl PodWork {
    fn new(k: Arc<Kubelet>, pod: Pod, exits: mpsc::UnboundedSender<Exit>) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = k.state_dir.join("pods").join(&uid);
        let spec = pod.spec.clone().unwrap_or_default();
        // A pod this node accepted before (the kubelet restarted): its processes are gone.
        let seen_before = pod.status.as_ref().and_then(|s| s.start_time.clone());
        let start_time = seen_before
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let containers = spec
            .containers
            .iter()
            .map(|c| {
                let lost = seen_before.is_some().then(|| Ended {
                    exit_code: 137,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    started_at: None,
                    finished_at: Timestamp::now(),
                });
                ContainerRun {
                    spec: c.clone(),
                    record: Record {
                        name: c.name.clone(),
                        image: c.image.clone().unwrap_or_default(),
                        image_id: String::new(),
                        container_id: None,
                        state: match &lost {
                            Some(e) => State::Terminated(e.clone()),
                            None => State::Waiting {
                                reason: "ContainerCreating".into(),
                                message: None,
                            },
                        },
                        last: None,
                        restart_count: 0,
                        ready: false,
                    },
                    pid: None,
                    generation: 0,
                    started: None,
                    message_file: None,
                    log: None,
                    // Start now; a lost container only if its policy restarts it.
                    retry_at: (lost.is_none() || restarts(&spec.restart_policy, 137))
                        .then(Instant::now),
                    readiness: None,
                    liveness: None,
                    kill_at: None,
                }
            })
            .collect();
        Self {
            k,
            pod,
            dir,
            net: None,
            volumes: BTreeMap::new(),
            containers,
            start_time,
            failed: None,
            deleting: false,
            ready: false,
            setup_at: Some(Instant::now()),
            last_sent: None,
            exits,
        }
    }

    fn spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.clone().unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.spec()
            .restart_policy
            .unwrap_or_else(|| "Always".into())
    }

    /// Sandbox and volumes. A pod this node ran before (the kubelet restarted) keeps its
    /// address, as its status already names it.
    async fn setup(&mut self) -> Result<()> {
        let spec = self.spec();
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            anyhow::bail!("the local kubelet does not run init containers");
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("{}", self.dir.display()))?;
        if self.net.is_none() {
            let known = self.pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
            let slot = self
                .k
                .take_slot(known.and_then(|ip| self.k.network.slot_of(ip)));
            let net = self.k.network.create(slot).await;
            self.net = Some(net.inspect_err(|_| self.k.free_slot(slot))?);
        }
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        self.volumes = volumes::prepare(&self.k.client, &self.pod, &self.dir, fs_group).await?;
        Ok(())
    }

    /// Makes the sandbox when due; until it exists, the containers wait with the reason and it
    /// is tried again every 10 s (a Secret or ConfigMap not there yet, say).
    async fn ensure_ready(&mut self) {
        if self.ready || self.stopping() || self.setup_at.is_none_or(|t| Instant::now() < t) {
            return;
        }
        match self.setup().await {
            Ok(()) => {
                self.ready = true;
                self.setup_at = None;
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!("pod {}: {why}", pod_name(&self.pod));
                self.setup_at = Some(Instant::now() + Duration::from_secs(10));
                for s in &mut self.containers {
                    if !matches!(s.record.state, State::Terminated(_)) {
                        s.record.state = State::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(why.clone()),
                        };
                    }
                }
            }
        }
    }

    /// A new version of the pod from the watch. When its status differs from what this kubelet
    /// reported (another writer, or a report that was lost), the next report sends it again.
    fn updated(&mut self, pod: Pod) {
        if let (Some(last), Some(now)) = (&self.last_sent, &pod.status)
            && !ours_equal(last, now)
        {
            self.last_sent = None;
        }
        self.pod = pod;
    }

    /// Advances every container: deadlines, kills, starts and restarts, probes.
    async fn step(&mut self) {
        self.check_deletion();
        self.check_deadline();
        self.ensure_ready().await;
        let now = Instant::now();
        for i in 0..self.containers.len() {
            if let Some(at) = self.containers[i].kill_at
                && now >= at
                && let Some(pid) = self.containers[i].pid
            {
                sandbox::signal(pid, Signal::KILL);
                self.containers[i].kill_at = None;
            }
            if self.stopping() || !self.ready {
                continue;
            }
            if self.containers[i].pid.is_none()
                && self.containers[i].retry_at.is_some_and(|t| now >= t)
            {
                self.start(i).await;
            }
            self.probe(i).await;
        }
    }

    fn stopping(&self) -> bool {
        self.deleting || self.failed.is_some()
    }

    fn check_deletion(&mut self) {
        if self.deleting || self.pod.metadata.deletion_timestamp.is_none() {
            return;
        }
        self.deleting = true;
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self.spec().termination_grace_period_seconds)
            .unwrap_or(30);
        tracing::info!(
            "pod {}: deleted, stopping its containers ({grace} s grace)",
            pod_name(&self.pod)
        );
        self.terminate_all(grace);
    }

    fn check_deadline(&mut self) {
        let Some(deadline) = self.spec().active_deadline_seconds else {
            return;
        };
        // Counted from the pod's start time, which survives a kubelet restart.
        let active = Timestamp::now().as_second() - self.start_time.as_second();
        if self.failed.is_some() || active < deadline {
            return;
        }
        self.failed = Some((
            "DeadlineExceeded".into(),
            "Pod was active on the node longer than the specified deadline".into(),
        ));
        let grace = self.spec().termination_grace_period_seconds.unwrap_or(30);
        self.terminate_all(grace);
    }

    /// SIGTERM to every running container, SIGKILL after `grace` seconds; containers that
    /// never ran end as a kubelet reports them.
    fn terminate_all(&mut self, grace: i64) {
        let kill_at = Instant::now() + Duration::from_secs(grace.max(0) as u64);
        for s in &mut self.containers {
            s.retry_at = None;
            match s.pid {
                Some(pid) => {
                    sandbox::signal(
                        pid,
                        if grace == 0 {
                            Signal::KILL
                        } else {
                            Signal::TERM
                        },
                    );
                    s.kill_at = Some(kill_at);
                }
                None if !matches!(s.record.state, State::Terminated(_)) => {
                    s.record.state = State::Terminated(Ended {
                        exit_code: 137,
                        reason: "ContainerStatusUnknown".into(),
                        message: Some(
                            "The container could not be located when the pod was deleted".into(),
                        ),
                        started_at: None,
                        finished_at: Timestamp::now(),
                    });
                }
                None => {}
            }
        }
    }

    fn kill_all(&mut self, signal: Signal) {
        for s in &self.containers {
            if let Some(pid) = s.pid {
                sandbox::signal(pid, signal);
            }
        }
    }

    /// The kubelet is stopping: SIGTERM, up to 5 s, then SIGKILL; no status is reported.
    async fn stop_for_shutdown(&mut self, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        self.kill_all(Signal::TERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.containers.iter().any(|s| s.pid.is_some()) {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Some(exit)) => self.exited(exit),
                _ => {
                    self.kill_all(Signal::KILL);
                    break;
                }
            }
        }
    }

    /// Starts container `i`, or records why it cannot start.
    async fn start(&mut self, i: usize) {
        let retry = Instant::now() + Duration::from_secs(10);
        match self.launch(i).await {
            Ok(()) => {}
            Err(Failure::Waiting(reason, message)) => {
                let s = &mut self.containers[i];
                let reason = if reason == "ErrImagePull"
                    && matches!(&s.record.state, State::Waiting { reason: r, .. } if r == "ErrImagePull" || r == "ImagePullBackOff")
                {
                    "ImagePullBackOff".to_string()
                } else {
                    reason
                };
                s.record.state = State::Waiting {
                    reason,
                    message: Some(message),
                };
                s.retry_at = Some(retry);
            }
            Err(Failure::Start(message)) => {
                let s = &mut self.containers[i];
                s.retry_at = None;
                self.ended(
                    i,
                    Ended {
                        exit_code: 128,
                        reason: "StartError".into(),
                        message: Some(message),
                        started_at: None,
                        finished_at: Timestamp::now(),
                    },
                );
            }
        }
    }

    async fn launch(&mut self, i: usize) -> Result<(), Failure> {
        let pod = self.pod.clone();
        let c = self.containers[i].spec.clone();
        let image_ref = c.image.clone().unwrap_or_default();
        let net = self.net.clone().expect("a sandbox before any container");
        let config = container::resolve(&self.k, &pod, &c, &net.ip, &self.volumes).await?;

        let s = &mut self.containers[i];
        s.generation += 1;
        let generation = s.generation;
        let run_dir = self
            .dir
            .join("containers")
            .join(format!("{}-{}", c.name, s.record.restart_count));
        let termination_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let message_file = sandbox::prepare_dev(
            &run_dir.join("dev"),
            &termination_path,
            config.uid,
            config.gid,
        )
        .map_err(|e| Failure::config(format!("prepare /dev: {e}")))?;
        let launch = Launch {
            netns: net.netns.clone(),
            program: config.exec.program.clone(),
            args: config.exec.args.clone(),
            env: config.env,
            uid: config.uid,
            gid: config.gid,
            groups: config.groups,
            working_dir: config.working_dir,
            mounts: config.mounts,
            dev: run_dir.join("dev"),
            termination_path,
            log: run_dir.with_extension("log"),
        };
        let mut child = sandbox::start(&launch).map_err(|e| Failure::Start(format!("{e:#}")))?;
        let pid = child.id().unwrap_or_default();
        // Beside its log, for people and tests on this machine (`kill -STOP`, `perf`, …).
        let _ = std::fs::write(run_dir.with_extension("pid"), pid.to_string());
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => sandbox::exit_code(status),
                Err(_) => 255,
            };
            let _ = exits.send((i, generation, code));
        });
        let uid_of_pod = pod.metadata.uid.clone().unwrap_or_default();
        s.pid = Some(pid);
        s.started = Some(Instant::now());
        s.retry_at = None;
        s.message_file = Some(message_file);
        s.log = Some(launch.log.clone());
        s.record.image_id = format!(
            "{}@local:{}",
            super::images::repository(&image_ref),
            config.exec.program.display()
        );
        s.record.container_id = Some(format!(
            "local://{uid_of_pod}/{}/{}",
            c.name, s.record.restart_count
        ));
        s.record.state = State::Running {
            started_at: Timestamp::now(),
        };
        s.record.ready = c.readiness_probe.is_none();
        s.readiness = c.readiness_probe.as_ref().map(Counter::new);
        s.liveness = c.liveness_probe.as_ref().map(Counter::new);
        tracing::info!(
            "pod {}: started container {} (pid {pid}) at {}",
            pod_name(&pod),
            c.name,
            net.ip
        );
        Ok(())
    }

    /// A process ended.
    fn exited(&mut self, (i, generation, exit_code): Exit) {
        let Some(s) = self.containers.get_mut(i) else {
            return;
        };
        let Some(pid) = s.pid.filter(|_| s.generation == generation) else {
            return;
        };
        // What the process left behind in its group goes with it, as with a container.
        sandbox::signal(pid, Signal::KILL);
        s.pid = None;
        s.kill_at = None;
        let started_at = match &s.record.state {
            State::Running { started_at } => Some(*started_at),
            _ => None,
        };
        let message = termination_message(s, exit_code);
        let ended = Ended {
            exit_code,
            reason: if exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message,
            started_at,
            finished_at: Timestamp::now(),
        };
        self.ended(i, ended);
    }

    /// Records how container `i` ended and whether, and when, it restarts.
    fn ended(&mut self, i: usize, ended: Ended) {
        let policy = self.restart_policy();
        let stopping = self.stopping();
        let s = &mut self.containers[i];
        s.record.ready = false;
        if stopping || !restarts(&Some(policy), ended.exit_code) {
            s.record.state = State::Terminated(ended);
            return;
        }
        // Back-off doubles from 10 s to 5 min, and starts over after 10 min of running.
        let ran_long = s
            .started
            .is_some_and(|t| t.elapsed() > Duration::from_secs(600));
        let exponent = if ran_long {
            0
        } else {
            s.record.restart_count.min(5)
        };
        let backoff = Duration::from_secs((10u64 << exponent).min(300));
        s.record.last = Some(ended);
        s.record.restart_count += 1;
        s.record.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}s restarting failed container={} pod={}",
                backoff.as_secs(),
                s.record.name,
                self.pod.metadata.name.as_deref().unwrap_or_default()
            )),
        };
        s.retry_at = Some(Instant::now() + backoff);
    }

    async fn probe(&mut self, i: usize) {
        let Some(net) = self.net.clone() else { return };
        let s = &mut self.containers[i];
        if s.pid.is_none() || s.kill_at.is_some() {
            return;
        }
        let elapsed = s
            .started
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or_default();
        if let (Some(p), Some(counter)) = (s.spec.readiness_probe.clone(), s.readiness.as_mut())
            && elapsed >= counter.next_at
        {
            let ok = probe::check(&p, &s.spec, &net.ip).await.is_ok();
            if let Some(verdict) = counter.record(&p, ok, elapsed) {
                s.record.ready = verdict;
            }
        }
        if let (Some(p), Some(counter)) = (s.spec.liveness_probe.clone(), s.liveness.as_mut())
            && elapsed >= counter.next_at
        {
            let result = probe::check(&p, &s.spec, &net.ip).await;
            if counter.record(&p, result.is_ok(), elapsed) == Some(false) {
                tracing::info!(
                    "container {} failed its liveness probe ({:?}); restarting it",
                    s.record.name,
                    result.err()
                );
                let grace = p
                    .termination_grace_period_seconds
                    .or(self
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|p| p.termination_grace_period_seconds))
                    .unwrap_or(30);
                if let Some(pid) = s.pid {
                    sandbox::signal(pid, Signal::TERM);
                }
                s.kill_at = Some(Instant::now() + Duration::from_secs(grace.max(0) as u64));
            }
        }
    }

    fn snapshot_status(&self) -> PodStatus {
        let records: Vec<Record> = self.containers.iter().map(|s| s.record.clone()).collect();
        let previous = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let policy = self.restart_policy();
        let gateway = self.k.network.gateway();
        let snapshot = Snapshot {
            containers: &records,
            restart_policy: &policy,
            deleting: self.deleting,
            failed: self.failed.as_ref().map(|(r, m)| (r.as_str(), m.as_str())),
            pod_ip: self.net.as_ref().map(|n| n.ip.as_str()),
            host_ip: &gateway,
            start_time: self.start_time,
            previous: &previous,
            now: Timestamp::now(),
        };
        status::pod_status(&snapshot)
    }

    fn phase(&self) -> String {
        self.snapshot_status().phase.unwrap_or_default()
    }

    /// The pod is terminal, no process of it is left, and the API server has that status.
    fn terminal_reported(&self) -> bool {
        let sent = self.last_sent.as_ref().and_then(|s| s.phase.as_deref());
        matches!(sent, Some("Succeeded" | "Failed"))
            && self.containers.iter().all(|s| s.pid.is_none())
    }

    /// Sends the status when it changed.
    async fn report(&mut self) {
        let mut status = self.snapshot_status();
        // A terminal phase waits until every process has really ended.
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
            && self.containers.iter().any(|s| s.pid.is_some())
        {
            status.phase = Some("Running".into());
        }
        if self
            .last_sent
            .as_ref()
            .is_some_and(|last| same_ignoring_times(last, &status))
        {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.k.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = Patch::Strategic(json!({ "status": status }));
        match api
            .patch_status(&name, &PatchParams::default(), &patch)
            .await
        {
            Ok(pod) => {
                self.pod.status = pod.status;
                self.last_sent = Some(status);
            }
            Err(e) => tracing::warn!("pod {}: report status: {e}", pod_name(&self.pod)),
        }
    }

    /// Removes a deleted pod's object once its containers stopped (grace 0, this uid only);
    /// whether it is gone.
    async fn remove(&self) -> bool {
        let api: Api<Pod> = Api::namespaced(
            self.k.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => true,
            // Gone already, or another pod of that name now.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
            Err(e) => {
                tracing::warn!("pod {}: final delete: {e}", pod_name(&self.pod));
                false
            }
        }
    }

    /// Removes the sandbox; the pod's folder (logs) stays until the kubelet stops.
    async fn cleanup(&mut self) {
        if let Some(net) = self.net.take() {
            self.k.network.delete(&net).await;
            self.k.free_slot(net.slot);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
    }
}

/// Whether a container that exited with `code` restarts under `policy`.
fn restarts(policy: &Option<String>, code: i32) -> bool {
    match policy.as_deref().unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// The termination message: the file the container wrote (at most 4096 bytes), else with
/// `FallbackToLogsOnError` and a failure, the end of its log (80 lines, 2048 bytes).
fn termination_message(s: &ContainerRun, exit_code: i32) -> Option<String> {
    let written = s
        .message_file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .filter(|b| !b.is_empty())
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned());
    if written.is_some() {
        return written;
    }
    let fallback = s.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if !fallback || exit_code == 0 {
        return None;
    }
    let log = std::fs::read(s.log.as_ref()?).ok()?;
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    let cut = tail.len().saturating_sub(2048);
    let start = (cut..=tail.len())
        .find(|&i| tail.is_char_boundary(i))
        .unwrap_or(tail.len());
    Some(tail[start..].to_string()).filter(|t| !t.is_empty())
}

/// Whether the API server's status of the pod holds what this kubelet reported: phase,
/// address, containers, and the conditions it owns (others write other conditions).
fn ours_equal(reported: &PodStatus, current: &PodStatus) -> bool {
    let owned = |s: &PodStatus| {
        let mut conditions: Vec<(String, String)> = s
            .conditions
            .iter()
            .flatten()
            .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        conditions.sort();
        (
            s.phase.clone(),
            s.pod_ip.clone(),
            s.container_statuses.clone(),
            conditions,
        )
    };
    owned(reported) == owned(current)
}

/// The pod conditions a kubelet writes.
const OWN_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

/// Two statuses equal but for condition transition times.
fn same_ignoring_times(a: &PodStatus, b: &PodStatus) -> bool {
    let strip = |s: &PodStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
        }
        s
    };
    strip(a) == strip(b)
}
