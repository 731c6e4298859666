//! Mergeable PCA statistics: count, mean and co-moment matrix of feature vectors, in f64.
//!
//! Each extractor shard accumulates these over its rows and writes them next to its features;
//! the reduce step merges every shard's statistics and eigen-decomposes the covariance
//! `comoment / (n - 1)`. Fitting is then exact and costs the same whatever the number of images.
//!
//! Rows are added a batch at a time: the batch's own mean and centred co-moment (one
//! matrix product) are combined with the running ones by the parallel formula of Chan, Golub and
//! LeVeque, which is also how two shards merge:
//!
//! ```text
//! n = na + nb,  δ = mean_b − mean_a
//! mean = mean_a + δ·nb/n
//! M2   = M2_a + M2_b + δδᵀ·na·nb/n
//! ```
//!
//! # File format (`stats/part-NNNNN.safetensors`)
//!
//! A [safetensors](https://github.com/huggingface/safetensors) file, readable from Python with
//! `safetensors.numpy.load_file`, holding three little-endian tensors:
//!
//! | tensor | dtype | shape | content |
//! | --- | --- | --- | --- |
//! | `count` | U64 | `[1]` | rows `n` |
//! | `mean` | F64 | `[d]` | column means |
//! | `comoment` | F64 | `[d, d]` | `Σ (x − mean)(x − mean)ᵀ` over the rows (symmetric) |
//!
//! and the metadata entry `format = pomona-stats/1`.
//!
//! # Merge order
//!
//! Floating-point merges depend on their order, so the order is fixed: [`MergeTree`] merges the
//! shards' statistics in groups of [`MERGE_FAN_IN`] consecutive shards, left to right, then the
//! groups' results in groups of [`MERGE_FAN_IN`], and so on. Up to [`MERGE_FAN_IN`] shards this is
//! one left-to-right merge. The tree's leaves are the run's shards by number: a shard without
//! statistics (failed for good) is a hole, which keeps its place and merges nothing. Any aligned
//! block of `MERGE_FAN_IN^k` consecutive shards is a subtree: merged on its own (by a merge pod)
//! and handed in as one part of a tree of the blocks, it gives the same bytes as merging its
//! shards in one stream. Memory stays at one accumulator per level.

use std::collections::HashMap;

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{Array1, Array2, ArrayView2, Axis, linalg::general_mat_mul};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Rows worth adding at once: the co-moment update costs less than half as much per row at 256
/// rows as at one inference batch of 32 (the mirroring of the triangle is paid per call).
pub const ROWS_PER_UPDATE: usize = 256;

/// The value of the `format` metadata entry.
pub const FORMAT: &str = "pomona-stats/1";

/// Count, mean and co-moment of a set of `dim`-dimensional rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    n: u64,
    mean: Array1<f64>,
    comoment: Array2<f64>,
}

/// A statistics file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Not a safetensors file, or one without the expected tensors.
    #[error("not a pomona statistics file: {0}")]
    Format(String),
    /// Two sets of statistics of different dimensions.
    #[error("statistics of dimension {0} cannot merge with dimension {1}")]
    Dimension(usize, usize),
}

impl Moments {
    /// No rows yet.
    pub fn new(dim: usize) -> Self {
        Self {
            n: 0,
            mean: Array1::zeros(dim),
            comoment: Array2::zeros((dim, dim)),
        }
    }

    /// Dimension of the rows.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Number of rows.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Column means.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// Co-moment matrix `Σ (x − mean)(x − mean)ᵀ`.
    pub fn comoment(&self) -> &Array2<f64> {
        &self.comoment
    }

    /// Sample covariance `comoment / (n − 1)` (zero for fewer than two rows).
    pub fn covariance(&self) -> Array2<f64> {
        if self.n < 2 {
            return Array2::zeros(self.comoment.raw_dim());
        }
        &self.comoment / (self.n - 1) as f64
    }

    /// Adds `rows.len() / dim` rows stored one after the other. Larger calls cost less per row
    /// (the extractor adds a few hundred rows at a time).
    pub fn add_rows(&mut self, rows: &[f32]) {
        let dim = self.dim();
        assert_eq!(rows.len() % dim, 0, "rows are whole");
        let nb = rows.len() / dim;
        if nb == 0 {
            return;
        }
        let batch = ArrayView2::from_shape((nb, dim), rows).expect("shape checked above");
        let batch = batch.mapv(f64::from);
        let mean = batch.mean_axis(Axis(0)).expect("at least one row");
        let centred = (&batch - &mean).as_standard_layout().into_owned();
        // The batch's own co-moment goes straight into the running one (no d×d temporary),
        // computed on the lower triangle only (the matrix is symmetric: half the work) and then
        // mirrored; `merge_parts` then adds the correction for the shift between the two means.
        let x = MatRef::from_row_major_slice(centred.as_slice().expect("standard layout"), nb, dim);
        let acc = self.comoment.as_slice_mut().expect("standard layout");
        matmul(
            MatMut::from_row_major_slice_mut(acc, dim, dim),
            BlockStructure::TriangularLower,
            Accum::Add,
            x.transpose(),
            BlockStructure::Rectangular,
            x,
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        for i in 0..dim {
            for j in 0..i {
                self.comoment[[j, i]] = self.comoment[[i, j]];
            }
        }
        self.merge_parts(nb as u64, &mean, None);
    }

    /// Merges the statistics of other rows into these.
    pub fn merge(&mut self, other: &Moments) -> Result<(), StatsError> {
        if other.dim() != self.dim() {
            return Err(StatsError::Dimension(self.dim(), other.dim()));
        }
        self.merge_parts(other.n, &other.mean, Some(&other.comoment));
        Ok(())
    }

    /// Merges `nb` rows of mean `mean_b` and co-moment `comoment_b`; `None` when that co-moment
    /// was already added to `self.comoment`.
    fn merge_parts(&mut self, nb: u64, mean_b: &Array1<f64>, comoment_b: Option<&Array2<f64>>) {
        if nb == 0 {
            return;
        }
        let na = self.n;
        let n = na + nb;
        let delta = mean_b - &self.mean;
        let weight = (na as f64) * (nb as f64) / (n as f64);
        if let Some(comoment_b) = comoment_b {
            self.comoment += comoment_b;
        }
        if na > 0 {
            let col = delta.view().insert_axis(Axis(1));
            let row = delta.view().insert_axis(Axis(0));
            general_mat_mul(weight, &col, &row, 1.0, &mut self.comoment);
        }
        self.mean.scaled_add(nb as f64 / n as f64, &delta);
        self.n = n;
    }

    /// The statistics as a safetensors file (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let dim = self.dim();
        let count = self.n.to_le_bytes();
        let mean: Vec<u8> = self.mean.iter().flat_map(|v| v.to_le_bytes()).collect();
        let comoment: Vec<u8> = self.comoment.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = [
            ("count", TensorView::new(Dtype::U64, vec![1], &count)),
            ("mean", TensorView::new(Dtype::F64, vec![dim], &mean)),
            (
                "comoment",
                TensorView::new(Dtype::F64, vec![dim, dim], &comoment),
            ),
        ]
        .map(|(name, view)| (name, view.expect("shapes match the data")));
        let metadata = HashMap::from([("format".to_string(), FORMAT.to_string())]);
        safetensors::serialize(tensors, Some(metadata)).expect("in-memory serialization")
    }

    /// Reads statistics written by [`Moments::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StatsError> {
        let bad = |e: &dyn std::fmt::Display| StatsError::Format(e.to_string());
        let file = SafeTensors::deserialize(bytes).map_err(|e| bad(&e))?;
        let tensor = |name: &str, dtype: Dtype| {
            let t = file.tensor(name).map_err(|e| bad(&e))?;
            if t.dtype() != dtype {
                return Err(bad(&format!("{name} is {:?}, not {dtype:?}", t.dtype())));
            }
            Ok(t)
        };
        let f64s = |data: &[u8]| -> Vec<f64> {
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let count = tensor("count", Dtype::U64)?;
        let n = u64::from_le_bytes(
            count
                .data()
                .try_into()
                .map_err(|_| bad(&"count is not one u64"))?,
        );
        let mean = Array1::from(f64s(tensor("mean", Dtype::F64)?.data()));
        let dim = mean.len();
        let comoment = tensor("comoment", Dtype::F64)?;
        if comoment.shape() != [dim, dim] {
            return Err(bad(&format!(
                "comoment has shape {:?}, mean has {dim} values",
                comoment.shape()
            )));
        }
        let comoment =
            Array2::from_shape_vec((dim, dim), f64s(comoment.data())).map_err(|e| bad(&e))?;
        Ok(Self { n, mean, comoment })
    }
}

/// Parts merged into one group of [`MergeTree`]: 64 shards' statistics, then 64 groups, …
pub const MERGE_FAN_IN: usize = 64;

/// Merges statistics, pushed in shard order, in the fixed order of the module docs, holding one
/// accumulator per level of the tree.
#[derive(Debug)]
pub struct MergeTree {
    fan_in: usize,
    /// Per level (0: the parts pushed): the open group's merged parts (`None` while they are
    /// all holes) and how many.
    open: Vec<Option<(Option<Moments>, usize)>>,
}

impl MergeTree {
    /// A merge in groups of [`MERGE_FAN_IN`]. Its parts are shards' statistics, or the results
    /// of aligned blocks of `MERGE_FAN_IN^k` shards (the last block may be shorter), each block
    /// merged by a tree of its own: both give the same bytes.
    pub fn new() -> Self {
        Self::with_fan_in(MERGE_FAN_IN)
    }

    /// The same in groups of `fan_in`.
    pub fn with_fan_in(fan_in: usize) -> Self {
        assert!(fan_in >= 2, "a tree merges at least two parts a group");
        Self {
            fan_in,
            open: Vec::new(),
        }
    }

    /// Adds the next part, in order.
    pub fn push(&mut self, part: Moments) -> Result<(), StatsError> {
        self.push_at(0, Some(part))
    }

    /// Adds the next part, or a hole (`None`: a shard without statistics, or a block without
    /// any), which takes its place in the tree and merges nothing.
    pub fn push_part(&mut self, part: Option<Moments>) -> Result<(), StatsError> {
        self.push_at(0, part)
    }

    fn push_at(&mut self, level: usize, part: Option<Moments>) -> Result<(), StatsError> {
        if self.open.len() <= level {
            self.open.resize_with(level + 1, || None);
        }
        let full = match &mut self.open[level] {
            slot @ None => {
                *slot = Some((part, 1));
                1 == self.fan_in
            }
            Some((group, parts)) => {
                match (group.as_mut(), part) {
                    (Some(g), Some(p)) => g.merge(&p)?,
                    (None, Some(p)) => *group = Some(p),
                    (_, None) => {}
                }
                *parts += 1;
                *parts == self.fan_in
            }
        };
        if full {
            let (group, _) = self.open[level].take().expect("the group just filled");
            self.push_at(level + 1, group)?;
        }
        Ok(())
    }

    /// The merge of every part pushed (`None` for none, or only holes): the open groups close
    /// from the lowest level up, each handed to the level above; a group of one part is that
    /// part, unchanged.
    pub fn finish(mut self) -> Result<Option<Moments>, StatsError> {
        let mut level = 0;
        while level < self.open.len() {
            let highest = level + 1 == self.open.len();
            if let Some((group, _)) = self.open[level].take() {
                if highest {
                    return Ok(group);
                }
                self.push_at(level + 1, group)?;
            }
            level += 1;
        }
        Ok(None)
    }
}

impl Default for MergeTree {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic rows with a large common offset, where a naive sum of squares would lose
    /// digits.
    fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n * dim)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
                (1000.0 + (i % dim) as f64 + noise * 3.0) as f32
            })
            .collect()
    }

    /// Two-pass reference: mean first, then the centred products.
    fn two_pass(rows: &[f32], dim: usize) -> (Array1<f64>, Array2<f64>) {
        let n = rows.len() / dim;
        let x = Array2::from_shape_vec((n, dim), rows.iter().map(|&v| v as f64).collect()).unwrap();
        let mean = x.mean_axis(Axis(0)).unwrap();
        let mut m2 = Array2::<f64>::zeros((dim, dim));
        for row in x.rows() {
            let c = &row - &mean;
            for i in 0..dim {
                for j in 0..dim {
                    m2[[i, j]] += c[i] * c[j];
                }
            }
        }
        (mean, m2)
    }

    fn assert_close(a: &Moments, mean: &Array1<f64>, m2: &Array2<f64>) {
        let scale = m2.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (x, y) in a.mean().iter().zip(mean) {
            assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{x} vs {y}");
        }
        for (x, y) in a.comoment().iter().zip(m2) {
            assert!((x - y).abs() <= 1e-10 * scale, "{x} vs {y}");
        }
    }

    #[test]
    fn batches_match_a_two_pass_computation() {
        let dim = 7;
        let data = rows(101, dim, 1);
        let (mean, m2) = two_pass(&data, dim);
        for batch in [1, 3, 32, 101] {
            let mut m = Moments::new(dim);
            for chunk in data.chunks(batch * dim) {
                m.add_rows(chunk);
            }
            assert_eq!(m.count(), 101);
            assert_close(&m, &mean, &m2);
        }
    }

    #[test]
    fn merging_in_any_grouping_equals_one_pass() {
        let dim = 5;
        let data = rows(90, dim, 7);
        let (mean, m2) = two_pass(&data, dim);
        // Shards of uneven sizes, merged left to right, right to left, and as a tree.
        let cuts = [0, 1, 17, 40, 41, 90];
        let shards: Vec<Moments> = cuts
            .windows(2)
            .map(|w| {
                let mut m = Moments::new(dim);
                m.add_rows(&data[w[0] * dim..w[1] * dim]);
                m
            })
            .collect();
        let mut left = Moments::new(dim);
        for s in &shards {
            left.merge(s).unwrap();
        }
        let mut right = Moments::new(dim);
        for s in shards.iter().rev() {
            right.merge(s).unwrap();
        }
        let mut a = shards[0].clone();
        a.merge(&shards[1]).unwrap();
        let mut b = shards[2].clone();
        b.merge(&shards[3]).unwrap();
        b.merge(&shards[4]).unwrap();
        a.merge(&b).unwrap();
        for m in [&left, &right, &a] {
            assert_eq!(m.count(), 90);
            assert_close(m, &mean, &m2);
        }
        let empty = Moments::new(dim);
        let mut with_empty = left.clone();
        with_empty.merge(&empty).unwrap();
        assert_eq!(with_empty, left);
        assert!(left.merge(&Moments::new(dim + 1)).is_err());
    }

    /// The statistics of `n` shards of uneven sizes.
    fn shard_moments(n: usize, dim: usize) -> Vec<Moments> {
        (0..n)
            .map(|i| {
                let mut m = Moments::new(dim);
                m.add_rows(&rows(1 + i % 5, dim, i as u64));
                m
            })
            .collect()
    }

    fn tree_merge(parts: &[Moments], fan_in: usize) -> Option<Moments> {
        let mut tree = MergeTree::with_fan_in(fan_in);
        for p in parts {
            tree.push(p.clone()).unwrap();
        }
        tree.finish().unwrap()
    }

    #[test]
    fn a_tree_of_one_group_is_the_left_to_right_merge() {
        let shards = shard_moments(MERGE_FAN_IN, 3);
        let mut flat = shards[0].clone();
        for s in &shards[1..] {
            flat.merge(s).unwrap();
        }
        let tree = tree_merge(&shards, MERGE_FAN_IN).unwrap();
        assert_eq!(tree.to_bytes(), flat.to_bytes());
        assert_eq!(
            tree_merge(&shards[..1], MERGE_FAN_IN),
            Some(shards[0].clone())
        );
        assert_eq!(tree_merge(&[], MERGE_FAN_IN), None);
    }

    #[test]
    fn blocks_merged_apart_give_the_bytes_of_one_stream() {
        let dim = 3;
        let fan_in = 3;
        let all = shard_moments(40, dim);
        for n in [2, 3, 4, 8, 9, 10, 26, 27, 28, 40] {
            let shards = &all[..n];
            let whole = tree_merge(shards, fan_in).unwrap();
            assert_eq!(
                whole.count(),
                shards.iter().map(Moments::count).sum::<u64>()
            );
            // Aligned blocks of fan_in^k shards, each merged by a tree of its own (as merge
            // pods would), then the blocks' results by one more tree.
            for block in [fan_in, fan_in * fan_in, fan_in.pow(3)] {
                let results: Vec<Moments> = shards
                    .chunks(block)
                    .map(|b| tree_merge(b, fan_in).unwrap())
                    .collect();
                let merged = tree_merge(&results, fan_in).unwrap();
                assert_eq!(
                    merged.to_bytes(),
                    whole.to_bytes(),
                    "{n} shards, blocks of {block}"
                );
            }
        }
        // With holes (shards that failed for good), blocks merged apart still give the bytes
        // of one stream, a block of holes only being a hole itself.
        let holed: Vec<Option<Moments>> = all
            .iter()
            .enumerate()
            .map(|(i, m)| (i % 7 != 3 && !(9..18).contains(&i)).then(|| m.clone()))
            .collect();
        let merge_parts = |parts: &[Option<Moments>]| {
            let mut tree = MergeTree::with_fan_in(fan_in);
            for p in parts {
                tree.push_part(p.clone()).unwrap();
            }
            tree.finish().unwrap()
        };
        let whole = merge_parts(&holed).unwrap();
        let present: u64 = holed.iter().flatten().map(Moments::count).sum();
        assert_eq!(whole.count(), present);
        for block in [fan_in, fan_in * fan_in, fan_in.pow(3)] {
            let results: Vec<Option<Moments>> = holed.chunks(block).map(merge_parts).collect();
            assert!(
                block != 9 || results[1].is_none(),
                "shards 9 to 17 are holes"
            );
            let merged = merge_parts(&results).unwrap();
            assert_eq!(merged.to_bytes(), whole.to_bytes(), "blocks of {block}");
        }
        assert_eq!(merge_parts(&[None, None]), None);

        // Not a tautology: another grouping gives other bytes.
        let shards = &all[..10];
        let mut flat = shards[0].clone();
        for s in &shards[1..] {
            flat.merge(s).unwrap();
        }
        assert_ne!(
            flat.to_bytes(),
            tree_merge(shards, fan_in).unwrap().to_bytes()
        );
    }

    #[test]
    fn covariance_divides_by_n_minus_one() {
        let mut m = Moments::new(2);
        m.add_rows(&[1.0, 2.0, 3.0, 6.0]);
        let cov = m.covariance();
        assert_eq!(cov, ndarray::arr2(&[[2.0, 4.0], [4.0, 8.0]]));
        assert_eq!(Moments::new(2).covariance(), Array2::<f64>::zeros((2, 2)));
    }

    #[test]
    fn file_round_trips_exactly_and_rejects_other_files() {
        let mut m = Moments::new(4);
        m.add_rows(&rows(10, 4, 3));
        let bytes = m.to_bytes();
        assert_eq!(Moments::from_bytes(&bytes).unwrap(), m);
        assert!(Moments::from_bytes(b"not a file").is_err());
        assert!(Moments::from_bytes(&bytes[..bytes.len() - 8]).is_err());
    }
}
