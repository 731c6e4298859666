//! The `pomona` binary on real images and the real model: the local pipeline, bad files, and
//! one shard against a real S3 server (s3s-fs on 127.0.0.1, credentials checked).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use arrow_array::{Array, FixedSizeListArray, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_crds::contract::{OutputLayout, PodSummary};
use pomona_storage::testing::{ACCESS_KEY, S3Server, SECRET_KEY, TempDir};

fn pomona(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pomona"));
    cmd.args(args);
    if matches!(args.first(), Some(&"run") | Some(&"extract")) {
        cmd.arg("--model").arg(common::model_path());
    }
    cmd.env_remove("AWS_ENDPOINT_URL")
        .env("POMONA_TERMINATION_LOG", "/nonexistent/termination-log");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pomona");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn summary(out: &Output) -> PodSummary {
    PodSummary::from_message(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("no summary in {}", String::from_utf8_lossy(&out.stdout)))
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let col = batch.column_by_name(column).unwrap();
    let col = col.as_any().downcast_ref::<StringArray>().unwrap();
    (0..col.len()).map(|i| col.value(i).to_string()).collect()
}

/// Copies the images of `varieties` into `dest/<variety>/`.
fn copy_varieties(dest: &Path, varieties: &[&str]) -> usize {
    let mut n = 0;
    for variety in varieties {
        let from = common::training_dir().join(variety);
        std::fs::create_dir_all(dest.join(variety)).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dest.join(variety).join(entry.file_name())).unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn run_on_the_whole_training_sample_labels_every_image() {
    common::init_ort();
    let out_dir = TempDir::new("run-all");
    let input = common::training_dir();
    let output = out_dir.path().join("run");
    let out = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--images-per-shard",
            "500",
        ],
        &[],
    );
    assert!(out.status.success(), "pomona run failed");
    let s = summary(&out);
    assert_eq!((s.images, s.processed, s.failed), (1260, 1260, 0));

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

    // A rerun finds every shard complete, redoes nothing, and still accounts for every image.
    let features_before = std::fs::metadata(layout.features(0))
        .unwrap()
        .modified()
        .unwrap();
    let again = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &[],
    );
    assert!(again.status.success());
    let s = summary(&again);
    assert_eq!((s.images, s.processed, s.failed), (1260, 1260, 0));
    let features_after = std::fs::metadata(layout.features(0))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        features_before, features_after,
        "a complete shard is not redone"
    );
}

#[test]
fn bad_files_end_in_the_dead_letter_output_with_their_reason() {
    common::init_ort();
    let dir = TempDir::new("run-bad");
    let input = dir.path().join("images");
    let good = copy_varieties(&input, &["Fig 1"]);
    let bad = input.join("Bad");
    std::fs::create_dir_all(&bad).unwrap();
    let real = std::fs::read(
        input
            .join("Fig 1")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    std::fs::write(bad.join("empty.jpg"), b"").unwrap();
    std::fs::write(bad.join("notes.jpg"), b"this is not an image").unwrap();
    std::fs::write(bad.join("half.jpg"), &real[..real.len() / 2]).unwrap();
    std::fs::write(bad.join("SHOUT.JPG"), &real).unwrap(); // a good image, upper-case extension
    std::fs::write(bad.join("readme.txt"), b"not included").unwrap();
    let output = dir.path().join("run");
    let out = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "bad files never stop a shard");
    let s = summary(&out);
    assert_eq!(s.images, good as u64 + 4, "readme.txt is not an image");
    assert_eq!((s.processed, s.failed), (good as u64 + 1, 3));

    let layout = OutputLayout::new(output.to_str().unwrap());
    let dead = read_parquet(Path::new(&layout.deadletter(0)));
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .flat_map(|b| strings(b, "path").into_iter().zip(strings(b, "reason")))
        .map(|(p, r)| {
            (
                Path::new(&p)
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string(),
                r,
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "empty.jpg");
    assert_eq!(reasons[0].1, "empty file");
    assert_eq!(reasons[1].0, "half.jpg");
    assert!(
        reasons[1].1.starts_with("truncated or corrupt image"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "notes.jpg");
    assert_eq!(reasons[2].1, "unknown image format");
}

#[tokio::test(flavor = "multi_thread")]
async fn extract_one_shard_from_a_real_s3_server() {
    common::init_ort();
    let server = S3Server::start();
    let images = TempDir::new("s3-images");
    let n = copy_varieties(images.path(), &["Banana 1", "Lemon 1"]);
    let source = server.storage("images/").await;
    for variety in ["Banana 1", "Lemon 1"] {
        for entry in std::fs::read_dir(images.path().join(variety)).unwrap() {
            let entry = entry.unwrap();
            let key = format!("{variety}/{}", entry.file_name().to_str().unwrap());
            source
                .put(&key, std::fs::read(entry.path()).unwrap().into())
                .await
                .unwrap();
        }
    }
    let endpoint = server.config().endpoint.unwrap();
    let good_keys = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "eu-west-3"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let (src, out) = (server.uri("images/"), server.uri("runs/a/"));
    let run = |args: Vec<&str>, envs: Vec<(&str, &str)>| {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let envs: Vec<(String, String)> = envs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let envs: Vec<(&str, &str)> =
                    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                pomona(&args, &envs)
            })
            .await
            .unwrap()
        }
    };

    // Wrong credentials: a clear, permanent error naming the bucket, and no secret.
    let mut wrong = good_keys.to_vec();
    wrong[1] = ("AWS_SECRET_ACCESS_KEY", "wrong-secret-value");
    let refused = run(vec!["plan", "--input", &src], wrong).await;
    assert_eq!(refused.status.code(), Some(3), "access denied is permanent");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("access denied") && stderr.contains("\"fruits\""),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-value"));

    let planned = run(
        vec![
            "plan",
            "--input",
            &src,
            "--output",
            &out,
            "--images-per-shard",
            "100",
        ],
        good_keys.to_vec(),
    )
    .await;
    assert!(planned.status.success());
    let extracted = run(
        vec!["extract", "--output", &out, "--shard", "1"],
        good_keys.to_vec(),
    )
    .await;
    assert!(extracted.status.success());
    let s = summary(&extracted);
    assert_eq!(s.shard, Some(1));
    assert_eq!(
        (s.images, s.processed, s.failed),
        (n as u64 - 100, n as u64 - 100, 0)
    );

    let bucket = server.root().join("fruits");
    let rows: usize = read_parquet(&bucket.join("runs/a/features/part-00001.parquet"))
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, n - 100);
    assert!(bucket.join("runs/a/stats/part-00001.safetensors").is_file());
    assert!(
        !bucket.join("runs/a/features/part-00000.parquet").exists(),
        "only shard 1 ran"
    );
}
