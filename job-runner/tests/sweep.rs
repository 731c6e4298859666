//! `pomona sweep` on real images with the shared dynamic-size models: the table, the
//! recommendation, `sweep.json` and `report/sweep.png`, and each setting's own run.

mod common;

use common::cli::{command, copy_varieties};
use pomona_crds::contract::OutputLayout;
use pomona_runner::report::SWEEP_SIZE;
use pomona_storage::testing::TempDir;
use serde_json::Value;

#[test]
fn a_sweep_measures_every_setting_and_recommends_one() {
    common::init_ort();
    let dir = TempDir::new("sweep");
    let input = dir.path().join("images");
    let n = copy_varieties(&input, &["Banana 1", "Corn 1", "Tomato 1"]);
    let output = dir.path().join("sweep").to_str().unwrap().to_string();
    let models = common::shared_dir().join("models");
    let float = models.join("mobilenetv2_features_dynamic.onnx");
    let int8 = models.join("mobilenetv2_features_int8_dynamic.onnx");
    let out = command(
        &[
            "sweep",
            "--input",
            input.to_str().unwrap(),
            "--output",
            &output,
            "--model",
            float.to_str().unwrap(),
            "--model",
            int8.to_str().unwrap(),
            "--sizes",
            "128,96",
            "--components",
            "10",
        ],
        &[],
    )
    .output()
    .expect("run pomona sweep");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pomona sweep failed:\n{stdout}");

    // The table: a header, four settings (models in order, sizes ascending), the recommendation.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(lines[0].contains("images/s") && lines[0].contains("agreement PCA 10"));
    for (line, (model, size)) in lines[1..5].iter().zip([
        ("mobilenetv2_features_dynamic.onnx", "96"),
        ("mobilenetv2_features_dynamic.onnx", "128"),
        ("mobilenetv2_features_int8_dynamic.onnx", "96"),
        ("mobilenetv2_features_int8_dynamic.onnx", "128"),
    ]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((fields[0], fields[1]), (model, size), "{line}");
    }
    assert!(lines[5].starts_with("recommended: "), "{stdout}");

    let layout = OutputLayout::new(&output);
    let sweep: Value =
        serde_json::from_slice(&std::fs::read(layout.sweep_json()).unwrap()).unwrap();
    assert_eq!(sweep["reference"], "mobilenetv2_features_dynamic-128");
    assert_eq!(sweep["sample"], n);
    let settings = sweep["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 4);
    for s in settings {
        assert_eq!(s["images"], n, "{s}");
        assert!(s["imagesPerSecond"].as_f64().unwrap() > 0.0);
        for key in ["agreementFeatures", "agreementPca", "cosineToReference"] {
            let v = s[key].as_f64().unwrap_or_else(|| panic!("{key} in {s}"));
            assert!(v > 0.5 && v <= 1.0, "{key} {v}");
        }
        // Each setting is a complete run of its own.
        let run = OutputLayout::new(&layout.sweep_setting(s["name"].as_str().unwrap()));
        let summary: Value =
            serde_json::from_slice(&std::fs::read(run.summary_json()).unwrap()).unwrap();
        assert_eq!(summary["labelAgreement"], s["agreementPca"]);
        assert!(std::path::Path::new(&run.success()).exists());
    }
    assert_eq!(
        settings[1]["cosineToReference"], 1.0,
        "the reference itself"
    );
    let recommended = sweep["recommended"].as_str().unwrap();
    let chosen = settings.iter().find(|s| s["name"] == recommended).unwrap();
    let best = settings
        .iter()
        .map(|s| s["agreementPca"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(chosen["agreementPca"].as_f64().unwrap() >= best - 0.005);
    for s in settings {
        if s["agreementPca"].as_f64().unwrap() >= best - 0.005 {
            assert!(s["imagesPerSecond"].as_f64() <= chosen["imagesPerSecond"].as_f64());
        }
    }
    let png = image::open(layout.sweep_png()).unwrap();
    assert_eq!((png.width(), png.height()), SWEEP_SIZE);
}
