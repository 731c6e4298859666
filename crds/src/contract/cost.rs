//! What a run costs: the pure sum of what its pods used into a [`Cost`], shared by the
//! operator (the status and the metrics) and the runner (`report/summary.json`, `pomona run`).

use serde::{Deserialize, Serialize};

use crate::api::{Cost, CostEstimate};

/// Seconds in an hour.
const HOUR: f64 = 3600.0;
/// Bytes in a GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The prices the cluster admin sets (the chart's `config.cost`): without them no amount is
/// estimated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CostRates {
    /// Price of one requested core for one hour.
    pub per_core_hour: f64,
    /// Price of one requested GiB of memory for one hour.
    pub per_gib_hour: f64,
    /// Their currency (`EUR`).
    pub currency: String,
}

/// One pod that ended (or one `pomona run` process), as far as its cost goes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodUsage {
    /// CPU seconds the process measured (its summary's `cpuSeconds`); `None` when it left no
    /// summary (killed, out of memory).
    pub cpu_seconds: Option<f64>,
    /// Seconds the pod held its requests: from the pod's start to its container's end, as the
    /// pod status tells them; `None` outside Kubernetes.
    pub run_seconds: Option<f64>,
    /// Cores the pod requested.
    pub cpu_request_cores: f64,
    /// Bytes of memory the pod requested.
    pub memory_request_bytes: f64,
}

/// `value` rounded to `decimals` places, so that the same pods always give the same figures.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// What a set of ended pods used, summed: the part of a [`Cost`] that depends neither on the
/// images nor on the prices, so that the usage of some pods can be handed on and added to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Pods counted: those with a measured or a timed figure.
    pub pods: u32,
    /// Their measured CPU seconds.
    pub cpu_seconds: f64,
    /// Their requested cores × run seconds; `None` when no pod's run time is known.
    pub core_seconds: Option<f64>,
    /// Their requested GiB × run seconds; `None` when no pod's run time is known.
    pub gib_seconds: Option<f64>,
}

impl Usage {
    /// What `pods` used; pods without any figure (never started) are not counted.
    pub fn of(pods: &[PodUsage]) -> Self {
        let counted: Vec<&PodUsage> = pods
            .iter()
            .filter(|p| p.cpu_seconds.is_some() || p.run_seconds.is_some())
            .collect();
        let timed = counted.iter().any(|p| p.run_seconds.is_some());
        let reserved = |per_pod: fn(&PodUsage) -> f64| -> Option<f64> {
            timed.then(|| {
                counted
                    .iter()
                    .map(|p| p.run_seconds.unwrap_or(0.0) * per_pod(p))
                    .sum()
            })
        };
        Self {
            pods: u32::try_from(counted.len()).unwrap_or(u32::MAX),
            cpu_seconds: counted.iter().filter_map(|p| p.cpu_seconds).sum(),
            core_seconds: reserved(|p| p.cpu_request_cores),
            gib_seconds: reserved(|p| p.memory_request_bytes / GIB),
        }
    }

    /// The usage of both sets of pods.
    pub fn plus(self, other: Self) -> Self {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        Self {
            pods: self.pods.saturating_add(other.pods),
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            core_seconds: sum(self.core_seconds, other.core_seconds),
            gib_seconds: sum(self.gib_seconds, other.gib_seconds),
        }
    }
}

/// The cost of a run whose ended pods are `pods` and which turned `processed` images into
/// features. Requested figures are present when at least one pod's run time is known; the
/// amount when, besides, `rates` are given.
pub fn cost(pods: &[PodUsage], processed: u64, rates: Option<&CostRates>) -> Cost {
    priced(&Usage::of(pods), processed, rates)
}

/// The cost of a run whose pods used `usage` and which turned `processed` images into
/// features, priced at `rates` when given (see [`cost`]).
pub fn priced(usage: &Usage, processed: u64, rates: Option<&CostRates>) -> Cost {
    let cpu_seconds = round(usage.cpu_seconds, 3);
    let estimated = match (rates, usage.core_seconds, usage.gib_seconds) {
        (Some(r), Some(cores), Some(gib)) => Some(CostEstimate {
            amount: round(
                cores / HOUR * r.per_core_hour + gib / HOUR * r.per_gib_hour,
                4,
            ),
            currency: r.currency.clone(),
            per_core_hour: r.per_core_hour,
            per_gib_hour: r.per_gib_hour,
        }),
        _ => None,
    };
    Cost {
        cpu_seconds,
        requested_core_seconds: usage.core_seconds.map(|s| round(s, 3)),
        requested_memory_gib_seconds: usage.gib_seconds.map(|s| round(s, 3)),
        images_per_core_hour: (cpu_seconds > 0.0)
            .then(|| round(processed as f64 / cpu_seconds * HOUR, 1)),
        pods: usage.pods,
        estimated,
    }
}

/// What the reduce pod needs to put the whole run's cost into `report/summary.json`, from the
/// operator (in [`super::env::COST_SO_FAR`], as JSON): it cannot see the run's other pods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CostSoFar {
    /// What the run's plan and extract pods used, every attempt, when the reduce Job was made.
    pub earlier: Usage,
    /// The cores the reduce pod requests.
    pub cpu_request_cores: f64,
    /// The bytes of memory the reduce pod requests.
    pub memory_request_bytes: f64,
    /// The cluster admin's prices, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<CostRates>,
}

impl CostSoFar {
    /// The run's cost once the reduce pod, having run `run_seconds` and measured `cpu_seconds`,
    /// turned up `processed` images.
    pub fn with_reduce_pod(
        &self,
        cpu_seconds: Option<f64>,
        run_seconds: f64,
        processed: u64,
    ) -> Cost {
        let reduce = PodUsage {
            cpu_seconds,
            run_seconds: Some(run_seconds),
            cpu_request_cores: self.cpu_request_cores,
            memory_request_bytes: self.memory_request_bytes,
        };
        priced(
            &self.earlier.plus(Usage::of(&[reduce])),
            processed,
            self.rates.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(cpu: Option<f64>, run: Option<f64>, cores: f64, gib: f64) -> PodUsage {
        PodUsage {
            cpu_seconds: cpu,
            run_seconds: run,
            cpu_request_cores: cores,
            memory_request_bytes: gib * GIB,
        }
    }

    #[test]
    fn pods_sum_into_measured_and_requested_figures_and_an_amount_at_the_rates() {
        let pods = [
            // A plan pod, two extract pods (one killed before it reported), the reduce pod.
            pod(Some(2.5), Some(10.0), 0.5, 0.5),
            pod(Some(110.0), Some(60.0), 2.0, 1.0),
            pod(None, Some(30.0), 2.0, 1.0),
            pod(Some(7.5), Some(20.0), 1.0, 2.0),
            // A pod that never started: no figure at all, not counted.
            pod(None, None, 2.0, 1.0),
        ];
        let rates = CostRates {
            per_core_hour: 0.036,
            per_gib_hour: 0.0045,
            currency: "EUR".into(),
        };
        let cost = cost(&pods, 1200, Some(&rates));
        // 0.5×10 + 2×60 + 2×30 + 1×20 = 205 core-seconds;
        // 0.5×10 + 1×60 + 1×30 + 2×20 = 135 GiB-seconds;
        // 205/3600×0.036 + 135/3600×0.0045 = 0.00205 + 0.00016875 = 0.00221875 → 0.0022.
        assert_eq!(
            cost,
            Cost {
                cpu_seconds: 120.0,
                requested_core_seconds: Some(205.0),
                requested_memory_gib_seconds: Some(135.0),
                images_per_core_hour: Some(36000.0),
                pods: 4,
                estimated: Some(CostEstimate {
                    amount: 0.0022,
                    currency: "EUR".into(),
                    per_core_hour: 0.036,
                    per_gib_hour: 0.0045,
                }),
            }
        );
    }

    #[test]
    fn no_rates_no_amount_and_no_run_times_no_requested_figures() {
        let pods = [pod(Some(3.0), Some(4.0), 1.0, 1.0)];
        let without_rates = cost(&pods, 10, None);
        assert_eq!(without_rates.estimated, None);
        assert_eq!(without_rates.requested_core_seconds, Some(4.0));
        // `pomona run`: one process, no scheduler.
        let local = cost(&[pod(Some(12.3456), None, 0.0, 0.0)], 1260, None);
        assert_eq!(
            local,
            Cost {
                cpu_seconds: 12.346,
                requested_core_seconds: None,
                requested_memory_gib_seconds: None,
                images_per_core_hour: Some(367406.4),
                pods: 1,
                estimated: None,
            }
        );
        let rates = CostRates {
            per_core_hour: 1.0,
            per_gib_hour: 1.0,
            currency: "USD".into(),
        };
        assert_eq!(
            cost(&[pod(Some(1.0), None, 1.0, 1.0)], 1, Some(&rates)).estimated,
            None,
            "without run times there is nothing to price"
        );
        let nothing = cost(&[], 0, Some(&rates));
        assert_eq!(nothing.cpu_seconds, 0.0);
        assert_eq!(nothing.images_per_core_hour, None);
        assert_eq!(nothing.pods, 0);
        assert_eq!(nothing.estimated, None);
    }

    #[test]
    fn the_reduce_pod_adds_itself_to_what_the_operator_handed_it_as_the_status_would() {
        let earlier = [
            pod(Some(2.5), Some(10.0), 0.5, 0.5),
            pod(Some(110.0), Some(60.0), 2.0, 1.0),
            pod(None, Some(30.0), 2.0, 1.0),
        ];
        let reduce = pod(Some(7.5), Some(20.0), 1.0, 2.0);
        let rates = CostRates {
            per_core_hour: 0.036,
            per_gib_hour: 0.0045,
            currency: "EUR".into(),
        };
        let so_far = CostSoFar {
            earlier: Usage::of(&earlier),
            cpu_request_cores: 1.0,
            memory_request_bytes: 2.0 * GIB,
            rates: Some(rates.clone()),
        };
        // Handed on as JSON, as the operator does.
        let json = serde_json::to_string(&so_far).unwrap();
        let so_far: CostSoFar = serde_json::from_str(&json).unwrap();
        let mut all = earlier.to_vec();
        all.push(reduce);
        assert_eq!(
            so_far.with_reduce_pod(Some(7.5), 20.0, 1200),
            cost(&all, 1200, Some(&rates))
        );
        // Pods of a run outside Kubernetes add up too, without requested figures.
        let local = Usage::of(&[pod(Some(1.0), None, 0.0, 0.0)]);
        assert_eq!(local.plus(local).core_seconds, None);
        assert_eq!(local.plus(Usage::of(&earlier)).core_seconds, Some(185.0));
    }
}
