//! Chaos: `pomona run` against S3 through a proxy that injects faults (503 SlowDown, 500,
//! dropped connections, stalled and truncated bodies, a brown-out), and runs SIGKILLed at
//! random points (one of them mid-upload) then rerun, must give outputs byte-identical to a
//! clean run: plan and manifests, features, dead letters, statistics, PCA, reduced vectors.
//!
//! The brown-out lasts `POMONA_CHAOS_BROWN_OUT` seconds (3 by default, to keep the test short;
//! the default retry budget covers 30 s, which `pomona-storage`'s retry tests check on a paused
//! clock, and `POMONA_CHAOS_BROWN_OUT=30` runs it here for real). `POMONA_CHAOS_SEED` picks
//! the faults and the kill times (printed).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::{command, copy_varieties, summary};
use common::corpus::{Expect, bad_file_corpus};
use pomona_storage::testing::proxy::{FaultProxy, Faults};
use pomona_storage::testing::{ACCESS_KEY, S3Server, SECRET_KEY, TempDir};

/// What must be the same, byte for byte, in every run.
const COMPARED: [&str; 6] = [
    "manifests",
    "features",
    "deadletter",
    "stats",
    "pca",
    "reduced",
];
const MAX_IMAGE_BYTES: &str = "200000";

fn seed() -> u64 {
    std::env::var("POMONA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_130)
}

/// The images: two varieties, the bad-file corpus, and one image above the size cap.
fn write_images(server: &S3Server, scratch: &Path) -> (u64, u64) {
    let images = server.root().join("fruits/images");
    let good = copy_varieties(&images, &["Banana 1", "Lemon 1"]);
    let real = std::fs::read(&common::sample_images()[0]).unwrap();
    std::fs::create_dir_all(images.join("Odd")).unwrap();
    let mut bad = 1;
    let corpus = bad_file_corpus(&real, scratch);
    for (name, bytes, expect) in &corpus {
        std::fs::write(images.join("Odd").join(name), bytes).unwrap();
        bad += u64::from(*expect != Expect::Features);
    }
    let mut big = real;
    big.resize(300_000, 0);
    std::fs::write(images.join("Odd/big.jpg"), big).unwrap();
    (good + corpus.len() as u64 + 1, bad)
}

/// `pomona run` of the images into `runs/<name>/` through `endpoint`.
fn run_command(endpoint: &str, name: &str, scratch: &Path) -> std::process::Command {
    let output = format!("s3://fruits/runs/{name}/");
    let args = [
        "run",
        "--input",
        "s3://fruits/images/",
        "--output",
        &output,
        "--images-per-shard",
        "50",
        "--max-image-bytes",
        MAX_IMAGE_BYTES,
    ];
    let envs = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "eu-west-3"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("POMONA_SCRATCH", scratch.to_str().unwrap()),
        // Stalled bodies are cut after 1 s instead of 20: the test stays short.
        ("POMONA_REQUEST_TIMEOUT", "1"),
    ];
    command(&args, &envs)
}

fn run_to_end(endpoint: &str, name: &str, scratch: &Path) -> Output {
    let out = run_command(endpoint, name, scratch).output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pomona run into runs/{name}/ failed");
    out
}

/// Every file under `runs/<name>/<dir>/` for the compared dirs: relative path → bytes.
fn outputs(server: &S3Server, name: &str) -> BTreeMap<String, Vec<u8>> {
    let root = server.root().join("fruits/runs").join(name);
    let mut files = BTreeMap::new();
    for dir in COMPARED {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(&root).unwrap().display().to_string();
                    files.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
    }
    files
}

fn assert_identical(server: &S3Server, clean: &BTreeMap<String, Vec<u8>>, name: &str) {
    let other = outputs(server, name);
    assert_eq!(
        clean.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>(),
        "runs/{name}/ holds other files than the clean run"
    );
    for (file, bytes) in clean {
        assert!(
            other[file] == *bytes,
            "runs/{name}/{file} differs from the clean run's"
        );
    }
}

fn wait_until(child: &mut Child, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "pomona ended before {what}"
        );
        assert!(started.elapsed() < Duration::from_secs(90), "never {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// A fraction in [0, 1) from `seed` and `n` (splitmix64).
fn fraction(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn faults_and_kills_leave_outputs_byte_identical_to_a_clean_run() {
    common::init_ort();
    let seed = seed();
    let brown_out: f64 = std::env::var("POMONA_CHAOS_BROWN_OUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    eprintln!("chaos seed {seed}, brown-out {brown_out} s");
    let server = S3Server::start();
    let tmp = TempDir::new("chaos");
    let scratch: PathBuf = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let (images, bad) = write_images(&server, tmp.path());

    // 1. The reference: a clean run, straight to the server.
    let out = run_to_end(&server.endpoint, "clean", &scratch);
    let s = summary(&out);
    assert_eq!(
        (s.images, s.processed, s.failed),
        (images, images - bad, bad)
    );
    let clean = outputs(&server, "clean");
    assert!(
        clean.keys().any(|k| k.starts_with("pca/")),
        "{:?}",
        clean.keys()
    );
    let shards = images.div_ceil(50) as usize;
    assert!(shards >= 3, "{images} images");
    assert_eq!(
        clean.keys().filter(|k| k.starts_with("features/")).count(),
        shards
    );

    // 2. Through the fault proxy.
    let proxy = FaultProxy::start(
        &server.endpoint,
        Faults {
            seed,
            slow_down: 0.06,
            internal_error: 0.04,
            reset: 0.04,
            stall: 0.03,
            truncate: 0.04,
            brown_out: Some((150, Duration::from_secs_f64(brown_out))),
            each_once: true,
            ..Faults::default()
        },
    );
    let started = Instant::now();
    let out = run_to_end(&proxy.endpoint, "chaos", &scratch);
    let injected = proxy.counts();
    eprintln!("chaos run: {injected:?} in {:.1?}", started.elapsed());
    let s = summary(&out);
    assert_eq!(
        (s.images, s.processed, s.failed),
        (images, images - bad, bad)
    );
    assert!(injected.slow_down > 0 && injected.internal_error > 0 && injected.reset > 0);
    assert!(injected.stall > 0 && injected.truncate > 0, "{injected:?}");
    // The summary line reports what the requests went through.
    let line = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value =
        serde_json::from_str(line.lines().last().unwrap()).expect("a JSON summary line");
    let retried = line["storage"]["retries"].as_u64().unwrap();
    assert!(
        retried > 0 && line["storage"]["throttled"].as_u64() > Some(0),
        "{line}"
    );
    assert!(line["storage"]["timeouts"].as_u64() > Some(0), "{line}");
    // The image above the cap was dead-lettered from its listed size, never downloaded.
    assert_eq!(proxy.requests_to("GET", "big.jpg"), 0);
    assert_identical(&server, &clean, "chaos");

    // 3. Killed mid-upload (the proxy holds the upload of shard 1's features and never
    // forwards it), then at random points, then rerun to the end.
    let hold = FaultProxy::start(
        &server.endpoint,
        Faults {
            hold_put: Some((
                "runs/killed/features/part-00001".into(),
                Duration::from_secs(120),
            )),
            ..Faults::default()
        },
    );
    let quiet = |mut c: std::process::Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = quiet(run_command(&hold.endpoint, "killed", &scratch));
    wait_until(&mut child, "uploading shard 1", || hold.counts().held == 1);
    kill(child);
    let run = server.root().join("fruits/runs/killed");
    assert!(run.join("stats/part-00000.safetensors").is_file());
    for part in [
        "features/part-00001.parquet",
        "stats/part-00001.safetensors",
        "pca",
        "reduced",
    ] {
        assert!(!run.join(part).exists(), "{part} written by a killed run");
    }
    for n in 0..2 {
        let delay = Duration::from_secs_f64(0.5 + 3.0 * fraction(seed, n));
        eprintln!("kill {n} after {delay:.2?}");
        let mut child = quiet(run_command(&hold.endpoint, "killed", &scratch));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            kill(child);
        }
    }
    let out = run_to_end(&hold.endpoint, "killed", &scratch);
    let s = summary(&out);
    assert_eq!(
        (s.images, s.processed, s.failed),
        (images, images - bad, bad)
    );
    assert_identical(&server, &clean, "killed");
}
