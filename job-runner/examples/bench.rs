//! Release-mode throughput of the two hot paths.
//!
//! ```text
//! ORT_DYLIB_PATH=... cargo run --release --example bench -- [TRAINING_DIR] [SECONDS]
//! ```
//! Prints decode+resize+normalise ms/image over all images (bytes preloaded,
//! one thread) and ONNX Runtime img/s at batch 32 with 1 and 2 intra threads
//! on pre-decoded tensors.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pomona_runner::{Model, ModelOptions, Preprocess, init_runtime};

fn images(dir: &PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for variety in std::fs::read_dir(dir).expect("training dir") {
        for f in std::fs::read_dir(variety.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = std::env::var("POMONA_SHARED").unwrap_or_else(|_| "/work/shared".into());
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&shared).join("data/fruits-360-sample/Training"));
    let secs: u64 = args.next().map_or(10, |s| s.parse().expect("seconds"));

    let files = images(&dir);
    let bytes: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let p = Preprocess::default();
    let mut tensor = vec![0f32; p.tensor_len()];

    // Decode + resize + normalise, 3 passes, best and median pass reported.
    let mut per_pass = Vec::new();
    let (mut decode_s, mut tensor_s) = (0.0, 0.0);
    for _ in 0..3 {
        let start = Instant::now();
        for b in &bytes {
            let t0 = Instant::now();
            let img = p.decode(b)?;
            let t1 = Instant::now();
            p.to_tensor(&img, &mut tensor);
            decode_s += (t1 - t0).as_secs_f64();
            tensor_s += t1.elapsed().as_secs_f64();
        }
        per_pass.push(start.elapsed().as_secs_f64() * 1e3 / bytes.len() as f64);
    }
    per_pass.sort_by(f64::total_cmp);
    let n = (3 * bytes.len()) as f64;
    println!(
        "preprocess: {} images, {:.3} ms/image (median of 3 passes; best {:.3}); decode {:.3} + resize/normalise {:.3} ms",
        bytes.len(),
        per_pass[1],
        per_pass[0],
        decode_s * 1e3 / n,
        tensor_s * 1e3 / n
    );

    // ORT on 32 pre-decoded tensors.
    init_runtime(None)?;
    let model_path = PathBuf::from(&shared).join("models/mobilenetv2_features.onnx");
    let mut batch = vec![0f32; 32 * p.tensor_len()];
    for (b, out) in bytes.iter().zip(batch.chunks_exact_mut(p.tensor_len())) {
        p.to_tensor(&p.decode(b)?, out);
    }
    for threads in [1, 2] {
        let opts = ModelOptions {
            intra_threads: threads,
            ..ModelOptions::default()
        };
        let mut m = Model::load(&model_path, opts)?;
        for _ in 0..2 {
            m.run(&batch, 32)?;
        }
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let t = Instant::now();
            m.run(&batch, 32)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let total: f64 = times.iter().sum();
        println!(
            "ort batch 32, {threads} thread(s): {:.1} img/s (median {:.1} ms/batch, {} batches)",
            32.0 * times.len() as f64 / total,
            times[times.len() / 2] * 1e3,
            times.len()
        );
    }
    Ok(())
}
