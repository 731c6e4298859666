//! A pod's status as a kubelet reports it, computed from what the local kubelet knows of its
//! containers. Pure: the worker ([`super::worker`]) keeps the records and sends the result.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// One container's state, as a runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Not running: `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, …
    Waiting {
        /// Machine-readable reason.
        reason: String,
        /// What went wrong, for people.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// When it started.
        started_at: Timestamp,
    },
    /// Its process ended (or never started: `StartError`).
    Terminated(Ended),
}

/// How a container's process ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// Exit code; 128 + N for signal N.
    pub exit_code: i32,
    /// `Completed`, `Error`, `StartError`, `ContainerStatusUnknown`.
    pub reason: String,
    /// The termination message.
    pub message: Option<String>,
    /// When it started (none if it never did).
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// What the kubelet keeps of one container.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its name in the pod spec.
    pub name: String,
    /// The image reference of the spec.
    pub image: String,
    /// The image as resolved locally.
    pub image_id: String,
    /// `local://<pod uid>/<name>/<restart>` once a process was started.
    pub container_id: Option<String>,
    /// Now.
    pub state: State,
    /// The previous run, after a restart.
    pub last: Option<Ended>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Its readiness probe passes (or it has none and runs).
    pub ready: bool,
}

/// Everything a pod status is made of.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    /// The containers, in spec order.
    pub containers: &'a [Record],
    /// `Always`, `OnFailure` or `Never`.
    pub restart_policy: &'a str,
    /// The pod is being deleted.
    pub deleting: bool,
    /// A reason that ends the pod whatever its containers did (`DeadlineExceeded`), with a
    /// message.
    pub failed: Option<(&'a str, &'a str)>,
    /// The pod's address, once its sandbox exists.
    pub pod_ip: Option<&'a str>,
    /// The node's address.
    pub host_ip: &'a str,
    /// When the kubelet accepted the pod.
    pub start_time: Timestamp,
    /// The conditions the pod has now (their transition times are kept when unchanged).
    pub previous: &'a [PodCondition],
    /// Now.
    pub now: Timestamp,
}

/// The pod phase of a snapshot, by the kubelet's rules.
pub fn phase(s: &Snapshot) -> &'static str {
    if s.failed.is_some() {
        return "Failed";
    }
    let ended: Vec<&Ended> = s
        .containers
        .iter()
        .filter_map(|c| match &c.state {
            State::Terminated(e) => Some(e),
            _ => None,
        })
        .collect();
    let all_ended = !s.containers.is_empty() && ended.len() == s.containers.len();
    let all_succeeded = all_ended && ended.iter().all(|e| e.exit_code == 0);
    if all_ended {
        let terminal = s.deleting
            || match s.restart_policy {
                "Never" => true,
                "OnFailure" => all_succeeded,
                _ => false,
            };
        if terminal {
            return if all_succeeded { "Succeeded" } else { "Failed" };
        }
    }
    // As the kubelet's getPhase: a container not started yet (waiting, never run) keeps the
    // pod Pending; one waiting to restart counts as stopped.
    let fresh = s
        .containers
        .iter()
        .any(|c| matches!(c.state, State::Waiting { .. }) && c.last.is_none());
    if fresh { "Pending" } else { "Running" }
}

/// The status to report for a snapshot.
pub fn pod_status(s: &Snapshot) -> PodStatus {
    let phase = phase(s);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let all_ready = s
        .containers
        .iter()
        .all(|c| c.ready && matches!(c.state, State::Running { .. }));
    let not_ready: Vec<&str> = s
        .containers
        .iter()
        .filter(|c| !(c.ready && matches!(c.state, State::Running { .. })))
        .map(|c| c.name.as_str())
        .collect();
    let unready_message =
        (!all_ready).then(|| format!("containers with unready status: [{}]", not_ready.join(" ")));
    let sandbox = s.pod_ip.is_some() && !terminal;
    let conditions = vec![
        condition(s, "PodReadyToStartContainers", sandbox, None),
        condition(s, "Initialized", true, None),
        condition(
            s,
            "Ready",
            all_ready && !terminal,
            unready_message
                .as_deref()
                .map(|m| ("ContainersNotReady", m)),
        ),
        condition(
            s,
            "ContainersReady",
            all_ready && !terminal,
            unready_message
                .as_deref()
                .map(|m| ("ContainersNotReady", m)),
        ),
    ];
    let (reason, message) = match s.failed {
        Some((r, m)) => (Some(r.to_string()), Some(m.to_string())),
        None => (None, None),
    };
    PodStatus {
        phase: Some(phase.into()),
        reason,
        message,
        conditions: Some(conditions),
        host_ip: Some(s.host_ip.into()),
        host_ips: Some(vec![HostIP {
            ip: s.host_ip.into(),
        }]),
        pod_ip: s.pod_ip.map(String::from),
        pod_ips: s.pod_ip.map(|ip| vec![PodIP { ip: ip.into() }]),
        start_time: Some(Time(s.start_time)),
        qos_class: None,
        container_statuses: Some(s.containers.iter().map(container_status).collect()),
        ..PodStatus::default()
    }
}

/// A condition of type `kind`, keeping the previous transition time when its status holds.
fn condition(s: &Snapshot, kind: &str, ok: bool, not_ok: Option<(&str, &str)>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = s
        .previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(s.now));
    let (reason, message) = match (ok, not_ok) {
        (false, Some((r, m))) => (Some(r.to_string()), Some(m.to_string())),
        _ => (None, None),
    };
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        last_transition_time: Some(since),
        reason,
        message,
        ..PodCondition::default()
    }
}

fn terminated(e: &Ended, container_id: Option<&String>) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: e.exit_code,
        reason: Some(e.reason.clone()),
        message: e.message.clone(),
        started_at: e.started_at.map(Time),
        finished_at: Some(Time(e.finished_at)),
        container_id: container_id.cloned(),
        ..ContainerStateTerminated::default()
    }
}

fn container_status(c: &Record) -> ContainerStatus {
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(e) => ContainerState {
            terminated: Some(terminated(e, c.container_id.as_ref())),
            ..ContainerState::default()
        },
    };
    let running = matches!(c.state, State::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.ready && running,
        started: Some(running),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last.as_ref().map(|e| ContainerState {
            terminated: Some(terminated(e, None)),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: State) -> Record {
        Record {
            name: "c".into(),
            image: "i".into(),
            image_id: String::new(),
            container_id: None,
            state,
            last: None,
            restart_count: 0,
            ready: true,
        }
    }

    fn ended(code: i32) -> State {
        State::Terminated(Ended {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::UNIX_EPOCH,
        })
    }

    fn snapshot<'a>(containers: &'a [Record], policy: &'a str) -> Snapshot<'a> {
        Snapshot {
            containers,
            restart_policy: policy,
            deleting: false,
            failed: None,
            pod_ip: Some("10.244.0.2"),
            host_ip: "10.244.0.1",
            start_time: Timestamp::UNIX_EPOCH,
            previous: &[],
            now: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        let waiting = [record(State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        })];
        let running = [record(State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        })];
        let ok = [record(ended(0))];
        let bad = [record(ended(3))];
        assert_eq!(phase(&snapshot(&waiting, "Never")), "Pending");
        assert_eq!(phase(&snapshot(&running, "Never")), "Running");
        assert_eq!(phase(&snapshot(&ok, "Never")), "Succeeded");
        assert_eq!(phase(&snapshot(&bad, "Never")), "Failed");
        assert_eq!(phase(&snapshot(&bad, "OnFailure")), "Running", "restarting");
        assert_eq!(phase(&snapshot(&ok, "OnFailure")), "Succeeded");
        assert_eq!(phase(&snapshot(&ok, "Always")), "Running", "restarting");
        let deleted = Snapshot {
            deleting: true,
            ..snapshot(&bad, "Always")
        };
        assert_eq!(phase(&deleted), "Failed");
        let deadline = Snapshot {
            failed: Some(("DeadlineExceeded", "late")),
            ..snapshot(&running, "Never")
        };
        assert_eq!(phase(&deadline), "Failed");
    }

    #[test]
    fn the_status_carries_exit_codes_and_readiness() {
        let running = [record(State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        })];
        let s = pod_status(&snapshot(&running, "Always"));
        let ready = |s: &PodStatus| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
        };
        assert_eq!(ready(&s).as_deref(), Some("True"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.2"));

        let failed = [record(ended(3))];
        let s = pod_status(&snapshot(&failed, "Never"));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(ready(&s).as_deref(), Some("False"));
        let terminated = s.container_statuses.expect("statuses")[0]
            .state
            .clone()
            .and_then(|st| st.terminated)
            .expect("terminated");
        assert_eq!(
            (terminated.exit_code, terminated.reason.as_deref()),
            (3, Some("Error"))
        );
    }
}
