//! The status of a run, computed by a pure function from what the operator observed, and the
//! comparison that decides whether it must be written.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
pub use pomona_crds::contract::PlanTotals;
use pomona_crds::contract::cost::{self, CostRates, PodUsage};
use pomona_crds::contract::{OutputLayout, ShardGroups};
use pomona_crds::{
    Cost, FeatureExtractionSpec, FeatureExtractionStatus, ImageCounts, Outputs, PcaResult, Phase,
    ShardCounts,
};

use crate::observe::{PodObservation, PodPhase, job_condition, job_indexes, shorten};
use crate::pace;
use crate::validate::Invalid;

/// Longest `status.message` (and condition message), in bytes.
pub const MAX_MESSAGE: usize = 1024;
/// Failed shards named in a failure message; the rest are counted.
const NAMED_SHARDS: usize = 5;

/// The condition types of a run, in the order they are written.
pub const CONDITIONS: [&str; 5] = ["Planned", "Progressing", "Complete", "Failed", "Suspended"];

/// How far the plan of a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanState {
    /// Nothing listed yet, no plan Job.
    NotStarted,
    /// The plan Job lists the source (or waits to).
    Running,
    /// The plan is written: its totals, from the plan pod's summary or recorded in the status.
    Ready(PlanTotals),
}

/// Everything the status of a run is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// `metadata.generation` of the resource.
    pub generation: Option<i64>,
    /// The resource's spec.
    pub spec: &'a FeatureExtractionSpec,
    /// The status as last written.
    pub old: Option<&'a FeatureExtractionStatus>,
    /// Why the resource cannot run, if it cannot.
    pub invalid: Option<&'a Invalid>,
    /// How far the plan is.
    pub plan: PlanState,
    /// Status of the extract Job, if it exists.
    pub extract: Option<&'a JobStatus>,
    /// Pods of the plan Job (for the run's cost).
    pub plan_pods: &'a [PodObservation],
    /// Pods of the extract Job (every attempt of every index still present).
    pub extract_pods: &'a [PodObservation],
    /// Status of the merge Job, if it exists (a run of many shards).
    pub merge: Option<&'a JobStatus>,
    /// Pods of the merge Job.
    pub merge_pods: &'a [PodObservation],
    /// Status of the fit Job, if it exists (a run with a projection Job).
    pub fit: Option<&'a JobStatus>,
    /// Pods of the fit Job.
    pub fit_pods: &'a [PodObservation],
    /// Status of the projection Job, if it exists.
    pub project: Option<&'a JobStatus>,
    /// Pods of the projection Job (every attempt of every group still present).
    pub project_pods: &'a [PodObservation],
    /// Status of the reduce Job, if it exists.
    pub reduce: Option<&'a JobStatus>,
    /// Pods of the reduce Job.
    pub reduce_pods: &'a [PodObservation],
    /// The PCA the reduce step reports (in its pod's termination summary), once it has.
    pub pca: Option<&'a PcaResult>,
    /// The label agreement the reduce step reports, once it has.
    pub label_agreement: Option<f64>,
    /// Why the plan Job's last attempt failed while it retries (storage unreachable, say):
    /// shown in the message of a run not yet planned.
    pub retrying: Option<&'a str>,
    /// The cluster admin's prices, for `status.cost.estimated`.
    pub rates: Option<&'a CostRates>,
}

/// The phase, with the reason and message that explain it.
struct Verdict {
    phase: Phase,
    reason: String,
    message: String,
}

fn verdict(phase: Phase, reason: &str, message: impl Into<String>) -> Verdict {
    Verdict {
        phase,
        reason: reason.into(),
        message: message.into(),
    }
}

/// The new status of a run. `now` stamps the conditions that change and the start and
/// completion times.
pub fn compute(obs: &Observed<'_>, now: &Time) -> FeatureExtractionStatus {
    if let Some(old) = obs.old.filter(|o| o.phase.is_some_and(Phase::is_finished)) {
        return FeatureExtractionStatus {
            observed_generation: obs.generation,
            ..old.clone()
        };
    }
    let (images, shards) = counts(obs);
    let verdict = decide(obs, shards.as_ref());
    let finished = verdict.phase.is_finished();
    let old = obs.old.cloned().unwrap_or_default();
    let started = !matches!(verdict.phase, Phase::Pending);
    let message = shorten(&verdict.message, MAX_MESSAGE);
    let succeeded = verdict.phase == Phase::Succeeded;
    let conditions = conditions(obs, &verdict, &message, &old.conditions, now);
    let images = images.or(old.images);
    FeatureExtractionStatus {
        phase: Some(verdict.phase),
        observed_generation: obs.generation,
        progress: pace::progress(
            verdict.phase,
            images.as_ref(),
            obs.extract_pods,
            &conditions,
        ),
        cost: cost(obs, images.map_or(0, |i| i.processed), old.cost.as_ref()),
        conditions,
        start_time: old
            .start_time
            .clone()
            .or_else(|| started.then(|| now.clone())),
        completion_time: finished.then(|| {
            old.completion_time
                .clone()
                .or_else(|| obs.reduce.and_then(|r| r.completion_time.clone()))
                .unwrap_or_else(|| now.clone())
        }),
        images,
        shards: shards.or(old.shards),
        outputs: succeeded.then(|| outputs(obs.spec)),
        pca: if succeeded {
            obs.pca.cloned().or(old.pca)
        } else {
            None
        },
        label_agreement: if succeeded {
            obs.label_agreement.or(old.label_agreement)
        } else {
            None
        },
        message: Some(message),
    }
}

fn decide(obs: &Observed<'_>, shards: Option<&ShardCounts>) -> Verdict {
    if let Some(invalid) = obs.invalid {
        return verdict(Phase::Failed, invalid.reason(), invalid.to_string());
    }
    let suspend = obs.spec.suspend;
    if let Some(reduce) = obs.reduce {
        if job_condition(reduce, "Complete").is_some() {
            // The run's final counts and PCA come from the reduce pod's summary: until it is
            // read the run is not over (a pod removed before it was read makes the reduce
            // step run again, which writes the same bytes).
            if obs.pca.is_none() && obs.old.is_none_or(|o| o.pca.is_none()) {
                return verdict(
                    Phase::Reducing,
                    "AwaitingReduceSummary",
                    "the reduce Job completed; reading its pod's summary (the run's counts and \
                     PCA)",
                );
            }
            return verdict(Phase::Succeeded, "Succeeded", "every output is written");
        }
        if let Some(reason) = job_condition(reduce, "Failed") {
            let why = latest_failure(obs.reduce_pods, None).map_or_else(
                || format!("the reduce Job failed ({reason})"),
                |p| p.explain(),
            );
            return reduce_failed(&why);
        }
        if suspend {
            return suspended();
        }
        let doing = if obs.project.is_some() {
            "reading the projected shards and writing the report"
        } else {
            "fitting or applying the PCA"
        };
        return verdict(Phase::Reducing, "Reducing", doing);
    }
    if let Some(project) = obs.project {
        let groups = projection(obs);
        let (done, _) = job_indexes(project);
        return step_verdict(
            project,
            suspend,
            verdict(
                Phase::Reducing,
                "Projected",
                "every shard is projected; the reduce pod writes the report",
            ),
            |reason| group_failure("projecting", groups, project, obs.project_pods, reason),
            verdict(
                Phase::Reducing,
                "Projecting",
                format!(
                    "{} of {} groups of shards projected through the PCA, {} running",
                    done.len(),
                    groups.map_or(0, |g| g.groups()),
                    project.active.unwrap_or(0)
                ),
            ),
        );
    }
    if let Some(fit) = obs.fit {
        let doing = if obs.merge.is_some() {
            "merging the merge Job's blocks and fitting the PCA"
        } else {
            "merging the shards' statistics and fitting the PCA"
        };
        return step_verdict(
            fit,
            suspend,
            verdict(
                Phase::Reducing,
                "Fitted",
                "the PCA is fitted; the projection Job projects the shards through it",
            ),
            |reason| {
                let why = latest_failure(obs.fit_pods, None)
                    .map_or_else(|| format!("the fit Job failed ({reason})"), |p| p.explain());
                format!("fitting the PCA: {why}")
            },
            verdict(Phase::Reducing, "Fitting", doing),
        );
    }
    if let Some(merge) = obs.merge {
        let blocks = merge_blocks(obs);
        let count = blocks.map_or(0, |b| b.groups());
        let (done, _) = job_indexes(merge);
        return step_verdict(
            merge,
            suspend,
            verdict(
                Phase::Reducing,
                "Merged",
                format!("the statistics are merged in {count} blocks; the PCA is fitted next"),
            ),
            |reason| {
                let doing = "merging the statistics of";
                group_failure(doing, blocks, merge, obs.merge_pods, reason)
            },
            verdict(
                Phase::Reducing,
                "Merging",
                format!(
                    "{} of {count} blocks of statistics merged, {} running",
                    done.len(),
                    merge.active.unwrap_or(0)
                ),
            ),
        );
    }
    if let Some(extract) = obs.extract {
        let (_, failed) = job_indexes(extract);
        let counts = shards.copied().unwrap_or_default();
        let done = counts.succeeded + counts.failed >= counts.total;
        let tolerated = failed.len() <= obs.spec.sharding.max_failed_shards as usize;
        let complete = job_condition(extract, "Complete").is_some();
        if let Some(reason) = job_condition(extract, "Failed")
            && !(done && tolerated)
        {
            return verdict(
                Phase::Failed,
                "ShardsFailed",
                shard_failures(obs, &failed, reason),
            );
        }
        if complete || job_condition(extract, "Failed").is_some() {
            let mut message = format!("{} shards extracted", counts.succeeded);
            if !failed.is_empty() {
                message.push_str(&format!(
                    "; {} failed, within spec.sharding.maxFailedShards: {}",
                    failed.len(),
                    shard_failures(obs, &failed, "FailedIndexes")
                ));
            }
            return verdict(Phase::Reducing, "Extracted", message);
        }
        if suspend {
            return suspended();
        }
        return verdict(
            Phase::Extracting,
            "Extracting",
            format!(
                "{} of {} shards done, {} running",
                counts.succeeded, counts.total, counts.active
            ),
        );
    }
    // Extraction ended and its Job is gone (deleted by hand): it is never redone.
    if crate::lifecycle::extraction_over(obs.old.and_then(|o| o.shards.as_ref())) {
        if suspend {
            return suspended();
        }
        return verdict(
            Phase::Reducing,
            "Extracted",
            "every shard is extracted; the reduce step starts",
        );
    }
    if suspend {
        return suspended();
    }
    if let (Some(problem), PlanState::NotStarted | PlanState::Running) = (obs.retrying, obs.plan) {
        return verdict(
            Phase::Planning,
            "PlanningRetrying",
            format!("planning will be retried: {problem}"),
        );
    }
    match obs.plan {
        PlanState::NotStarted => verdict(Phase::Pending, "Pending", "waiting to list the source"),
        PlanState::Running => verdict(
            Phase::Planning,
            "Planning",
            "the plan Job lists the source and writes the plan",
        ),
        PlanState::Ready(plan) => verdict(
            Phase::Extracting,
            "Planned",
            format!("{} images in {} shards", plan.images, plan.shards),
        ),
    }
}

/// The verdict of a Job of the reduce step before the reduce Job: `done` once it is Complete,
/// `ReduceFailed` with `failure(reason)` once it failed, `Suspended` while the run is, else
/// `running`.
fn step_verdict(
    job: &JobStatus,
    suspend: bool,
    done: Verdict,
    failure: impl FnOnce(&str) -> String,
    running: Verdict,
) -> Verdict {
    if job_condition(job, "Complete").is_some() {
        return done;
    }
    if let Some(reason) = job_condition(job, "Failed") {
        return reduce_failed(&failure(reason));
    }
    if suspend {
        return suspended();
    }
    running
}

/// The verdict of a run whose reduce step failed, for `why`.
fn reduce_failed(why: &str) -> Verdict {
    verdict(
        Phase::Failed,
        "ReduceFailed",
        format!("reduce failed: {why}"),
    )
}

/// The verdict of a suspended run.
fn suspended() -> Verdict {
    verdict(Phase::Suspended, "Suspended", "spec.suspend is true")
}

/// `status` with an error that stops the run's progress: the `Progressing` condition False with
/// `reason` and the message, which is also the status message. The next reconcile that gets
/// through computes the status afresh.
pub fn with_error(
    status: &FeatureExtractionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> FeatureExtractionStatus {
    let message = shorten(message, MAX_MESSAGE);
    let mut s = status.clone();
    s.message = Some(message.clone());
    match s.conditions.iter_mut().find(|c| c.type_ == "Progressing") {
        Some(c) => {
            if c.status != "False" {
                c.last_transition_time = now.clone();
            }
            c.status = "False".into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => s.conditions.push(Condition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
    s
}

/// "shards 3, 7 failed (MaxFailedIndexesExceeded): shard 3: …; shard 7: …".
fn shard_failures(obs: &Observed<'_>, failed: &[u32], reason: &str) -> String {
    if failed.is_empty() {
        return format!("the extract Job failed ({reason})");
    }
    let named: Vec<String> = failed
        .iter()
        .take(NAMED_SHARDS)
        .map(u32::to_string)
        .collect();
    let mut out = format!("shards {}", named.join(", "));
    if failed.len() > NAMED_SHARDS {
        out.push_str(&format!(" and {} more", failed.len() - NAMED_SHARDS));
    }
    out.push_str(&format!(" failed ({reason})"));
    for &index in failed.iter().take(NAMED_SHARDS) {
        if let Some(pod) = latest_failure(obs.extract_pods, Some(index)) {
            out.push_str(&format!("; shard {index}: {}", pod.explain()));
        }
    }
    out
}

/// The projection of the run, when it has a projection Job.
fn projection(obs: &Observed<'_>) -> Option<ShardGroups> {
    match obs.plan {
        PlanState::Ready(plan) => crate::jobs::projection(obs.spec, plan.shards),
        PlanState::NotStarted | PlanState::Running => None,
    }
}

/// The merge Job's blocks of the run, when it has a merge Job.
fn merge_blocks(obs: &Observed<'_>) -> Option<ShardGroups> {
    match obs.plan {
        PlanState::Ready(plan) => crate::jobs::merge_blocks(obs.spec, plan.shards),
        PlanState::NotStarted | PlanState::Running => None,
    }
}

/// "projecting group 3 (shards 192 to 255): …" of a failed Job of `groups` of shards (`doing`
/// them): its first failed index and the last failed pod's reason.
fn group_failure(
    doing: &str,
    groups: Option<ShardGroups>,
    job: &JobStatus,
    pods: &[PodObservation],
    reason: &str,
) -> String {
    let (_, failed) = job_indexes(job);
    let Some(&group) = failed.first() else {
        return format!("{doing} a group of shards failed ({reason})");
    };
    let what = if doing == "projecting" {
        "group"
    } else {
        "block"
    };
    let mut out = match groups.map(|g| g.shards_of(group)) {
        Some(s) if !s.is_empty() => format!(
            "{doing} {what} {group} (shards {} to {})",
            s.start,
            s.end - 1
        ),
        _ => format!("{doing} {what} {group}"),
    };
    match latest_failure(pods, Some(group)) {
        Some(pod) => out.push_str(&format!(": {}", pod.explain())),
        None => out.push_str(&format!(" ({reason})")),
    }
    out
}

/// The last failed pod (of `index`, if given).
fn latest_failure(pods: &[PodObservation], index: Option<u32>) -> Option<&PodObservation> {
    pods.iter()
        .filter(|p| p.phase == PodPhase::Failed && (index.is_none() || p.index == index))
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
}

/// Image and shard counts from the extract Job and its pods. Each index counts once: the
/// summary of its latest succeeded pod; a failed index counts all its images as failed. Once
/// the reduce pod has reported, its counts (read back from the outputs in S3, the failed
/// shards' dead letters included) are the run's. Counts never go down: pods of a long run may
/// be garbage-collected before it ends, and what they reported stays counted.
fn counts(obs: &Observed<'_>) -> (Option<ImageCounts>, Option<ShardCounts>) {
    let (images, shards) = pod_counts(obs);
    let reduced = obs
        .reduce_pods
        .iter()
        .filter(|p| p.phase == PodPhase::Succeeded)
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
        .and_then(|p| p.summary.as_ref());
    let images = match (images, reduced) {
        (Some(counted), Some(summary)) => Some(ImageCounts {
            total: counted.total,
            processed: summary.processed,
            failed: summary.failed,
            reused: summary.reused.unwrap_or(0),
        }),
        (counted, _) => counted.map(|c| {
            let old = obs.old.and_then(|o| o.images).unwrap_or_default();
            ImageCounts {
                total: c.total,
                processed: c.processed.max(old.processed),
                failed: c.failed.max(old.failed),
                reused: c.reused.max(old.reused),
            }
        }),
    };
    (images, shards)
}

/// [`counts`] from the extract Job and its pods alone.
fn pod_counts(obs: &Observed<'_>) -> (Option<ImageCounts>, Option<ShardCounts>) {
    let PlanState::Ready(plan) = obs.plan else {
        return (None, None);
    };
    let Some(extract) = obs.extract else {
        let fresh = obs.old.is_none_or(|o| o.images.is_none());
        return (
            fresh.then_some(ImageCounts {
                total: plan.images,
                ..ImageCounts::default()
            }),
            fresh.then_some(ShardCounts {
                total: plan.shards,
                ..ShardCounts::default()
            }),
        );
    };
    let (completed, failed) = job_indexes(extract);
    let mut latest: BTreeMap<u32, &PodObservation> = BTreeMap::new();
    for pod in obs.extract_pods {
        let (Some(index), Some(_)) = (pod.index, &pod.summary) else {
            continue;
        };
        if pod.phase != PodPhase::Succeeded || index >= plan.shards {
            continue;
        }
        let entry = latest.entry(index).or_insert(pod);
        if pod.finished_at >= entry.finished_at {
            *entry = pod;
        }
    }
    let mut images = ImageCounts {
        total: plan.images,
        ..ImageCounts::default()
    };
    for (index, pod) in &latest {
        if failed.contains(index) {
            continue;
        }
        let summary = pod.summary.as_ref().expect("filtered on a summary");
        images.processed += summary.processed;
        images.failed += summary.failed;
        images.reused += summary.reused.unwrap_or(0);
    }
    for &index in failed.iter().filter(|&&i| i < plan.shards) {
        images.failed += plan.shard_len(index);
    }
    let shards = ShardCounts {
        total: plan.shards,
        succeeded: u32::try_from(completed.len()).unwrap_or(u32::MAX),
        failed: u32::try_from(failed.len()).unwrap_or(u32::MAX),
        active: u32::try_from(extract.active.unwrap_or(0).max(0)).unwrap_or(0),
    };
    (Some(images), Some(shards))
}

/// What the run's ended pods used (every Job's, every attempt), priced at the
/// admin's rates. The cost never goes down: once pods are garbage-collected, what was counted
/// with them stays.
fn cost(obs: &Observed<'_>, processed: u64, old: Option<&Cost>) -> Option<Cost> {
    let pods: Vec<PodUsage> = obs
        .plan_pods
        .iter()
        .chain(obs.extract_pods)
        .chain(obs.merge_pods)
        .chain(obs.fit_pods)
        .chain(obs.project_pods)
        .chain(obs.reduce_pods)
        .filter_map(PodObservation::usage)
        .collect();
    let new = cost::cost(&pods, processed, obs.rates);
    match old {
        Some(old) if old.pods > new.pods => Some(old.clone()),
        _ => (new.pods > 0).then_some(new),
    }
}

fn outputs(spec: &FeatureExtractionSpec) -> Outputs {
    let layout = OutputLayout::new(&spec.output.uri);
    Outputs {
        features: Some(layout.features_dir()),
        dead_letter: Some(layout.deadletter_dir()),
        pca_model: Some(layout.pca_dir()),
        reduced: Some(layout.reduced_dir()),
        report: Some(layout.report_dir()),
        csv: spec.output.csv.then(|| layout.csv()),
    }
}

/// The five conditions; a condition keeps its lastTransitionTime while its status is unchanged.
fn conditions(
    obs: &Observed<'_>,
    verdict: &Verdict,
    message: &str,
    old: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let phase = verdict.phase;
    let planned = matches!(obs.plan, PlanState::Ready(_));
    let progressing = matches!(phase, Phase::Planning | Phase::Extracting | Phase::Reducing);
    let states = [
        (
            planned,
            if planned { "Planned" } else { "NotPlanned" },
            if planned {
                "the plan is written"
            } else {
                "the source is not listed yet"
            },
        ),
        (progressing, verdict.reason.as_str(), message),
        (phase == Phase::Succeeded, verdict.reason.as_str(), message),
        (phase == Phase::Failed, verdict.reason.as_str(), message),
        (phase == Phase::Suspended, verdict.reason.as_str(), message),
    ];
    CONDITIONS
        .iter()
        .zip(states)
        .map(|(type_, (on, reason, message))| {
            let status = if on { "True" } else { "False" };
            let since = old
                .iter()
                .find(|c| c.type_ == *type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: obs.generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Whether `new` differs from `old` in anything but timestamps: the status is written only
/// then.
pub fn changed(old: Option<&FeatureExtractionStatus>, new: &FeatureExtractionStatus) -> bool {
    let Some(old) = old else { return true };
    normalized(old) != normalized(new)
}

fn normalized(status: &FeatureExtractionStatus) -> FeatureExtractionStatus {
    let epoch = || Time(Timestamp::UNIX_EPOCH);
    let mut s = status.clone();
    s.start_time = s.start_time.map(|_| epoch());
    s.completion_time = s.completion_time.map(|_| epoch());
    for c in &mut s.conditions {
        c.last_transition_time = epoch();
    }
    s
}
