//! ONNX Runtime wrapper against the real model. Needs `ORT_DYLIB_PATH`.

mod common;

use common::*;
use pomona_runner::infer::InferError;
use pomona_runner::{Layout, Model, ModelOptions, sha256_hex};

const README_SHA256: &str = "5353f63fa16e6c2d25805d6201db45bb040868bad6a3751ed13602136780629a";

fn model() -> Model {
    init_ort();
    Model::load(&model_path(), ModelOptions::default()).expect("load model")
}

struct Stats {
    sum: f64,
    l2: f64,
    nonzero: usize,
    argmax: usize,
}

fn stats(f: &[f32]) -> Stats {
    let argmax = f
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    Stats {
        sum: f.iter().map(|&v| f64::from(v)).sum(),
        l2: f.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt(),
        nonzero: f.iter().filter(|&&v| v != 0.0).count(),
        argmax,
    }
}

#[test]
fn interface_and_checksum() {
    let m = model();
    assert_eq!(m.feature_dim(), 1280);
    assert_eq!(m.input_size(), (224, 224));
    assert_eq!(m.layout(), Layout::NHWC);
    assert_eq!(m.input_len(), 224 * 224 * 3);
    assert_eq!(m.sha256(), README_SHA256);
    assert_eq!(
        sha256_hex(&std::fs::read(model_path()).unwrap()),
        README_SHA256
    );
}

/// README reference values; independent of resizing.
#[test]
fn constant_inputs_match_readme() {
    let mut m = model();
    let n = m.input_len();
    let batch: Vec<f32> = [vec![0.0f32; n], vec![-1.0f32; n]].concat();
    let f = m.run(&batch, 2).unwrap().to_vec();
    assert_eq!(f.len(), 2 * 1280);
    let zero = stats(&f[..1280]);
    assert!((zero.sum - 129.28).abs() < 1e-2, "sum {}", zero.sum);
    assert!((zero.l2 - 15.10).abs() < 1e-2, "l2 {}", zero.l2);
    assert_eq!(zero.nonzero, 343);
    assert_eq!(zero.argmax, 672);
    let minus = stats(&f[1280..]);
    assert!((minus.sum - 145.96).abs() < 1e-2, "sum {}", minus.sum);
    assert!((minus.l2 - 16.90).abs() < 1e-2, "l2 {}", minus.l2);
    assert_eq!(minus.argmax, 1254);
}

/// A batch gives the same rows as single-image runs (README: bit-identical).
#[test]
fn batch_equals_singles() {
    let mut m = model();
    let n = m.input_len();
    let batch: Vec<f32> = (0..3 * n)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let all = m.run(&batch, 3).unwrap().to_vec();
    for i in 0..3 {
        let one = m.run(&batch[i * n..(i + 1) * n], 1).unwrap();
        assert_eq!(one, &all[i * 1280..(i + 1) * 1280], "row {i}");
    }
}

#[test]
fn bad_batch_and_empty_batch() {
    let mut m = model();
    let err = m.run(&[0.0; 10], 1).unwrap_err();
    assert!(matches!(err, InferError::BadBatch { got: 10, .. }), "{err}");
    assert!(m.run(&[], 0).unwrap().is_empty());
}

#[test]
fn wrong_names_are_reported() {
    init_ort();
    let opts = ModelOptions {
        input_name: "images".into(),
        ..ModelOptions::default()
    };
    let err = Model::load(&model_path(), opts).unwrap_err().to_string();
    assert!(
        err.contains("no input named `images`") && err.contains("input"),
        "{err}"
    );
    let opts = ModelOptions {
        output_name: "logits".into(),
        ..ModelOptions::default()
    };
    let err = Model::load(&model_path(), opts).unwrap_err().to_string();
    assert!(err.contains("no output named `logits`"), "{err}");
}

#[test]
fn garbage_model_is_an_error() {
    init_ort();
    let err = Model::load(&b"not an onnx model"[..], ModelOptions::default()).unwrap_err();
    assert!(matches!(err, InferError::Ort(_)), "{err}");
    let err = Model::load(
        std::path::Path::new("/nonexistent.onnx"),
        ModelOptions::default(),
    );
    assert!(matches!(err, Err(InferError::ModelRead { .. })));
}

/// Dynamic-size model: needs `input_size`; README value at 160: sum 77.94, L2 11.90.
#[test]
fn dynamic_model_needs_and_uses_input_size() {
    init_ort();
    let path = shared_dir().join("models/mobilenetv2_features_dynamic.onnx");
    let err = Model::load(&path, ModelOptions::default()).unwrap_err();
    assert!(err.to_string().contains("input_size"), "{err}");
    let opts = ModelOptions {
        input_size: Some((160, 160)),
        ..ModelOptions::default()
    };
    let mut m = Model::load(&path, opts).unwrap();
    let f = m.run(&vec![0.0; m.input_len()], 1).unwrap();
    let s = stats(f);
    assert!(
        (s.sum - 77.94).abs() < 1e-2 && (s.l2 - 11.90).abs() < 1e-2,
        "{} {}",
        s.sum,
        s.l2
    );
}
