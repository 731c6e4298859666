//! Compares the Rust pipeline with the Python oracle on every image of a
//! directory tree and prints the cosine / max-abs-diff distribution (used to
//! choose the tolerances of `tests/oracle.rs`).
//!
//! ```text
//! ORT_DYLIB_PATH=... POMONA_PYTHON=... cargo run --release --example oracle_sweep -- [DIR]
//! ```

use std::path::PathBuf;
use std::process::Command;

use pomona_runner::{Model, ModelOptions, Preprocess, init_runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = std::env::var("POMONA_SHARED").unwrap_or_else(|_| "../shared".into());
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&shared).join("data/fruits-360-sample/Training"));
    let model = PathBuf::from(&shared).join("models/mobilenetv2_features.onnx");
    let mut files = Vec::new();
    for v in std::fs::read_dir(&dir)? {
        for f in std::fs::read_dir(v?.path())? {
            files.push(f?.path());
        }
    }
    files.sort();

    let py = std::env::var("POMONA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oracle/features.py");
    let out = Command::new(py)
        .arg(script)
        .arg("--model")
        .arg(&model)
        .args(&files)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let oracle = json["images"].as_array().expect("images");

    init_runtime(None)?;
    let mut m = Model::load(
        &model,
        ModelOptions {
            intra_threads: 2,
            ..Default::default()
        },
    )?;
    let p = Preprocess::default();
    let mut t = vec![0f32; p.tensor_len()];
    let mut rows = Vec::new();
    for (f, o) in files.iter().zip(oracle) {
        p.to_tensor(&p.decode(&std::fs::read(f)?)?, &mut t);
        let ours = m.run(&t, 1)?;
        let theirs: Vec<f64> = o["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let dot: f64 = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| f64::from(*a) * b)
            .sum();
        let na: f64 = ours
            .iter()
            .map(|a| f64::from(*a).powi(2))
            .sum::<f64>()
            .sqrt();
        let nb: f64 = theirs.iter().map(|b| b * b).sum::<f64>().sqrt();
        let max = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        rows.push((dot / (na * nb), max, f.display().to_string()));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = rows.len();
    let mean = rows.iter().map(|r| r.0).sum::<f64>() / n as f64;
    let mut maxes: Vec<f64> = rows.iter().map(|r| r.1).collect();
    maxes.sort_by(f64::total_cmp);
    println!(
        "{n} images: cosine mean {mean:.6}, p1 {:.6}, min {:.6} ({})",
        rows[n / 100].0,
        rows[0].0,
        rows[0].2
    );
    println!(
        "max abs diff: median {:.4}, p99 {:.4}, max {:.4}; cosine >= 0.9999: {}/{n}",
        maxes[n / 2],
        maxes[n * 99 / 100],
        maxes[n - 1],
        rows.iter().filter(|r| r.0 >= 0.9999).count()
    );
    Ok(())
}
