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
//! | `pomona_cpu_seconds_total` | counter | |
//! | `pomona_requested_core_seconds_total` | counter | |
//! | `pomona_requested_memory_gib_seconds_total` | counter | |
//! | `pomona_cost_estimated_total` | counter | `currency` (the operator's one, when it has rates) |
//! | `pomona_leader` | gauge | 1 on the replica that holds the lease |

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
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
struct CurrencyLabels {
    currency: String,
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
    cpu_seconds: Counter<f64, AtomicU64>,
    core_seconds: Counter<f64, AtomicU64>,
    gib_seconds: Counter<f64, AtomicU64>,
    estimated: Family<CurrencyLabels, Counter<f64, AtomicU64>>,
    leader: Gauge,
    /// The figures already added, per resource (its uid): a reconcile may start from a status
    /// older than the one last written (the watch cache lags the writes), and what was counted
    /// must not be counted again.
    counted: Mutex<HashMap<String, Counted>>,
}

/// What a run's status reports that the counters add up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counted {
    processed: u64,
    failed: u64,
    cpu_seconds: f64,
    core_seconds: f64,
    gib_seconds: f64,
    /// The estimated amount, in the status's currency (none: 0).
    amount: f64,
}

impl Counted {
    fn of(status: Option<&FeatureExtractionStatus>) -> Self {
        let images = status.and_then(|s| s.images).unwrap_or_default();
        let cost = status.and_then(|s| s.cost.clone()).unwrap_or_default();
        Self {
            processed: images.processed,
            failed: images.failed,
            cpu_seconds: cost.cpu_seconds,
            core_seconds: cost.requested_core_seconds.unwrap_or(0.0),
            gib_seconds: cost.requested_memory_gib_seconds.unwrap_or(0.0),
            amount: cost.estimated.map_or(0.0, |e| e.amount),
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            processed: self.processed.max(other.processed),
            failed: self.failed.max(other.failed),
            cpu_seconds: self.cpu_seconds.max(other.cpu_seconds),
            core_seconds: self.core_seconds.max(other.core_seconds),
            gib_seconds: self.gib_seconds.max(other.gib_seconds),
            amount: self.amount.max(other.amount),
        }
    }
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
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        let core_seconds = Counter::<f64, AtomicU64>::default();
        let gib_seconds = Counter::<f64, AtomicU64>::default();
        let estimated = Family::<CurrencyLabels, Counter<f64, AtomicU64>>::default();
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
            "cpu_seconds",
            "CPU seconds the runs' ended pods used, as reported in the runs' status.cost",
            cpu_seconds.clone(),
        );
        registry.register(
            "requested_core_seconds",
            "Cores requested times the seconds the runs' ended pods ran (status.cost)",
            core_seconds.clone(),
        );
        registry.register(
            "requested_memory_gib_seconds",
            "GiB of memory requested times the seconds the runs' ended pods ran (status.cost)",
            gib_seconds.clone(),
        );
        registry.register(
            "cost_estimated",
            "Estimated amount of the runs' ended pods at the operator's rates (status.cost)",
            estimated.clone(),
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
            cpu_seconds,
            core_seconds,
            gib_seconds,
            estimated,
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

    /// Adds the images and the cost a status write of the resource `uid` newly reports:
    /// beyond both the status it started from (`old`, what an earlier process counted) and what
    /// this process already counted for it.
    pub fn status_written(
        &self,
        uid: &str,
        old: Option<&FeatureExtractionStatus>,
        new: &FeatureExtractionStatus,
    ) {
        let currency = new
            .cost
            .as_ref()
            .and_then(|c| c.estimated.as_ref())
            .map(|e| e.currency.clone());
        let old = Counted::of(old);
        let new = Counted::of(Some(new));
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let seen = counted.entry(uid.to_string()).or_insert(old);
        let before = seen.max(old);
        self.images_processed
            .inc_by(new.processed.saturating_sub(before.processed));
        self.images_failed
            .inc_by(new.failed.saturating_sub(before.failed));
        let more = |now: f64, then: f64| (now - then).max(0.0);
        self.cpu_seconds
            .inc_by(more(new.cpu_seconds, before.cpu_seconds));
        self.core_seconds
            .inc_by(more(new.core_seconds, before.core_seconds));
        self.gib_seconds
            .inc_by(more(new.gib_seconds, before.gib_seconds));
        if let Some(currency) = currency {
            self.estimated
                .get_or_create(&CurrencyLabels { currency })
                .inc_by(more(new.amount, before.amount));
        }
        *seen = before.max(new);
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
    use pomona_crds::{Cost, CostEstimate, ImageCounts};

    fn status(processed: u64, failed: u64) -> FeatureExtractionStatus {
        FeatureExtractionStatus {
            images: Some(ImageCounts {
                total: 100,
                processed,
                failed,
                ..ImageCounts::default()
            }),
            ..FeatureExtractionStatus::default()
        }
    }

    fn costing(processed: u64, cpu: f64, cores: f64) -> FeatureExtractionStatus {
        FeatureExtractionStatus {
            cost: Some(Cost {
                cpu_seconds: cpu,
                requested_core_seconds: Some(cores),
                requested_memory_gib_seconds: Some(cores / 2.0),
                pods: 1,
                estimated: Some(CostEstimate {
                    amount: cores / 100.0,
                    currency: "EUR".into(),
                    per_core_hour: 0.036,
                    per_gib_hour: 0.0045,
                }),
                ..Cost::default()
            }),
            ..status(processed, 0)
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
        m.status_written("uid-2", None, &costing(5, 12.5, 20.0));
        m.status_written(
            "uid-2",
            Some(&costing(5, 12.5, 20.0)),
            &costing(9, 30.25, 50.0),
        );
        // An older status, as a lagging cache gives it: counted once.
        m.status_written(
            "uid-2",
            Some(&costing(5, 12.5, 20.0)),
            &costing(9, 30.25, 50.0),
        );
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
            "pomona_images_processed_total 49",
            "pomona_cpu_seconds_total 30.25",
            "pomona_requested_core_seconds_total 50.0",
            "pomona_requested_memory_gib_seconds_total 25.0",
            "pomona_cost_estimated_total{currency=\"EUR\"} 0.5",
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
