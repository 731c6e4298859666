//! The `pomona` binary on real images and the real model: the local pipeline, the bad-file
//! corpus (locally and through S3), an interrupted shard, and one shard against a real S3 server
//! (s3s-fs on 127.0.0.1, credentials checked). The outputs are read back with arrow and pyarrow.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, FixedSizeListArray};
use common::cli::{command, copy_varieties, pomona, read_parquet, strings, summary};
use common::corpus::{Expect, bad_file_corpus};
use pomona_crds::contract::{OutputLayout, PodSummary, exit};
use pomona_storage::testing::{ACCESS_KEY, S3Server, SECRET_KEY, TempDir};

/// The sha256 of the shared MobileNetV2 feature model (its README).
const MODEL_SHA256: &str = "5353f63fa16e6c2d25805d6201db45bb040868bad6a3751ed13602136780629a";

/// `pomona run --input … --output …` plus `extra`; asserts success and returns the summary.
fn run_local(input: &Path, output: &Path, extra: &[&str]) -> PodSummary {
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = pomona(&args, &[]);
    assert!(out.status.success(), "pomona run failed");
    summary(&out)
}

fn counts(s: &PodSummary) -> (u64, u64, u64) {
    (s.images, s.processed, s.failed)
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap().to_string()
}

/// (file name, reason) of every dead letter in `files`.
fn dead_letters(files: &[PathBuf]) -> Vec<(String, String)> {
    files
        .iter()
        .flat_map(read_parquet)
        .flat_map(|b| strings(&b, "path").into_iter().zip(strings(&b, "reason")))
        .map(|(p, r)| (file_name(&p), r))
        .collect()
}

/// File names of every feature row in `files`.
fn featured(files: &[PathBuf]) -> BTreeSet<String> {
    files
        .iter()
        .flat_map(read_parquet)
        .flat_map(|b| strings(&b, "path"))
        .map(|p| file_name(&p))
        .collect()
}

/// Writes the bad-file corpus into `dest/Odd/`; returns what each file must become.
fn write_corpus(dest: &Path, scratch: &Path) -> Vec<(&'static str, Expect)> {
    let real = std::fs::read(&common::sample_images()[0]).unwrap();
    std::fs::create_dir_all(dest.join("Odd")).unwrap();
    bad_file_corpus(&real, scratch)
        .into_iter()
        .map(|(name, bytes, expect)| {
            std::fs::write(dest.join("Odd").join(name), bytes).unwrap();
            (name, expect)
        })
        .collect()
}

/// Every corpus file ended as it must: a feature row, or a dead letter with its reason.
fn assert_corpus_accounted(
    corpus: &[(&str, Expect)],
    features: &BTreeSet<String>,
    dead: &[(String, String)],
) {
    for (name, expect) in corpus {
        let letter = dead.iter().find(|(n, _)| n == name);
        match expect {
            Expect::Features => {
                assert!(features.contains(*name), "{name} has no feature row");
                assert!(letter.is_none(), "{name} was dead-lettered: {letter:?}");
            }
            Expect::DeadLetter(reason) => {
                let (_, got) = letter.unwrap_or_else(|| panic!("{name} is not dead-lettered"));
                assert!(
                    got.starts_with(reason),
                    "{name}: reason {got:?}, not {reason:?}"
                );
                assert!(!features.contains(*name), "{name} also has features");
            }
        }
    }
}

#[test]
fn run_on_the_whole_training_sample_labels_every_image() {
    common::init_ort();
    let out_dir = TempDir::new("run-all");
    let input = common::training_dir();
    let output = out_dir.path().join("run");
    let s = run_local(&input, &output, &["--images-per-shard", "500"]);
    assert_eq!(counts(&s), (1260, 1260, 0));
    let pca = s
        .pca
        .expect("the run ends with the PCA, reported in its summary");
    assert_eq!((pca.components, pca.reused), (50, false));
    assert!((0.5..=1.0).contains(&pca.explained_variance), "{pca:?}");

    let layout = OutputLayout::new(output.to_str().unwrap());
    let mut labels = BTreeSet::new();
    let mut rows = 0;
    for shard in 0..3 {
        for batch in read_parquet(Path::new(&layout.features(shard))) {
            rows += batch.num_rows();
            for (path, label) in strings(&batch, "path").iter().zip(strings(&batch, "label")) {
                let parent = Path::new(path).parent().unwrap().file_name().unwrap();
                assert_eq!(parent.to_str().unwrap(), label, "label of {path}");
                labels.insert(label);
            }
            let features = batch.column_by_name("features").unwrap();
            let features = features
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .unwrap();
            assert_eq!(features.value_length(), 1280);
        }
        assert!(Path::new(&layout.stats(shard)).is_file());
        assert!(Path::new(&layout.deadletter(shard)).is_file());
    }
    assert_eq!(rows, 1260);
    assert_eq!(labels.len(), 21);

    // pyarrow, what the product's Python users read the files with, sees the same.
    let check = format!(
        r#"
import pyarrow.parquet as pq, pyarrow as pa
t = pq.read_table({features:?})
assert t.num_rows == 500, t.num_rows
assert t.schema.field("features").type == pa.list_(pa.field("item", pa.float32(), nullable=False), 1280), t.schema
assert t.schema.field("path").type == pa.string()
meta = pq.read_metadata({features:?}).metadata
assert meta[b"pomona.model_sha256"].decode() == {sha:?}, meta
d = pq.read_table({dead:?})
assert d.num_rows == 0 and d.column_names == ["path", "reason", "bytes"], d.schema
print("ok")
"#,
        features = layout.features(0),
        dead = layout.deadletter(0),
        sha = MODEL_SHA256,
    );
    let py = Command::new(common::python())
        .args(["-c", &check])
        .output()
        .expect("run python (set POMONA_PYTHON)");
    assert!(
        py.status.success(),
        "pyarrow check failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );

    // A rerun finds every shard complete, redoes nothing, and still accounts for every image.
    let modified = || {
        std::fs::metadata(layout.features(0))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = modified();
    let again = run_local(&input, &output, &["--images-per-shard", "500"]);
    assert_eq!(counts(&again), (1260, 1260, 0));
    assert_eq!(before, modified(), "a complete shard is not redone");

    // A run with other options is another run: refused before any work, naming what differs,
    // and the output is left as it was.
    let plan = std::fs::read(layout.plan()).unwrap();
    let other = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--images-per-shard",
            "400",
            "--label",
            "none",
        ],
        &[],
    );
    assert_eq!(other.status.code(), Some(exit::PERMANENT_ERROR));
    let refused = summary(&other);
    assert_eq!(refused.reason.as_deref(), Some("OutputInUse"));
    let error = refused.error.unwrap();
    assert!(
        error.contains("in label mode, images per shard:"),
        "{error}"
    );
    assert_eq!(std::fs::read(layout.plan()).unwrap(), plan);
    assert_eq!(before, modified());
}

#[test]
fn the_bad_file_corpus_is_fully_accounted_for() {
    common::init_ort();
    let dir = TempDir::new("run-bad");
    let input = dir.path().join("images");
    let good = copy_varieties(&input, &["Fig 1"]);
    let corpus = write_corpus(&input, &dir.path().join("scratch"));
    std::fs::write(input.join("Odd/readme.txt"), b"not an image").unwrap();
    let output = dir.path().join("run");

    let s = run_local(&input, &output, &[]);
    let bad = corpus
        .iter()
        .filter(|(_, e)| *e != Expect::Features)
        .count() as u64;
    let n = good + corpus.len() as u64;
    assert_eq!(counts(&s), (n, n - bad, bad), "readme.txt is not an image");

    let layout = OutputLayout::new(output.to_str().unwrap());
    let features = featured(&[PathBuf::from(layout.features(0))]);
    let dead = dead_letters(&[PathBuf::from(layout.deadletter(0))]);
    assert_corpus_accounted(&corpus, &features, &dead);
}

#[test]
fn an_interrupted_shard_leaves_no_partial_output_and_reruns_whole() {
    common::init_ort();
    let dir = TempDir::new("run-kill");
    let input = dir.path().join("images");
    let n = copy_varieties(
        &input,
        &["Orange 1", "Lemon 1", "Pineapple 1", "Fig 1", "Corn 1"],
    );
    let output = dir.path().join("run");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    let scratch_env = scratch.to_str().unwrap();
    let mut child = command(&args, &[("POMONA_SCRATCH", scratch_env)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the shard is under way (its scratch folder exists), then kill the process.
    let started = Instant::now();
    while std::fs::read_dir(&scratch).unwrap().next().is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "pomona ended too early"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the shard never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the shard finished before it could be interrupted"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Only the plan is there: no feature, dead-letter or statistics object, whole or partial.
    let mut written = vec![];
    let mut stack = vec![output.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                written.push(p.strip_prefix(&output).unwrap().display().to_string());
            }
        }
    }
    written.sort();
    assert_eq!(
        written,
        ["manifests/plan.json", "manifests/shard-00000.jsonl"]
    );

    let s = run_local(&input, &output, &[]);
    assert_eq!(counts(&s), (n, n, 0));
}

#[test]
fn extract_shards_from_a_real_s3_server() {
    common::init_ort();
    let server = S3Server::start();
    // s3s-fs serves the files of its folder: what is written there is in the bucket.
    let images = server.root().join("fruits/images");
    let n = copy_varieties(&images, &["Banana 1", "Lemon 1"]);
    let scratch = TempDir::new("s3-corpus");
    let corpus = write_corpus(&images, scratch.path());
    let endpoint = server.config().endpoint.unwrap();
    let keys = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "eu-west-3"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let (src, out) = (server.uri("images/"), server.uri("runs/a/"));

    // Wrong credentials: a clear, permanent error naming the bucket, and no secret.
    let mut wrong = keys;
    wrong[1] = ("AWS_SECRET_ACCESS_KEY", "wrong-secret-value");
    let refused = pomona(&["plan", "--input", &src], &wrong);
    assert_eq!(refused.status.code(), Some(3), "access denied is permanent");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("access denied") && stderr.contains("\"fruits\""),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-value"));

    let plan = ["plan", "--input", &src, "--output", &out];
    let planned = pomona(&[&plan[..], &["--images-per-shard", "100"]].concat(), &keys);
    assert!(planned.status.success());
    let total = n + corpus.len() as u64;
    let mut seen = (0, 0, 0);
    for shard in ["1", "0"] {
        let extracted = pomona(&["extract", "--output", &out, "--shard", shard], &keys);
        assert!(extracted.status.success(), "shard {shard}");
        let s = summary(&extracted);
        assert_eq!(s.shard, Some(shard.parse().unwrap()));
        assert!(s.peak_rss_mib.is_some_and(|m| m > 0));
        assert!(s.cpu_seconds.is_some_and(|c| c > 0.0), "{s:?}");
        seen = (seen.0 + s.images, seen.1 + s.processed, seen.2 + s.failed);
    }
    let bad = corpus
        .iter()
        .filter(|(_, e)| *e != Expect::Features)
        .count() as u64;
    assert_eq!(seen, (total, total - bad, bad));

    let run = server.root().join("fruits/runs/a");
    let parts = |dir: &str| -> Vec<PathBuf> {
        (0..2)
            .map(|i| run.join(format!("{dir}/part-0000{i}.parquet")))
            .collect()
    };
    let rows: usize = parts("features")
        .iter()
        .flat_map(read_parquet)
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows as u64, total - bad);
    let features = featured(&parts("features"));
    assert_corpus_accounted(&corpus, &features, &dead_letters(&parts("deadletter")));
    assert!(run.join("stats/part-00001.safetensors").is_file());
}

#[test]
fn a_resize_the_model_does_not_take_is_refused_before_any_image() {
    let tmp = TempDir::new("size");
    let input = tmp.path().join("in");
    copy_varieties(&input, &["Banana 1"]);
    let out = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            tmp.path().join("out").to_str().unwrap(),
            "--width",
            "200",
            "--height",
            "224",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error, found before any work"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fixed at 224x224") && stderr.contains("224x200"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("out").exists(),
        "nothing planned or extracted"
    );
}

#[test]
fn an_output_is_resumed_by_its_run_refused_to_others_and_cleared_by_overwrite() {
    common::init_ort();
    let dir = TempDir::new("modes");
    let input = dir.path().join("images");
    let n = copy_varieties(&input, &["Fig 1"]);
    let output = dir.path().join("run");
    let (input_s, output_s) = (input.to_str().unwrap(), output.to_str().unwrap());
    let run = |output: &str, extra: &[&str]| {
        let args = [&["run", "--input", input_s, "--output", output][..], extra].concat();
        pomona(&args, &[])
    };
    let first = run(output_s, &["--components", "4"]);
    assert!(first.status.success());

    // Another run (another label mode) into the same output: refused, nothing changed.
    let plan = std::fs::read(OutputLayout::new(output_s).plan()).unwrap();
    let other = run(output_s, &["--components", "4", "--label", "none"]);
    assert_eq!(other.status.code(), Some(exit::PERMANENT_ERROR));
    assert_eq!(summary(&other).reason.as_deref(), Some("OutputInUse"));
    assert_eq!(
        std::fs::read(OutputLayout::new(output_s).plan()).unwrap(),
        plan
    );

    // --overwrite clears the output and runs anew.
    let again = run(
        output_s,
        &["--components", "4", "--label", "none", "--overwrite"],
    );
    assert!(again.status.success());
    assert_eq!(counts(&summary(&again)), (n, n, 0));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(OutputLayout::new(output_s).plan()).unwrap())
            .unwrap();
    assert_eq!(plan["identity"]["label"], "None");

    // An output inside the input is a usage error, before anything is written, even with
    // --overwrite (which would delete the images).
    let inside = input.join("out");
    for extra in [&[][..], &["--overwrite"][..]] {
        let refused = run(inside.to_str().unwrap(), extra);
        assert_eq!(refused.status.code(), Some(exit::USAGE), "{extra:?}");
        assert_eq!(
            summary(&refused).reason.as_deref(),
            Some("OutputOverlapsInput")
        );
        assert!(!inside.exists(), "nothing written inside the input");
    }
    assert_eq!(copy_count(&input), n, "no image deleted");

    // A folder holding something else is not written into.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), b"mine").unwrap();
    let refused = run(occupied.to_str().unwrap(), &[]);
    assert_eq!(refused.status.code(), Some(exit::PERMANENT_ERROR));
    assert_eq!(summary(&refused).reason.as_deref(), Some("OutputNotEmpty"));
    assert!(!occupied.join("manifests").exists());
}

/// Files under `dir`, recursively.
fn copy_count(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { copy_count(&p) } else { 1 })
        .sum()
}
