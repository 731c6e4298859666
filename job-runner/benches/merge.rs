//! The statistics merge of the reduce step, from a local S3 server (s3s-fs on 127.0.0.1) and
//! from the same server behind a proxy that adds latency to every request (30 ms, as a far
//! region does), reading one file at a time and [`STATS_IN_FLIGHT`] at a time, in one run.
//!
//! ```text
//! ./scripts/bench.sh merge          (or: cargo bench -p pomona-runner --bench merge)
//!     [-- --files N]        statistics files (default 200: 2.6 GB at 1280 values)
//!     [-- --dim D]          values per feature vector (default 1280, MobileNetV2's)
//!     [-- --latency-ms L]   latency the proxy adds (default 30)
//!     [-- --distinct K]     write K distinct files and make the others hard links of them in
//!                           the server's folder (5,000 files of 13 MB would take 65 GB; links
//!                           take none): the server still reads and sends every file, but from
//!                           the page cache (default: every file distinct)
//!     [-- --in-flight N]    only this many files at a time (default: 1, then 8)
//! ```
//!
//! Each line gives the merge's wall time, files/s and MB/s, and (for another number of files)
//! the time of 5,000 files at that rate (extrapolated, marked so); the end gives the process's peak RSS. Every merge gives the
//! same bytes (checked).

use std::time::{Duration, Instant};

use bytes::Bytes;
use pomona_crds::contract::OutputLayout;
use pomona_runner::reduce::STATS_IN_FLIGHT;
use pomona_runner::reduce::merge::merge_shards;
use pomona_runner::stats::Moments;
use pomona_storage::Storage;
use pomona_storage::testing::S3Server;
use pomona_storage::testing::proxy::{FaultProxy, Faults};

struct Options {
    files: u32,
    dim: usize,
    latency: Duration,
    distinct: Option<u32>,
    in_flight: Option<usize>,
}

fn options() -> Options {
    let mut o = Options {
        files: 200,
        dim: 1280,
        latency: Duration::from_millis(30),
        distinct: None,
        in_flight: None,
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
            "--distinct" => o.distinct = Some(value().parse().expect("--distinct K")),
            "--in-flight" => o.in_flight = Some(value().parse().expect("--in-flight N")),
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

/// Makes statistics files `distinct..files` hard links of the first `distinct` (file `i` of
/// file `i % distinct`) in the s3s-fs folder `root`, with a copy of the server's record of
/// each (its ETag), so that it serves them as objects of their own.
fn link_copies(
    root: &std::path::Path,
    layout: &OutputLayout,
    distinct: u32,
    files: u32,
) -> anyhow::Result<()> {
    let bucket = pomona_storage::testing::BUCKET;
    let key_of = |shard: u32| {
        let uri = layout.stats(shard);
        uri.split_once(&format!("s3://{bucket}/"))
            .map(|(_, key)| key.to_string())
            .expect("a key in the bucket")
    };
    // s3s-fs keeps an object's ETag beside it, in `.bucket-B.object-K.internal.json` (B and K
    // in URL-safe base64 without padding); a file without one gets its MD5 computed on every
    // read.
    let record = |key: &str| {
        root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            base64_url(bucket),
            base64_url(key)
        ))
    };
    for shard in distinct..files {
        let (from, to) = (key_of(shard % distinct), key_of(shard));
        std::fs::hard_link(root.join(bucket).join(&from), root.join(bucket).join(&to))?;
        anyhow::ensure!(
            record(&from).is_file(),
            "s3s-fs keeps no record of {from} at {}: its layout changed",
            record(&from).display()
        );
        std::fs::copy(record(&from), record(&to))?;
    }
    Ok(())
}

/// `text` in URL-safe base64 without padding (RFC 4648 §5), as s3s-fs names its records.
fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
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
    let distinct = o.distinct.unwrap_or(o.files).clamp(1, o.files);
    for shard in 0..distinct {
        let bytes = shard_moments(shard, o.dim).to_bytes();
        file_bytes = bytes.len();
        direct
            .put(&direct.relative(&layout.stats(shard))?, Bytes::from(bytes))
            .await?;
    }
    link_copies(server.root(), &layout, distinct, o.files)?;
    let mb = file_bytes as f64 / 1e6;
    println!(
        "merge: {} statistics files of {} values ({mb:.1} MB each, {:.2} GB; {distinct} distinct, \
         the others hard links of them) written to s3s-fs in {:.1} s",
        o.files,
        o.dim,
        mb * f64::from(o.files) / 1e3,
        t.elapsed().as_secs_f64()
    );

    let shards: std::collections::BTreeSet<u32> = (0..o.files).collect();
    let mut reference: Option<Vec<u8>> = None;
    let latency = format!("s3s-fs + {} ms", o.latency.as_millis());
    for (source, storage) in [("s3s-fs", &direct), (latency.as_str(), &far)] {
        let widths = match o.in_flight {
            Some(n) => vec![n],
            None => vec![1, STATS_IN_FLIGHT],
        };
        for in_flight in widths {
            let t = Instant::now();
            let merged = merge_shards(storage, &layout, 0..o.files, &shards, in_flight)
                .await?
                .expect("statistics to merge");
            let seconds = t.elapsed().as_secs_f64();
            let bytes = merged.to_bytes();
            match &reference {
                None => reference = Some(bytes),
                Some(r) => assert!(*r == bytes, "every merge gives the same bytes"),
            }
            let per_second = f64::from(o.files) / seconds;
            // At 5,000 files the time is measured; otherwise it is extrapolated, and said so.
            let at_5000 = match o.files {
                5000 => String::new(),
                _ => format!(
                    "  5,000 files: {:6.0} s (extrapolated)",
                    5000.0 / per_second
                ),
            };
            println!(
                "merge: {source:<16} {in_flight} at a time: {seconds:7.2} s  {per_second:7.1} files/s  \
                 {:7.1} MB/s{at_5000}",
                per_second * mb,
            );
        }
    }
    println!(
        "merge: peak RSS {} MiB (the process: the server runs apart)",
        peak_rss_mib()
    );
    Ok(())
}
