//! The operator's Prometheus metrics, served on `/metrics` in the text exposition format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `pomona_reconciles_total` | counter | |
//! | `pomona_reconcile_errors_total` | counter | `category` (a fixed set: [`ErrorCategory`]) |
//! | `pomona_reconcile_duration_seconds` | histogram | |
//! | `pomona_runs` | gauge | `phase` (every phase, 0 included), computed at scrape time |
//! | `pomona_images_processed_total` | counter | |
//! | `pomona_images_failed_total` | counter | |
//! | `pomona_leader` | gauge | 1 on the replica that holds the lease |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pomona_crds::{FeatureExtractionStatus, Phase};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a reconcile failed, as a metric label: a fixed, small set (never an error message).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorCategory {
    /// The Kubernetes API refused or failed a request.
    Api,
    /// The run's objects are not as the operator left them (a Job of its name owned by something
    /// else, a step's record lost).
    Spec,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: ErrorCategory,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// The metrics, registered once; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<CategoryLabels, Counter>,
    duration: Histogram,
    runs: Family<PhaseLabels, Gauge>,
    images_processed: Counter,
    images_failed: Counter,
    leader: Gauge,
    /// The image counts already added, per resource (its uid): a reconcile may start from a
    /// status older than the one last written (the watch cache lags the writes), and what was
    /// counted must not be counted again.
    counted: Mutex<HashMap<String, (u64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pomona");
        let reconciles = Counter::default();
        let errors = Family::<CategoryLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let runs = Family::<PhaseLabels, Gauge>::default();
        let images_processed = Counter::default();
        let images_failed = Counter::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took",
            duration.clone(),
        );
        registry.register("runs", "FeatureExtraction resources by phase", runs.clone());
        registry.register(
            "images_processed",
            "Images turned into features, as reported in the runs' status",
            images_processed.clone(),
        );
        registry.register(
            "images_failed",
            "Images dead-lettered, as reported in the runs' status",
            images_failed.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the leader lease and runs the controller",
            leader.clone(),
        );
        for category in [ErrorCategory::Api, ErrorCategory::Spec] {
            let _ = errors.get_or_create(&CategoryLabels { category });
        }
        Self {
            registry,
            reconciles,
            errors,
            duration,
            runs,
            images_processed,
            images_failed,
            leader,
            counted: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and its duration.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, category: ErrorCategory) {
        self.errors
            .get_or_create(&CategoryLabels { category })
            .inc();
    }

    /// Adds the images a status write of the resource `uid` newly reports as processed or
    /// failed: beyond both the status it started from (`old`, what an earlier process counted)
    /// and what this process already counted for it.
    pub fn status_written(
        &self,
        uid: &str,
        old: Option<&FeatureExtractionStatus>,
        new: &FeatureExtractionStatus,
    ) {
        let counts = |s: Option<&FeatureExtractionStatus>| {
            s.and_then(|s| s.images.as_ref())
                .map_or((0, 0), |i| (i.processed, i.failed))
        };
        let (p0, f0) = counts(old);
        let (p1, f1) = counts(Some(new));
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let seen = counted.entry(uid.to_string()).or_insert((p0, f0));
        let (p0, f0) = (seen.0.max(p0), seen.1.max(f0));
        self.images_processed.inc_by(p1.saturating_sub(p0));
        self.images_failed.inc_by(f1.saturating_sub(f0));
        *seen = (p0.max(p1), f0.max(f1));
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition, with `pomona_runs` set from `phases` (the phase of every resource
    /// the controller knows; `None` for one without a status yet, counted as Pending).
    pub fn render(&self, phases: impl IntoIterator<Item = Option<Phase>>) -> String {
        let mut counts = [0i64; Phase::ALL.len()];
        for phase in phases {
            let phase = phase.unwrap_or(Phase::Pending);
            if let Some(i) = Phase::ALL.iter().position(|p| *p == phase) {
                counts[i] += 1;
            }
        }
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            self.runs
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .set(count);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomona_crds::ImageCounts;

    fn status(processed: u64, failed: u64) -> FeatureExtractionStatus {
        FeatureExtractionStatus {
            images: Some(ImageCounts {
                total: 100,
                processed,
                failed,
            }),
            ..FeatureExtractionStatus::default()
        }
    }

    #[test]
    fn exposition_holds_every_metric_and_phase() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(20));
        m.failed(ErrorCategory::Spec);
        m.status_written("uid-1", None, &status(10, 1));
        m.status_written("uid-1", Some(&status(10, 1)), &status(40, 1));
        // A reconcile that started from a stale status writes the same counts again: nothing
        // is counted twice.
        m.status_written("uid-1", Some(&status(10, 1)), &status(40, 1));
        m.set_leader(true);
        let text = m.render([Some(Phase::Extracting), Some(Phase::Extracting), None]);
        for line in [
            "pomona_reconciles_total 1",
            "pomona_reconcile_errors_total{category=\"Spec\"} 1",
            "pomona_reconcile_errors_total{category=\"Api\"} 0",
            "pomona_reconcile_duration_seconds_count 1",
            "pomona_runs{phase=\"Extracting\"} 2",
            "pomona_runs{phase=\"Pending\"} 1",
            "pomona_runs{phase=\"Succeeded\"} 0",
            "pomona_images_processed_total 40",
            "pomona_images_failed_total 1",
            "pomona_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // A resource gone from the cache leaves the gauge.
        let text = m.render([]);
        assert!(
            text.contains("pomona_runs{phase=\"Extracting\"} 0"),
            "{text}"
        );
    }
}
