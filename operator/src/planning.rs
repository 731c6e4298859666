//! Where the plan step of a run is, read off its Job and pods: a pure function.
//!
//! The plan pod lists the source and writes the plan under the run's own identity; the operator
//! learns the plan's totals from the pod's one-line summary (its termination message). A plan
//! Job whose pod is gone before the summary was read is simply run again: the runner finds the
//! plan it wrote and reports it.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::jiff::Timestamp;
use pomona_crds::contract::PlanTotals;

use crate::lifecycle::{MissingSummary, missing_summary};
use crate::observe::{PodObservation, PodPhase, job_condition};
use crate::validate::Invalid;

/// The plan step as observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Planning {
    /// No plan Job.
    Absent,
    /// The plan Job runs or waits; `retrying` tells why its last pod failed, when one did.
    Running {
        /// The last failed attempt, explained.
        retrying: Option<String>,
    },
    /// A plan pod reported the plan.
    Planned(PlanTotals),
    /// The plan Job completed and its pod's summary is not read yet: look again after this
    /// long (the watch cache may see the Job's completion before the pod's last change).
    Awaiting(Duration),
    /// The plan Job completed but its pod's summary can no longer be read (the pod was
    /// removed): the Job is to be run again.
    Lost,
    /// The plan Job failed for good: the reason and message come from the last pod's summary.
    Failed(Invalid),
}

/// The plan step of a run from its plan Job (if it exists) and its pods, at `now`.
pub fn planning(job: Option<&Job>, pods: &[PodObservation], now: Timestamp) -> Planning {
    let Some(job) = job else {
        return Planning::Absent;
    };
    let default = JobStatus::default();
    let job = job.status.as_ref().unwrap_or(&default);
    let reported = pods
        .iter()
        .filter(|p| p.phase == PodPhase::Succeeded)
        .filter_map(|p| p.summary.as_ref().and_then(|s| s.plan))
        .next();
    if let Some(totals) = reported {
        return Planning::Planned(totals);
    }
    let last_failure = pods
        .iter()
        .filter(|p| p.phase == PodPhase::Failed)
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at));
    if let Some(condition) = job_condition(job, "Failed") {
        // The runner's own reason unless it is the generic one (a runner stopped by SIGTERM
        // says only that), else the kubelet's (`DeadlineExceeded`, `Evicted`), else a generic
        // one.
        let specific = |r: &String| r != "Error";
        let reason = last_failure
            .and_then(|p| p.summary.as_ref().and_then(|s| s.reason.clone()))
            .filter(specific)
            .or_else(|| last_failure.and_then(|p| p.reason.clone()).filter(specific))
            .unwrap_or_else(|| "PlanFailed".to_string());
        let why = last_failure.map_or_else(
            || format!("the plan Job failed ({condition})"),
            PodObservation::explain,
        );
        return Planning::Failed(Invalid::Plan {
            reason,
            message: format!("planning failed: {why}"),
        });
    }
    if job_condition(job, "Complete").is_some() {
        return match missing_summary(job.completion_time.as_ref(), now) {
            MissingSummary::Wait(left) => Planning::Awaiting(left),
            MissingSummary::Lost => Planning::Lost,
        };
    }
    Planning::Running {
        retrying: last_failure.map(PodObservation::explain),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobCondition;
    use pomona_crds::contract::{PodSummary, Step};

    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn job(condition: Option<&str>) -> Job {
        let status = JobStatus {
            conditions: condition.map(|c| {
                vec![JobCondition {
                    type_: c.into(),
                    status: "True".into(),
                    reason: Some(format!("{c}Reason")),
                    ..JobCondition::default()
                }]
            }),
            ..JobStatus::default()
        };
        Job {
            status: Some(status),
            ..Job::default()
        }
    }

    fn pod(phase: PodPhase, summary: Option<PodSummary>, second: i64) -> PodObservation {
        PodObservation {
            index: None,
            phase,
            summary,
            exit_code: Some(if phase == PodPhase::Succeeded { 0 } else { 3 }),
            reason: None,
            message: None,
            finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
            )),
            started_at: None,
            requests: crate::observe::Requests::default(),
        }
    }

    #[test]
    fn the_plan_pod_s_summary_gives_the_totals() {
        let totals = PlanTotals {
            images: 1260,
            bytes: 6_000_000,
            shards: 3,
            images_per_shard: 500,
        };
        let summary = PodSummary {
            plan: Some(totals),
            ..PodSummary::new(Step::Plan)
        };
        assert_eq!(planning(None, &[], now()), Planning::Absent);
        // Just created: no status yet.
        assert_eq!(
            planning(Some(&Job::default()), &[], now()),
            Planning::Running { retrying: None }
        );
        assert_eq!(
            planning(
                Some(&job(None)),
                &[pod(PodPhase::Succeeded, Some(summary), 5)],
                now()
            ),
            Planning::Planned(totals)
        );
        // Complete, but the pod's summary is not in sight: wait a moment (the watch cache may
        // lag), then plan again (the runner finds its own plan).
        let mut complete = job(Some("Complete"));
        complete.status.as_mut().unwrap().completion_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(
            planning(Some(&complete), &[], now()),
            Planning::Awaiting(crate::lifecycle::SUMMARY_GRACE)
        );
        let later = now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(31))
            .unwrap();
        assert_eq!(planning(Some(&complete), &[], later), Planning::Lost);
    }

    #[test]
    fn a_failed_attempt_is_shown_and_a_failed_job_fails_the_run_with_the_pod_s_reason() {
        let denied = PodSummary {
            error: Some("access denied: s3:ListObjectsV2 on bucket \"fruits\"".into()),
            reason: Some("AccessDenied".into()),
            ..PodSummary::new(Step::Plan)
        };
        let attempt = pod(PodPhase::Failed, Some(denied), 10);
        match planning(Some(&job(None)), std::slice::from_ref(&attempt), now()) {
            Planning::Running {
                retrying: Some(why),
            } => assert!(why.contains("access denied"), "{why}"),
            other => panic!("{other:?}"),
        }
        let Planning::Failed(invalid) = planning(Some(&job(Some("Failed"))), &[attempt], now())
        else {
            panic!("not failed")
        };
        assert_eq!(invalid.reason(), "AccessDenied");
        assert!(
            invalid
                .to_string()
                .starts_with("planning failed: access denied")
        );
        let Planning::Failed(invalid) = planning(Some(&job(Some("Failed"))), &[], now()) else {
            panic!("not failed")
        };
        assert_eq!(invalid.reason(), "PlanFailed");
        assert!(invalid.to_string().contains("FailedReason"), "{invalid}");
        // Stopped at its deadline: the runner says only that it was stopped; the kubelet says
        // why.
        let stopped = PodObservation {
            reason: Some("DeadlineExceeded".into()),
            ..pod(
                PodPhase::Failed,
                Some(PodSummary {
                    error: Some("stopped by SIGTERM before the step was done".into()),
                    reason: Some("Error".into()),
                    ..PodSummary::new(Step::Plan)
                }),
                20,
            )
        };
        let Planning::Failed(invalid) = planning(Some(&job(Some("Failed"))), &[stopped], now())
        else {
            panic!("not failed")
        };
        assert_eq!(invalid.reason(), "DeadlineExceeded");
    }
}
