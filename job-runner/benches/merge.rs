//! The statistics merge of the reduce step, from a local S3 server (s3s-fs on 127.0.0.1) and
//! from the same server behind a proxy that adds latency to every request (30 ms, as a far
//! region does), reading one file at a time and [`STATS_IN_FLIGHT`] at a time, in one run.
//!
//! ```text
//! ./scripts/bench.sh merge          (or: cargo bench -p pomona-runner --bench merge)
//!     [-- --files N]        statistics files (default 200: 2.6 GB at 1280 values)
//!     [-- --dim D]          values per feature vector (default 1280, MobileNetV2's)
//!     [-- --latency-ms L]   latency the proxy adds (default 30)
//! ```
//!
//! Each line gives the merge's wall time, files/s and MB/s, and the time of 5,000 files at that
//! rate (extrapolated, marked so); the end gives the process's peak RSS. Every merge gives the
//! same bytes (checked).

use std::time::{Duration, Instant};

use bytes::Bytes;
use pomona_crds::contract::OutputLayout;
use pomona_runner::reduce::{STATS_IN_FLIGHT, merged_moments};
use pomona_runner::stats::Moments;
use pomona_storage::Storage;
use pomona_storage::testing::S3Server;
use pomona_storage::testing::proxy::{FaultProxy, Faults};

struct Options {
    files: u32,
    dim: usize,
    latency: Duration,
}

fn options() -> Options {
    let mut o = Options {
        files: 200,
        dim: 1280,
        latency: Duration::from_millis(30),
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--files" => o.files = value().parse().expect("--files N"),
            "--dim" => o.dim = value().parse().expect("--dim D"),
            "--latency-ms" => {
                o.latency = Duration::from_millis(value().parse().expect("--latency-ms L"));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// The statistics of a shard of eight made-up rows (distinct per shard).
fn shard_moments(shard: u32, dim: usize) -> Moments {
    let mut state = u64::from(shard).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let rows: Vec<f32> = (0..8 * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 6.0
        })
        .collect();
    let mut m = Moments::new(dim);
    m.add_rows(&rows);
    m
}

/// Peak resident memory of this process, in MiB (`VmHWM`).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options();
    let server = S3Server::start();
    let proxy = FaultProxy::start(
        &server.endpoint,
        Faults {
            latency: o.latency,
            ..Faults::default()
        },
    );
    let prefix = "run/";
    let direct = server.storage(prefix).await;
    let mut config = server.config();
    config.endpoint = Some(proxy.endpoint.clone());
    let far = Storage::open(&server.uri(prefix), &config).await?;
    let layout = OutputLayout::new(&direct.uri());

    let t = Instant::now();
    let mut file_bytes = 0;
    for shard in 0..o.files {
        let bytes = shard_moments(shard, o.dim).to_bytes();
        file_bytes = bytes.len();
        direct
            .put(&direct.relative(&layout.stats(shard))?, Bytes::from(bytes))
            .await?;
    }
    let mb = file_bytes as f64 / 1e6;
    println!(
        "merge: {} statistics files of {} values ({mb:.1} MB each, {:.2} GB) written to s3s-fs in {:.1} s",
        o.files,
        o.dim,
        mb * f64::from(o.files) / 1e3,
        t.elapsed().as_secs_f64()
    );

    let shards: Vec<u32> = (0..o.files).collect();
    let mut reference: Option<Vec<u8>> = None;
    let latency = format!("s3s-fs + {} ms", o.latency.as_millis());
    for (source, storage) in [("s3s-fs", &direct), (latency.as_str(), &far)] {
        for in_flight in [1, STATS_IN_FLIGHT] {
            let t = Instant::now();
            let merged = merged_moments(storage, &layout, &shards, in_flight).await?;
            let seconds = t.elapsed().as_secs_f64();
            let bytes = merged.to_bytes();
            match &reference {
                None => reference = Some(bytes),
                Some(r) => assert!(*r == bytes, "every merge gives the same bytes"),
            }
            let per_second = f64::from(o.files) / seconds;
            println!(
                "merge: {source:<16} {in_flight} at a time: {seconds:7.2} s  {per_second:7.1} files/s  \
                 {:7.1} MB/s  5,000 files: {:6.0} s (extrapolated)",
                per_second * mb,
                5000.0 / per_second
            );
        }
    }
    println!(
        "merge: peak RSS {} MiB (the process: the server runs apart)",
        peak_rss_mib()
    );
    Ok(())
}
