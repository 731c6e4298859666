//! The reduce step on real features (the real model on Fruits-360 images): the PCA against
//! scikit-learn, shard statistics merged in any grouping, variance-to-keep, the reuse of a saved
//! PCA and its refusal for other features, the pictures, and the accounting.

mod common;

use std::path::Path;
use std::process::Command;

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use common::cli::{copy_varieties, pomona, read_parquet, strings, summary};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_crds::contract::cost::{CostRates, CostSoFar, Usage as CostUsage};
use pomona_crds::contract::{OutputLayout, env, exit};
use pomona_runner::reduce::pca::{Origin, Pca};
use pomona_runner::report::{SCATTER_SIZE, VARIANCE_SIZE};
use pomona_runner::stats::Moments;
use pomona_storage::testing::TempDir;
use serde_json::Value;

/// `pomona run` on `varieties` into `<dir>/<name>`, with `extra` arguments; returns the output.
fn run(dir: &Path, name: &str, varieties: &[&str], extra: &[&str]) -> (String, u64) {
    let input = dir.join(format!("{name}-images"));
    let n = copy_varieties(&input, varieties);
    let output = dir.join(name).to_str().unwrap().to_string();
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        &output,
    ];
    args.extend_from_slice(extra);
    let out = pomona(&args, &[]);
    assert!(out.status.success(), "pomona run failed");
    let s = summary(&out);
    assert_eq!((s.images, s.processed, s.failed), (n, n, 0));
    (output, n)
}

fn oracle(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle/pca.py");
    let py = common::python();
    let out = Command::new(&py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{py}` ({e}); set POMONA_PYTHON"));
    assert!(
        out.status.success(),
        "the scikit-learn oracle failed with `{py}` (./scripts/test.sh installs it and sets \
         POMONA_PYTHON):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle JSON")
}

fn nums(v: &Value) -> Vec<f64> {
    common::nums(v)
}

/// (paths, rows) of a Parquet file's `column` of fixed-size float lists.
fn vectors(path: &str, column: &str) -> (Vec<String>, Vec<f32>, usize) {
    let (mut paths, mut values, mut width) = (Vec::new(), Vec::new(), 0);
    for batch in read_parquet(path) {
        let p = batch.column_by_name("path").unwrap();
        let p = p.as_any().downcast_ref::<StringArray>().unwrap();
        paths.extend((0..p.len()).map(|i| p.value(i).to_string()));
        let list = batch.column_by_name(column).unwrap();
        let list = list.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        width = list.value_length() as usize;
        let items = list
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap();
        values.extend_from_slice(items.values());
    }
    (paths, values, width)
}

fn png_size(path: &str) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{path} is not a valid image: {e}"));
    (img.width(), img.height())
}

fn read_json(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn rel_close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn pca_matches_scikit_learn_and_shard_statistics_merge_in_any_grouping() {
    common::init_ort();
    let dir = TempDir::new("reduce-fit");
    let varieties = ["Banana 1", "Blueberry 1", "Corn 1", "Lemon 1"];
    let k = 10;
    let (output, n) = run(
        dir.path(),
        "run",
        &varieties,
        &["--images-per-shard", "70", "--components", "10", "--csv"],
    );
    let layout = OutputLayout::new(&output);
    let pca_file = format!("{}pca.safetensors", layout.pca_dir());
    let pca = Pca::from_bytes(&std::fs::read(&pca_file).unwrap()).unwrap();
    assert_eq!((pca.k(), pca.dim(), pca.n_samples), (k, 1280, n));

    // scikit-learn's exact PCA on the same feature files, in float64.
    let sk = oracle(&[
        "fit",
        &output,
        "--components",
        &k.to_string(),
        "--reduced",
        &layout.reduced_dir(),
    ]);
    assert_eq!(sk["n_samples"].as_u64(), Some(n));
    for (ours, theirs) in pca
        .explained_variance_ratio
        .iter()
        .zip(nums(&sk["explained_variance_ratio"]))
    {
        assert!(rel_close(*ours, theirs, 1e-6), "ratio {ours} vs {theirs}");
    }
    for (ours, theirs) in pca
        .explained_variance
        .iter()
        .zip(nums(&sk["explained_variance"]))
    {
        assert!(
            rel_close(*ours, theirs, 1e-6),
            "variance {ours} vs {theirs}"
        );
    }
    for (i, row) in sk["components"].as_array().unwrap().iter().enumerate() {
        let theirs = nums(row);
        let ours = pca.components.row(i);
        let dot: f64 = ours.iter().zip(&theirs).map(|(a, b)| a * b).sum();
        let sign = dot.signum();
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - sign * b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-5, "component {i} differs by {diff}");
        assert_eq!(
            sign, 1.0,
            "component {i}: the same sign convention as svd_flip"
        );
    }
    for (ours, theirs) in pca.mean.iter().zip(nums(&sk["mean"])) {
        assert!((ours - theirs).abs() < 1e-9, "mean {ours} vs {theirs}");
    }
    // Our reduced vectors against sklearn's transform (f32 output).
    assert_eq!(sk["reduced_rows"].as_u64(), Some(n));
    let scale = sk["reduced_max_abs"].as_f64().unwrap();
    let diff = sk["reduced_max_abs_diff"].as_f64().unwrap();
    assert!(
        diff < 1e-5 * scale,
        "projection differs by {diff} (scale {scale})"
    );

    // Python reads the PCA file with numpy alone.
    let py = oracle(&["read", &pca_file]);
    assert_eq!(py["metadata"]["format"], "pomona-pca/1");
    assert_eq!(py["shapes"]["components"], serde_json::json!([k, 1280]));
    assert_eq!(
        nums(&py["explained_variance_ratio"]),
        pca.explained_variance_ratio.to_vec()
    );
    let features = read_parquet(layout.features(0));
    let kv =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(layout.features(0)).unwrap())
            .unwrap()
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap();
    let sha = kv.iter().find(|e| e.key == "pomona.model_sha256").unwrap();
    assert_eq!(
        py["metadata"]["model_sha256"].as_str(),
        sha.value.as_deref()
    );
    drop(features);

    // The outputs: reduced parts, the CSV, the pictures, the summary and _SUCCESS.
    let plan = read_json(&layout.plan());
    let shards = plan["shards"].as_u64().unwrap() as u32;
    assert_eq!(shards, 4);
    let mut reduced_rows = 0;
    for shard in 0..shards {
        let (_, values, width) = vectors(&layout.reduced(shard), "pca");
        assert_eq!(width, k);
        reduced_rows += values.len() / k;
    }
    assert_eq!(reduced_rows as u64, n);
    let csv = std::fs::read_to_string(layout.csv()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "path,label,pc1,pc2,pc3,pc4,pc5,pc6,pc7,pc8,pc9,pc10"
    );
    assert_eq!(lines.count() as u64, n);
    assert_eq!(
        png_size(&format!("{}explained_variance.png", layout.report_dir())),
        VARIANCE_SIZE
    );
    assert_eq!(
        png_size(&format!("{}scatter.png", layout.report_dir())),
        SCATTER_SIZE
    );
    let report = read_json(&format!("{}summary.json", layout.report_dir()));
    assert_eq!(report["components"], 10);
    assert_eq!(report["processed"].as_u64(), Some(n));
    assert_eq!(report["labels"].as_object().unwrap().len(), varieties.len());
    assert_eq!(read_json(&layout.success()), report);

    // A rerun gives the same bits.
    let before = std::fs::read(&pca_file).unwrap();
    let again = pomona(&["reduce", "--output", &output, "--components", "10"], &[]);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(&pca_file).unwrap(),
        before,
        "a refit is bit-stable"
    );

    // The shards' statistics, merged in any grouping, equal one pass over every row.
    let parts: Vec<Moments> = (0..shards)
        .map(|s| Moments::from_bytes(&std::fs::read(layout.stats(s)).unwrap()).unwrap())
        .collect();
    let mut one_pass = Moments::new(1280);
    for shard in 0..shards {
        one_pass.add_rows(&vectors(&layout.features(shard), "features").1);
    }
    let merge = |order: &[usize]| {
        let mut m = Moments::new(1280);
        for &i in order {
            m.merge(&parts[i]).unwrap();
        }
        m
    };
    let mut tree = merge(&[0, 1]);
    tree.merge(&merge(&[2, 3])).unwrap();
    let mut nested = parts[3].clone();
    nested.merge(&merge(&[1, 0, 2])).unwrap();
    let scale = one_pass
        .comoment()
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    for m in [merge(&[0, 1, 2, 3]), merge(&[3, 2, 1, 0]), tree, nested] {
        assert_eq!(m.count(), n);
        for (a, b) in m.mean().iter().zip(one_pass.mean()) {
            assert!((a - b).abs() < 1e-12 * b.abs().max(1.0), "mean {a} vs {b}");
        }
        for (a, b) in m.comoment().iter().zip(one_pass.comoment()) {
            assert!((a - b).abs() < 1e-11 * scale, "comoment {a} vs {b}");
        }
    }

    // Variance to keep: the same k as scikit-learn, and the smallest that reaches it.
    for f in ["0.5", "0.8"] {
        let out = pomona(
            &["reduce", "--output", &output, "--variance-to-keep", f],
            &[],
        );
        assert!(out.status.success());
        let report = read_json(&format!("{}summary.json", layout.report_dir()));
        let ours = report["components"].as_u64().unwrap();
        let sk = oracle(&["fit", &output, "--variance", f]);
        assert_eq!(Some(ours), sk["n_components"].as_u64(), "k for {f}");
        let ratios = nums(&report["explainedVarianceRatio"]);
        let f: f64 = f.parse().unwrap();
        assert!(ratios.iter().sum::<f64>() >= f);
        assert!(ratios[..ratios.len() - 1].iter().sum::<f64>() < f);
        assert_eq!(
            png_size(&format!("{}explained_variance.png", layout.report_dir())),
            VARIANCE_SIZE
        );
    }
}

#[test]
fn a_saved_pca_is_reused_on_new_images_and_refused_for_other_features() {
    common::init_ort();
    let dir = TempDir::new("reduce-reuse");
    let (fitted, _) = run(
        dir.path(),
        "fitted",
        &["Fig 1", "Cherry 1"],
        &["--components", "5"],
    );
    let fitted = OutputLayout::new(&fitted);
    let saved = format!("{}pca.safetensors", fitted.pca_dir());
    let pca_bytes = std::fs::read(&saved).unwrap();
    let pca = Pca::from_bytes(&pca_bytes).unwrap();

    // New images, the saved PCA: no refit, the same file, the projection with its numbers.
    let (fresh, n) = run(
        dir.path(),
        "fresh",
        &["Orange 1", "Pear Kaiser 1"],
        &["--pca-from", &fitted.pca_dir(), "--csv"],
    );
    let layout = OutputLayout::new(&fresh);
    let copied = std::fs::read(format!("{}pca.safetensors", layout.pca_dir())).unwrap();
    assert!(copied == pca_bytes, "the reused PCA is copied unchanged");
    let report = read_json(&format!("{}summary.json", layout.report_dir()));
    assert_eq!(report["pcaMode"], "reuse");
    assert_eq!(report["fittedOn"], pca.n_samples);
    assert_eq!(report["processed"].as_u64(), Some(n));
    let (paths, features, _) = vectors(&layout.features(0), "features");
    let (reduced_paths, reduced, k) = vectors(&layout.reduced(0), "pca");
    assert_eq!((paths, k), (reduced_paths, 5));
    assert!(
        reduced == pca.project(&features),
        "reduced = (x − mean) · componentsᵀ"
    );
    assert!(Path::new(&layout.success()).is_file());

    // The same reuse through `pomona reduce`, naming the file rather than the folder. The
    // extract step projected every shard through the reused PCA as it wrote it: the reduce
    // step reads those reduced files instead of the features, and makes the same report.
    let reduced_by_extract = std::fs::read(layout.reduced(0)).unwrap();
    let csv_by_extract = std::fs::read(layout.csv()).unwrap();
    let out = pomona(
        &["reduce", "--output", &fresh, "--pca-from", &saved, "--csv"],
        &[],
    );
    assert!(out.status.success());
    assert_eq!(summary(&out).processed, n);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{n} of the images were already projected by this PCA"
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the reduce step makes itself, from the features, is the same, byte for byte.
    std::fs::remove_dir_all(layout.reduced_dir()).unwrap();
    let out = pomona(
        &["reduce", "--output", &fresh, "--pca-from", &saved, "--csv"],
        &[],
    );
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("already projected"));
    assert!(std::fs::read(layout.reduced(0)).unwrap() == reduced_by_extract);
    assert!(std::fs::read(layout.csv()).unwrap() == csv_by_extract);

    // A PCA fitted on another model's features is refused, permanently, with the reason.
    let refuse = |bad: &Pca, name: &str, expect: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, bad.to_bytes()).unwrap();
        let out = pomona(
            &[
                "reduce",
                "--output",
                &fresh,
                "--pca-from",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(exit::PERMANENT_ERROR));
        let s = summary(&out);
        let error = s.error.unwrap();
        assert!(error.contains(expect), "{error}");
        assert!(
            !Path::new(&layout.success()).exists(),
            "no _SUCCESS after a refusal"
        );
    };
    let other_model = Pca {
        origin: Origin {
            model_sha256: "0".repeat(64),
            ..pca.origin.clone()
        },
        ..pca.clone()
    };
    refuse(&other_model, "other-model.safetensors", "sha256 0000");
    let other_preprocessing = Pca {
        origin: Origin {
            preprocessing: r#"{"size":160}"#.into(),
            ..pca.origin.clone()
        },
        ..pca.clone()
    };
    refuse(
        &other_preprocessing,
        "other-prep.safetensors",
        "preprocessed",
    );
    let mut small = Moments::new(8);
    small.add_rows(&(0..80).map(|i| ((i * 7) % 13) as f32).collect::<Vec<_>>());
    let other_dim = Pca::fit(
        &small,
        pomona_runner::reduce::pca::Keep::Components(2),
        pca.origin.clone(),
    )
    .unwrap();
    refuse(&other_dim, "other-dim.safetensors", "8-value features");
    let not_a_pca = dir.path().join("stats.safetensors");
    std::fs::copy(fitted.stats(0), &not_a_pca).unwrap();
    let out = pomona(
        &[
            "reduce",
            "--output",
            &fresh,
            "--pca-from",
            not_a_pca.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(exit::PERMANENT_ERROR));

    // Accounting that does not close fails with the numbers, and leaves no _SUCCESS.
    std::fs::remove_file(layout.features(0)).unwrap();
    let out = pomona(&["reduce", "--output", &fresh, "--components", "3"], &[]);
    assert_eq!(out.status.code(), Some(exit::PERMANENT_ERROR));
    let error = summary(&out).error.unwrap();
    assert!(error.contains("accounting does not close"), "{error}");
    assert!(error.contains(&format!("{n} images listed")), "{error}");
    assert!(!Path::new(&layout.success()).exists());

    // reduce without a PCA option is a usage error.
    let out = pomona(&["reduce", "--output", &fresh], &[]);
    assert_eq!(out.status.code(), Some(exit::USAGE));
}

/// (path, reason, bytes) of every row of a dead-letter file.
fn dead_letters(path: &str) -> Vec<(String, String, u64)> {
    let mut rows = Vec::new();
    for batch in read_parquet(path) {
        let bytes = batch.column_by_name("bytes").unwrap();
        let bytes = bytes
            .as_any()
            .downcast_ref::<arrow_array::UInt64Array>()
            .unwrap();
        let paths = strings(&batch, "path");
        let reasons = strings(&batch, "reason");
        for (i, (p, r)) in paths.into_iter().zip(reasons).enumerate() {
            rows.push((p, r, bytes.value(i)));
        }
    }
    rows
}

/// (path, size) of every image of a shard's manifest, as the dead-letter file names them.
fn manifest(layout: &OutputLayout, shard: u32) -> Vec<(String, u64)> {
    let source = read_json(&layout.plan())["source"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::read_to_string(layout.manifest(shard))
        .unwrap()
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            (
                format!("{source}{}", entry["key"].as_str().unwrap()),
                entry["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn shards_that_failed_for_good_are_dead_lettered_when_named() {
    common::init_ort();
    let dir = TempDir::new("reduce-failed-shards");
    let (output, n) = run(
        dir.path(),
        "run",
        &["Pineapple 1", "Tomato 1"],
        &["--images-per-shard", "40", "--components", "4"],
    );
    let layout = OutputLayout::new(&output);
    assert_eq!(read_json(&layout.plan())["shards"], 3);
    let exists = |p: &str| Path::new(p).exists();
    let reduce_with = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["reduce", "--output", &output, "--components", "4"];
        args.extend_from_slice(extra);
        pomona(&args, envs)
    };
    let reduce = |extra: &[&str]| reduce_with(extra, &[]);

    // Shard 1 failed for good before writing anything; shard 2 died during its uploads (its
    // features are there, not its statistics).
    for uri in [
        layout.features(1),
        layout.deadletter(1),
        layout.stats(1),
        layout.stats(2),
    ] {
        std::fs::remove_file(uri).unwrap();
    }

    // Without the flag, or naming only one of them, the accounting does not close.
    for extra in [&[][..], &["--failed-shards", "1"]] {
        let out = reduce(extra);
        assert_eq!(out.status.code(), Some(exit::PERMANENT_ERROR), "{extra:?}");
        let error = summary(&out).error.unwrap();
        assert!(error.contains("accounting does not close"), "{error}");
        let named = if extra.is_empty() { ": 1, 2;" } else { ": 2;" };
        assert!(error.contains(named), "{error}");
        assert!(!exists(&layout.success()));
        assert!(
            !exists(&layout.deadletter(1)),
            "nothing written on a refusal"
        );
    }

    // Named (as a range), they are dead-lettered with the reason, and the run closes.
    let shard_images: Vec<Vec<(String, u64)>> = (0..3).map(|s| manifest(&layout, s)).collect();
    let lost = (shard_images[1].len() + shard_images[2].len()) as u64;
    let check = |out: &std::process::Output| {
        assert!(out.status.success());
        let s = summary(out);
        assert_eq!((s.images, s.processed, s.failed), (n, n - lost, lost));
        for shard in [1, 2] {
            let rows = dead_letters(&layout.deadletter(shard));
            let reason = format!(
                "shard {shard} failed: its extract pods did not complete (see the \
                 FeatureExtraction status)"
            );
            let expected: Vec<(String, String, u64)> = shard_images[shard as usize]
                .iter()
                .map(|(path, size)| (path.clone(), reason.clone(), *size))
                .collect();
            assert_eq!(rows, expected, "shard {shard}");
            // Nothing of the failed shard is left to be taken for output.
            for uri in [
                layout.features(shard),
                layout.stats(shard),
                layout.reduced(shard),
            ] {
                assert!(!exists(&uri), "{uri}");
            }
        }
        let report = read_json(&format!("{}summary.json", layout.report_dir()));
        assert_eq!(report["failedShards"], serde_json::json!([1, 2]));
        assert_eq!(
            (report["processed"].as_u64(), report["failed"].as_u64()),
            (Some(n - lost), Some(lost))
        );
        assert_eq!(report["fittedOn"].as_u64(), Some(n - lost));
        assert_eq!(read_json(&layout.success()), report);
        let (paths, _, k) = vectors(&layout.reduced(0), "pca");
        assert_eq!((paths.len(), k), (shard_images[0].len(), 4));
        let pca = Pca::from_bytes(
            &std::fs::read(format!("{}pca.safetensors", layout.pca_dir())).unwrap(),
        )
        .unwrap();
        assert_eq!(pca.n_samples, n - lost, "fitted on the shards that exist");
    };
    check(&reduce(&["--failed-shards", "1-2"]));
    // Rerunning works; a named shard with complete outputs is used as usual.
    check(&reduce(&["--failed-shards=0-2"]));
    check(&reduce(&["--failed-shards=2,1"]));
    // The same list in a file, as the operator's ConfigMap hands it to the reduce pod.
    let list = dir.path().join("failed-shards");
    std::fs::write(&list, "1-2\n").unwrap();
    check(&reduce(&["--failed-shards-file", list.to_str().unwrap()]));
    let out = reduce(&["--failed-shards-file", "/nonexistent/failed-shards"]);
    assert_eq!(out.status.code(), Some(exit::USAGE));
    let error = summary(&out).error.unwrap();
    assert!(
        error.contains("cannot read --failed-shards-file"),
        "{error}"
    );
    let report = || read_json(&format!("{}summary.json", layout.report_dir()));
    assert_eq!(report().get("cost"), None, "no cost known outside a pod");

    // In a reduce pod, the summary holds the run's cost: the operator's count of the earlier
    // pods, plus this pod (its CPU, and its requests for as long as it ran), at the prices.
    let so_far = CostSoFar {
        earlier: CostUsage {
            pods: 3,
            cpu_seconds: 10.0,
            core_seconds: Some(20.0),
            gib_seconds: Some(5.0),
        },
        cpu_request_cores: 2.0,
        memory_request_bytes: 1024.0 * 1024.0 * 1024.0,
        rates: Some(CostRates {
            per_core_hour: 3.6,
            per_gib_hour: 0.0,
            currency: "EUR".into(),
        }),
    };
    let so_far = serde_json::to_string(&so_far).unwrap();
    let started = std::time::Instant::now();
    let out = reduce_with(
        &["--failed-shards=1-2"],
        &[(env::COST_SO_FAR, so_far.as_str())],
    );
    let wall = started.elapsed().as_secs_f64();
    check(&out);
    let cost: pomona_crds::Cost = serde_json::from_value(report()["cost"].clone()).unwrap();
    assert_eq!(cost.pods, 4, "{cost:?}");
    assert!(cost.cpu_seconds > 10.0, "{cost:?}");
    let cores = cost.requested_core_seconds.unwrap();
    assert!(
        cores > 20.0 && cores <= 20.0 + 2.0 * wall,
        "{cost:?}, {wall} s"
    );
    let gib = cost.requested_memory_gib_seconds.unwrap();
    assert!(gib > 5.0 && gib <= 5.0 + wall, "{cost:?}, {wall} s");
    let estimated = cost.estimated.as_ref().expect("an amount at the prices");
    assert_eq!(estimated.currency, "EUR");
    // 3.6 per core-hour: a thousandth per core-second, to 4 places.
    assert!(
        (estimated.amount - cores / 1000.0).abs() <= 0.000051,
        "{cost:?}"
    );
    // Something else in the variable is said and left out; the run goes on.
    let out = reduce_with(&["--failed-shards=1-2"], &[(env::COST_SO_FAR, "{}")]);
    check(&out);
    assert_eq!(report().get("cost"), None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not the operator's cost of the run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A shard past the plan is a usage error, before anything is touched.
    let out = reduce(&["--failed-shards", "1,3"]);
    assert_eq!(out.status.code(), Some(exit::USAGE));
    let error = summary(&out).error.unwrap();
    assert!(
        error.contains("--failed-shards names shard(s) 3") && error.contains("has 3 shard(s)"),
        "{error}"
    );
    assert!(exists(&layout.success()), "{error}");
    // So is a list that is not one.
    let out = reduce(&["--failed-shards", "1;2"]);
    assert_eq!(out.status.code(), Some(exit::USAGE));

    // When every shard failed there is nothing to fit.
    for uri in [layout.features(0), layout.deadletter(0), layout.stats(0)] {
        std::fs::remove_file(uri).unwrap();
    }
    let out = reduce(&["--failed-shards", "0-2"]);
    assert_eq!(out.status.code(), Some(exit::PERMANENT_ERROR));
    let error = summary(&out).error.unwrap();
    assert!(error.contains("every shard of the run failed"), "{error}");
    assert!(!exists(&layout.success()));

    // Extracting the shards again (here with `pomona run`) replaces their dead letters.
    let images = dir.path().join("run-images");
    let out = pomona(
        &[
            "run",
            "--input",
            images.to_str().unwrap(),
            "--output",
            &output,
            "--images-per-shard",
            "40",
            "--components",
            "4",
        ],
        &[],
    );
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!((s.images, s.processed, s.failed), (n, n, 0));
    assert!(dead_letters(&layout.deadletter(1)).is_empty());
    let report = read_json(&layout.success());
    assert!(report.get("failedShards").is_none(), "{report}");
}

/// Every file under `dir`, by its path relative to it, with its bytes.
fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn a_reduce_split_around_a_projection_job_writes_the_bytes_of_one_pod() {
    common::init_ort();
    let dir = TempDir::new("reduce-projection-job");
    let (output, n) = run(
        dir.path(),
        "run",
        &["Pineapple 1", "Tomato 1"],
        &[
            "--images-per-shard",
            "30",
            "--variance-to-keep",
            "0.8",
            "--csv",
        ],
    );
    let layout = OutputLayout::new(&output);
    assert_eq!(read_json(&layout.plan())["shards"], 4);
    let root = Path::new(&output);
    let one_pod = files_under(root);
    let reduce = |extra: &[&str]| {
        let mut args = vec!["reduce", "--output", &output, "--variance-to-keep", "0.8"];
        args.extend_from_slice(&["--csv"]);
        args.extend_from_slice(extra);
        pomona(&args, &[])
    };
    let project = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["project", "--output", &output, "--shards-per-pod", "3"];
        args.extend_from_slice(extra);
        pomona(&args, envs)
    };
    let clear = || {
        for d in ["pca", "reduced", "report"] {
            std::fs::remove_dir_all(root.join(d)).unwrap();
        }
        for f in ["reduced.csv", "_SUCCESS"] {
            std::fs::remove_file(root.join(f)).unwrap();
        }
    };
    clear();

    // The projection before the fit has no PCA to project through.
    let early = project(&["--group", "0"], &[]);
    assert!(!early.status.success());
    assert!(
        summary(&early)
            .error
            .unwrap()
            .contains("fit pod writes its PCA")
    );

    // The fit pod: the PCA, nothing else.
    let fit = reduce(&["--fit-only"]);
    assert!(
        fit.status.success(),
        "{}",
        String::from_utf8_lossy(&fit.stderr)
    );
    let s = summary(&fit);
    assert_eq!((s.images, s.processed, s.failed), (n, n, 0));
    assert!(s.pca.is_some(), "the fit pod reports its PCA");
    let pca_file = format!("{}pca.safetensors", layout.pca_dir());
    assert!(Path::new(&pca_file).exists());
    for made_later in [layout.reduced(0), layout.success(), layout.csv()] {
        assert!(!Path::new(&made_later).exists(), "{made_later}");
    }

    // The projection Job: two groups of 3 and 1 shards, the group from the Job's index.
    for (group, shards) in [("0", 3), ("1", 1)] {
        let out = project(&[], &[(env::SHARD, group)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = summary(&out);
        assert_eq!(s.step, pomona_crds::contract::Step::Project);
        assert!(s.processed > 0);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("of {shards} shard(s) projected")),
            "{said}"
        );
    }
    let past = project(&["--group", "2"], &[]);
    assert_eq!(past.status.code(), Some(exit::USAGE));
    assert!(
        summary(&past)
            .error
            .unwrap()
            .contains("past the last of the 2 groups")
    );

    // The reduce pod after it reads the PCA and the reduced files, and writes what one pod
    // wrote, byte for byte (the summary but for its timings).
    let last = reduce(&["--after-projection"]);
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let said = String::from_utf8_lossy(&last.stderr);
    assert!(said.contains("read the PCA the fit pod wrote"), "{said}");
    assert!(
        said.contains(&format!("{n} of the images were already projected")),
        "{said}"
    );
    let split = files_under(root);
    assert_eq!(
        split.keys().collect::<Vec<_>>(),
        one_pod.keys().collect::<Vec<_>>()
    );
    let without_timings = |bytes: &[u8]| {
        let mut v: Value = serde_json::from_slice(bytes).unwrap();
        v.as_object_mut().unwrap().remove("seconds");
        v.as_object_mut().unwrap().remove("cost");
        v
    };
    for (path, bytes) in &one_pod {
        if path.ends_with("summary.json") || path == "_SUCCESS" {
            assert_eq!(
                without_timings(&split[path]),
                without_timings(bytes),
                "{path}"
            );
        } else {
            assert!(split[path] == *bytes, "{path} differs");
        }
    }
    let report = read_json(&format!("{}summary.json", layout.report_dir()));
    assert_eq!(report["pcaMode"], "fit");
    assert_eq!(report["varianceToKeep"], 0.8);

    // A shard that failed for good: the fit pod dead-letters it, the projection skips it, and
    // the run still closes.
    clear();
    for uri in [layout.features(1), layout.deadletter(1), layout.stats(1)] {
        std::fs::remove_file(uri).unwrap();
    }
    let lost = manifest(&layout, 1).len() as u64;
    assert!(
        reduce(&["--fit-only", "--failed-shards", "1"])
            .status
            .success()
    );
    let first = project(&["--group", "0"], &[]);
    assert!(first.status.success());
    assert!(
        String::from_utf8_lossy(&first.stderr)
            .contains("shard 1 has no features (dead-lettered): skipped")
    );
    assert!(project(&["--group", "1"], &[]).status.success());
    let last = reduce(&["--after-projection", "--failed-shards", "1"]);
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let s = summary(&last);
    assert_eq!((s.images, s.processed, s.failed), (n, n - lost, lost));
    assert!(!Path::new(&layout.reduced(1)).exists());
}

#[test]
fn statistics_merged_in_blocks_by_merge_pods_give_the_pca_of_one_merge() {
    common::init_ort();
    let dir = TempDir::new("reduce-merge-job");
    // One image a shard: 120 shards, two blocks of 64.
    let (output, n) = run(
        dir.path(),
        "run",
        &["Pineapple 1", "Tomato 1"],
        &["--images-per-shard", "1", "--components", "4"],
    );
    let layout = OutputLayout::new(&output);
    assert_eq!(read_json(&layout.plan())["shards"], n);
    let pca_file = format!("{}pca.safetensors", layout.pca_dir());
    let reduce = |extra: &[&str]| {
        let mut args = vec!["reduce", "--output", &output, "--components", "4"];
        args.extend_from_slice(extra);
        let out = pomona(&args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            std::fs::read(&pca_file).unwrap(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let merge = |block: &str| {
        let args = ["merge", "--output", &output, "--shards-per-pod", "64"];
        let out = pomona(&args, &[(env::SHARD, block)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        summary(&out)
    };
    let (one_merge, _) = reduce(&[]);

    // The merge Job: two pods, then the fit from their blocks.
    let first = merge("0");
    assert_eq!(first.step, pomona_crds::contract::Step::Merge);
    assert_eq!(first.processed, 64);
    assert_eq!(merge("1").processed, n - 64);
    let (from_blocks, said) = reduce(&["--fit-only", "--merged-blocks", "64"]);
    assert!(from_blocks == one_merge, "the bytes of one merge");
    assert!(
        said.contains("from the merge Job's blocks of 64 shards (0 merged again here)"),
        "{said}"
    );

    // Shard 5 fails for good after the merge: its block no longer matches the census, and the
    // fit merges it again itself, into the bytes of one merge of the shards left.
    for uri in [layout.features(5), layout.deadletter(5), layout.stats(5)] {
        std::fs::remove_file(uri).unwrap();
    }
    let (again, said) = reduce(&[
        "--fit-only",
        "--merged-blocks",
        "64",
        "--failed-shards",
        "5",
    ]);
    assert!(
        said.contains("block 0 (shards 0 to 63) merged other shards than the census finds complete: merged again here"),
        "{said}"
    );
    let (without_5, _) = reduce(&["--failed-shards", "5"]);
    assert!(
        again == without_5,
        "a failed shard is a hole, however merged"
    );
    assert!(without_5 != one_merge);
    // Merged again by its pod (which sees shard 5 incomplete), block 0 is used as it is.
    merge("0");
    let (blocks, said) = reduce(&[
        "--fit-only",
        "--merged-blocks",
        "64",
        "--failed-shards",
        "5",
    ]);
    assert!(blocks == without_5);
    assert!(said.contains("(0 merged again here)"), "{said}");

    // A block past the last, and a block that is no subtree of the merge tree, are refused.
    let past = pomona(
        &[
            "merge",
            "--output",
            &output,
            "--shards-per-pod",
            "64",
            "--block",
            "2",
        ],
        &[],
    );
    assert_eq!(past.status.code(), Some(exit::USAGE));
    assert!(
        summary(&past)
            .error
            .unwrap()
            .contains("past the last of the 2 blocks")
    );
    let odd = pomona(
        &[
            "merge",
            "--output",
            &output,
            "--shards-per-pod",
            "100",
            "--block",
            "0",
        ],
        &[],
    );
    assert_eq!(odd.status.code(), Some(exit::USAGE));
    assert!(String::from_utf8_lossy(&odd.stderr).contains("not a block of the merge tree"));
}
