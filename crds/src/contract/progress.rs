//! How fast a run goes and how long it has left: a rate over a recent window of samples
//! (a moment, the images done by then) and the time left at that rate. Pure and shared: the
//! operator samples its extract pods' finish times (`status.progress`), the runner its own
//! counter (the progress bar and lines of `pomona run` and `pomona extract`).

/// The images done by a moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds on any clock the samples share.
    pub at: f64,
    /// Images done by then, counted from any origin the samples share.
    pub done: u64,
}

/// Images per second over at least the last `window` seconds of `samples` (in time order):
/// from the latest sample at least `window` older than the last one (or the first sample, when
/// none is that old) to the last. `None` when that spans no time or no image.
pub fn rate(samples: &[Sample], window: f64) -> Option<f64> {
    let last = samples.last()?;
    let anchor = samples
        .iter()
        .rev()
        .find(|s| s.at <= last.at - window)
        .or(samples.first())?;
    let elapsed = last.at - anchor.at;
    let images = last.done.saturating_sub(anchor.done);
    (elapsed > 0.0 && images > 0).then(|| images as f64 / elapsed)
}

/// Seconds until `total` images are done, from `done` at `rate` images per second.
pub fn seconds_left(done: u64, total: u64, rate: f64) -> Option<f64> {
    (rate > 0.0 && rate.is_finite()).then(|| total.saturating_sub(done) as f64 / rate)
}

/// A duration for people, rounded up to the second: `0s`, `45s`, `12m05s`, `3h20m`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(points: &[(f64, u64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(at, done)| Sample { at, done })
            .collect()
    }

    #[test]
    fn the_rate_is_taken_over_the_recent_window() {
        // 100 images/s for the first 60 s, then 10 images/s.
        let s = samples(&[(0.0, 0), (60.0, 6000), (90.0, 6300), (120.0, 6600)]);
        assert_eq!(rate(&s, 60.0), Some(10.0), "the last 60 s only");
        assert_eq!(rate(&s, 30.0), Some(10.0));
        assert_eq!(
            rate(&s, 600.0),
            Some(55.0),
            "younger than the window: all of it"
        );
        // The anchor is the latest sample at least a window old: 30 s → 6300 at 90 s.
        let s = samples(&[(0.0, 0), (90.0, 6300), (100.0, 6400), (120.0, 6600)]);
        assert_eq!(rate(&s, 25.0), Some(10.0));
    }

    #[test]
    fn no_rate_without_time_or_images() {
        assert_eq!(rate(&[], 60.0), None);
        assert_eq!(rate(&samples(&[(5.0, 10)]), 60.0), None);
        assert_eq!(rate(&samples(&[(5.0, 10), (9.0, 10)]), 60.0), None);
        assert_eq!(rate(&samples(&[(5.0, 10), (5.0, 20)]), 60.0), None);
    }

    #[test]
    fn time_left_and_how_it_reads() {
        assert_eq!(seconds_left(600, 1260, 20.0), Some(33.0));
        assert_eq!(seconds_left(1300, 1260, 20.0), Some(0.0));
        assert_eq!(seconds_left(0, 10, 0.0), None);
        assert_eq!(human_duration(0.0), "0s");
        assert_eq!(human_duration(44.2), "45s");
        assert_eq!(human_duration(725.0), "12m05s");
        assert_eq!(human_duration(12_000.0), "3h20m");
        assert_eq!(human_duration(-3.0), "0s");
    }
}
