//! Spark ML interoperation on the sample: a `PCAModel` that pyspark fits on pomona's features
//! and saves with `model.save(path)` is reused by `pomona reduce --pca-from`, whose reduced
//! vectors must equal Spark's own `PCAModel.transform` (no centring) to 1e-5; and the reading
//! snippets of docs/from-spark.md run against a real run.
//!
//! Needs `POMONA_PYTHON` with pyspark, pandas and duckdb (`ensure_spark` in scripts/tools.sh),
//! Java 17 or 21 for Spark, and `ORT_DYLIB_PATH`; fails (never skips) without them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use common::cli::{copy_varieties, pomona, read_parquet, strings};
use common::{python, scratch_dir, training_dir};

/// Components of the Spark PCA.
const K: usize = 10;

fn oracle(script: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("oracle")
        .join(script)
}

/// Runs `python script args…`, failing the test with its stderr when it fails.
fn run_python(script: &str, args: &[&str]) -> Vec<u8> {
    let py = python();
    let out = Command::new(&py)
        .arg(oracle(script))
        .args(args)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{py}` ({e}); set POMONA_PYTHON (ensure_spark)"));
    assert!(
        out.status.success(),
        "{script} failed with `{py}` (POMONA_PYTHON needs pyspark, pandas, duckdb; Spark needs \
         Java 17 or 21):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every row of a run's `reduced/*.parquet`: path → its k values.
fn reduced_rows(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut rows = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(run.join("reduced"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        for batch in read_parquet(&file) {
            let paths = strings(&batch, "path");
            let pca = batch.column_by_name("pca").unwrap().as_fixed_size_list();
            let k = pca.value_length() as usize;
            let values = pca.values().as_primitive::<Float32Type>().values();
            for (i, path) in paths.into_iter().enumerate() {
                rows.insert(path, values[i * k..(i + 1) * k].to_vec());
            }
        }
    }
    rows
}

#[test]
fn a_pca_saved_by_spark_is_reused_with_sparks_projections() {
    let scratch = scratch_dir("spark-pca");
    let run = scratch.join("run");
    let training = training_dir();
    let out = pomona(
        &[
            "run",
            "--input",
            training.to_str().unwrap(),
            "--output",
            run.to_str().unwrap(),
            "--components",
            "5",
        ],
        &[],
    );
    assert!(out.status.success(), "pomona run failed");

    // Spark fits a PCA on the run's features, saves it, and projects them.
    let model = scratch.join("spark-pca-model");
    let json = scratch.join("spark.json");
    run_python(
        "spark_pca.py",
        &[
            run.to_str().unwrap(),
            model.to_str().unwrap(),
            json.to_str().unwrap(),
            "--k",
            &K.to_string(),
        ],
    );
    let spark: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(model.join("metadata").is_dir(), "Spark saved its model");

    // pomona reuses the saved model in place of its own PCA.
    let out = pomona(
        &[
            "reduce",
            "--output",
            run.to_str().unwrap(),
            "--pca-from",
            model.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "pomona reduce --pca-from failed");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["pcaMode"], "reuse");
    assert_eq!(
        summary["projection"], "uncentred",
        "the summary says Spark's projection"
    );
    assert_eq!(summary["components"], K);
    let ratios: Vec<f64> = summary["explainedVarianceRatio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let spark_ratios = common::nums(&spark["explained_variance"]);
    assert_eq!(ratios, spark_ratios, "Spark's explained variance is kept");

    let ours = reduced_rows(&run);
    let theirs = spark["rows"].as_object().unwrap();
    assert_eq!(ours.len(), 1260, "every image of the sample is projected");
    assert_eq!(theirs.len(), ours.len());
    let mut worst = 0f64;
    for (path, row) in &ours {
        let expected = common::nums(&theirs[path.as_str()]);
        assert_eq!(row.len(), K);
        worst = worst.max(common::max_abs_diff(row, &expected));
    }
    eprintln!(
        "largest |pomona − Spark| over {} × {K} values: {worst:.3e}",
        ours.len()
    );
    assert!(
        worst <= 1e-5,
        "pomona's projection differs from Spark's by {worst}"
    );

    // Spark's projection is not centred: against pomona's own (centred) projection on the same
    // axes it is shifted by mean · pc, the same for every image.
    let mean = common::nums(&spark["mean"]);
    assert_eq!(mean.len(), 1280);
    assert!(
        mean.iter().map(|m| m * m).sum::<f64>().sqrt() > 1.0,
        "the features' mean is far from zero, so centring matters"
    );
}

#[test]
fn the_reading_snippets_of_the_spark_guide_run() {
    let scratch = scratch_dir("spark-snippets");
    let images = scratch.join("images");
    let n = copy_varieties(&images, &["Apple Red 1", "Banana 1", "Cherry 1"]);
    let run = scratch.join("run");
    let out = pomona(
        &[
            "run",
            "--input",
            images.to_str().unwrap(),
            "--output",
            run.to_str().unwrap(),
            "--components",
            "8",
            "--csv",
        ],
        &[],
    );
    assert!(out.status.success(), "pomona run failed");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/from-spark.md");
    let report = run_python(
        "run_snippets.py",
        &[doc.to_str().unwrap(), run.to_str().unwrap()],
    );
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    eprintln!("{report:#}");
    let shape = |snippet: &str, var: &str| -> Vec<u64> {
        report[snippet][var]
            .as_array()
            .unwrap_or_else(|| panic!("snippet {snippet} defines no {var}: {report}"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    // Every reader sees every image, with its 1,280 features or its 8 reduced values.
    assert_eq!(shape("pandas", "X"), [n, 1280]);
    assert_eq!(shape("pandas", "Z"), [n, 8]);
    assert_eq!(shape("pandas", "dead")[0], 0);
    assert_eq!(shape("pandas-csv", "reduced_csv"), [n, 10]);
    assert_eq!(shape("duckdb", "per_label"), [3, 2]);
    assert_eq!(shape("duckdb", "Z"), [n, 8]);
    assert_eq!(shape("spark", "features"), [n, 4]);
    assert_eq!(shape("spark", "reduced"), [n, 3]);
    assert_eq!(shape("spark", "projected"), [n, 5]);
}
