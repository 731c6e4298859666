//! Images that must not become features, and steps that must say where they failed: the size
//! cap, images changed or deleted since planning, feature vectors with NaN or infinity, and the
//! summary of a failed `pomona run`. Through the `pomona` binary, on real images and the real
//! model.

mod common;

use std::path::Path;

use common::cli::{copy_varieties, pomona, read_parquet, strings, summary};
use common::corpus::{Format, encode};
use image::{DynamicImage, RgbImage};
use pomona_crds::contract::{OutputLayout, Step, exit};
use pomona_runner::stats::Moments;
use pomona_storage::testing::TempDir;

/// (file name, reason) of every dead letter of shard 0 under `run`.
fn dead_letters(run: &Path) -> Vec<(String, String)> {
    let layout = OutputLayout::new(run.to_str().unwrap());
    read_parquet(layout.deadletter(0))
        .iter()
        .flat_map(|b| strings(b, "path").into_iter().zip(strings(b, "reason")))
        .map(|(p, r)| (p.rsplit('/').next().unwrap().to_string(), r))
        .collect()
}

fn reason_of<'a>(dead: &'a [(String, String)], name: &str) -> &'a str {
    dead.iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r.as_str())
        .unwrap_or_else(|| panic!("{name} is not dead-lettered: {dead:?}"))
}

#[test]
fn images_above_the_size_cap_are_dead_lettered_from_their_listed_size() {
    common::init_ort();
    let dir = TempDir::new("size-cap");
    let input = dir.path().join("in");
    let good = copy_varieties(&input, &["Fig 1"]);
    // A real image, padded past the cap: it would decode, but it is never read.
    let mut big = std::fs::read(common::sample_images()[0].clone()).unwrap();
    big.resize(300_000, 0);
    std::fs::create_dir_all(input.join("Odd")).unwrap();
    std::fs::write(input.join("Odd/big.jpg"), &big).unwrap();
    let run = dir.path().join("run");
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        run.to_str().unwrap(),
        "--max-image-bytes",
        "200000",
    ];
    let out = pomona(&args, &[]);
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!((s.images, s.processed, s.failed), (good + 1, good, 1));
    let dead = dead_letters(&run);
    assert_eq!(
        reason_of(&dead, "big.jpg"),
        "too large: 300000 bytes listed, above the 200000-byte limit (--max-image-bytes)"
    );
}

#[test]
fn images_changed_or_deleted_since_planning_are_dead_lettered() {
    common::init_ort();
    let dir = TempDir::new("changed");
    let input = dir.path().join("in");
    let n = copy_varieties(&input, &["Fig 1"]);
    let run = dir.path().join("run");
    let (input_s, run_s) = (input.to_str().unwrap(), run.to_str().unwrap());
    assert!(
        pomona(&["plan", "--input", input_s, "--output", run_s], &[])
            .status
            .success()
    );

    // After planning: one image rewritten (same bytes, a new file), one deleted.
    let mut names: Vec<_> = std::fs::read_dir(input.join("Fig 1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let (changed, deleted) = (&names[0], &names[1]);
    let path = input.join("Fig 1").join(changed);
    let bytes = std::fs::read(&path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(10));
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(input.join("Fig 1").join(deleted)).unwrap();

    let out = pomona(&["extract", "--output", run_s, "--shard", "0"], &[]);
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!((s.images, s.processed, s.failed), (n, n - 2, 2));
    let dead = dead_letters(&run);
    assert!(
        reason_of(&dead, changed).starts_with("changed since planning: "),
        "{dead:?}"
    );
    assert!(
        reason_of(&dead, deleted).starts_with("object missing (deleted since it was listed)"),
        "{dead:?}"
    );
}

#[test]
fn feature_vectors_with_nan_or_infinity_never_reach_the_statistics() {
    common::init_ort();
    let dir = TempDir::new("nan");
    let input = dir.path().join("in");
    let fruit = copy_varieties(&input, &["Fig 1"]);
    // A scale this large turns every pixel above 0 into infinity, so the model's features
    // for real fruit are NaN or infinite, while black pictures (all 0) stay finite.
    std::fs::create_dir_all(input.join("Black")).unwrap();
    for i in 0..3u8 {
        let mut black = RgbImage::new(100, 100);
        black.get_pixel_mut(0, 0).0 = [0, 0, i];
        let png = encode(&DynamicImage::ImageRgb8(black), Format::Png);
        std::fs::write(input.join(format!("Black/{i}.png")), png).unwrap();
    }
    let run = dir.path().join("run");
    let (input_s, run_s) = (input.to_str().unwrap(), run.to_str().unwrap());
    let scaled = ["--scale", "1e38", "--offset", "0"];
    let plan = [
        &["plan", "--input", input_s, "--output", run_s][..],
        &scaled,
    ]
    .concat();
    assert!(pomona(&plan, &[]).status.success());
    // Extracting with another preprocessing than the plan's is refused: its features would
    // not be comparable.
    let other = pomona(&["extract", "--output", run_s, "--shard", "0"], &[]);
    assert_eq!(other.status.code(), Some(exit::PERMANENT_ERROR));
    assert!(
        summary(&other)
            .error
            .unwrap()
            .contains("preprocessed the same way"),
        "the plan's preprocessing is enforced"
    );
    let args = [
        "extract", "--output", run_s, "--shard", "0", "--scale", "1e38", "--offset", "0",
    ];
    let out = pomona(&args, &[]);
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!((s.images, s.processed, s.failed), (fruit + 3, 3, fruit));
    let dead = dead_letters(&run);
    assert!(
        dead.iter()
            .all(|(_, r)| r == "non-finite features: the model gave NaN or infinity"),
        "{dead:?}"
    );
    let layout = OutputLayout::new(run_s);
    let stats = Moments::from_bytes(&std::fs::read(layout.stats(0)).unwrap()).unwrap();
    assert_eq!(stats.count(), 3);
    assert!(stats.mean().iter().all(|x| x.is_finite()));
    assert!(stats.comoment().iter().all(|x| x.is_finite()));
    let rows: usize = read_parquet(layout.features(0))
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 3);
}

#[test]
fn a_failed_run_names_the_step_that_failed() {
    let dir = TempDir::new("honest");
    let input = dir.path().join("in");
    let n = copy_varieties(&input, &["Fig 1"]);
    let run = dir.path().join("run");
    let (input_s, run_s) = (input.to_str().unwrap(), run.to_str().unwrap());

    // The model file is not a model: found by the checks before any work, a usage error
    // named as the plan step's, and nothing is written.
    let not_a_model = dir.path().join("model.onnx");
    std::fs::write(&not_a_model, b"not a model").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pomona"))
        .args(["run", "--input", input_s, "--output", run_s, "--model"])
        .arg(&not_a_model)
        .env("POMONA_TERMINATION_LOG", "/nonexistent/termination-log")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let s = summary(&out);
    assert_eq!(s.step, Step::Plan, "{s:?}");
    assert_eq!((s.images, s.processed, s.failed), (0, 0, 0));
    assert!(s.error.unwrap().contains("model"));
    assert!(!run.exists(), "nothing written");

    // Extraction fails: its features cannot be written (once planned, a file stands where the
    // folder goes).
    let planned = pomona(&["plan", "--input", input_s, "--output", run_s], &[]);
    assert!(planned.status.success());
    std::fs::write(run.join("features"), b"in the way").unwrap();
    let out = pomona(&["run", "--input", input_s, "--output", run_s], &[]);
    assert_ne!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(s.step, Step::Extract, "{s:?}");
    assert_eq!((s.images, s.processed), (n, 0), "{s:?}");
    std::fs::remove_dir_all(&run).unwrap();

    // Planning cannot start: there is no such folder.
    let missing = dir.path().join("missing");
    let other = dir.path().join("other-run");
    let out = pomona(
        &[
            "run",
            "--input",
            missing.to_str().unwrap(),
            "--output",
            other.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(s.step, Step::Plan, "{s:?}");
    assert_eq!(s.images, 0);
}
