//! Benchmark of the reduce step: fit and projection on 22,688 × 1280 real features (the
//! Fruits-360 sample's features repeated to the size of the full Training set), beside
//! scikit-learn's PCA on the same rows in the same run, and Spark ML's PCA figures from
//! `../shared/RECIPES.md`.
//!
//! ```bash
//! source scripts/tools.sh && ensure_onnxruntime && ensure_python
//! cargo bench -p pomona-runner --bench reduce
//! ```
//!
//! `POMONA_BENCH_FEATURES=<features/part-00000.parquet>` skips the extraction of the sample;
//! `POMONA_BENCH_ROWS` (default 22688) and `POMONA_BENCH_K` (default 50) change the size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use pomona_crds::contract::{OutputLayout, Plan};
use pomona_runner::parquet_out::{DeadLetterWriter, FeatureWriter, Provenance};
use pomona_runner::reduce::pca::{Keep, Pca};
use pomona_runner::reduce::project::FeatureFile;
use pomona_runner::stats::{Moments, ROWS_PER_UPDATE};
use serde_json::Value;

/// Spark ML PCA on these machines (RECIPES.md): 1,260 rows k=50, and 22,688 rows k=100.
const SPARK_1260_K50: f64 = 9.2;
const SPARK_22688_K100: f64 = 21.7;
const SHARD: usize = 2000;

fn shared() -> PathBuf {
    std::env::var_os("POMONA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The sample's feature file: given, or extracted now with the release binary.
fn sample_features(scratch: &Path) -> PathBuf {
    if let Some(f) = std::env::var_os("POMONA_BENCH_FEATURES") {
        return PathBuf::from(f);
    }
    let out = scratch.join("sample");
    eprintln!("extracting the features of the 1,260 sample images (pomona run)…");
    let status = Command::new(env!("CARGO_BIN_EXE_pomona"))
        .args(["run", "--input"])
        .arg(shared().join("data/fruits-360-sample/Training"))
        .arg("--output")
        .arg(&out)
        .arg("--model")
        .arg(shared().join("models/mobilenetv2_features.onnx"))
        .arg("--images-per-shard")
        .arg("5000")
        .env("POMONA_TERMINATION_LOG", "/nonexistent")
        .status()
        .expect("run pomona");
    assert!(
        status.success(),
        "pomona run failed (is ORT_DYLIB_PATH set?)"
    );
    out.join("features/part-00000.parquet")
}

fn main() {
    let rows: usize = env_or("POMONA_BENCH_ROWS", 22_688);
    let k: usize = env_or("POMONA_BENCH_K", 50);
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let features_path = sample_features(scratch.path());
    let file = FeatureFile::open(Bytes::from(std::fs::read(&features_path).unwrap())).unwrap();
    let (dim, origin) = (file.dim, file.origin.clone());
    let mut sample_paths = Vec::new();
    let mut sample_labels = Vec::new();
    let mut sample = Vec::new();
    for batch in file.batches().unwrap() {
        let batch = batch.unwrap();
        for i in 0..batch.values.len() / dim {
            sample_paths.push(batch.paths.value(i).to_string());
            sample_labels.push(batch.labels.value(i).to_string());
        }
        sample.extend_from_slice(&batch.values);
    }
    let n0 = sample_paths.len();
    println!("reduce benchmark: {rows} × {dim} features ({n0} real rows repeated), k = {k}");

    // A run folder as the extractor leaves it: 2,000-row shards with their statistics.
    let run = scratch.path().join("run");
    let layout = OutputLayout::new(run.to_str().unwrap());
    let shards = rows.div_ceil(SHARD);
    let provenance = Provenance {
        model_sha256: origin.model_sha256.clone(),
        model_uri: origin.model_uri.clone(),
        preprocessing: origin.preprocessing.clone(),
        versions: origin.versions.clone(),
    };
    let mut stats_seconds = 0.0;
    for shard in 0..shards {
        let range = shard * SHARD..((shard + 1) * SHARD).min(rows);
        let mut values = Vec::with_capacity(range.len() * dim);
        let mut writer = FeatureWriter::new(Vec::new(), dim, &provenance).unwrap();
        for r in range.clone() {
            let i = r % n0;
            let v = &sample[i * dim..(i + 1) * dim];
            let path = format!("{}#{}", sample_paths[i], r / n0);
            writer.push(&path, &sample_labels[i], None, v).unwrap();
            values.extend_from_slice(v);
        }
        let t = Instant::now();
        let mut m = Moments::new(dim);
        for chunk in values.chunks(ROWS_PER_UPDATE * dim) {
            m.add_rows(chunk); // as the extractor does
        }
        stats_seconds += t.elapsed().as_secs_f64();
        let s = shard as u32;
        for (uri, data) in [
            (layout.features(s), writer.finish().unwrap()),
            (
                layout.deadletter(s),
                DeadLetterWriter::new(Vec::new(), &provenance)
                    .unwrap()
                    .finish()
                    .unwrap(),
            ),
            (layout.stats(s), m.to_bytes()),
        ] {
            std::fs::create_dir_all(Path::new(&uri).parent().unwrap()).unwrap();
            std::fs::write(&uri, data).unwrap();
        }
    }
    let plan = Plan {
        format: Plan::FORMAT,
        source: "bench/".into(),
        images: rows as u64,
        bytes: 0,
        images_per_shard: SHARD as u32,
        shards: shards as u32,
        identity: None,
    };
    std::fs::create_dir_all(layout.manifests()).unwrap();
    std::fs::write(layout.plan(), serde_json::to_vec(&plan).unwrap()).unwrap();

    // In process: merge + eigen-decomposition, best of 3; projection of every row.
    let parts: Vec<Moments> = (0..shards)
        .map(|s| Moments::from_bytes(&std::fs::read(layout.stats(s as u32)).unwrap()).unwrap())
        .collect();
    let mut fit_best = f64::INFINITY;
    let mut pca = None;
    for _ in 0..3 {
        let t = Instant::now();
        let mut all = Moments::new(dim);
        for p in &parts {
            all.merge(p).unwrap();
        }
        let fitted = Pca::fit(&all, Keep::Components(k), origin.clone()).unwrap();
        fit_best = fit_best.min(t.elapsed().as_secs_f64());
        pca = Some(fitted);
    }
    let pca = pca.unwrap();
    let t = Instant::now();
    let mut projected = 0;
    for chunk in sample.chunks(1024 * dim).cycle().take(rows.div_ceil(1024)) {
        projected += pca.project(chunk).len() / k;
    }
    let project_seconds = t.elapsed().as_secs_f64() * rows as f64 / projected as f64;

    // The whole step as a pod runs it: pomona reduce (reads, writes, pictures, _SUCCESS).
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pomona"))
        .args(["reduce", "--output", run.to_str().unwrap(), "--components"])
        .arg(k.to_string())
        .env("POMONA_TERMINATION_LOG", "/nonexistent")
        .output()
        .expect("run pomona reduce");
    let step_seconds = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "pomona reduce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(
        &std::fs::read(format!("{}summary.json", layout.report_dir())).unwrap(),
    )
    .unwrap();
    let timings = &summary["seconds"];

    // scikit-learn on the same rows, in the same run.
    let py = std::env::var("POMONA_PYTHON").unwrap_or_else(|_| "python3".into());
    let sk = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle/pca.py"))
        .arg("bench")
        .arg(&features_path)
        .args(["--rows", &rows.to_string(), "--components", &k.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());

    println!();
    println!("| what | fit (s) | transform (s) |");
    println!("| --- | ---: | ---: |");
    println!(
        "| pomona: merge {shards} shard statistics + eigh 1280×1280 (in process, best of 3) | {fit_best:.3} | {project_seconds:.3} |"
    );
    println!(
        "| pomona reduce (whole step: read stats, fit, project + write Parquet, pictures): {step_seconds:.2} s | {:.3} (stats {:.3}) | {:.3} |",
        timings["fit"].as_f64().unwrap_or(f64::NAN),
        timings["statistics"].as_f64().unwrap_or(f64::NAN),
        timings["project"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "| pomona: shard statistics from rows (paid during extraction) | {stats_seconds:.3} | |"
    );
    match &sk {
        Some(sk) => {
            for solver in ["auto", "covariance_eigh", "full"] {
                println!(
                    "| scikit-learn PCA(svd_solver={solver:?}) | {:.3} | {:.3} |",
                    sk[solver]["fit_seconds"].as_f64().unwrap_or(f64::NAN),
                    sk[solver]["transform_seconds"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        None => println!("| scikit-learn | not run: set POMONA_PYTHON (ensure_python) | |"),
    }
    println!("| Spark ML PCA, 1,260 rows, k=50 (RECIPES.md) | {SPARK_1260_K50} | |");
    println!("| Spark ML PCA, 22,688 rows, k=100 (RECIPES.md) | {SPARK_22688_K100} | |");
    println!();
    println!(
        "target: fit under 1 s — {} ({fit_best:.3} s); peak memory of pomona reduce: see its summary line: {}",
        if fit_best < 1.0 { "met" } else { "NOT met" },
        String::from_utf8_lossy(&out.stdout).trim()
    );
}
