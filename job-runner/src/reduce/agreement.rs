//! Label agreement: the leave-one-out 1-nearest-neighbour accuracy of the labels, by cosine
//! similarity, on vectors (the reduced vectors of a run, or a sweep's features).
//!
//! Each vector's nearest other vector (largest cosine; the lower index on a tie) votes for its
//! label; the agreement is the fraction of votes that are right. It measures how well the
//! vectors keep apart what the labels keep apart, on this data; it is not the accuracy of a
//! classifier on new photos (near-duplicates in the data, such as frames of one video, raise
//! it), and it says nothing of classes the data does not hold.

use ndarray::{Array2, ArrayView2, Axis, s};

/// Most vectors the reduce step scores (a fixed-seed sample beyond that many).
pub const MAX_SAMPLE: usize = 10_000;

/// The seed of the reduce step's sample.
pub const SEED: u64 = 0x1a5e_1a9e_e3e1_7001;

/// Rows per block of the similarity matrix (bounds memory to `BLOCK × n` floats).
const BLOCK: usize = 256;

/// The leave-one-out 1-NN accuracy (cosine) of `labels` on `rows` (`labels.len()` rows of
/// `dim` values); `None` with fewer than two rows. A zero vector is at cosine 0 from all.
pub fn loo_1nn_accuracy(rows: &[f32], dim: usize, labels: &[u32]) -> Option<f64> {
    let n = labels.len();
    assert_eq!(rows.len(), n * dim, "rows and labels disagree");
    if n < 2 || dim == 0 {
        return None;
    }
    let unit = normalised(ArrayView2::from_shape((n, dim), rows).expect("checked shape"));
    let mut right = 0u64;
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let sims = unit.slice(s![start..end, ..]).dot(&unit.t());
        for (offset, row) in sims.axis_iter(Axis(0)).enumerate() {
            let i = start + offset;
            let mut best = (f32::NEG_INFINITY, usize::MAX);
            for (j, &sim) in row.iter().enumerate() {
                if j != i && sim > best.0 {
                    best = (sim, j);
                }
            }
            if best.1 != usize::MAX && labels[best.1] == labels[i] {
                right += 1;
            }
        }
    }
    Some(right as f64 / n as f64)
}

fn normalised(rows: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut unit = rows.to_owned();
    for mut row in unit.axis_iter_mut(Axis(0)) {
        let norm = row
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt() as f32;
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    unit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The brute-force definition, pair by pair in f64.
    fn reference(rows: &[f32], dim: usize, labels: &[u32]) -> f64 {
        let n = labels.len();
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        };
        let mut right = 0;
        for i in 0..n {
            let a = &rows[i * dim..(i + 1) * dim];
            let nearest = (0..n)
                .filter(|&j| j != i)
                .max_by(|&x, &y| {
                    cos(a, &rows[x * dim..(x + 1) * dim])
                        .total_cmp(&cos(a, &rows[y * dim..(y + 1) * dim]))
                        .then(y.cmp(&x))
                })
                .unwrap();
            right += usize::from(labels[nearest] == labels[i]);
        }
        right as f64 / n as f64
    }

    #[test]
    fn matches_the_definition_on_noisy_clusters() {
        // 600 points around 3 directions in 8-D, noisy enough that some neighbours are wrong;
        // more than two blocks of rows.
        let (n, dim) = (600, 8);
        let mut state = 12345u64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f32 / 10_000.0 - 0.5
        };
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = (i % 3) as u32;
            for d in 0..dim {
                let centre = if d == label as usize { 1.0 } else { 0.0 };
                rows.push(centre + 1.6 * noise());
            }
            labels.push(label);
        }
        let got = loo_1nn_accuracy(&rows, dim, &labels).unwrap();
        let want = reference(&rows, dim, &labels);
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert!(got > 0.4 && got < 0.99, "not a trivial case: {got}");
    }

    #[test]
    fn cosine_ignores_length_and_one_row_has_no_neighbour() {
        // Same direction, different lengths: each other's nearest neighbour.
        let rows = [1.0, 0.0, 5.0, 0.1, 0.0, 1.0, 0.0, 3.0];
        assert_eq!(loo_1nn_accuracy(&rows, 2, &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(loo_1nn_accuracy(&rows, 2, &[0, 1, 0, 1]), Some(0.0));
        assert_eq!(loo_1nn_accuracy(&rows[..2], 2, &[0]), None);
    }
}
