//! A Spark ML `PCAModel`, as `model.save(path)` writes it, read as a [`Pca`] that projects
//! exactly as Spark's `PCAModel.transform` does.
//!
//! # The folder Spark writes
//!
//! - `metadata/part-00000` (Spark 3; `metadata/part-00000-….txt` from Spark 4): one JSON line
//!   with `class`
//!   (`org.apache.spark.ml.feature.PCAModel`), `sparkVersion`, `uid` and `paramMap` (`k`,
//!   `inputCol`, `outputCol`);
//! - `data/part-….parquet`: one row of two columns:
//!   - `pc`: the principal components as a `d × k` matrix, in Spark's matrix type (a struct of
//!     `type` 1 = dense, `numRows`, `numCols`, `colPtrs`, `rowIndices`, `values`, column-major
//!     unless `isTransposed`);
//!   - `explainedVariance`: in Spark's vector type (`type` 1 = dense, `size`, `indices`,
//!     `values`), the *fraction* of the variance along each component.
//!
//! # The projection
//!
//! Spark's `PCAModel.transform` computes `pcᵀ · x`: unlike pomona's and scikit-learn's PCA, it
//! does not subtract the mean, so each of its projections is pomona's shifted by the constant
//! `mean · pc`. The imported [`Pca`] therefore has a zero mean and `centred == false`, and
//! pomona's projection of it equals Spark's. Spark keeps neither the eigenvalues, the total
//! variance nor the number of rows it fitted on: they are NaN and 0. Nor does it know the model
//! and preprocessing of its features, so the imported PCA is checked against the features'
//! dimension only.
//!
//! [`from_saved`] is pure (bytes in, [`Pca`] out); [`read`] fetches the folder's two files.

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int8Type, Int32Type};
use arrow_array::{Array, StructArray};
use bytes::Bytes;
use ndarray::{Array1, Array2};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_storage::{ErrorKind, S3Config, Storage};

use super::pca::{Origin, Pca, PcaError};

/// The folder of a saved Spark ML model's metadata file (`part-…`), relative to the model's.
pub const METADATA_DIR: &str = "metadata/";

/// The folder of its data, relative to the model's folder.
pub const DATA_DIR: &str = "data/";

/// The `class` of a saved PCAModel.
pub const CLASS: &str = "org.apache.spark.ml.feature.PCAModel";

/// What the metadata file says of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The Spark release that saved it.
    pub spark_version: String,
    /// The model's uid.
    pub uid: String,
    /// The `k` of its parameters, when set.
    pub k: Option<usize>,
    /// Its input column.
    pub input_col: Option<String>,
}

fn bad(what: impl std::fmt::Display) -> PcaError {
    PcaError::Format(format!("Spark ML PCAModel: {what}"))
}

/// Parses the metadata file; refuses another class of model.
pub fn parse_metadata(bytes: &[u8]) -> Result<Metadata, PcaError> {
    let text = std::str::from_utf8(bytes).map_err(bad)?;
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("metadata: {e}")))?;
    let class = json["class"].as_str().unwrap_or("");
    if class != CLASS {
        return Err(bad(format!(
            "the metadata names class {class:?}, not {CLASS}"
        )));
    }
    let string = |v: &serde_json::Value| v.as_str().map(String::from);
    Ok(Metadata {
        spark_version: string(&json["sparkVersion"]).unwrap_or_default(),
        uid: string(&json["uid"]).unwrap_or_default(),
        k: json["paramMap"]["k"].as_u64().map(|k| k as usize),
        input_col: string(&json["paramMap"]["inputCol"]),
    })
}

/// A child column of Spark's matrix or vector struct.
fn child<'a>(s: &'a StructArray, name: &str) -> Result<&'a dyn Array, PcaError> {
    s.column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| bad(format!("no field {name}")))
}

fn int(s: &StructArray, name: &str) -> Result<i32, PcaError> {
    let c = child(s, name)?;
    c.as_primitive_opt::<Int32Type>()
        .filter(|a| a.is_valid(0))
        .map(|a| a.value(0))
        .ok_or_else(|| bad(format!("{name} is not an integer")))
}

fn kind(s: &StructArray) -> Result<i8, PcaError> {
    let c = child(s, "type")?;
    c.as_primitive_opt::<Int8Type>()
        .filter(|a| a.is_valid(0))
        .map(|a| a.value(0))
        .ok_or_else(|| bad("type is not a byte"))
}

fn doubles(s: &StructArray, name: &str) -> Result<Vec<f64>, PcaError> {
    let list = child(s, name)?
        .as_list_opt::<i32>()
        .filter(|l| l.is_valid(0))
        .ok_or_else(|| bad(format!("{name} is not a list")))?;
    let values = list.value(0);
    let values = values
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| bad(format!("{name} is not a list of doubles")))?;
    Ok(values.values().to_vec())
}

/// Reads a saved PCAModel from its metadata and its data file (see the module docs).
/// `source` names where it came from, for the PCA's provenance.
pub fn from_saved(metadata: &[u8], data: Bytes, source: &str) -> Result<Pca, PcaError> {
    let meta = parse_metadata(metadata)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| bad(format!("data: {e}")))?
        .build()
        .map_err(|e| bad(format!("data: {e}")))?;
    let batch = reader
        .filter_map(Result::ok)
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| bad("the data file holds no row"))?;
    let column = |name: &str| -> Result<StructArray, PcaError> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_struct_opt())
            .map(|s| s.slice(0, 1))
            .ok_or_else(|| bad(format!("the data file has no struct column {name}")))
    };
    let pc = column("pc")?;
    if kind(&pc)? != 1 {
        return Err(bad("pc is a sparse matrix; only dense ones are read"));
    }
    let (rows, cols) = (int(&pc, "numRows")?, int(&pc, "numCols")?);
    let (d, k) = (
        usize::try_from(rows).map_err(bad)?,
        usize::try_from(cols).map_err(bad)?,
    );
    let values = doubles(&pc, "values")?;
    if values.len() != d * k || d == 0 || k == 0 {
        return Err(bad(format!(
            "pc is {d} × {k} but holds {} values",
            values.len()
        )));
    }
    let transposed = child(&pc, "isTransposed")?
        .as_boolean_opt()
        .filter(|b| b.is_valid(0))
        .map(|b| b.value(0))
        .ok_or_else(|| bad("isTransposed is not a boolean"))?;
    // components[j][i] = pc[i][j]: column-major values are already one component per run.
    let components = Array2::from_shape_fn((k, d), |(j, i)| {
        if transposed {
            values[i * k + j]
        } else {
            values[j * d + i]
        }
    });
    let variance = column("explainedVariance")?;
    if kind(&variance)? != 1 {
        return Err(bad("explainedVariance is a sparse vector"));
    }
    let ratios = doubles(&variance, "values")?;
    if ratios.len() != k {
        return Err(bad(format!(
            "explainedVariance has {} values for {k} components",
            ratios.len()
        )));
    }
    if let Some(mk) = meta.k.filter(|&mk| mk != k) {
        return Err(bad(format!(
            "the metadata says k = {mk}, the matrix has {k} columns"
        )));
    }
    Ok(Pca {
        mean: Array1::zeros(d),
        components,
        explained_variance: Array1::from_elem(k, f64::NAN),
        explained_variance_ratio: Array1::from(ratios),
        total_variance: f64::NAN,
        n_samples: 0,
        centred: false,
        origin: Origin {
            model_sha256: String::new(),
            model_uri: format!("Spark ML PCAModel {} at {source}", meta.uid),
            preprocessing: String::new(),
            versions: format!("Spark {}", meta.spark_version),
        },
    })
}

/// The keys under `dir` of `storage` whose file name starts with `part-` and ends with
/// `suffix`: Spark's output files, without its `_SUCCESS` markers and `.crc` checksums.
/// A folder that does not exist has none.
async fn parts(storage: &Storage, dir: &str, suffix: &str) -> anyhow::Result<Vec<String>> {
    let listed = match storage.list(dir).await {
        Ok(listed) => listed,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(listed
        .into_iter()
        .filter(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            name.starts_with("part-") && name.ends_with(suffix) && o.size > 0
        })
        .map(|o| o.key)
        .collect())
}

/// The PCAModel saved under the folder `uri`, or `None` when the folder holds no Spark ML
/// model metadata (it may then be a pomona PCA).
pub async fn read(uri: &str, s3: &S3Config) -> anyhow::Result<Option<Pca>> {
    let folder = format!("{}/", uri.trim_end_matches('/'));
    let storage = Storage::open(&folder, s3).await?;
    let metadata = parts(&storage, METADATA_DIR, "").await?;
    let Some(metadata) = metadata.first() else {
        return Ok(None);
    };
    let metadata = storage
        .get(metadata)
        .await
        .with_context(|| format!("cannot read {folder}{metadata}"))?;
    let data = parts(&storage, DATA_DIR, ".parquet").await?;
    let [part] = &data[..] else {
        return Err(crate::Permanent(format!(
            "{folder}{DATA_DIR} holds {} Parquet files, a saved PCAModel one",
            data.len()
        ))
        .into());
    };
    let data = storage
        .get(part)
        .await
        .with_context(|| format!("cannot read {folder}{part}"))?;
    let pca = from_saved(&metadata, data, &folder)
        .map_err(|e| crate::Permanent(format!("{folder}: {e}")))?;
    Ok(Some(pca))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_class_and_k() {
        let line = br#"{"class":"org.apache.spark.ml.feature.PCAModel","timestamp":1,"sparkVersion":"4.3.0","uid":"PCA_1","paramMap":{"k":3,"inputCol":"features","outputCol":"pca"},"defaultParamMap":{}}"#;
        let m = parse_metadata(line).unwrap();
        assert_eq!(
            m,
            Metadata {
                spark_version: "4.3.0".into(),
                uid: "PCA_1".into(),
                k: Some(3),
                input_col: Some("features".into())
            }
        );
        let other = br#"{"class":"org.apache.spark.ml.feature.StandardScalerModel"}"#;
        assert!(
            parse_metadata(other)
                .unwrap_err()
                .to_string()
                .contains("StandardScalerModel")
        );
        assert!(parse_metadata(b"not json").is_err());
    }

    #[test]
    fn an_uncentred_pca_projects_like_spark() {
        // pc = [[1, 0], [0, 2], [1, 1]] (d = 3, k = 2); Spark: y = pcᵀ x, no mean subtracted.
        let pca = Pca {
            mean: Array1::zeros(3),
            components: Array2::from_shape_vec((2, 3), vec![1.0, 0.0, 1.0, 0.0, 2.0, 1.0]).unwrap(),
            explained_variance: Array1::from_elem(2, f64::NAN),
            explained_variance_ratio: Array1::from(vec![0.6, 0.3]),
            total_variance: f64::NAN,
            n_samples: 0,
            centred: false,
            origin: Origin::default(),
        };
        assert_eq!(pca.project(&[1.0, 2.0, 3.0]), vec![4.0, 7.0]);
        // The file keeps it uncentred.
        let back = Pca::from_bytes(&pca.to_bytes()).unwrap();
        assert!(!back.centred);
        assert_eq!(back.project(&[1.0, 2.0, 3.0]), vec![4.0, 7.0]);
        // It knows no model: any features of its dimension are accepted, others are not.
        let origin = Origin {
            model_sha256: "ab".into(),
            ..Origin::default()
        };
        assert!(back.check_applies_to(3, &origin).is_ok());
        assert!(back.check_applies_to(4, &origin).is_err());
    }
}
