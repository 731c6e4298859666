//! The PCA itself: fitted from merged [`Moments`], saved as one safetensors file, reused.
//!
//! # Definition (the same as scikit-learn's `PCA`)
//!
//! - covariance `C = comoment / (n − 1)`;
//! - `C = V Λ Vᵀ`, eigenvalues sorted in descending order; `explained_variance[i] = λᵢ`;
//! - `explained_variance_ratio[i] = λᵢ / trace(C)` (the total variance, whatever `k`);
//! - `components` holds the first `k` eigenvectors as rows;
//! - sign convention: in each component, the entry of largest absolute value is positive (the
//!   first such entry on a tie), as scikit-learn's `svd_flip(u_based_decision=False)` does, so
//!   reruns and scikit-learn agree on signs;
//! - projection `y = (x − mean) · componentsᵀ`, no whitening; a PCA imported from Spark ML
//!   ([`super::spark`]) is not centred (`y = x · componentsᵀ`), as Spark projects.
//!
//! The eigen-decomposition runs on one thread and the shards merge in shard order, so a rerun
//! gives the same bits.
//!
//! # File format (`pca/pca.safetensors`, format `pomona-pca/1`)
//!
//! A [safetensors](https://github.com/huggingface/safetensors) file (little-endian, readable with
//! `safetensors.numpy.load_file`, or with numpy alone: an 8-byte header length, a JSON header,
//! then the raw tensors):
//!
//! | tensor | dtype | shape | content |
//! | --- | --- | --- | --- |
//! | `mean` | F64 | `[d]` | column means of the fitted features |
//! | `components` | F64 | `[k, d]` | principal axes, one per row, by descending variance |
//! | `explained_variance` | F64 | `[k]` | eigenvalues of the covariance (`n − 1` denominator) |
//! | `explained_variance_ratio` | F64 | `[k]` | eigenvalue / total variance |
//! | `n_samples` | U64 | `[1]` | feature vectors the PCA was fitted on |
//! | `total_variance` | F64 | `[1]` | trace of the covariance |
//!
//! and metadata (all strings): `format`, `model_sha256`, `model_uri`, `preprocessing`,
//! `versions` (copied from the features' Parquet metadata), `dim`, `components`, and
//! `centred` (`"false"` for a PCA that projects without subtracting its mean, as one imported
//! from Spark ML; a file without it is centred).

use ndarray::{Array1, Array2, ArrayView2, Axis, linalg::general_mat_mul};
use safetensors::{Dtype, SafeTensors};

use crate::stats::Moments;

/// The value of the `format` metadata entry.
pub const FORMAT: &str = "pomona-pca/1";

/// The file name of the PCA inside `pca/`.
pub const FILE_NAME: &str = "pca.safetensors";

/// How many components to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keep {
    /// Exactly this many.
    Components(usize),
    /// The fewest whose cumulative explained variance ratio reaches this fraction, in (0, 1].
    Variance(f64),
}

/// What the features were computed with; a PCA only applies to features of the same origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// sha256 of the ONNX model, hex.
    pub model_sha256: String,
    /// Where the model was read from (informative only).
    pub model_uri: String,
    /// The preprocessing, as JSON.
    pub preprocessing: String,
    /// Versions of pomona and ONNX Runtime (informative only).
    pub versions: String,
}

/// A fitted PCA.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// Column means, `[d]`.
    pub mean: Array1<f64>,
    /// Principal axes as rows, `[k, d]`.
    pub components: Array2<f64>,
    /// Variance along each axis, `[k]`.
    pub explained_variance: Array1<f64>,
    /// `explained_variance / total_variance`, `[k]`.
    pub explained_variance_ratio: Array1<f64>,
    /// Trace of the covariance.
    pub total_variance: f64,
    /// Rows fitted on.
    pub n_samples: u64,
    /// The projection subtracts the mean (pomona, scikit-learn); false for one imported from
    /// Spark ML, whose `PCAModel.transform` does not.
    pub centred: bool,
    /// Provenance of the fitted features.
    pub origin: Origin,
}

/// Why a PCA cannot be fitted, read or applied.
#[derive(Debug, thiserror::Error)]
pub enum PcaError {
    /// Not enough rows or a bad number of components.
    #[error("{0}")]
    Fit(String),
    /// Not a pomona PCA file.
    #[error("not a pomona PCA file ({FORMAT}): {0}")]
    Format(String),
    /// A PCA fitted on other features.
    #[error("{0}")]
    Mismatch(String),
}

/// Eigenvalues (descending) and eigenvectors (rows, same order) of a symmetric matrix, with the
/// sign convention of the module docs.
pub fn symmetric_eigen(matrix: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>), PcaError> {
    let d = matrix.nrows();
    let m = faer::Mat::<f64>::from_fn(d, d, |i, j| matrix[[i, j]]);
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| PcaError::Fit(format!("eigen-decomposition failed: {e:?}")))?;
    let (s, u) = (evd.S(), evd.U());
    // faer sorts ascending; reverse to descending.
    let values = Array1::from_iter((0..d).rev().map(|i| s[i]));
    let mut vectors = Array2::from_shape_fn((d, d), |(r, j)| u[(j, d - 1 - r)]);
    for mut row in vectors.rows_mut() {
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if v.abs() > row[best].abs() {
                best = j;
            }
        }
        if row[best] < 0.0 {
            row.mapv_inplace(|v| -v);
        }
    }
    Ok((values, vectors))
}

/// The number of components `keep` selects from the explained variance ratios of every axis.
/// For a fraction `f`, the smallest `k` with `Σ ratio[..k] ≥ f` (every axis if rounding keeps the
/// sum below `f`).
pub fn choose_k(keep: Keep, ratios: &[f64]) -> usize {
    match keep {
        Keep::Components(k) => k.min(ratios.len()),
        Keep::Variance(f) => {
            let mut sum = 0.0;
            for (i, r) in ratios.iter().enumerate() {
                sum += r;
                if sum >= f {
                    return i + 1;
                }
            }
            ratios.len()
        }
    }
}

impl Pca {
    /// Fits a PCA on merged statistics.
    pub fn fit(moments: &Moments, keep: Keep, origin: Origin) -> Result<Self, PcaError> {
        let n = moments.count();
        let d = moments.dim();
        if n < 2 {
            return Err(PcaError::Fit(format!(
                "a PCA needs at least 2 feature vectors, this run has {n}"
            )));
        }
        let limit = (n as usize).min(d);
        match keep {
            Keep::Components(k) if k == 0 || k > limit => {
                return Err(PcaError::Fit(format!(
                    "--components {k} is out of range: at most min(images, dimension) = \
                     min({n}, {d}) = {limit}"
                )));
            }
            Keep::Variance(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(PcaError::Fit(format!(
                    "--variance-to-keep {f} must be in (0, 1]"
                )));
            }
            _ => {}
        }
        let covariance = moments.covariance();
        let total_variance = covariance.diag().sum();
        let (values, vectors) = symmetric_eigen(&covariance)?;
        let ratios: Vec<f64> = values.iter().map(|v| v / total_variance).collect();
        let k = choose_k(keep, &ratios).min(limit);
        Ok(Self {
            mean: moments.mean().clone(),
            components: vectors.slice(ndarray::s![..k, ..]).to_owned(),
            explained_variance: values.slice(ndarray::s![..k]).to_owned(),
            explained_variance_ratio: Array1::from(ratios[..k].to_vec()),
            total_variance,
            n_samples: n,
            centred: true,
            origin,
        })
    }

    /// Number of components.
    pub fn k(&self) -> usize {
        self.components.nrows()
    }

    /// Dimension of the features it applies to.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Refuses features of another dimension, model or preprocessing. A PCA that names no
    /// model (one imported from Spark ML) is checked against the dimension only.
    pub fn check_applies_to(&self, dim: usize, origin: &Origin) -> Result<(), PcaError> {
        if dim != self.dim() {
            return Err(PcaError::Mismatch(format!(
                "the PCA was fitted on {}-value features, these features have {dim} values",
                self.dim()
            )));
        }
        if self.origin.model_sha256.is_empty() {
            return Ok(());
        }
        if !self
            .origin
            .model_sha256
            .eq_ignore_ascii_case(&origin.model_sha256)
        {
            return Err(PcaError::Mismatch(format!(
                "the PCA was fitted on features of the model with sha256 {} ({}), these \
                 features come from the model with sha256 {} ({}); refit it with \
                 --components or --variance-to-keep",
                self.origin.model_sha256,
                self.origin.model_uri,
                origin.model_sha256,
                origin.model_uri
            )));
        }
        if self.origin.preprocessing != origin.preprocessing {
            return Err(PcaError::Mismatch(format!(
                "the PCA was fitted on features preprocessed as {}, these features were \
                 preprocessed as {}",
                self.origin.preprocessing, origin.preprocessing
            )));
        }
        Ok(())
    }

    /// Projects `rows.len() / d` rows stored one after the other: `(x − mean) · componentsᵀ`
    /// (`x · componentsᵀ` when not [`centred`](Self::centred)), computed in f64, returned as
    /// f32, `k` values per row.
    pub fn project(&self, rows: &[f32]) -> Vec<f32> {
        let d = self.dim();
        assert_eq!(rows.len() % d, 0, "rows are whole");
        let n = rows.len() / d;
        let x = ArrayView2::from_shape((n, d), rows).expect("shape checked above");
        let mut x = x.mapv(f64::from);
        if self.centred {
            x -= &self.mean.view().insert_axis(Axis(0));
        }
        let mut out = Array2::<f64>::zeros((n, self.k()));
        general_mat_mul(1.0, &x, &self.components.t(), 0.0, &mut out);
        out.iter().map(|&v| v as f32).collect()
    }

    /// The PCA as a safetensors file (see the module docs). The header is written here rather
    /// than by `safetensors::serialize`, whose metadata map has no stable order, so that the same
    /// PCA always gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (k, d) = (self.k(), self.dim());
        let f64s = |values: &mut dyn Iterator<Item = f64>| -> Vec<u8> {
            values.flat_map(f64::to_le_bytes).collect()
        };
        let tensors: [(&str, &str, Vec<usize>, Vec<u8>); 6] = [
            ("mean", "F64", vec![d], f64s(&mut self.mean.iter().copied())),
            (
                "components",
                "F64",
                vec![k, d],
                f64s(&mut self.components.iter().copied()),
            ),
            (
                "explained_variance",
                "F64",
                vec![k],
                f64s(&mut self.explained_variance.iter().copied()),
            ),
            (
                "explained_variance_ratio",
                "F64",
                vec![k],
                f64s(&mut self.explained_variance_ratio.iter().copied()),
            ),
            (
                "n_samples",
                "U64",
                vec![1],
                self.n_samples.to_le_bytes().to_vec(),
            ),
            (
                "total_variance",
                "F64",
                vec![1],
                self.total_variance.to_le_bytes().to_vec(),
            ),
        ];
        let o = &self.origin;
        // serde_json's map is sorted by key: the header is deterministic.
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::json!({
                "format": FORMAT,
                "model_sha256": o.model_sha256,
                "model_uri": o.model_uri,
                "preprocessing": o.preprocessing,
                "versions": o.versions,
                "dim": d.to_string(),
                "components": k.to_string(),
                "centred": self.centred.to_string(),
            }),
        );
        let mut offset = 0;
        for (name, dtype, shape, data) in &tensors {
            header.insert(
                (*name).into(),
                serde_json::json!({
                    "dtype": dtype,
                    "shape": shape,
                    "data_offsets": [offset, offset + data.len()],
                }),
            );
            offset += data.len();
        }
        let mut json = serde_json::to_vec(&header).expect("a JSON header");
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + json.len() + offset);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for (_, _, _, data) in &tensors {
            out.extend_from_slice(data);
        }
        out
    }

    /// Reads a PCA written by [`Pca::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PcaError> {
        let bad = |e: &dyn std::fmt::Display| PcaError::Format(e.to_string());
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(&e))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(&format!(
                "format is {:?}",
                meta.get("format").map_or("missing", String::as_str)
            )));
        }
        let file = SafeTensors::deserialize(bytes).map_err(|e| bad(&e))?;
        let read = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>), PcaError> {
            let t = file.tensor(name).map_err(|e| bad(&e))?;
            if t.dtype() != dtype {
                return Err(bad(&format!("{name} is {:?}, not {dtype:?}", t.dtype())));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let f64s = |data: &[u8]| -> Vec<f64> {
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let (_, mean) = read("mean", Dtype::F64)?;
        let mean = Array1::from(f64s(&mean));
        let d = mean.len();
        let (shape, comps) = read("components", Dtype::F64)?;
        let [k, cd] = shape[..] else {
            return Err(bad(&format!("components has shape {shape:?}")));
        };
        if cd != d {
            return Err(bad(&format!("components are {cd} wide, the mean {d}")));
        }
        let components = Array2::from_shape_vec((k, d), f64s(&comps)).map_err(|e| bad(&e))?;
        let vector = |name: &str| -> Result<Array1<f64>, PcaError> {
            let (shape, data) = read(name, Dtype::F64)?;
            if shape != [k] {
                return Err(bad(&format!("{name} has shape {shape:?}, not [{k}]")));
            }
            Ok(Array1::from(f64s(&data)))
        };
        let explained_variance = vector("explained_variance")?;
        let explained_variance_ratio = vector("explained_variance_ratio")?;
        let (_, n) = read("n_samples", Dtype::U64)?;
        let n_samples = u64::from_le_bytes(n.try_into().map_err(|_| bad(&"n_samples"))?);
        let (_, total) = read("total_variance", Dtype::F64)?;
        let total_variance = f64::from_le_bytes(total.try_into().map_err(|_| bad(&"total"))?);
        let get = |key: &str| meta.get(key).cloned().unwrap_or_default();
        Ok(Self {
            mean,
            components,
            explained_variance,
            explained_variance_ratio,
            total_variance,
            n_samples,
            centred: meta.get("centred").map(String::as_str) != Some("false"),
            origin: Origin {
                model_sha256: get("model_sha256"),
                model_uri: get("model_uri"),
                preprocessing: get("preprocessing"),
                versions: get("versions"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments() -> Moments {
        // Rows on a tilted line plus small noise: one dominant axis.
        let mut rows = Vec::new();
        let mut state = 3u64;
        for i in 0..200 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let noise = ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            let t = i as f32 / 10.0;
            rows.extend_from_slice(&[t, 2.0 * t + 0.1 * noise, 5.0 - 0.3 * noise]);
        }
        let mut m = Moments::new(3);
        m.add_rows(&rows);
        m
    }

    #[test]
    fn eigenvectors_are_orthonormal_sorted_and_signed() {
        let c = moments().covariance();
        let (values, vectors) = symmetric_eigen(&c).unwrap();
        assert!(values.windows(2).into_iter().all(|w| w[0] >= w[1]));
        let gram = vectors.dot(&vectors.t());
        for ((i, j), v) in gram.indexed_iter() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-12, "{i},{j}: {v}");
        }
        // C v = λ v, and the largest entry of each vector is positive.
        for (row, &l) in vectors.rows().into_iter().zip(&values) {
            let cv = c.dot(&row);
            for (a, b) in cv.iter().zip(row.iter()) {
                assert!((a - l * b).abs() < 1e-9 * values[0]);
            }
            let max = row
                .iter()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { *v } else { m });
            assert!(max > 0.0);
        }
    }

    #[test]
    fn variance_to_keep_picks_the_smallest_k_that_reaches_it() {
        let r = [0.5, 0.3, 0.15, 0.05];
        assert_eq!(choose_k(Keep::Variance(0.5), &r), 1);
        assert_eq!(choose_k(Keep::Variance(0.51), &r), 2);
        assert_eq!(choose_k(Keep::Variance(0.95), &r), 3);
        assert_eq!(choose_k(Keep::Variance(1.0), &r), 4);
        assert_eq!(choose_k(Keep::Variance(1.0), &[0.5, 0.4999999]), 2);
        assert_eq!(choose_k(Keep::Components(9), &r), 4);
    }

    #[test]
    fn file_round_trips_and_refuses_other_files() {
        let origin = Origin {
            model_sha256: "ab".repeat(32),
            model_uri: "m.onnx".into(),
            preprocessing: "{}".into(),
            versions: "pomona".into(),
        };
        let pca = Pca::fit(&moments(), Keep::Components(2), origin.clone()).unwrap();
        assert_eq!(pca.k(), 2);
        assert!(pca.explained_variance_ratio[0] > 0.99);
        let back = Pca::from_bytes(&pca.to_bytes()).unwrap();
        assert_eq!(back, pca);
        assert!(
            back.to_bytes() == pca.to_bytes(),
            "the same PCA, the same bytes"
        );
        assert!(Pca::from_bytes(&moments().to_bytes()).is_err());
        assert!(pca.check_applies_to(3, &origin).is_ok());
        assert!(pca.check_applies_to(4, &origin).is_err());
        let other = Origin {
            model_sha256: "cd".repeat(32),
            ..origin
        };
        assert!(pca.check_applies_to(3, &other).is_err());
        assert!(Pca::fit(&moments(), Keep::Components(4), Origin::default()).is_err());
        assert!(Pca::fit(&moments(), Keep::Variance(0.0), Origin::default()).is_err());
    }

    #[test]
    fn projection_centres_then_rotates() {
        let pca = Pca::fit(&moments(), Keep::Components(3), Origin::default()).unwrap();
        let x: Vec<f32> = pca.mean.iter().map(|&v| v as f32).collect();
        let y = pca.project(&x);
        assert!(y.iter().all(|v| v.abs() < 1e-4), "{y:?}");
        let mut shifted = x.clone();
        for (s, c) in shifted.iter_mut().zip(pca.components.row(0)) {
            *s += *c as f32;
        }
        let y = pca.project(&shifted);
        assert!((y[0] - 1.0).abs() < 1e-4 && y[1].abs() < 1e-4, "{y:?}");
    }
}
