//! Benchmark of an incremental run, the weekly case: every photo of last week's run plus a few
//! new ones. A fresh `pomona run` of all of them beside `pomona run --reuse-from <last week>`,
//! whole processes (plan, extract, PCA fit, report) timed from start to exit, in one run.
//!
//! ```bash
//! ./scripts/bench.sh incremental [-- --new N] [-- --rounds R]
//! ```
//!
//! Last week: the 1,260 Training images of the sample. New this week: `--new` (default 40)
//! images of the sample's Test folder (other photos of the same varieties). Each of the two
//! runs is made `--rounds` times (default 2) into a new output, and its fastest time is kept.
//! The incremental run's features are checked to be the fresh run's, byte for byte.

#[allow(dead_code)] // the other benchmarks use the rest
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pomona_crds::contract::PodSummary;
use pomona_storage::testing::shared_dir;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `pomona run` of `input` into `output` with `extra`: its summary and wall time.
fn run(input: &Path, output: &Path, extra: &[&str]) -> (PodSummary, f64) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pomona"))
        .arg("run")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--model")
        .arg(shared_dir().join("models/mobilenetv2_features.onnx"))
        .args(extra)
        .env_remove("AWS_ENDPOINT_URL")
        .env("POMONA_TERMINATION_LOG", "/nonexistent")
        .output()
        .expect("run pomona");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "pomona run failed (is ORT_DYLIB_PATH set?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary =
        PodSummary::from_message(&String::from_utf8_lossy(&out.stdout)).expect("a summary line");
    (summary, seconds)
}

/// The first `n` images of the sample's Test folder, taken round the varieties.
fn new_images(n: usize) -> Vec<PathBuf> {
    let test = shared_dir().join("data/fruits-360-sample/Test");
    let mut varieties: Vec<Vec<PathBuf>> = std::fs::read_dir(&test)
        .unwrap_or_else(|e| panic!("{}: {e} (set POMONA_SHARED)", test.display()))
        .map(|v| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(v.unwrap().path())
                .unwrap()
                .map(|f| f.unwrap().path())
                .collect();
            files.sort();
            files
        })
        .collect();
    varieties.sort();
    (0..)
        .flat_map(|i| {
            varieties
                .iter()
                .filter_map(move |files| files.get(i).cloned())
        })
        .take(n)
        .collect()
}

fn features(run: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(run.join("features"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn main() {
    let new = arg("--new", 40);
    let rounds = arg("--rounds", 2).max(1);
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let input = scratch.path().join("images");
    let old = common::training_images();
    for image in &old {
        let variety = image.parent().unwrap().file_name().unwrap();
        std::fs::create_dir_all(input.join(variety)).unwrap();
        std::fs::copy(image, input.join(variety).join(image.file_name().unwrap())).unwrap();
    }
    let last_week = scratch.path().join("last-week");
    eprintln!("last week's run: {} images…", old.len());
    run(&input, &last_week, &[]);

    let added = new_images(new);
    for image in &added {
        let variety = image.parent().unwrap().file_name().unwrap();
        let name = format!("test-{}", image.file_name().unwrap().to_str().unwrap());
        std::fs::copy(image, input.join(variety).join(name)).unwrap();
    }
    let total = old.len() + added.len();
    println!(
        "incremental benchmark: {} images of last week + {} new, fastest of {rounds} round(s)",
        old.len(),
        added.len()
    );
    let reuse = ["--reuse-from", last_week.to_str().unwrap()];
    let (mut fresh, mut incremental) = (f64::INFINITY, f64::INFINITY);
    let (mut fresh_summary, mut incremental_summary) = (None, None);
    for round in 0..rounds {
        let out = scratch.path().join(format!("fresh-{round}"));
        let (s, t) = run(&input, &out, &[]);
        fresh = fresh.min(t);
        fresh_summary = Some((s, out));
        let out = scratch.path().join(format!("incremental-{round}"));
        let (s, t) = run(&input, &out, &reuse);
        incremental = incremental.min(t);
        incremental_summary = Some((s, out));
    }
    let (fs, fresh_out) = fresh_summary.expect("a round");
    let (is, incremental_out) = incremental_summary.expect("a round");
    let reused = is.reused.unwrap_or(0);
    println!(
        "{:<34} {:>8} {:>10} {:>8} {:>9}",
        "run", "images", "extracted", "reused", "seconds"
    );
    println!(
        "{:<34} {:>8} {:>10} {:>8} {:>9.2}",
        "fresh pomona run",
        fs.images,
        fs.processed + fs.failed - fs.reused.unwrap_or(0),
        fs.reused.unwrap_or(0),
        fresh
    );
    println!(
        "{:<34} {:>8} {:>10} {:>8} {:>9.2}",
        "pomona run --reuse-from last week",
        is.images,
        is.processed + is.failed - reused,
        reused,
        incremental
    );
    println!(
        "incremental / fresh: {:.2} of the time ({:.1}× faster); {} of {total} images extracted; \
         features identical to the fresh run's: {}",
        incremental / fresh,
        fresh / incremental,
        is.processed + is.failed - reused,
        if features(&incremental_out) == features(&fresh_out) {
            "yes"
        } else {
            "NO"
        }
    );
}
