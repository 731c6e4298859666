//! How many fetches to keep in flight: a pure controller, fed with what the fetcher measures.
//!
//! By Little's law, keeping the consumer (decode, then the model) fed at rate `R` over requests
//! that take `L` seconds needs `R × L` requests in flight. The controller keeps twice that —
//! so that while the fetcher is what limits the rate, the window doubles until the consumer
//! is — between a floor and a ceiling (`--fetch-concurrency` when given), and never more listed
//! bytes in flight than the byte budget. Throttling halves the ceiling it may use; it grows back
//! by one slot per window of fetches that were not throttled.

use std::time::Duration;

/// Bounds of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Fetches always allowed in flight.
    pub min: usize,
    /// Fetches never exceeded in flight.
    pub max: usize,
    /// Listed bytes of the objects in flight never exceed this (one object is always allowed).
    pub bytes: u64,
}

impl Bounds {
    /// The defaults: 4 to 256 fetches, 64 MiB in flight; `fixed` (`--fetch-concurrency`) pins
    /// both ends.
    pub fn new(fixed: Option<usize>, bytes: u64) -> Self {
        match fixed {
            Some(n) => Self {
                min: n.max(1),
                max: n.max(1),
                bytes,
            },
            None => Self {
                min: 4,
                max: 256,
                bytes,
            },
        }
    }
}

/// Default byte budget of the fetches in flight.
pub const DEFAULT_BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;

/// Smoothing of the latency and rate averages (weight of a new sample).
const ALPHA: f64 = 0.2;
/// Rates are measured over windows of at least this long.
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The controller's state.
#[derive(Clone, Debug)]
pub struct Window {
    bounds: Bounds,
    latency: Option<f64>,
    rate: Option<f64>,
    window_start: Duration,
    window_count: u32,
    ceiling: f64,
}

impl Window {
    /// A controller within `bounds`, starting at the floor.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            latency: None,
            rate: None,
            window_start: Duration::ZERO,
            window_count: 0,
            ceiling: bounds.max as f64,
        }
    }

    /// A fetch took `took` and its result was handed on at `now` (time since the start).
    pub fn completed(&mut self, took: Duration, now: Duration) {
        let l = took.as_secs_f64();
        self.latency = Some(self.latency.map_or(l, |old| old + ALPHA * (l - old)));
        self.window_count += 1;
        let span = now.saturating_sub(self.window_start);
        if span >= RATE_WINDOW {
            let r = f64::from(self.window_count) / span.as_secs_f64();
            self.rate = Some(self.rate.map_or(r, |old| old + ALPHA * (r - old)));
            self.window_start = now;
            self.window_count = 0;
        }
        let max = self.bounds.max as f64;
        if self.ceiling < max {
            self.ceiling = (self.ceiling + 1.0 / self.ceiling.max(1.0)).min(max);
        }
    }

    /// `n` requests were throttled since the last call, with `in_flight` fetches running.
    pub fn throttled(&mut self, n: u64, in_flight: usize) {
        if n > 0 {
            self.ceiling = (in_flight as f64 / 2.0).max(self.bounds.min as f64);
        }
    }

    /// How many fetches may be in flight now.
    pub fn target(&self) -> usize {
        let wanted = match (self.latency, self.rate) {
            (Some(l), Some(r)) => (2.0 * l * r).ceil(),
            _ => self.bounds.min as f64,
        };
        let ceiling = self.ceiling.floor().max(self.bounds.min as f64);
        (wanted.min(ceiling) as usize).clamp(self.bounds.min, self.bounds.max)
    }

    /// Whether one more fetch, of an object of `size` listed bytes, may start while
    /// `requests` fetches are waiting for their answer and `held` fetches (those and the ones
    /// done, waiting to be handed on in order) hold `bytes` listed bytes. Done fetches do not
    /// count against the target, so that one slow answer at the head of the line does not stop
    /// the others; they count against the byte budget and four times the ceiling.
    pub fn admits(&self, requests: usize, held: usize, bytes: u64, size: u64) -> bool {
        held == 0
            || (requests < self.target()
                && held < 4 * self.bounds.max
                && bytes.saturating_add(size) <= self.bounds.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Simulates a fetcher over requests of `latency`, feeding a consumer that takes at most
    /// `per_second` items, for `seconds`; returns the final target and items consumed.
    fn simulate(bounds: Bounds, latency: Duration, per_second: f64, seconds: u64) -> (usize, u64) {
        let mut w = Window::new(bounds);
        let step = MS;
        let mut now = Duration::ZERO;
        let mut running: Vec<Duration> = Vec::new(); // finish times
        let mut ready = 0u64; // completed, not yet consumed
        let mut credit = 0.0;
        let mut consumed = 0;
        while now < Duration::from_secs(seconds) {
            while w.admits(running.len(), running.len() + ready as usize, 0, 1) {
                running.push(now + latency);
            }
            let before = running.len();
            running.retain(|t| *t > now);
            ready += (before - running.len()) as u64;
            credit += per_second * step.as_secs_f64();
            while ready > 0 && credit >= 1.0 {
                ready -= 1;
                credit -= 1.0;
                consumed += 1;
                w.completed(latency, now);
            }
            now += step;
        }
        (w.target(), consumed)
    }

    #[test]
    fn the_window_grows_until_the_consumer_is_the_limit() {
        // 30 ms requests, a consumer of 800 images/s: Little's law wants 24 in flight.
        let bounds = Bounds::new(None, DEFAULT_BYTES_IN_FLIGHT);
        let (target, consumed) = simulate(bounds, 30 * MS, 800.0, 3);
        assert!((40..=64).contains(&target), "{target}");
        assert!(consumed > 2100, "{consumed} of 2400");
        // Fast local reads need no more than the floor.
        let (target, _) = simulate(bounds, Duration::from_micros(50), 800.0, 1);
        assert_eq!(target, 4);
    }

    #[test]
    fn fixed_concurrency_and_the_byte_budget_bound_the_window() {
        let (target, consumed) = simulate(Bounds::new(Some(8), u64::MAX), 30 * MS, 800.0, 2);
        assert_eq!(target, 8);
        assert!(consumed < 8 * 2 * 34, "{consumed}");
        let w = Window::new(Bounds::new(Some(64), 10 << 20));
        assert!(w.admits(0, 0, 0, 1 << 30), "one object always goes");
        assert!(w.admits(1, 1, 4 << 20, 6 << 20));
        assert!(!w.admits(1, 1, 4 << 20, (6 << 20) + 1));
        // Done fetches waiting behind a slow one do not hold the others back, up to 4x.
        assert!(w.admits(1, 200, 0, 1));
        assert!(!w.admits(1, 256, 0, 1));
        assert!(!w.admits(64, 64, 0, 1));
    }

    #[test]
    fn throttling_halves_the_window_and_it_grows_back() {
        let mut w = Window::new(Bounds::new(None, u64::MAX));
        let mut now = Duration::ZERO;
        for _ in 0..2000 {
            now += MS;
            w.completed(30 * MS, now);
        }
        let before = w.target();
        w.throttled(3, 40);
        assert_eq!(w.target(), 20.min(before));
        w.throttled(1, 6);
        assert_eq!(w.target(), 4, "never below the floor");
        w.throttled(0, 6);
        for _ in 0..5000 {
            now += MS;
            w.completed(30 * MS, now);
        }
        assert_eq!(w.target(), before, "grown back");
    }
}
