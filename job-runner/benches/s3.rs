//! The S3 read-path benchmark: the same images read by `pomona extract` from a local folder,
//! from a local S3 server (s3s-fs on 127.0.0.1), and from that server behind a proxy that adds
//! latency to every request (30 ms, as a far region does), in one run.
//!
//! ```text
//! ./scripts/bench.sh s3            (or: cargo bench -p pomona-runner --bench s3)
//!     [-- --copies N]        images = N copies of the 1,260 Training images (default 18: 22,680)
//!     [-- --latency-ms L]    latency the proxy adds (default 30)
//!     [-- --model PATH --size S]   default: the int8 dynamic model at 160x160
//!     [-- --extra ARG]       passed to every pomona extract (repeatable), e.g. --fetch-concurrency
//!     [-- --rounds R]        runs each source R times, in turn, and reports each source's fastest
//!                            run (on a shared machine, the one least disturbed); default 1
//! ```
//!
//! For each source it prints images/s (`pomona extract`, process start to exit), the ratio to
//! the folder's, the CPU time of the `pomona` process per image (user + system) and what S3
//! adds to it over the folder (the client's cost per request), peak RSS, and the requests'
//! retries.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pomona_crds::contract::PodSummary;
use pomona_storage::testing::proxy::{FaultProxy, Faults};
use pomona_storage::testing::{ACCESS_KEY, S3Server, SECRET_KEY, TempDir, shared_dir};

mod common;
use common::{replicate, training_images};

struct Options {
    copies: usize,
    latency: Duration,
    model: PathBuf,
    size: u32,
    extra: Vec<String>,
    rounds: usize,
}

fn options() -> Options {
    let mut o = Options {
        copies: 18,
        latency: Duration::from_millis(30),
        model: shared_dir().join("models/mobilenetv2_features_int8_dynamic.onnx"),
        size: 160,
        extra: Vec::new(),
        rounds: 1,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--copies" => o.copies = value().parse().expect("--copies N"),
            "--latency-ms" => {
                o.latency = Duration::from_millis(value().parse().expect("--latency-ms L"));
            }
            "--model" => o.model = PathBuf::from(value()),
            "--size" => o.size = value().parse().expect("--size S"),
            "--extra" => o.extra.push(value()),
            "--rounds" => o.rounds = value().parse::<usize>().expect("--rounds R").max(1),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// CPU seconds (user + system) from /proc/self/stat: this process's own (`utime` + `stime`)
/// or that of its children that have ended (`cutime` + `cstime`), in clock ticks of 1/100 s.
fn cpu(children: bool) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux)");
    let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 to 17 of the line (utime, stime, cutime, cstime) are 11 to 14 after the name.
    let first = if children { 13 } else { 11 };
    let ticks: u64 =
        fields[first].parse::<u64>().unwrap() + fields[first + 1].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn children_cpu() -> f64 {
    cpu(true)
}

/// The S3 client alone, in this process: `n` reads of the images through `Storage::get_with`
/// (as `pomona extract` makes them), 32 at a time, from the server straight; returns CPU
/// milliseconds per read and reads per second.
fn client_alone(server: &S3Server, n: usize) -> (f64, f64) {
    use futures::StreamExt;
    use pomona_storage::{GetOptions, Storage};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let storage = Storage::open(&server.uri("images/"), &server.config())
            .await
            .unwrap();
        let keys: Vec<String> = storage
            .list("")
            .await
            .unwrap()
            .into_iter()
            .take(n)
            .map(|o| o.key)
            .collect();
        let before = cpu(false);
        let start = Instant::now();
        let options = GetOptions {
            if_match: None,
            max_bytes: Some(50 << 20),
            range: None,
        };
        let total: usize = futures::stream::iter(&keys)
            .map(|k| {
                let storage = storage.clone();
                async move { storage.get_with(k, &options).await.unwrap().len() }
            })
            .buffer_unordered(32)
            .fold(0, |a, b| async move { a + b })
            .await;
        assert!(total > 0);
        let wall = start.elapsed().as_secs_f64();
        (
            1e3 * (cpu(false) - before) / keys.len() as f64,
            keys.len() as f64 / wall,
        )
    })
}

/// A `pomona` step's summary line, wall seconds and CPU seconds.
struct Step {
    summary: Option<PodSummary>,
    line: String,
    wall: f64,
    cpu: f64,
}

fn pomona(args: &[&str], envs: &[(&str, &str)], o: &Options) -> Step {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pomona"));
    cmd.args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env("POMONA_TERMINATION_LOG", "/nonexistent");
    if args[0] == "extract" {
        cmd.arg("--model")
            .arg(&o.model)
            .args(["--size", &o.size.to_string()])
            .args(&o.extra);
    }
    cmd.envs(envs.iter().copied());
    let cpu = children_cpu();
    let start = Instant::now();
    let out = cmd.output().expect("run pomona");
    let wall = start.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu;
    assert!(
        out.status.success(),
        "pomona {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    Step {
        summary: PodSummary::from_message(&stdout),
        line: stdout.lines().last().unwrap_or_default().to_string(),
        wall,
        cpu,
    }
}

/// Plans `input` into `output` as one shard, then extracts it; returns the extract step.
fn plan_and_extract(
    input: &str,
    output: &str,
    n: usize,
    env: &[(&str, &str)],
    o: &Options,
) -> Step {
    let per_shard = n.to_string();
    let plan = [
        "plan",
        "--input",
        input,
        "--output",
        output,
        "--images-per-shard",
        &per_shard,
    ];
    pomona(&plan, env, o);
    let step = pomona(&["extract", "--output", output, "--shard", "0"], env, o);
    let processed = step.summary.as_ref().expect("a summary").processed as usize;
    assert_eq!(processed, n, "every image becomes a feature");
    step
}

fn report(what: &str, n: usize, step: &Step, folder: Option<&Step>) {
    let rate = n as f64 / step.wall;
    let cpu_ms = 1e3 * step.cpu / n as f64;
    let mut line = format!(
        "  {what:<34} {rate:7.1} images/s  {:5.2} s  CPU {cpu_ms:.3} ms/image",
        step.wall
    );
    if let Some(f) = folder {
        let extra = 1e3 * (step.cpu - f.cpu) / n as f64;
        line += &format!(
            " (+{extra:.3} over the folder)  {:.2} of the folder's speed",
            f.wall / step.wall
        );
    }
    let rss = step.summary.as_ref().and_then(|s| s.peak_rss_mib);
    line += &format!(
        "  peak RSS {} MiB",
        rss.map_or("?".into(), |m| m.to_string())
    );
    println!("{line}");
    if let Some(storage) = step.line.find("\"storage\"") {
        println!("      {}", &step.line[storage..]);
    }
}

fn main() {
    let o = options();
    println!(
        "pomona S3 read-path benchmark: {} at {}x{}, {} copies of the Training images, \
         {} CPUs available, proxy latency {:?}, extra args {:?}",
        o.model.file_name().unwrap().to_string_lossy(),
        o.size,
        o.size,
        o.copies,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        o.latency,
        o.extra
    );

    let work = TempDir::new("bench-s3");
    let input = work.path().join("images");
    let images = training_images();
    let n = replicate(&images, o.copies, &input);
    let server = S3Server::start();
    let n_s3 = replicate(&images, o.copies, &server.root().join("fruits/images"));
    assert_eq!(n_s3, n);
    let proxy = FaultProxy::start(
        &server.endpoint,
        Faults {
            latency: o.latency,
            ..Faults::default()
        },
    );
    let src = server.uri("images/");
    let sources = [
        ("local folder".to_string(), None),
        ("s3s-fs on 127.0.0.1".to_string(), Some(&server.endpoint)),
        (
            format!("s3s-fs behind {:?} of latency", o.latency),
            Some(&proxy.endpoint),
        ),
    ];
    let mut best: Vec<Option<Step>> = sources.iter().map(|_| None).collect();
    for round in 0..o.rounds {
        for (i, (what, endpoint)) in sources.iter().enumerate() {
            let step = match endpoint {
                None => {
                    let output = work.path().join(format!("run-{round}"));
                    let input = input.to_str().unwrap();
                    plan_and_extract(input, output.to_str().unwrap(), n, &[], &o)
                }
                Some(endpoint) => {
                    let env = [
                        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_REGION", "eu-west-3"),
                        ("AWS_ENDPOINT_URL", endpoint.as_str()),
                    ];
                    let out = server.uri(&format!("runs/{i}-{round}/"));
                    plan_and_extract(&src, &out, n, &env, &o)
                }
            };
            if o.rounds > 1 {
                println!(
                    "  round {round}: {what}: {:.1} images/s",
                    n as f64 / step.wall
                );
            }
            if best[i].as_ref().is_none_or(|b| step.wall < b.wall) {
                best[i] = Some(step);
            }
        }
    }
    let best: Vec<Step> = best.into_iter().map(|b| b.expect("a run")).collect();
    for (i, (what, _)) in sources.iter().enumerate() {
        report(what, n, &best[i], (i > 0).then(|| &best[0]));
    }
    let reads = n.min(20_000);
    let (ms, rate) = client_alone(&server, reads);
    println!(
        "  the S3 client alone (Storage::get_with, 32 at a time, s3s-fs straight): {ms:.3} ms \
         of CPU per read, {rate:.0} reads/s over {reads} reads"
    );
    println!(
        "  targets: >= 0.75 of the folder's speed at 30 ms; <= 0.25 ms of client CPU per image \
         over the folder"
    );
}
