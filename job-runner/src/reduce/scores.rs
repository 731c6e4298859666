//! Scores of a grouping: against labels (adjusted Rand index, normalised mutual information,
//! purity, from the contingency table of label × cluster counts) and on its own (silhouette).
//! The definitions are scikit-learn's (`adjusted_rand_score`, `normalized_mutual_info_score`
//! with the arithmetic mean, `silhouette_score` with the Euclidean distance).

use std::collections::BTreeMap;

/// Counts of images per (label, cluster), built one image at a time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contingency {
    cells: BTreeMap<(u32, u32), u64>,
}

/// How well a grouping matches the labels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelScores {
    /// Adjusted Rand index: 1 for the same partition, about 0 for a random one.
    pub ari: f64,
    /// Normalised mutual information (arithmetic mean of the entropies), in [0, 1].
    pub nmi: f64,
    /// Fraction of images whose cluster's most frequent label is theirs.
    pub purity: f64,
}

fn comb2(n: u64) -> f64 {
    let n = n as f64;
    n * (n - 1.0) / 2.0
}

impl Contingency {
    /// Counts one image.
    pub fn add(&mut self, label: u32, cluster: u32) {
        *self.cells.entry((label, cluster)).or_default() += 1;
    }

    /// Images counted.
    pub fn total(&self) -> u64 {
        self.cells.values().sum()
    }

    /// The scores; `None` when no image was counted.
    pub fn scores(&self) -> Option<LabelScores> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let mut rows: BTreeMap<u32, u64> = BTreeMap::new();
        let mut cols: BTreeMap<u32, u64> = BTreeMap::new();
        for (&(l, c), &v) in &self.cells {
            *rows.entry(l).or_default() += v;
            *cols.entry(c).or_default() += v;
        }
        // ARI.
        let index: f64 = self.cells.values().map(|&v| comb2(v)).sum();
        let sum_rows: f64 = rows.values().map(|&v| comb2(v)).sum();
        let sum_cols: f64 = cols.values().map(|&v| comb2(v)).sum();
        let expected = sum_rows * sum_cols / comb2(n).max(f64::MIN_POSITIVE);
        let max = (sum_rows + sum_cols) / 2.0;
        let ari = if (max - expected).abs() < 1e-12 {
            1.0
        } else {
            (index - expected) / (max - expected)
        };
        // NMI.
        let nf = n as f64;
        let entropy = |counts: &BTreeMap<u32, u64>| -> f64 {
            counts
                .values()
                .map(|&v| {
                    let p = v as f64 / nf;
                    -p * p.ln()
                })
                .sum()
        };
        let (hl, hc) = (entropy(&rows), entropy(&cols));
        let mi: f64 = self
            .cells
            .iter()
            .map(|(&(l, c), &v)| {
                let v = v as f64;
                v / nf * (nf * v / (rows[&l] as f64 * cols[&c] as f64)).ln()
            })
            .sum();
        let nmi = if hl == 0.0 && hc == 0.0 {
            1.0
        } else {
            (mi / ((hl + hc) / 2.0)).clamp(0.0, 1.0)
        };
        // Purity.
        let mut best: BTreeMap<u32, u64> = BTreeMap::new();
        for (&(_, c), &v) in &self.cells {
            let b = best.entry(c).or_default();
            *b = (*b).max(v);
        }
        let purity = best.values().sum::<u64>() as f64 / nf;
        Some(LabelScores { ari, nmi, purity })
    }
}

/// The mean silhouette (Euclidean) of `clusters.len()` rows of `dim` values; `None` unless at
/// least two clusters are present. A row alone in its cluster scores 0. O(n²): give it a sample.
pub fn silhouette(rows: &[f32], dim: usize, clusters: &[u32]) -> Option<f64> {
    let n = clusters.len();
    assert_eq!(rows.len(), n * dim, "rows and clusters disagree");
    let ids: Vec<u32> = {
        let mut ids = clusters.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    if ids.len() < 2 {
        return None;
    }
    let slot = |c: u32| ids.binary_search(&c).expect("a known cluster");
    let mut sizes = vec![0u64; ids.len()];
    for &c in clusters {
        sizes[slot(c)] += 1;
    }
    let row = |i: usize| &rows[i * dim..(i + 1) * dim];
    let mut total = 0.0;
    let mut sums = vec![0.0f64; ids.len()];
    for i in 0..n {
        sums.iter_mut().for_each(|s| *s = 0.0);
        let a = row(i);
        for j in 0..n {
            if j != i {
                let d: f64 = a
                    .iter()
                    .zip(row(j))
                    .map(|(x, y)| f64::from(x - y).powi(2))
                    .sum();
                sums[slot(clusters[j])] += d.sqrt();
            }
        }
        let own = slot(clusters[i]);
        if sizes[own] < 2 {
            continue;
        }
        let a_i = sums[own] / (sizes[own] - 1) as f64;
        let b_i = (0..ids.len())
            .filter(|&c| c != own)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let m = a_i.max(b_i);
        if m > 0.0 {
            total += (b_i - a_i) / m;
        }
    }
    Some(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(labels: &[u32], clusters: &[u32]) -> Contingency {
        let mut t = Contingency::default();
        labels.iter().zip(clusters).for_each(|(&l, &c)| t.add(l, c));
        t
    }

    #[test]
    fn scores_match_scikit_learn() {
        // Values from scikit-learn 1.9.1 on these lists.
        let labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
        let clusters = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0];
        let s = table(&labels, &clusters).scores().unwrap();
        assert!((s.ari - 0.204_545_454_545_454_56).abs() < 1e-9, "{}", s.ari);
        assert!((s.nmi - 0.442_701_283_346_05).abs() < 1e-9, "{}", s.nmi);
        assert!((s.purity - 0.7).abs() < 1e-12, "{}", s.purity);
        // The same partition under other names.
        let same = table(&labels, &[5, 5, 5, 9, 9, 9, 1, 1, 1, 1])
            .scores()
            .unwrap();
        assert_eq!((same.ari, same.nmi, same.purity), (1.0, 1.0, 1.0));
        assert_eq!(Contingency::default().scores(), None);
    }

    #[test]
    fn silhouette_matches_scikit_learn() {
        // sklearn.metrics.silhouette_score(X, c) (1.9.1) for these six 2-D points.
        let rows = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0, 6.0, 9.0, 9.0];
        let clusters = [0, 0, 0, 1, 1, 2];
        let s = silhouette(&rows, 2, &clusters).unwrap();
        assert!((s - 0.688_720_540_388_476_2).abs() < 1e-9, "{s}");
        assert_eq!(silhouette(&rows, 2, &[3; 6]), None);
    }
}
