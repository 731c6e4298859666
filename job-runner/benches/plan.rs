//! The planning benchmark: a streamed plan of ten million keys in bounded memory, and a real
//! S3 server listed with fan-out beside one stream.
//!
//! ```text
//! ./scripts/bench.sh plan          (or: cargo bench -p pomona-runner --bench plan)
//!     [-- --keys N]        keys of the synthetic listing (default 10,000,000)
//!     [-- --page-ms M]     latency the synthetic listing adds to each page (default 0)
//!     [-- --s3-keys K]     objects put in s3s-fs for the side-by-side listing (default
//!                          20,000; 0 skips it). s3s-fs's time per page grows with the files
//!                          under the prefix, so one stream of 200,000 took it more than 11
//!                          minutes (docs/scale.md)
//! ```
//!
//! 1. An in-process lister serves a synthetic listing (`<date>/<variety>/IMG_<date>_<n>.jpg`:
//!    100 days × 100 varieties × N/10,000 images of each, with sizes and ETags, in pages of
//!    1,000 keys as S3 serves them); `pomona`'s planner lists it with its default fan-out and
//!    writes the shard manifests (2,000 images each) to a local folder. It ends with
//!    `plan: <keys> keys in <seconds> s, peak RSS <MiB> MiB`.
//! 2. K objects written into an s3s-fs server's folder (100 varieties of K/100) are listed by
//!    the planner through S3 with one stream and with the default fan-out, side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pomona_crds::LabelMode;
use pomona_runner::cli;
use pomona_storage::listing::{FanOut, Lister};
use pomona_storage::plan::{PlanOptions, PlanRun, stream_plan};
use pomona_storage::testing::{S3Server, TempDir};
use pomona_storage::{ErrorKind, Location, ObjectMeta, Probe, S3Config, Storage, StorageError};
use tokio::sync::mpsc;

/// S3's page size.
const PAGE: usize = 1000;
const VARIETIES: usize = 100;
const DAYS: usize = 100;

struct Options {
    keys: u64,
    page_ms: u64,
    s3_keys: usize,
}

fn options() -> Options {
    let mut o = Options {
        keys: 10_000_000,
        page_ms: 0,
        s3_keys: 20_000,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--keys" => o.keys = value().parse().expect("--keys N"),
            "--page-ms" => o.page_ms = value().parse().expect("--page-ms M"),
            "--s3-keys" => o.s3_keys = value().parse().expect("--s3-keys K"),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// A stable 64-bit mix of `x` (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The synthetic source: every key is made when listed, none is stored.
#[derive(Clone)]
struct Synthetic {
    varieties: Arc<Vec<String>>,
    days: Arc<Vec<String>>,
    per_day: usize,
    page_delay: Duration,
}

impl Synthetic {
    fn new(keys: u64, page_delay: Duration) -> Self {
        const FRUITS: [&str; 20] = [
            "Apple Braeburn",
            "Apple Granny Smith",
            "Apricot",
            "Avocado",
            "Banana",
            "Blueberry",
            "Cherry",
            "Clementine",
            "Fig",
            "Grape White",
            "Kiwi",
            "Lemon",
            "Mango",
            "Nectarine",
            "Orange",
            "Peach",
            "Pear",
            "Pineapple",
            "Plum",
            "Strawberry",
        ];
        let mut varieties: Vec<String> = (0..VARIETIES)
            .map(|i| format!("{} {}", FRUITS[i % 20], i / 20 + 1))
            .collect();
        varieties.sort();
        let days = (0..DAYS)
            .map(|d| format!("2026-{:02}-{:02}", d / 25 + 1, d % 25 + 1))
            .collect();
        Self {
            varieties: Arc::new(varieties),
            days: Arc::new(days),
            per_day: usize::try_from(keys.div_ceil((VARIETIES * DAYS) as u64)).unwrap(),
            page_delay,
        }
    }

    fn keys(&self) -> u64 {
        (VARIETIES * DAYS * self.per_day) as u64
    }

    fn object(&self, v: usize, d: usize, i: usize) -> ObjectMeta {
        let day = &self.days[d];
        let key = format!(
            "{day}/{}/IMG_{}_{i:06}.jpg",
            self.varieties[v],
            day.replace('-', "")
        );
        let h = mix(((d * VARIETIES + v) * self.per_day + i) as u64);
        ObjectMeta {
            key,
            size: 20_000 + h % 180_000,
            etag: Some(format!("\"{:016x}{:016x}\"", h, mix(h))),
        }
    }

    /// The day and variety a prefix names (`""`, `day/` or `day/variety/`).
    fn parse(&self, prefix: &str) -> Result<(Option<usize>, Option<usize>), StorageError> {
        let unknown = || StorageError::new(ErrorKind::NotFound, format!("no prefix {prefix}"));
        let parts: Vec<&str> = prefix.split_terminator('/').collect();
        let find = |list: &[String], name: &str| list.iter().position(|x| x == name);
        match parts.as_slice() {
            [] => Ok((None, None)),
            [d] => Ok((Some(find(&self.days, d).ok_or_else(unknown)?), None)),
            [d, v] => Ok((
                Some(find(&self.days, d).ok_or_else(unknown)?),
                Some(find(&self.varieties, v).ok_or_else(unknown)?),
            )),
            _ => Err(unknown()),
        }
    }
}

impl Lister for Synthetic {
    async fn probe(&self, prefix: &str) -> Result<Probe, StorageError> {
        Ok(match self.parse(prefix)? {
            (None, _) => Probe {
                prefixes: self.days.iter().map(|d| format!("{d}/")).collect(),
                ..Probe::default()
            },
            (Some(_), None) => Probe {
                prefixes: self
                    .varieties
                    .iter()
                    .map(|v| format!("{prefix}{v}/"))
                    .collect(),
                ..Probe::default()
            },
            (Some(d), Some(v)) => Probe {
                objects: (0..self.per_day.min(PAGE))
                    .map(|i| self.object(v, d, i))
                    .collect(),
                prefixes: Vec::new(),
                truncated: self.per_day > PAGE,
            },
        })
    }

    async fn pages(
        &self,
        prefix: &str,
        pages: mpsc::Sender<Vec<ObjectMeta>>,
    ) -> Result<(), StorageError> {
        let (day, variety) = self.parse(prefix)?;
        let days = day.map_or(0..DAYS, |d| d..d + 1);
        let mut page = Vec::with_capacity(PAGE);
        for d in days {
            let varieties = variety.map_or(0..VARIETIES, |v| v..v + 1);
            for v in varieties {
                for i in 0..self.per_day {
                    page.push(self.object(v, d, i));
                    if page.len() == PAGE {
                        tokio::time::sleep(self.page_delay).await;
                        let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
                        if pages.send(full).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if !page.is_empty() {
            let _ = pages.send(page).await;
        }
        Ok(())
    }
}

fn plan_options() -> PlanOptions {
    PlanOptions {
        include: vec!["*.jpg".into(), "*.jpeg".into(), "*.png".into()],
        label: LabelMode::ParentDirectory,
        images_per_shard: 2000,
    }
}

async fn synthetic(o: &Options) {
    let source = Synthetic::new(o.keys, Duration::from_millis(o.page_ms));
    let out_dir = TempDir::new("bench-plan");
    let output = Storage::open(out_dir.path().to_str().unwrap(), &S3Config::default())
        .await
        .unwrap();
    let location = Location::S3 {
        bucket: "photos".into(),
        prefix: "images/".into(),
    };
    let run = PlanRun::default();
    eprintln!(
        "planning {} synthetic keys ({} a page, {} ms a page) with {:?} into {}",
        source.keys(),
        PAGE,
        o.page_ms,
        run.fan,
        out_dir.path().display()
    );
    let lines = cli::PlanProgressLines::start(run.progress.clone());
    let t = Instant::now();
    let plan = stream_plan(source, &location, Some(&output), &plan_options(), &run)
        .await
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    drop(lines);
    let listed = run.progress.listed.get();
    assert_eq!(plan.images, listed);
    println!(
        "plan: {listed} keys in {seconds:.1} s, peak RSS {} MiB",
        cli::peak_rss_mib().unwrap_or(0)
    );
    println!(
        "      {:.0} keys/s, {} shards of {} written to a local folder",
        listed as f64 / seconds,
        plan.shards,
        plan.images_per_shard
    );
}

/// Lists `source` under `fan` (no output): seconds, keys, list requests.
async fn list_s3(source: &Storage, fan: FanOut) -> (f64, u64, u64) {
    let before = source.counts().requests;
    let run = PlanRun {
        fan,
        ..PlanRun::default()
    };
    let t = Instant::now();
    let plan = stream_plan(
        source.clone(),
        source.location(),
        None,
        &plan_options(),
        &run,
    )
    .await
    .unwrap();
    (
        t.elapsed().as_secs_f64(),
        plan.images,
        source.counts().requests - before,
    )
}

async fn s3s_fs(o: &Options) {
    let server = S3Server::start();
    let per_variety = o.s3_keys.div_ceil(VARIETIES);
    let t = Instant::now();
    let bucket = server.root().join("fruits/bench");
    for v in 0..VARIETIES {
        let dir = bucket.join(format!("variety-{v:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_variety {
            std::fs::write(dir.join(format!("IMG_{i:06}.jpg")), i.to_le_bytes()).unwrap();
        }
    }
    let total = per_variety * VARIETIES;
    eprintln!(
        "wrote {total} objects into s3s-fs's folder in {:.1?}",
        t.elapsed()
    );
    let source = server.storage("bench/").await;
    let (one, keys, one_requests) = list_s3(&source, FanOut::SINGLE).await;
    let fan = FanOut::default();
    let (many, fan_keys, many_requests) = list_s3(&source, fan).await;
    assert_eq!((keys, fan_keys), (total as u64, total as u64));
    println!(
        "s3s-fs: {total} keys: one stream {one:.1} s ({:.0} keys/s, {one_requests} requests) | \
         fan-out {many:.1} s ({:.0} keys/s, {many_requests} requests, {} at once): {:.2}x",
        total as f64 / one,
        total as f64 / many,
        fan.in_flight,
        one / many
    );
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        synthetic(&o).await;
        if o.s3_keys > 0 {
            s3s_fs(&o).await;
        }
    });
}
