//! The extractor benchmark: how close `pomona extract` comes to the model's own speed.
//!
//! ```text
//! ./scripts/bench.sh extract            (or: cargo bench -p pomona-runner --bench extract)
//!     [-- --copies N]   images = N copies of the 1,260 Training images (default 4)
//! ```
//!
//! In one run, on the same images, with the same threads and batch size, it prints:
//! 1. preprocessing alone (decode, resize, normalise) per image, one thread;
//! 2. raw ONNX Runtime on pre-decoded tensors, run as pomona runs it (one single-threaded
//!    session per inference thread, all at once) and as one session of as many threads: the
//!    faster of the two is the ceiling;
//! 3. `pomona extract` end to end from local files (a child process: start-up, model load,
//!    fetch, decode, inference, Parquet, statistics, upload), its ratio to 2 and its peak RSS;
//! 4. the same from a local S3 server (s3s-fs on 127.0.0.1): `pomona plan` + `pomona extract`;
//! 5. the fast settings of `pomona sweep` (the int8 model with a dynamic input size, at 160 and
//!    at the sources' 100): preprocessing, raw ONNX Runtime and `pomona extract` from local files
//!    at each, its ratio to raw and to the CPU's limit (inference at the raw rate plus
//!    preprocessing, shared by the threads);
//! 6. the reference figures of ../shared/RECIPES.md (Python onnxruntime, the Spark pipeline),
//!    which were measured elsewhere and are quoted, not re-measured.

use std::process::Command;
use std::time::Instant;

use pomona_crds::contract::PodSummary;
use pomona_runner::{Model, ModelOptions, Preprocess, Threads, init_runtime};
use pomona_storage::testing::{ACCESS_KEY, S3Server, SECRET_KEY, TempDir, shared_dir};

mod common;
use common::{replicate, training_images};

/// The runner's default batch size.
const BATCH: usize = pomona_runner::cli::DEFAULT_BATCH_SIZE;

/// Runs the `pomona` binary with the float32 model at 224; returns its summary (if the step
/// prints one) and the wall time.
fn pomona(args: &[&str], envs: &[(&str, &str)]) -> (Option<PodSummary>, f64) {
    pomona_with("mobilenetv2_features.onnx", 224, args, envs)
}

/// Runs the `pomona` binary; `plan`, `run` and `extract` get the shared `model` at `size`, and
/// `run` and `extract` the batch size.
fn pomona_with(
    model: &str,
    size: u32,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Option<PodSummary>, f64) {
    let model = shared_dir().join("models").join(model);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pomona"));
    cmd.args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env("POMONA_TERMINATION_LOG", "/nonexistent");
    if matches!(args[0], "plan" | "run" | "extract") {
        cmd.arg("--model")
            .arg(&model)
            .args(["--size", &size.to_string()]);
    }
    if matches!(args[0], "run" | "extract") {
        cmd.args(["--batch-size", &BATCH.to_string()]);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().expect("run pomona");
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "pomona {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = PodSummary::from_message(&String::from_utf8_lossy(&out.stdout));
    (summary, wall)
}

/// Raw ONNX Runtime on pre-decoded tensors: images/s over about `total` images of `tensors`
/// (batches of `BATCH`, reused in turn), run by `sessions` sessions of `intra` threads each at
/// once, every session on its own thread (pomona runs `threads.inference` sessions of 1 thread).
fn raw_onnx_runtime(
    model: &str,
    size: u32,
    tensors: &[f32],
    total: usize,
    sessions: usize,
    intra: usize,
) -> f64 {
    let options = ModelOptions {
        intra_threads: intra,
        input_size: Some((size, size)),
        ..ModelOptions::default()
    };
    let path = shared_dir().join("models").join(model);
    let mut models: Vec<Model> = (0..sessions)
        .map(|_| Model::load(&path, options.clone()).unwrap())
        .collect();
    let batch_len = BATCH * (size * size * 3) as usize;
    let slots = tensors.len() / batch_len;
    let batch = |i: usize| &tensors[(i % slots) * batch_len..(i % slots + 1) * batch_len];
    for m in &mut models {
        for i in 0..2 {
            m.run(batch(i), BATCH).unwrap(); // warm-up
        }
    }
    let per_session = total.div_ceil(BATCH * sessions);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for m in &mut models {
            scope.spawn(move || {
                for i in 0..per_session {
                    m.run(batch(i), BATCH).unwrap();
                }
            });
        }
    });
    (per_session * sessions * BATCH) as f64 / start.elapsed().as_secs_f64()
}

/// Preprocessing per image on one thread (ms), and the tensors of the first 8 batches of images.
fn preprocess(size: u32, bytes: &[Vec<u8>]) -> (f64, Vec<f32>) {
    let pre = Preprocess::new(size, size).unwrap();
    let mut tensor = vec![0f32; pre.tensor_len()];
    let start = Instant::now();
    for b in bytes {
        pre.to_tensor(&pre.decode(b).unwrap(), &mut tensor);
    }
    let pre_ms = start.elapsed().as_secs_f64() * 1e3 / bytes.len() as f64;
    let mut tensors = vec![0f32; 8 * BATCH * pre.tensor_len()];
    for (b, t) in bytes.iter().zip(tensors.chunks_exact_mut(pre.tensor_len())) {
        pre.to_tensor(&pre.decode(b).unwrap(), t);
    }
    (pre_ms, tensors)
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut copies = 4;
    while let Some(arg) = args.next() {
        if arg == "--copies" {
            copies = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--copies N");
        }
    }
    init_runtime(None).expect("ONNX Runtime (set ORT_DYLIB_PATH; scripts/tools.sh installs it)");
    let threads = Threads::detect(None, None);
    let images = training_images();
    println!(
        "pomona extractor benchmark: MobileNetV2 features, batch {BATCH}, {} inference threads, \
         {} decode threads, {} CPUs available",
        threads.inference,
        threads.decode,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. Preprocessing alone, one thread, bytes in memory.
    let bytes: Vec<Vec<u8>> = images.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let (pre_ms, tensors) = preprocess(224, &bytes);
    println!(
        "  preprocessing (decode+resize+normalise), 1 thread: {pre_ms:.3} ms/image over {} images",
        bytes.len()
    );

    // 2. Raw ONNX Runtime on pre-decoded tensors: the same images, batch after batch, as pomona
    // runs it (one session of one thread per inference thread), and as one session of as many
    // threads.
    let model = "mobilenetv2_features.onnx";
    let total = images.len() * copies;
    let n_threads = threads.inference;
    let raw_rate = raw_onnx_runtime(model, 224, &tensors, total, n_threads, 1);
    let one_session = raw_onnx_runtime(model, 224, &tensors, total, 1, n_threads);
    println!(
        "  raw ONNX Runtime, pre-decoded tensors: {raw_rate:.1} images/s with {n_threads} \
         sessions of 1 thread, {one_session:.1} with 1 session of {n_threads} threads, over \
         {total} images"
    );
    let raw = raw_rate.max(one_session);
    drop(tensors);

    // 3. End to end from local files: `pomona plan`, then `pomona extract` of the one shard.
    let work = TempDir::new("bench");
    let input = work.path().join("images");
    let n = replicate(&images, copies, &input);
    let output = work.path().join("run");
    let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
    let per_shard = n.to_string();
    let (_, plan_wall) = pomona(
        &[
            "plan",
            "--input",
            input,
            "--output",
            output,
            "--images-per-shard",
            &per_shard,
        ],
        &[],
    );
    let (local, wall) = pomona(&["extract", "--output", output, "--shard", "0"], &[]);
    let local = local.expect("a summary");
    assert_eq!(local.processed as usize, n, "every image becomes a feature");
    let local_rate = n as f64 / wall;
    println!(
        "  pomona extract, local files: {local_rate:.1} images/s ({n} images in {wall:.2} s wall, \
         process start to exit, plus {plan_wall:.2} s for pomona plan) = {:.1} % of raw; \
         peak RSS {} MiB",
        100.0 * local_rate / raw,
        local.peak_rss_mib.map_or("?".into(), |m| m.to_string())
    );

    // 4. End to end from a local S3 server.
    let server = S3Server::start();
    let n_s3 = replicate(&images, copies, &server.root().join("fruits/images"));
    let endpoint = server.config().endpoint.unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "eu-west-3"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let (src, out) = (server.uri("images/"), server.uri("runs/bench/"));
    let per_shard = n_s3.to_string();
    let (_, plan_wall) = pomona(
        &[
            "plan",
            "--input",
            &src,
            "--output",
            &out,
            "--images-per-shard",
            &per_shard,
        ],
        &env,
    );
    let (s3, wall) = pomona(&["extract", "--output", &out, "--shard", "0"], &env);
    let s3 = s3.expect("a summary");
    assert_eq!(s3.processed as usize, n_s3);
    let s3_rate = n_s3 as f64 / wall;
    println!(
        "  pomona extract, local S3 server: {s3_rate:.1} images/s ({n_s3} images in {wall:.2} s \
         wall, plus {plan_wall:.2} s for pomona plan) = {:.1} % of raw; peak RSS {} MiB",
        100.0 * s3_rate / raw,
        s3.peak_rss_mib.map_or("?".into(), |m| m.to_string())
    );

    // 5. The fast settings: int8 with a dynamic input size, at 160 and at 100.
    let model = "mobilenetv2_features_int8_dynamic.onnx";
    for size in [160, 100] {
        let (pre_ms, tensors) = preprocess(size, &bytes);
        let raw_rate = raw_onnx_runtime(model, size, &tensors, n, n_threads, 1);
        let one_session = raw_onnx_runtime(model, size, &tensors, n, 1, n_threads);
        let raw = raw_rate.max(one_session);
        let out = work.path().join(format!("fast-{size}"));
        let out = out.to_str().unwrap();
        let plan = ["plan", "--input", input, "--output", out];
        pomona_with(
            model,
            size,
            &[&plan[..], &["--images-per-shard", &n.to_string()]].concat(),
            &[],
        );
        let (s, wall) = pomona_with(
            model,
            size,
            &["extract", "--output", out, "--shard", "0"],
            &[],
        );
        let s = s.expect("a summary");
        assert_eq!(s.processed as usize, n);
        let rate = n as f64 / wall;
        // The CPU's limit: inference at the raw rate plus preprocessing, over all the threads.
        let limit = 1.0 / (1.0 / raw + pre_ms / 1e3 / n_threads as f64);
        println!(
            "  int8 dynamic at {size}: preprocessing {pre_ms:.3} ms/image (1 thread); raw ONNX \
             Runtime {raw_rate:.1} images/s ({n_threads} sessions of 1 thread; \
             {one_session:.1} with 1 session of {n_threads}); CPU limit with preprocessing \
             {limit:.1} images/s; pomona extract, local files, {rate:.1} images/s ({n} images in \
             {wall:.2} s, process start to exit) = {:.1} % of raw, {:.1} % of the limit; peak \
             RSS {} MiB",
            100.0 * rate / raw,
            100.0 * rate / limit,
            s.peak_rss_mib.map_or("?".into(), |m| m.to_string())
        );
    }

    println!("  references (quoted from ../shared/RECIPES.md, not measured by this run):");
    println!(
        "    Python onnxruntime 1.32, batch 32, random input: 138 images/s on 1 thread, 272 on 2"
    );
    println!(
        "    Spark local[2] (binaryFile -> pandas UDF with this ONNX model -> Parquet): \
         94 images/s on these 1,260 images, 183.7 images/s on 22,688"
    );
    println!("  targets: end to end >= 95 % of raw; peak RSS <= 400 MiB at the default batch");
}
