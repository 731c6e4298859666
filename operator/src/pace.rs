//! The pace of a run (`status.progress`): images per second over a recent window and when
//! extraction should end, computed from the finish times and summaries of the extract pods and
//! from the status's own conditions — never from the operator's memory, so a restarted or
//! new leader computes the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use pomona_crds::contract::progress::{self, Sample};
use pomona_crds::{ImageCounts, Phase, Progress};

use crate::observe::{PodObservation, PodPhase, seconds};

/// The window of the rate, in seconds: the last 10 minutes of finished shards.
pub const WINDOW: f64 = 600.0;

/// What `status.progress` says while suspended.
pub const SUSPENDED: &str = "suspended: no rate or estimate while spec.suspend is true";

/// The pace of a run in `phase`, with `images` counted so far, from its extract pods and its
/// (new) conditions: a rate and an estimated end while it extracts, a note while suspended or
/// while no shard has finished since extraction started or resumed, nothing otherwise.
pub fn progress(
    phase: Phase,
    images: Option<&ImageCounts>,
    extract_pods: &[PodObservation],
    conditions: &[Condition],
) -> Option<Progress> {
    match phase {
        Phase::Suspended => {
            return Some(Progress {
                note: Some(SUSPENDED.into()),
                ..Progress::default()
            });
        }
        Phase::Extracting => {}
        _ => return None,
    }
    let images = images.copied().unwrap_or_default();
    // The pace is measured from when extraction started, or resumed: the Suspended condition
    // turned False then (it is False from the start for a run never suspended).
    let started = extract_pods
        .iter()
        .filter_map(|p| p.started_at.as_ref())
        .map(seconds)
        .min_by(f64::total_cmp);
    let resumed = conditions
        .iter()
        .find(|c| c.type_ == "Suspended" && c.status == "False")
        .map(|c| seconds(&c.last_transition_time));
    let since = match (started, resumed) {
        (Some(s), Some(r)) => s.max(r),
        (s, r) => s.or(r)?,
    };
    let mut finished: Vec<(f64, u64)> = extract_pods
        .iter()
        .filter(|p| p.phase == PodPhase::Succeeded)
        .filter_map(|p| {
            let at = seconds(p.finished_at.as_ref()?);
            let summary = p.summary.as_ref()?;
            (at > since).then_some((at, summary.processed + summary.failed))
        })
        .collect();
    finished.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut samples = vec![Sample { at: since, done: 0 }];
    for (at, images) in finished {
        let done = samples.last().map_or(0, |s| s.done) + images;
        samples.push(Sample { at, done });
    }
    let last = samples.last().map_or(since, |s| s.at);
    let Some(rate) = progress::rate(&samples, WINDOW) else {
        return Some(Progress {
            note: Some(
                "measuring: no shard has finished since extraction started or resumed".into(),
            ),
            ..Progress::default()
        });
    };
    let left = progress::seconds_left(images.processed + images.failed, images.total, rate)?;
    let end = Timestamp::from_second((last + left).ceil() as i64).ok()?;
    Some(Progress {
        images_per_second: Some((rate * 10.0).round() / 10.0),
        estimated_completion_time: Some(end.to_string()),
        note: None,
    })
}
