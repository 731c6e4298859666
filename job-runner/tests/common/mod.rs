//! Shared helpers for the integration tests: paths, the Python oracle, ORT init.
#![allow(dead_code)] // each test binary uses a subset

pub mod cli;
pub mod corpus;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Root of the shared assets (models, data): `POMONA_SHARED`, else `shared/` beside the
/// repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("POMONA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// The float32 MobileNetV2 feature model.
pub fn model_path() -> PathBuf {
    shared_dir().join("models/mobilenetv2_features.onnx")
}

/// The Fruits-360 Training directory.
pub fn training_dir() -> PathBuf {
    shared_dir().join("data/fruits-360-sample/Training")
}

/// Six real images from six varieties (every 3rd variety, first file by name).
pub fn sample_images() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(training_dir())
        .unwrap_or_else(|e| panic!("{}: {e}; set POMONA_SHARED", training_dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let picked: Vec<PathBuf> = dirs
        .iter()
        .step_by(3)
        .take(6)
        .map(|d| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
                .collect();
            files.sort();
            files.swap_remove(0)
        })
        .collect();
    assert_eq!(
        picked.len(),
        6,
        "expected >= 16 varieties in {}",
        training_dir().display()
    );
    picked
}

/// Python interpreter with pillow, numpy and onnxruntime: `POMONA_PYTHON` or `python3`.
pub fn python() -> String {
    std::env::var("POMONA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `oracle/features.py` in this crate.
pub fn oracle_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle/features.py")
}

/// Runs the oracle with `args`; fails the test (never skips) if Python or a
/// module is missing.
pub fn run_oracle(args: &[&str]) -> Vec<u8> {
    let py = python();
    let out = Command::new(&py)
        .arg(oracle_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{py}` ({e}); set POMONA_PYTHON to a python with pillow, numpy, onnxruntime==1.32.0")
        });
    assert!(
        out.status.success(),
        "oracle failed with `{py}`; set POMONA_PYTHON to a python with pillow, numpy, \
         onnxruntime==1.32.0 (e.g. /work/scratch/venv/bin/python):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs the oracle and parses its JSON `images` array.
pub fn oracle_json(args: &[&str]) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&run_oracle(args)).expect("oracle JSON");
    v["images"].as_array().expect("images array").clone()
}

/// JSON array of numbers → Vec<f64>.
pub fn nums(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Loads ONNX Runtime from `ORT_DYLIB_PATH`; fails (never skips) when absent.
pub fn init_ort() {
    if let Err(e) = pomona_runner::init_runtime(None) {
        panic!("{e}\n(set ORT_DYLIB_PATH; ./scripts/test.sh installs the library and sets it)");
    }
}

/// Per-process scratch directory for files the tests generate.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pomona-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Max absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}
