//! What the status computation reads from the cluster, reduced to plain values: the pods of a
//! Job (index, phase, termination summary) and the Job's index lists.

use k8s_openapi::api::batch::v1::JobStatus;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use pomona_crds::contract::PodSummary;
use pomona_crds::contract::cost::PodUsage;
use pomona_crds::quantity;

/// The annotation an Indexed Job sets on each pod with its index.
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// Phase of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    /// Not yet running (scheduling, pulling the image).
    Pending,
    /// Running.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, or was killed.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

/// One pod of a run's Job, as far as the status needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodObservation {
    /// The Job index (shard) of the pod, from its annotation or its summary.
    pub index: Option<u32>,
    /// The pod's phase.
    pub phase: PodPhase,
    /// The runner's summary, parsed from the termination message.
    pub summary: Option<PodSummary>,
    /// Exit code of the runner container, once it terminated.
    pub exit_code: Option<i32>,
    /// Why the pod ended when the kubelet says (`DeadlineExceeded`, `Evicted`), else why its
    /// container terminated (`Error`, `OOMKilled`, …).
    pub reason: Option<String>,
    /// The termination message when it holds no summary (with `FallbackToLogsOnError`, the
    /// tail of the log).
    pub message: Option<String>,
    /// When the container terminated.
    pub finished_at: Option<Time>,
    /// When the kubelet started the pod (`status.startTime`): from then on it holds its
    /// requests.
    pub started_at: Option<Time>,
    /// The cores and bytes of memory the pod's containers request, summed.
    pub requests: Requests,
}

/// What a pod asks the scheduler to reserve.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Requests {
    /// Cores.
    pub cpu_cores: f64,
    /// Bytes of memory.
    pub memory_bytes: f64,
}

impl Requests {
    /// The requests of every container of `pod`, summed (a malformed quantity counts 0).
    pub fn of(pod: &Pod) -> Self {
        pod.spec.as_ref().map(Self::of_spec).unwrap_or_default()
    }

    /// The requests of every container of a pod `spec`, summed, a missing request taken from
    /// the container's limit as the API server defaults it (a malformed quantity counts 0).
    pub fn of_spec(spec: &PodSpec) -> Self {
        let mut total = Self::default();
        for resources in spec.containers.iter().filter_map(|c| c.resources.as_ref()) {
            let asked = |name: &str| {
                let requested = resources.requests.as_ref().and_then(|r| r.get(name));
                requested.or_else(|| resources.limits.as_ref()?.get(name))
            };
            if let Some(q) = asked("cpu") {
                total.cpu_cores += quantity::millicores(&q.0).unwrap_or(0) as f64 / 1000.0;
            }
            if let Some(q) = asked("memory") {
                total.memory_bytes += quantity::units(&q.0).unwrap_or(0) as f64;
            }
        }
        total
    }
}

/// Strips `pod` down to what the status reads, for the operator's pod watch cache: its
/// metadata without managed fields, its status, and of its spec only the containers' names and
/// requests (for the run's cost).
pub fn keep_what_the_status_reads(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                resources: c.resources.map(|r| ResourceRequirements {
                    requests: r.requests,
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
}

/// Seconds on the clock of a Kubernetes time, to the millisecond.
pub fn seconds(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

impl PodObservation {
    /// Reads a pod of a run's Job.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Pending") | None => PodPhase::Pending,
            Some(_) => PodPhase::Unknown,
        };
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == crate::jobs::CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        let text = terminated.and_then(|t| t.message.as_deref());
        let summary = text.and_then(PodSummary::from_message);
        let index = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INDEX_ANNOTATION))
            .and_then(|i| i.parse().ok())
            .or_else(|| summary.as_ref().and_then(|s| s.shard));
        Self {
            index,
            phase,
            message: if summary.is_none() {
                text.map(String::from)
            } else {
                None
            },
            summary,
            exit_code: terminated.map(|t| t.exit_code),
            reason: status
                .and_then(|s| s.reason.clone())
                .or_else(|| terminated.and_then(|t| t.reason.clone())),
            finished_at: terminated.and_then(|t| t.finished_at.clone()),
            started_at: status.and_then(|s| s.start_time.clone()),
            requests: Requests::of(pod),
        }
    }

    /// What the pod used, once its runner ended: the CPU seconds it reported and the seconds
    /// it held its requests; `None` while it runs.
    pub fn usage(&self) -> Option<PodUsage> {
        let finished = self.finished_at.as_ref()?;
        Some(PodUsage {
            cpu_seconds: self.summary.as_ref().and_then(|s| s.cpu_seconds),
            run_seconds: self
                .started_at
                .as_ref()
                .map(|start| (seconds(finished) - seconds(start)).max(0.0)),
            cpu_request_cores: self.requests.cpu_cores,
            memory_request_bytes: self.requests.memory_bytes,
        })
    }

    /// A short account of why the pod failed, for the status message.
    pub fn explain(&self) -> String {
        if let Some(error) = self.summary.as_ref().and_then(|s| s.error.as_deref()) {
            return shorten(error, 200);
        }
        let mut out = match (self.exit_code, &self.reason) {
            (Some(code), Some(reason)) => format!("exit code {code} ({reason})"),
            (Some(code), None) => format!("exit code {code}"),
            (None, Some(reason)) => reason.clone(),
            (None, None) => "no termination message".into(),
        };
        if let Some(last) = self.message.as_deref().and_then(|m| m.lines().last()) {
            out.push_str(": ");
            out.push_str(&shorten(last.trim(), 160));
        }
        out
    }
}

/// Whether the Job has a condition of `type_` with status True, and its reason.
pub fn job_condition<'s>(status: &'s JobStatus, type_: &'s str) -> Option<&'s str> {
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.as_deref().unwrap_or(type_))
}

/// The indexes of a Job index list (`"1,3-5,7"`), ascending. Malformed parts are skipped.
pub fn parse_indexes(list: Option<&str>) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.unwrap_or_default().split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
            out.extend(a..=b);
        }
    }
    out
}

/// The completed and failed indexes of an Indexed Job.
pub fn job_indexes(status: &JobStatus) -> (Vec<u32>, Vec<u32>) {
    (
        parse_indexes(status.completed_indexes.as_deref()),
        parse_indexes(status.failed_indexes.as_deref()),
    )
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_parse() {
        assert_eq!(parse_indexes(Some("1,3-5,7")), [1, 3, 4, 5, 7]);
        assert_eq!(parse_indexes(Some("")), Vec::<u32>::new());
        assert_eq!(parse_indexes(None), Vec::<u32>::new());
        assert_eq!(parse_indexes(Some("x,2")), [2]);
    }

    #[test]
    fn the_cached_pod_keeps_its_requests_and_status_only() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "r-extract-0-abc",
                "annotations": { "batch.kubernetes.io/job-completion-index": "0" },
                "managedFields": [{ "manager": "kube-controller-manager" }]
            },
            "spec": {
                "containers": [
                    { "name": "pomona", "image": "x", "args": ["extract"],
                      "resources": { "requests": { "cpu": "1500m", "memory": "512Mi" },
                                     "limits": { "cpu": "2" } } },
                    { "name": "side", "image": "y" }
                ],
                "nodeSelector": { "pool": "spot" }
            },
            "status": {
                "phase": "Running",
                "startTime": "2027-01-15T08:00:00Z"
            }
        }))
        .unwrap();
        let mut cached = pod.clone();
        keep_what_the_status_reads(&mut cached);
        assert_eq!(cached.metadata.managed_fields, None);
        assert_eq!(cached.status, pod.status);
        assert_eq!(
            serde_json::to_value(&cached.spec).unwrap(),
            serde_json::json!({
                "containers": [
                    { "name": "pomona",
                      "resources": { "requests": { "cpu": "1500m", "memory": "512Mi" } } },
                    { "name": "side" }
                ]
            })
        );
        let observed = PodObservation::from_pod(&cached);
        assert_eq!(observed, PodObservation::from_pod(&pod));
        assert_eq!(
            observed.requests,
            Requests {
                cpu_cores: 1.5,
                memory_bytes: 536_870_912.0
            }
        );
        assert_eq!(observed.index, Some(0));
    }

    #[test]
    fn shorten_cuts_at_char_boundaries() {
        assert_eq!(shorten("abc", 3), "abc");
        let s = shorten(&"é".repeat(100), 11);
        assert!(s.len() <= 11 && s.ends_with('…'), "{s}");
    }
}
