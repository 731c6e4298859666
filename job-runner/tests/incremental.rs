//! Incremental runs (`--reuse-from`): a run of the sample, then new images and a changed one, then
//! a run that reuses the first one's features. Only the new and changed images are extracted,
//! and the outputs are those of a fresh run of the same images, byte for byte. A previous run of
//! another model or preprocessing is refused before any work.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{copy_varieties, pomona, summary};
use pomona_crds::contract::{OutputLayout, PodSummary, exit};
use pomona_storage::testing::TempDir;

/// Varieties of the first run (60 images each).
const FIRST: [&str; 2] = ["Apple Red 1", "Banana 1"];
/// Shards small enough that the new images move the shard boundaries.
const PER_SHARD: &str = "64";

fn run(input: &Path, output: &Path, extra: &[&str]) -> PodSummary {
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--images-per-shard",
        PER_SHARD,
        "--components",
        "8",
    ];
    args.extend_from_slice(extra);
    let out = pomona(&args, &[]);
    assert!(out.status.success(), "pomona run failed");
    summary(&out)
}

/// The first `n` images (by name) of a variety of the sample.
fn images_of(variety: &str, n: usize) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(common::training_dir().join(variety))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// Every file under `dir` of a run, by name, with its bytes.
fn files(run: &Path, dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(run.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(run.join(dir).join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

fn summary_json(run: &Path) -> serde_json::Value {
    let layout = OutputLayout::new(run.to_str().unwrap());
    serde_json::from_slice(&std::fs::read(layout.summary_json()).unwrap()).unwrap()
}

#[test]
fn a_rerun_extracts_only_new_and_changed_images_and_writes_what_a_fresh_run_writes() {
    let dir = TempDir::new("incremental");
    let input = dir.path().join("images");
    let first = copy_varieties(&input, &FIRST);
    let week1 = dir.path().join("week-1");
    let s = run(&input, &week1, &[]);
    assert_eq!((s.images, s.processed, s.failed), (first, first, 0));
    assert_eq!(s.reused, None);
    assert_eq!(summary_json(&week1)["reused"], 0);

    // A week later: ten images of a new variety, three new ones inside a known variety (named to
    // sort among the old ones), and one old image rewritten with another photo.
    let orange = input.join("Orange 1");
    std::fs::create_dir_all(&orange).unwrap();
    for image in images_of("Orange 1", 10) {
        std::fs::copy(&image, orange.join(image.file_name().unwrap())).unwrap();
    }
    for (i, image) in images_of("Lemon 1", 3).iter().enumerate() {
        std::fs::copy(
            image,
            input.join("Banana 1").join(format!("{}_new.jpg", 100 + i)),
        )
        .unwrap();
    }
    let changed = images_of("Banana 1", 1).remove(0);
    let changed = input.join("Banana 1").join(changed.file_name().unwrap());
    std::fs::copy(&images_of("Lemon 1", 4)[3], &changed).unwrap();
    let images = first + 10 + 3;
    let extracted = 10 + 3 + 1;

    let week2 = dir.path().join("week-2");
    let s = run(&input, &week2, &["--reuse-from", week1.to_str().unwrap()]);
    assert_eq!((s.images, s.processed, s.failed), (images, images, 0));
    assert_eq!(
        s.reused,
        Some(images - extracted),
        "only new and changed images are extracted"
    );
    assert_eq!(summary_json(&week2)["reused"], images - extracted);
    let layout = OutputLayout::new(week2.to_str().unwrap());
    let recorded: u64 = (0..3)
        .filter_map(|shard| std::fs::read(layout.reuse(shard)).ok())
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r).unwrap()["reused"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(recorded, images - extracted);

    // A fresh run of the same images writes the same features, statistics, PCA and reduced
    // vectors, byte for byte.
    let fresh = dir.path().join("fresh");
    let s = run(&input, &fresh, &[]);
    assert_eq!((s.images, s.processed, s.reused), (images, images, None));
    for what in ["features", "stats", "pca", "reduced", "deadletter"] {
        let (ours, theirs) = (files(&week2, what), files(&fresh, what));
        assert_eq!(
            ours.iter().map(|f| &f.0).collect::<Vec<_>>(),
            theirs.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
            assert!(a == b, "{what}/{name} differs from a fresh run's");
        }
    }
    let (a, b) = (summary_json(&week2), summary_json(&fresh));
    assert_eq!(a["explainedVariance"], b["explainedVariance"]);
    assert_eq!(a["labelAgreement"], b["labelAgreement"]);

    // A run reusing everything extracts nothing.
    let week3 = dir.path().join("week-3");
    let s = run(&input, &week3, &["--reuse-from", week2.to_str().unwrap()]);
    assert_eq!((s.processed, s.reused), (images, Some(images)));
    assert_eq!(files(&week3, "features"), files(&fresh, "features"));
}

#[test]
fn features_of_another_model_or_preprocessing_are_refused_before_any_work() {
    let dir = TempDir::new("incremental-refused");
    let input = dir.path().join("images");
    copy_varieties(&input, &["Banana 1"]);
    let week1 = dir.path().join("week-1");
    run(&input, &week1, &[]);

    let week2 = dir.path().join("week-2");
    let refused = |out: std::process::Output, what: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(exit::USAGE), "{stderr}");
        assert!(stderr.contains(what), "{stderr}");
        assert!(stderr.contains(week1.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains("nothing was done"), "{stderr}");
        assert!(!week2.join("manifests").exists(), "nothing is written");
        let s = summary(&out);
        assert_eq!(s.reason.as_deref(), Some("InvalidArguments"));
    };
    let reuse = ["--reuse-from", week1.to_str().unwrap()];
    let args = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            week2.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&reuse);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let nearest = args(&["--resize-filter", "nearest"]);
    let nearest: Vec<&str> = nearest.iter().map(String::as_str).collect();
    refused(pomona(&nearest, &[]), "preprocessing");

    // Another model: the int8 one (built by hand: the helper names the float model).
    let int8 = common::shared_dir().join("models/mobilenetv2_features_int8.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_pomona"))
        .args(args(&[]))
        .arg("--model")
        .arg(int8)
        .env_remove("AWS_ENDPOINT_URL")
        .env("POMONA_TERMINATION_LOG", "/nonexistent/termination-log")
        .output()
        .unwrap();
    refused(out, "model of sha256");

    // The steps the operator runs: an extract pod copies every unchanged row (here all of
    // them: nothing is inferred), and refuses the features of other preprocessing for good.
    let step = |args: &[&str]| {
        let out = pomona(args, &[]);
        (
            out.status.code(),
            summary(&out),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (input, week1) = (input.to_str().unwrap(), week1.to_str().unwrap());
    for (name, filter) in [("week-3", "bilinear"), ("week-4", "nearest")] {
        let out = dir.path().join(name);
        let out = out.to_str().unwrap();
        let filter = ["--resize-filter", filter];
        let plan = [&["plan", "--input", input, "--output", out][..], &filter].concat();
        assert_eq!(step(&plan).0, Some(exit::OK));
        let extract = [
            &[
                "extract",
                "--output",
                out,
                "--shard",
                "0",
                "--reuse-from",
                week1,
            ][..],
            &filter,
        ]
        .concat();
        let (code, s, stderr) = step(&extract);
        if filter[1] == "bilinear" {
            assert_eq!(code, Some(exit::OK), "{stderr}");
            assert_eq!((s.processed, s.reused), (60, Some(60)));
        } else {
            assert_eq!(code, Some(exit::PERMANENT_ERROR), "{stderr}");
            assert!(stderr.contains("preprocessing"), "{stderr}");
            assert_eq!(s.reason.as_deref(), Some("PermanentError"));
        }
    }

    // Reusing the run's own output is a usage error too.
    let out = pomona(
        &[
            "run",
            "--input",
            input,
            "--output",
            week1,
            "--reuse-from",
            week1,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(exit::USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlaps the output"));
}
