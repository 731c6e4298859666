//! Pieces of the `pomona` command line shared by its subcommands: S3 and model options, the
//! one-line summary, progress reporting, and the local executor of `pomona run`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use pomona_crds::contract::progress;
use pomona_crds::contract::{
    Plan, PodSummary, Preprocessing, StorageCounts, TERMINATION_LOG, env, steps,
};
use pomona_storage::plan::PlanProgress;
use pomona_storage::{REQUEST_TIMEOUT, RetryPolicy, S3Config, Storage};

use crate::extract::{DEFAULT_MAX_IMAGE_BYTES, Extractor, ModelFile, Tuning};
use crate::infer::{ModelOptions, init_runtime, sha256_hex};
use crate::preprocess::{Layout, Preprocess};
use crate::resize::Filter;
use crate::reuse::Reuse;
use crate::window::{Bounds, DEFAULT_BYTES_IN_FLIGHT};
use crate::{Permanent, Threads};

/// Where the model is looked for when `--model` is not given: the shared folder beside the
/// repository, as laid out for development and CI.
pub const DEFAULT_MODEL: &str = "../shared/models/mobilenetv2_features.onnx";

/// Images per inference batch unless `--batch-size` says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// S3 connection options (each also read from the usual AWS environment variable).
#[derive(Args, Clone, Debug)]
pub struct S3Args {
    /// Region of the buckets.
    #[arg(long, env = env::REGION)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible service, e.g. http://127.0.0.1:9000.
    #[arg(long, env = env::ENDPOINT)]
    pub endpoint: Option<String>,
    /// Address buckets by path (endpoint/bucket/key). Default: on when --endpoint is set.
    #[arg(long)]
    pub path_style: Option<bool>,
    /// Seconds a request waits for its response, and for each piece of its body, before it is
    /// cut and retried.
    #[arg(long, env = "POMONA_REQUEST_TIMEOUT", default_value_t = REQUEST_TIMEOUT.as_secs_f64())]
    pub request_timeout: f64,
    /// Seconds a failing request is retried for (5xx, throttling, timeouts, broken
    /// connections), with backoff and jitter, before the step fails.
    #[arg(long, env = "POMONA_RETRY_BUDGET", default_value_t = RetryPolicy::default().budget.as_secs_f64())]
    pub retry_budget: f64,
}

impl S3Args {
    /// The storage configuration; credentials come from the default AWS chain.
    pub fn config(&self) -> S3Config {
        S3Config {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.path_style,
            request_timeout: seconds(self.request_timeout),
            retry: RetryPolicy {
                budget: seconds(self.retry_budget),
                ..RetryPolicy::default()
            },
            ..S3Config::default()
        }
    }
}

/// The exit codes, as `pomona --help` lists them (the contract of
/// [`pomona_crds::contract::exit`], and SIGTERM's).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    a failure that may pass on a retry (network, throttling, a 5xx from S3)
  2    a usage error: the command line is wrong; nothing was done
  3    a failure no retry can fix (access denied, missing bucket, manifest or model, wrong
       model checksum, a PCA or features to reuse of another model, accounting that does
       not close)
  143  stopped by SIGTERM: the work in progress was dropped and its scratch files removed

stdout carries only the one-line JSON summary of each step; everything else goes to stderr.";

/// The CPUs each of `workers` shards extracted at once gets.
pub fn worker_threads(workers: usize) -> Threads {
    let all = Threads::detect(None, None);
    Threads {
        inference: (all.inference / workers.max(1)).max(1),
        decode: (all.decode / workers.max(1)).max(1),
    }
}

/// An error found by the checks made before any work (the model, ONNX Runtime, a PCA to
/// reuse): what no retry can fix is a usage error (exit 2), since nothing was done yet;
/// what may pass on a retry (the network) stays as it is.
pub fn before_any_work(e: anyhow::Error) -> anyhow::Error {
    if crate::exit_code(&e) == pomona_crds::contract::exit::PERMANENT_ERROR {
        crate::Usage(format!("{e:#} (nothing was done)")).into()
    } else {
        e
    }
}

/// Writes one human line to stderr: as it is on a terminal; elsewhere (a pod's log, a file)
/// after its UTC time, `2026-11-30T13:50:00.123Z`. Use it through [`crate::say!`].
pub fn say(line: std::fmt::Arguments<'_>) {
    let stderr = std::io::stderr();
    let terminal = stderr.is_terminal();
    let mut stderr = stderr.lock();
    // A stderr that went away must not end the step.
    let _ = if terminal {
        writeln!(stderr, "{line}")
    } else {
        writeln!(
            stderr,
            "{} {line}",
            utc_timestamp(std::time::SystemTime::now())
        )
    };
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds (`1970-01-01T00:00:00.000Z` for times
/// before the epoch).
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Resolves when the process receives SIGTERM (never, if the signal cannot be watched).
pub async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(e) => {
            crate::say!("pomona: cannot watch SIGTERM: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// A count given on the command line: 1 or more (0 is a usage error, exit 2).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// A tensor side given on the command line: 1 to [`crate::preprocess::MAX_TENSOR_SIDE`].
pub fn side() -> clap::builder::RangedU64ValueParser<u32> {
    clap::builder::RangedU64ValueParser::<u32>::new()
        .range(1..=u64::from(crate::preprocess::MAX_TENSOR_SIDE))
}

/// A duration from a number of seconds given on the command line (negative or NaN: zero).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// The model and the preprocessing that feeds it: what makes features comparable, recorded in
/// the run's identity (see [`pomona_crds::contract::steps::ModelArgs`], which these parse into).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// The ONNX model: a path, file:///path or s3://bucket/key.
    /// Default: ../shared/models/mobilenetv2_features.onnx when that file exists.
    #[arg(long, env = "POMONA_MODEL")]
    pub model: Option<String>,
    /// Expected sha256 of the model; a different file is refused.
    #[arg(long)]
    pub model_sha256: Option<String>,
    /// Name of the model input.
    #[arg(long, default_value = "input")]
    pub input_name: String,
    /// Name of the model output holding the features.
    #[arg(long, default_value = "features")]
    pub output_name: String,
    /// Width and height the images are resized to (a square input), 1 to 4096.
    #[arg(long, default_value_t = 224, value_parser = side())]
    pub size: u32,
    /// Width the images are resized to, for a model with a non-square input (default: --size).
    #[arg(long, value_parser = side())]
    pub width: Option<u32>,
    /// Height the images are resized to (default: --size).
    #[arg(long, value_parser = side())]
    pub height: Option<u32>,
    /// Tensor layout of the model input: nhwc (channels last) or nchw.
    #[arg(long, default_value = "nhwc")]
    pub layout: Layout,
    /// How images are resized to the model's input, exactly as PIL's Image.resize does with
    /// that filter: bilinear, nearest (Keras' load_img default) or bicubic (PIL's resize
    /// default), for parity with a pipeline that resized otherwise. Features of different
    /// filters must not be mixed.
    #[arg(long, default_value = "bilinear")]
    pub resize_filter: Filter,
    /// Each 0..=255 channel value x becomes x * scale + offset.
    #[arg(long, default_value_t = 1.0 / 127.5)]
    pub scale: f64,
    /// See --scale.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub offset: f64,
}

/// How the extractor uses the machine: batches, threads, fetches, and the runtime it loads.
#[derive(Args, Clone, Debug)]
pub struct TuningArgs {
    /// Images per inference batch (default 8), in each inference thread.
    #[arg(long, value_parser = at_least_one())]
    pub batch_size: Option<usize>,
    /// Inference threads, each running its own single-threaded ONNX Runtime session. Default:
    /// the CPUs available to the process (cgroup limits included).
    #[arg(long, env = "POMONA_THREADS", value_parser = at_least_one())]
    pub threads: Option<usize>,
    /// Images decoded at once. Default: the CPUs available.
    #[arg(long, value_parser = at_least_one())]
    pub decode_threads: Option<usize>,
    /// Images fetched at once. Default: adaptive, from 4 to 256, following the measured
    /// latency and the rate the model takes images at.
    #[arg(long, value_parser = at_least_one())]
    pub fetch_concurrency: Option<usize>,
    /// MiB of images (by listed size) being fetched at once, at most.
    #[arg(long, default_value_t = DEFAULT_BYTES_IN_FLIGHT >> 20)]
    pub fetch_budget_mib: u64,
    /// Images larger than this many bytes are dead-lettered, from their listed size, without
    /// being downloaded.
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: u64,
    /// The ONNX Runtime shared library. Default: $ORT_DYLIB_PATH.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
}

impl ModelArgs {
    /// The model URI: `--model`, else the shared model when it exists, else a clear error.
    pub fn model_uri(&self) -> anyhow::Result<String> {
        if let Some(model) = &self.model {
            return Ok(model.clone());
        }
        if Path::new(DEFAULT_MODEL).is_file() {
            return Ok(DEFAULT_MODEL.to_string());
        }
        Err(Permanent(format!(
            "no model: pass --model PATH|s3://bucket/key.onnx (or set POMONA_MODEL). \
             {DEFAULT_MODEL} is the MobileNetV2 feature model when the shared folder sits beside \
             the repository; any ONNX model with an [N,H,W,3] float input and an [N,D] output works"
        ))
        .into())
    }

    /// The width and height images are resized to.
    pub fn input_size(&self) -> (u32, u32) {
        (
            self.width.unwrap_or(self.size),
            self.height.unwrap_or(self.size),
        )
    }

    /// The preprocessing and tensors of these options, as a run's identity records them.
    pub fn preprocessing(&self) -> Preprocessing {
        let (width, height) = self.input_size();
        Preprocessing {
            input_name: self.input_name.clone(),
            output_name: self.output_name.clone(),
            width,
            height,
            layout: self.layout,
            scale: self.scale,
            offset: self.offset,
            resize_filter: self.resize_filter,
        }
    }

    /// The sha256 of the model file, checked against `--model-sha256` when given: read before
    /// any work, so that a missing or wrong model stops a run before it lists anything.
    pub async fn sha256(&self, s3: &S3Config) -> anyhow::Result<String> {
        let uri = self.model_uri()?;
        let (folder, key) = split_object_uri(&uri)?;
        let storage = Storage::open(&folder, s3).await?;
        let bytes = storage
            .get(&key)
            .await
            .with_context(|| format!("cannot read the model {uri}"))?;
        let sha = sha256_hex(&bytes);
        match &self.model_sha256 {
            Some(expected) if !expected.eq_ignore_ascii_case(&sha) => Err(Permanent(format!(
                "the model {uri} has sha256 {sha}, not the expected {expected}"
            ))
            .into()),
            _ => Ok(sha),
        }
    }

    /// Starts ONNX Runtime and loads the model with these options and `tuning`. `threads`
    /// gives the defaults that the command-line options override.
    pub async fn load(
        &self,
        tuning: &TuningArgs,
        s3: &S3Config,
        threads: Threads,
    ) -> anyhow::Result<Extractor> {
        init_runtime(tuning.onnxruntime.as_deref()).map_err(|e| Permanent(e.to_string()))?;
        let threads = Threads {
            inference: tuning.threads.unwrap_or(threads.inference).max(1),
            decode: tuning.decode_threads.unwrap_or(threads.decode).max(1),
        };
        let settings = Tuning {
            batch_size: tuning.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1),
            fetch: Bounds::new(tuning.fetch_concurrency, tuning.fetch_budget_mib << 20),
            max_image_bytes: tuning.max_image_bytes,
        };
        let uri = self.model_uri()?;
        let (folder, key) = split_object_uri(&uri)?;
        let storage = Storage::open(&folder, s3).await?;
        let (width, height) = self.input_size();
        let preprocess = Preprocess::new(width, height)
            .map_err(|e| Permanent(e.to_string()))?
            .with_layout(self.layout)
            .with_normalization(self.scale as f32, self.offset as f32)
            .with_filter(self.resize_filter);
        let options = ModelOptions {
            input_name: self.input_name.clone(),
            output_name: self.output_name.clone(),
            ..ModelOptions::default()
        };
        let file = ModelFile {
            storage: &storage,
            key: &key,
            uri: &uri,
        };
        Extractor::load(
            &file,
            self.model_sha256.as_deref(),
            preprocess,
            options,
            threads,
            settings,
        )
        .await
    }
}

impl From<&ModelArgs> for steps::ModelArgs {
    fn from(args: &ModelArgs) -> Self {
        Self {
            uri: args.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
            sha256: args.model_sha256.clone(),
            preprocessing: args.preprocessing(),
        }
    }
}

impl From<&S3Args> for steps::StorageArgs {
    fn from(args: &S3Args) -> Self {
        Self {
            path_style: args.path_style,
        }
    }
}

/// `--overwrite`: removes everything under `output`, once it is known not to overlap `source`
/// (whose images it would otherwise delete).
pub async fn clear_output(source: &Storage, output: &Storage) -> anyhow::Result<()> {
    pomona_storage::plan::check_locations(source, output)?;
    let removed = output.delete_prefix("").await?;
    crate::say!(
        "pomona: --overwrite removed {removed} object(s) under {}",
        output.uri()
    );
    Ok(())
}

/// Splits an object URI or path into its folder and file name.
pub fn split_object_uri(uri: &str) -> anyhow::Result<(String, String)> {
    match uri.rsplit_once('/') {
        Some((folder, name)) if !name.is_empty() => Ok((format!("{folder}/"), name.to_string())),
        Some(_) => bail!("{uri} names a folder, not a file"),
        None => Ok(("./".to_string(), uri.to_string())),
    }
}

/// The run prefix of a manifests folder (`…/run/manifests/` → `…/run/`).
pub fn run_root_of_manifests(manifests: &str) -> anyhow::Result<String> {
    let trimmed = manifests.trim_end_matches('/');
    match trimmed.strip_suffix("manifests") {
        Some(root) if root.is_empty() || root.ends_with('/') => Ok(if root.is_empty() {
            "./".into()
        } else {
            root.into()
        }),
        _ => Err(Permanent(format!(
            "--manifest must be a run's manifests/ folder (holding plan.json), not {manifests}"
        ))
        .into()),
    }
}

/// Shows the plan, the dry run users ask for, on stderr (stdout is for the JSON summary).
pub fn print_plan(plan: &Plan) {
    crate::say!(
        "plan: {} images ({:.1} MiB) under {} in {} shard{} of up to {}",
        plan.images,
        plan.bytes as f64 / (1024.0 * 1024.0),
        plan.source,
        plan.shards,
        if plan.shards == 1 { "" } else { "s" },
        plan.images_per_shard
    );
}

/// Says so when `plan` has more images per shard than `asked` (see
/// [`pomona_crds::contract::shard_plan`]).
pub fn say_if_raised(plan: &Plan, asked: u32) {
    if plan.images_per_shard != asked {
        crate::say!(
            "pomona: imagesPerShard raised from {asked} to {}: {} images at {asked} per shard \
             would be more than the {} shards one Job can run",
            plan.images_per_shard,
            plan.images,
            pomona_crds::contract::MAX_SHARDS
        );
    }
}

/// The request counts of `storages` added up; `None` when none made a request (local folders).
pub fn storage_counts(storages: &[Storage]) -> Option<StorageCounts> {
    let sum = storages
        .iter()
        .map(Storage::counts)
        .fold(StorageCounts::default(), |a, b| StorageCounts {
            requests: a.requests + b.requests,
            retries: a.retries + b.retries,
            throttled: a.throttled + b.throttled,
            timeouts: a.timeouts + b.timeouts,
        });
    (sum.requests > 0).then_some(sum)
}

/// How a storage's requests fared, for progress lines: empty when nothing was retried.
pub fn describe_retries(c: &StorageCounts) -> String {
    if c.retries == 0 && c.throttled == 0 && c.timeouts == 0 {
        return String::new();
    }
    format!(
        ", {} retries ({} throttled, {} timed out)",
        c.retries, c.throttled, c.timeouts
    )
}

/// Prints the one-line summary on stdout and writes it as the container's termination
/// message when the termination log exists (`POMONA_TERMINATION_LOG` overrides its path).
pub fn report_summary(summary: &PodSummary, storage: Option<&StorageCounts>) {
    let line = summary.to_line_with(storage);
    // A reader that went away (`pomona … | head -0`) must not turn a finished step into a
    // panic: the line is lost for it, and the termination log below still gets it.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        crate::say!("pomona: cannot print the summary on stdout: {e}");
    }
    let path = std::env::var_os(env::TERMINATION_LOG)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TERMINATION_LOG));
    if path.exists()
        && let Err(e) = std::fs::write(&path, &line)
    {
        crate::say!("pomona: cannot write {}: {e}", path.display());
    }
}

/// Peak resident memory of this process in MiB (`VmHWM` of `/proc/self/status`, Linux).
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.div_ceil(1024))
}

/// CPU seconds this process and its waited-for children used so far, user plus system
/// (`getrusage` of `RUSAGE_SELF` and `RUSAGE_CHILDREN`), to the millisecond.
#[allow(unsafe_code)]
pub fn cpu_seconds() -> Option<f64> {
    let used = |who| {
        // SAFETY: `rusage` is plain integers, so all zeroes is a valid value; `getrusage` only
        // writes into the one struct it is given, and says with its result whether it did.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::getrusage(who, &mut usage) } == 0;
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        ok.then(|| seconds(usage.ru_utime) + seconds(usage.ru_stime))
    };
    let total = used(libc::RUSAGE_SELF)? + used(libc::RUSAGE_CHILDREN).unwrap_or(0.0);
    Some((total * 1000.0).round() / 1000.0)
}

/// The cost of this process so far, having turned `processed` images into features: what
/// `pomona run` reports (no scheduler, so no requested figures and no amount).
pub fn process_cost(processed: u64) -> pomona_crds::Cost {
    let usage = pomona_crds::contract::cost::PodUsage {
        cpu_seconds: cpu_seconds(),
        ..Default::default()
    };
    pomona_crds::contract::cost::cost(&[usage], processed, None)
}

/// What the operator told a reduce pod of the run's cost so far ([`env::COST_SO_FAR`]); `None`
/// outside such a pod. A value that cannot be read is said and left out: the run's outputs do
/// not depend on it.
pub fn cost_so_far() -> Option<pomona_crds::contract::cost::CostSoFar> {
    let json = std::env::var(env::COST_SO_FAR).ok()?;
    serde_json::from_str(&json)
        .inspect_err(|e| {
            crate::say!(
                "pomona: warning: {} is not the operator's cost of the run ({e}): the summary \
                 has no cost",
                env::COST_SO_FAR
            );
        })
        .ok()
}

/// The last line of `pomona run` on stderr: what the run used (the figures of
/// `report/summary.json`'s `cost`), its wall time and peak memory.
pub fn print_cost(cost: &pomona_crds::Cost, wall_seconds: f64, peak_rss_mib: Option<u64>) {
    crate::say!(
        "pomona: {}",
        describe_cost(cost, wall_seconds, peak_rss_mib)
    );
}

/// [`print_cost`]'s line.
pub fn describe_cost(
    cost: &pomona_crds::Cost,
    wall_seconds: f64,
    peak_rss_mib: Option<u64>,
) -> String {
    let mut line = format!(
        "cost: {:.1} CPU seconds in {wall_seconds:.1} s",
        cost.cpu_seconds
    );
    if let Some(per_hour) = cost.images_per_core_hour {
        line.push_str(&format!(", {per_hour:.0} images per core-hour"));
    }
    if let Some(mib) = peak_rss_mib {
        line.push_str(&format!(", peak memory {mib} MiB"));
    }
    line
}

/// Scratch space for a shard's files before upload: `POMONA_SCRATCH`, else the system's.
pub fn scratch_dir() -> PathBuf {
    std::env::var_os(env::SCRATCH)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// The window of the rate the progress bar and lines show, in seconds.
pub const PROGRESS_WINDOW: f64 = 30.0;

/// The recent counts of images done, as much of them as the rate over [`PROGRESS_WINDOW`]
/// needs.
#[derive(Debug, Default)]
pub struct RecentCounts(Vec<progress::Sample>);

impl RecentCounts {
    /// Adds `done` images at `at` seconds and drops the samples the window no longer needs
    /// (it keeps the latest one at least a window old).
    pub fn push(&mut self, at: f64, done: u64) {
        self.0.push(progress::Sample { at, done });
        let old = self
            .0
            .iter()
            .skip(1)
            .take_while(|s| s.at <= at - PROGRESS_WINDOW)
            .count();
        self.0.drain(..old);
    }

    /// Images per second over the window.
    pub fn rate(&self) -> Option<f64> {
        progress::rate(&self.0, PROGRESS_WINDOW)
    }
}

/// What the progress bar and lines say after the count: the rate and the time left, or that
/// the rate is being measured.
pub fn describe_pace(done: u64, total: u64, rate: Option<f64>) -> String {
    match rate.and_then(|r| Some((r, progress::seconds_left(done, total, r)?))) {
        Some((rate, left)) => format!(
            "{rate:.1} images/s (last {PROGRESS_WINDOW:.0} s), ETA {}",
            progress::human_duration(left)
        ),
        None => "measuring the rate".into(),
    }
}

/// Progress of images written: a bar on a terminal, a log line every 10 s otherwise; both
/// show the rate over the last [`PROGRESS_WINDOW`] seconds and the time left at that rate.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Starts reporting `done` out of `total` images, and the retries of `source`'s requests.
    pub fn start(total: u64, done: Arc<AtomicU64>, source: Storage) -> Self {
        let start = std::time::Instant::now();
        let mut recent = RecentCounts::default();
        let mut sample = move || {
            let n = done.load(Ordering::Relaxed);
            recent.push(start.elapsed().as_secs_f64(), n);
            (n, describe_pace(n, total, recent.rate()))
        };
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {msg}")
                    .expect("a valid template"),
            );
            let shown = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let (n, pace) = sample();
                    shown.set_position(n);
                    shown.set_message(format!("{pace}{}", describe_retries(&source.counts())));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            return Self {
                task,
                bar: Some(bar),
            };
        }
        let task = tokio::spawn(async move {
            sample();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let (n, pace) = sample();
                let retries = describe_retries(&source.counts());
                crate::say!("pomona: {n}/{total} images, {pace}{retries}");
            }
        });
        Self { task, bar: None }
    }

    /// Stops reporting.
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish();
        }
    }
}

/// The progress of a plan as one line: keys listed, keys per second, images, shards written.
pub fn describe_plan_progress(progress: &PlanProgress, seconds: f64) -> String {
    let listed = progress.listed.get();
    let rate = if seconds > 0.0 {
        listed as f64 / seconds
    } else {
        0.0
    };
    format!(
        "pomona: listed {listed} keys ({rate:.0} keys/s), {} images, {} shards written",
        progress.images.load(Ordering::Relaxed),
        progress.shards.load(Ordering::Relaxed)
    )
}

/// Reports a plan's progress on stderr every 10 s (stdout stays for the summary line), and
/// once more when dropped.
pub struct PlanProgressLines {
    task: tokio::task::JoinHandle<()>,
    progress: Arc<PlanProgress>,
    start: std::time::Instant,
}

impl PlanProgressLines {
    /// Starts reporting `progress`.
    pub fn start(progress: Arc<PlanProgress>) -> Self {
        let start = std::time::Instant::now();
        let shown = progress.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let line = describe_plan_progress(&shown, start.elapsed().as_secs_f64());
                crate::say!("{line}");
            }
        });
        Self {
            task,
            progress,
            start,
        }
    }
}

impl Drop for PlanProgressLines {
    fn drop(&mut self) {
        self.task.abort();
        let line = describe_plan_progress(&self.progress, self.start.elapsed().as_secs_f64());
        crate::say!("{line}");
    }
}

/// What `pomona run` extracted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardTotals {
    /// Images turned into features, in the shards that completed.
    pub processed: u64,
    /// Images dead-lettered, in the shards that completed.
    pub failed: u64,
    /// Of the images with features, those copied from previous runs.
    pub reused: u64,
    /// The first shard (by number) that failed, if one did.
    pub failed_shard: Option<u32>,
}

/// `pomona run`: extracts every shard of `plan` not yet complete with `extractor` (loaded with
/// [`worker_threads`]), `workers` at a time, adding what each shard did to `totals`; fails with
/// the first failed shard's error once every shard has ended. `reuse` lends the rows of
/// unchanged images.
pub async fn run_shards(
    plan: &Plan,
    source: &Storage,
    output: &Storage,
    extractor: Arc<Extractor>,
    workers: usize,
    reuse: Option<&Reuse>,
    totals: &mut ShardTotals,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(plan.images, done.clone(), source.clone());
    let scratch = scratch_dir();
    let mut results: Vec<_> = futures::stream::iter(0..plan.shards)
        .map(|shard| {
            let extractor = extractor.clone();
            let done = done.clone();
            let scratch = scratch.clone();
            async move {
                let result = extractor
                    .extract_shard(source, output, plan, shard, &scratch, done, reuse)
                    .await
                    .with_context(|| format!("shard {shard}"));
                (shard, result)
            }
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    progress.finish();
    results.sort_by_key(|(shard, _)| *shard);
    let mut skipped = 0;
    let mut first_error = None;
    for (shard, outcome) in results {
        match outcome {
            Ok(outcome) => {
                totals.processed += outcome.counts.processed;
                totals.failed += outcome.counts.failed;
                totals.reused += outcome.reused;
                skipped += u32::from(outcome.skipped);
            }
            Err(e) if first_error.is_none() => {
                totals.failed_shard = Some(shard);
                first_error = Some(e);
            }
            Err(_) => {}
        }
    }
    if skipped > 0 {
        crate::say!("pomona: {skipped} shard(s) were already complete and were kept");
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |secs: u64, millis: u64| {
            utc_timestamp(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year), 12:34:56.789.
        assert_eq!(at(951_827_696, 789), "2000-02-29T12:34:56.789Z");
        // 2026-11-30T13:50:00Z and the last second of 2026.
        assert_eq!(at(1_796_046_600, 5), "2026-11-30T13:50:00.005Z");
        assert_eq!(at(1_798_761_599, 999), "2026-12-31T23:59:59.999Z");
        assert_eq!(
            utc_timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn object_uris_split_into_folder_and_name() {
        let split = |u| split_object_uri(u).unwrap();
        assert_eq!(
            split("s3://b/models/m.onnx"),
            ("s3://b/models/".into(), "m.onnx".into())
        );
        assert_eq!(
            split("../shared/m.onnx"),
            ("../shared/".into(), "m.onnx".into())
        );
        assert_eq!(split("m.onnx"), ("./".into(), "m.onnx".into()));
        assert_eq!(split("/m.onnx"), ("/".into(), "m.onnx".into()));
        assert!(split_object_uri("s3://b/models/").is_err());
    }

    #[test]
    fn progress_lines_tell_retries_only_when_there_were_some() {
        assert_eq!(describe_retries(&StorageCounts::default()), "");
        let c = StorageCounts {
            requests: 100,
            retries: 5,
            throttled: 3,
            timeouts: 1,
        };
        assert_eq!(
            describe_retries(&c),
            ", 5 retries (3 throttled, 1 timed out)"
        );
        assert_eq!(storage_counts(&[]), None);
    }

    #[test]
    fn progress_shows_the_recent_rate_and_the_time_left() {
        let mut recent = RecentCounts::default();
        assert_eq!(describe_pace(0, 1260, recent.rate()), "measuring the rate");
        recent.push(0.0, 0);
        recent.push(10.0, 2000);
        // 200 images/s so far; then 100 images/s over the last 30 s.
        assert_eq!(recent.rate(), Some(200.0));
        for (at, done) in [(20.0, 3000), (30.0, 4000), (40.0, 5000)] {
            recent.push(at, done);
        }
        assert_eq!(recent.rate(), Some(100.0));
        assert_eq!(
            recent.0.len(),
            4,
            "only the samples the window needs are kept"
        );
        assert_eq!(
            describe_pace(5000, 12_500, recent.rate()),
            "100.0 images/s (last 30 s), ETA 1m15s"
        );
        assert_eq!(
            describe_pace(5000, 5000, Some(100.0)),
            "100.0 images/s (last 30 s), ETA 0s"
        );
    }

    #[test]
    fn the_cost_line_gives_the_measured_figures() {
        let cost = pomona_crds::contract::cost::cost(
            &[pomona_crds::contract::cost::PodUsage {
                cpu_seconds: Some(90.0),
                ..Default::default()
            }],
            1260,
            None,
        );
        assert_eq!(
            describe_cost(&cost, 48.04, Some(363)),
            "cost: 90.0 CPU seconds in 48.0 s, 50400 images per core-hour, peak memory 363 MiB"
        );
        assert_eq!(
            describe_cost(&pomona_crds::Cost::default(), 1.0, None),
            "cost: 0.0 CPU seconds in 1.0 s"
        );
    }

    #[test]
    fn manifests_folder_gives_the_run_root() {
        assert_eq!(
            run_root_of_manifests("s3://b/run/manifests/").unwrap(),
            "s3://b/run/"
        );
        assert_eq!(
            run_root_of_manifests("/tmp/run/manifests").unwrap(),
            "/tmp/run/"
        );
        assert!(run_root_of_manifests("s3://b/run/").is_err());
        assert!(run_root_of_manifests("s3://b/run/mymanifests").is_err());
    }
}
