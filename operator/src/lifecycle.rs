//! Pure decisions about a run's lifecycle on the cluster: a step that finished is never redone,
//! the TTL is the run's (its Jobs go once the whole run has finished and the time has passed),
//! and a running Job is only ever changed in the fields Kubernetes lets change.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use pomona_crds::ShardCounts;
use serde_json::{Value, json};

/// When a finished run's Jobs are removed (`spec.ttlSecondsAfterFinished`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No TTL: the Jobs stay.
    Never,
    /// Not yet: look again after this long.
    In(Duration),
    /// Now.
    Now,
}

/// The expiry of a run that finished at `completion`, with `ttl` seconds to live.
pub fn expiry(ttl: Option<i32>, completion: Option<&Time>, now: Timestamp) -> Expiry {
    let Some(ttl) = ttl else {
        return Expiry::Never;
    };
    let Some(completion) = completion else {
        return Expiry::Now;
    };
    let ends = completion
        .0
        .as_second()
        .saturating_add(i64::from(ttl.max(0)));
    let left = ends.saturating_sub(now.as_second());
    if left <= 0 {
        Expiry::Now
    } else {
        Expiry::In(Duration::from_secs(left as u64))
    }
}

/// Extraction is over once every shard succeeded or failed for good. The status's counts never
/// go down, so this holds after the extract Job is gone (deleted by hand, or by a TTL).
pub fn extraction_over(shards: Option<&ShardCounts>) -> bool {
    shards.is_some_and(|s| s.total > 0 && s.succeeded + s.failed >= s.total)
}

/// How long after a Job completed its pod's summary may still be missing from the watch cache
/// (which may see the Job's completion before the pod's last change) before it counts as lost.
pub const SUMMARY_GRACE: Duration = Duration::from_secs(30);

/// A completed Job whose pod's summary has not been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingSummary {
    /// Still within [`SUMMARY_GRACE`]: look again after this long.
    Wait(Duration),
    /// Lost (the pod was removed before it was read): run the Job again, which is harmless (the
    /// plan step finds its plan; the reduce step rewrites the same bytes).
    Lost,
}

/// The missing summary of a Job that completed at `completion` (a Job that says not when is
/// taken as completed long ago).
pub fn missing_summary(completion: Option<&Time>, now: Timestamp) -> MissingSummary {
    let Some(completion) = completion else {
        return MissingSummary::Lost;
    };
    let waited = now.as_millisecond() - completion.0.as_millisecond();
    let grace = i64::try_from(SUMMARY_GRACE.as_millis()).unwrap_or(i64::MAX);
    if waited >= grace {
        MissingSummary::Lost
    } else {
        let left = u64::try_from(grace - waited.max(0)).unwrap_or(0);
        MissingSummary::Wait(Duration::from_millis(left))
    }
}

/// What to do about the reduce Job: `None` while its summary is read or recorded, or the Job
/// has not completed; else how long its missing summary has been missing.
pub fn reduce_summary(
    job: &Job,
    reported: bool,
    recorded: bool,
    now: Timestamp,
) -> Option<MissingSummary> {
    let status = job.status.as_ref()?;
    let complete = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Complete" && c.status == "True");
    (complete && !reported && !recorded)
        .then(|| missing_summary(status.completion_time.as_ref(), now))
}

/// The two fields of a running Job a spec edit may move.
pub fn mutable_fields(job: &Job) -> (bool, Option<i32>) {
    let spec = job.spec.as_ref();
    (
        spec.and_then(|s| s.suspend).unwrap_or(false),
        spec.and_then(|s| s.parallelism),
    )
}

/// The merge patch that brings a running Job's mutable fields to `desired`'s (its pod template
/// and the rest are immutable: re-applying the whole Job after a runner edit is refused).
pub fn mutable_patch(desired: &Job) -> Value {
    let (suspend, parallelism) = mutable_fields(desired);
    json!({ "spec": { "suspend": suspend, "parallelism": parallelism } })
}

/// Whether the pod template `desired` asks for differs from `current`'s in what a runner edit
/// changes: image, arguments, resources, node selector, tolerations, service account. (The
/// environment follows the storage settings, which cannot change; fields the API server
/// defaults are left out of the comparison.)
pub fn runner_changed(current: &Job, desired: &Job) -> bool {
    let key = |job: &Job| {
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        let c = pod.containers.first().cloned().unwrap_or_default();
        let resources = c.resources.unwrap_or_default();
        json!([
            c.image,
            c.args,
            resources.requests,
            resources.limits,
            pod.node_selector,
            pod.tolerations,
            pod.service_account_name,
        ])
    };
    key(current) != key(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("a time")
    }

    #[test]
    fn a_run_expires_ttl_seconds_after_it_finished() {
        let done = Time(at(1_000));
        assert_eq!(expiry(None, Some(&done), at(5_000)), Expiry::Never);
        assert_eq!(expiry(Some(0), Some(&done), at(1_000)), Expiry::Now);
        assert_eq!(
            expiry(Some(60), Some(&done), at(1_030)),
            Expiry::In(Duration::from_secs(30))
        );
        assert_eq!(expiry(Some(60), Some(&done), at(1_060)), Expiry::Now);
        assert_eq!(expiry(Some(60), None, at(1_060)), Expiry::Now);
    }

    #[test]
    fn extraction_is_over_when_every_shard_ended() {
        let counts = |total, succeeded, failed| ShardCounts {
            total,
            succeeded,
            failed,
            active: 0,
        };
        assert!(!extraction_over(None));
        assert!(!extraction_over(Some(&counts(0, 0, 0))));
        assert!(!extraction_over(Some(&counts(3, 2, 0))));
        assert!(extraction_over(Some(&counts(3, 2, 1))));
        assert!(extraction_over(Some(&counts(3, 3, 0))));
    }

    #[test]
    fn only_suspend_and_parallelism_are_patched_and_runner_edits_are_seen() {
        let job = |image: &str, suspend: bool| -> Job {
            serde_json::from_value(json!({ "spec": {
                "suspend": suspend, "parallelism": 2,
                "template": { "spec": { "containers": [{ "name": "pomona", "image": image }] } }
            }}))
            .expect("a Job")
        };
        let running = job("runner:1", false);
        let desired = job("runner:2", true);
        assert_eq!(
            mutable_patch(&desired),
            json!({ "spec": { "suspend": true, "parallelism": 2 } })
        );
        assert!(runner_changed(&running, &desired));
        assert!(!runner_changed(&running, &job("runner:1", true)));
        assert_eq!(mutable_fields(&running), (false, Some(2)));
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn a_missing_summary_is_lost_only_after_the_grace() {
        let at = |s: i64| Time(Timestamp::from_second(s).unwrap());
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            missing_summary(Some(&at(990)), now),
            MissingSummary::Wait(Duration::from_secs(20))
        );
        assert_eq!(missing_summary(Some(&at(970)), now), MissingSummary::Lost);
        assert_eq!(missing_summary(None, now), MissingSummary::Lost);
    }
}
