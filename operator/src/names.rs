//! Names, labels and owner references of the objects the operator creates for a run.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use pomona_crds::FeatureExtraction;

/// Longest name a Job may have: its pods' `job-name` label and hostnames must fit in a DNS
/// label.
pub const MAX_JOB_NAME: usize = 63;

/// The Jobs of a run: plan, extract and reduce; between the last two, a run of many shards
/// also has a merge Job, a fit Job and a projection Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The one-pod Job that lists the source and writes the plan.
    Plan,
    /// The Indexed Job of extractor pods, one index per shard.
    Extract,
    /// The Indexed Job that merges the statistics of blocks of shards, before the fit.
    Merge,
    /// The one-pod Job that fits the PCA of a run whose shards a projection Job projects.
    Fit,
    /// The Indexed Job that projects groups of shards through the fitted PCA.
    Project,
    /// The one-pod Job that fits or applies the PCA (or, after a projection Job, reads the
    /// reduced files) and writes the report.
    Reduce,
}

/// The label that names the run a Job (and its pods) belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// The label selector of everything the operator creates (its watches of Jobs and pods).
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=pomona-operator";

/// The label that names the run a pod belongs to, for cost attribution (OpenCost, AWS split
/// cost allocation): the resource's name.
pub const RUN_LABEL: &str = "pomona.dev/run";

/// The annotation of a run's pods that names its resource in full (labels are cut at 63
/// characters): how a pod's change finds the run to reconcile.
pub const RUN_NAME_ANNOTATION: &str = "pomona.dev/run-name";

/// The label that names a Job's (and its pods') component.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

impl Component {
    /// Every component, in the order a run's Jobs run.
    pub const ALL: [Component; 6] = [
        Component::Plan,
        Component::Extract,
        Component::Merge,
        Component::Fit,
        Component::Project,
        Component::Reduce,
    ];

    /// The component of a Job the operator made, from its label.
    pub fn of(job: &k8s_openapi::api::batch::v1::Job) -> Option<Self> {
        let label = job.metadata.labels.as_ref()?.get(COMPONENT_LABEL)?;
        Self::ALL.into_iter().find(|c| c.as_str() == label)
    }

    /// The action of the Event that tells this Job was created: one per component, since
    /// Events of the same reason and action about a resource are folded into one series.
    pub fn create_action(self) -> &'static str {
        match self {
            Component::Plan => "CreatePlanJob",
            Component::Extract => "CreateExtractJob",
            Component::Merge => "CreateMergeJob",
            Component::Fit => "CreateFitJob",
            Component::Project => "CreateProjectJob",
            Component::Reduce => "CreateReduceJob",
        }
    }

    /// The `app.kubernetes.io/component` value and the Job name suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Plan => "plan",
            Component::Extract => "extract",
            Component::Merge => "merge",
            Component::Fit => "fit",
            Component::Project => "project",
            Component::Reduce => "reduce",
        }
    }
}

/// The name of a run's Job: `<name>-plan`, `<name>-extract`, `<name>-merge`, `<name>-fit`,
/// `<name>-project` or `<name>-reduce`. A resource name too long for a Job, or not a DNS label,
/// is cut and given a stable hash of the full name, so that two resources never share a Job
/// name.
pub fn job_name(fx_name: &str, component: Component) -> String {
    let suffix = component.as_str();
    bounded(fx_name, MAX_JOB_NAME - suffix.len() - 1) + "-" + suffix
}

/// The name of the ConfigMap that hands a run's reduce pod its failed shards:
/// `<reduce Job>-failed-shards`.
pub fn failed_shards_name(fx_name: &str) -> String {
    job_name(fx_name, Component::Reduce) + "-failed-shards"
}

/// `name` if it is a DNS label of at most `max` characters, else a cut, cleaned form of it
/// followed by `-` and 8 hex digits of its hash (still at most `max` characters).
pub fn bounded(name: &str, max: usize) -> String {
    let is_label = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if name.len() <= max && is_label(name) {
        return name.to_string();
    }
    let hash = format!("{:08x}", fnv1a(name.as_bytes()));
    let keep = max.saturating_sub(hash.len() + 1);
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(keep)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        hash
    } else {
        format!("{cleaned}-{hash}")
    }
}

/// 32-bit FNV-1a: a small, stable hash (the same in every release, unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The `app.kubernetes.io/*` labels of a run's Job and its pods, and [`RUN_LABEL`]. `part-of`
/// is the resource's own `app.kubernetes.io/part-of` label when it has one, else `pomona`.
pub fn labels(fx: &FeatureExtraction, component: Component) -> BTreeMap<String, String> {
    let name = fx.metadata.name.as_deref().unwrap_or_default();
    let part_of = fx
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/part-of"))
        .filter(|v| v.len() <= 63)
        .map_or("pomona", String::as_str);
    [
        ("app.kubernetes.io/name", "pomona"),
        (INSTANCE_LABEL, &bounded(name, 63)),
        (COMPONENT_LABEL, component.as_str()),
        ("app.kubernetes.io/managed-by", "pomona-operator"),
        ("app.kubernetes.io/part-of", part_of),
        (RUN_LABEL, &bounded(name, 63)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The controller owner reference to `fx`: its Jobs are garbage-collected with it, and the
/// operator is the only controller of them.
pub fn owner_reference(fx: &FeatureExtraction) -> OwnerReference {
    OwnerReference {
        api_version: FeatureExtraction::api_version(&()).into_owned(),
        kind: FeatureExtraction::kind(&()).into_owned(),
        name: fx.metadata.name.clone().unwrap_or_default(),
        uid: fx.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_fit_and_stay_distinct() {
        assert_eq!(
            job_name("fruits-360", Component::Extract),
            "fruits-360-extract"
        );
        assert_eq!(
            job_name("fruits-360", Component::Reduce),
            "fruits-360-reduce"
        );
        let long_a = "a".repeat(200);
        let long_b = format!("{}b", "a".repeat(199));
        for name in [long_a.as_str(), &long_b, "x.y.z", "-odd-", "Ünïcode.run"] {
            for c in Component::ALL {
                let job = job_name(name, c);
                assert!(job.len() <= MAX_JOB_NAME, "{job}");
                assert!(job.ends_with(c.as_str()));
                assert!(
                    job.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{job}"
                );
                assert!(!job.starts_with('-'), "{job}");
            }
        }
        assert_ne!(
            job_name(&long_a, Component::Extract),
            job_name(&long_b, Component::Extract)
        );
        assert_ne!(
            job_name("x.y", Component::Reduce),
            job_name("x-y", Component::Reduce)
        );
    }
}
