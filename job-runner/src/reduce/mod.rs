//! `pomona reduce`: the PCA over every shard of a run, the reduced vectors and the report.
//!
//! [`reduce`] runs these steps in turn, each a function of its own:
//!
//! 1. Census: every shard of the plan must have its features, dead letters and statistics
//!    (looked at 32 shards at a time; the sorting itself is the pure `census`); dead letters
//!    are counted from their files' footers. A shard without them that `--failed-shards` names
//!    (its extract pods failed for good) is dead-lettered whole instead: every image of its
//!    manifest goes to its `deadletter/part-NNNNN.parquet`, with the reason, and the rest of
//!    the step skips it. The first complete shard's feature file gives the run's dimension and
//!    provenance; it is read once, and projected first.
//! 2. Fit (`fit`; `--components k` or `--variance-to-keep f`): the shards'
//!    [`Moments`](crate::stats::Moments) merge in the fixed tree of
//!    [`MergeTree`](crate::stats::MergeTree) (its order gives the bytes; the failed shards are
//!    holes), [`STATS_IN_FLIGHT`] files read at a time, or with `--merged-blocks` from the
//!    blocks a merge Job merged ([`merge`]), and the covariance is eigen-decomposed ([`pca`]);
//!    memory and time do not depend on the number of images. Or reuse (`--pca-from URI`): a saved PCA is read and refused when it was
//!    fitted on features of another model, preprocessing or dimension. `pca/pca.safetensors`
//!    is written (a reused PCA is copied there unchanged).
//! 3. Project (`project_shards`), shard by shard: `reduced/part-NNNNN.parquet`, and with
//!    `--csv` one `reduced.csv` streamed through a scratch file ([`project`]), keeping the
//!    scatter's points and a fixed-seed sample of labelled vectors.
//! 4. Label agreement ([`agreement`]): the leave-one-out 1-NN accuracy (cosine) of the labels
//!    on that sample.
//! 5. The report's pictures ([`crate::report`]) and, with `--clusters`, k-means of the reduced
//!    vectors ([`grouping`]): `clusters/` and `report/clusters.png`.
//! 6. Summary (the pure `summarize`): `report/summary.json`, then the pure `accounting` check,
//!    and `_SUCCESS` (the same summary) last, only when listed = processed + dead-lettered.
//!
//! On Kubernetes a run of many shards splits the step around a projection Job
//! ([`ReduceStage`]): a fit pod (`--fit-only`) runs steps 1 and 2 and ends with the PCA
//! written; the Job's pods ([`projection`]) project groups of shards through it; then a reduce
//! pod (`--after-projection`) reads that PCA back instead of fitting it again, and in step 3
//! reads the reduced files the Job made.

pub mod agreement;
pub mod grouping;
pub mod kmeans;
pub mod merge;
pub mod pca;
pub mod project;
pub mod projection;
pub mod sample;
pub mod scores;
pub mod spark;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
pub use pomona_crds::contract::steps::ShardList;
use pomona_crds::contract::{OutputLayout, Plan, ShardGroups};
use pomona_storage::{S3Config, Storage};

use crate::cli::split_object_uri;
use crate::extract::dead_letter_shard;
use crate::infer::sha256_hex;
use crate::parquet_out::Provenance;
use crate::report::{self, ReduceSummary, Scatter, Timings};
use crate::{Permanent, Usage};
use grouping::ClusterCount;
use pca::{Keep, Pca, PcaError};
use project::{FeatureFile, FeatureRows};
use sample::Reservoir;

/// The components `pomona run` keeps when no PCA option is given (the Spark reference's k).
pub const DEFAULT_COMPONENTS: usize = pomona_crds::contract::steps::DEFAULT_COMPONENTS as usize;

/// The PCA options of `pomona reduce` and `pomona run` (at most one of the first three).
#[derive(Args, Clone, Debug, Default)]
pub struct PcaArgs {
    /// Keep this many principal components.
    #[arg(long, conflicts_with_all = ["variance_to_keep", "pca_from"], value_parser = crate::cli::at_least_one())]
    pub components: Option<usize>,
    /// Keep the fewest components whose cumulative explained variance ratio reaches this
    /// fraction, in (0, 1].
    #[arg(long, conflicts_with = "pca_from", value_parser = fraction)]
    pub variance_to_keep: Option<f64>,
    /// Reuse a saved PCA instead of fitting one: a run's pca/ folder or its pca.safetensors,
    /// or the folder of a Spark ML PCAModel saved with model.save(path), which projects as
    /// Spark does (without centring).
    #[arg(long)]
    pub pca_from: Option<String>,
    /// Also write the reduced vectors as one CSV, <output>/reduced.csv (path, label, pc1..pck).
    #[arg(long)]
    pub csv: bool,
}

/// `--variance-to-keep`: a fraction in (0, 1], else a usage error.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        Ok(f) => Err(format!("{f} is not in (0, 1]")),
        Err(e) => Err(e.to_string()),
    }
}

/// What to do with the PCA.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Fit one; `default` when k was not asked for (it is then capped at what the data allows).
    Fit {
        /// How many components.
        keep: Keep,
        /// k is the default rather than the user's.
        default: bool,
    },
    /// Reuse the PCA at this URI.
    Reuse(String),
}

impl PcaArgs {
    /// The mode asked for, or fitting `default_components` when none was; `None` when nothing
    /// was asked for and there is no default.
    pub fn mode(&self, default_components: Option<usize>) -> Option<Mode> {
        if let Some(uri) = &self.pca_from {
            return Some(Mode::Reuse(uri.clone()));
        }
        if let Some(k) = self.components {
            return Some(Mode::Fit {
                keep: Keep::Components(k),
                default: false,
            });
        }
        if let Some(f) = self.variance_to_keep {
            return Some(Mode::Fit {
                keep: Keep::Variance(f),
                default: false,
            });
        }
        default_components.map(|k| Mode::Fit {
            keep: Keep::Components(k),
            default: true,
        })
    }
}

/// The reason recorded for every image of a shard whose extract pods failed for good.
pub fn failed_shard_reason(shard: u32) -> String {
    format!(
        "shard {shard} failed: its extract pods did not complete (see the FeatureExtraction status)"
    )
}

pub use pomona_crds::contract::steps::ReduceStage;

/// What the reduce step is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct ReduceRequest<'a> {
    /// Fit a PCA, or reuse one.
    pub mode: &'a Mode,
    /// The whole step, or its part before or after a projection Job.
    pub stage: ReduceStage,
    /// Also write `reduced.csv`.
    pub csv: bool,
    /// The shards whose extract pods failed for good: those without complete outputs are
    /// dead-lettered whole.
    pub failed_shards: &'a ShardList,
    /// Group the reduced vectors by k-means.
    pub clusters: Option<ClusterCount>,
    /// Shards a block of the merge Job, when one merged the statistics (`--merged-blocks`).
    pub merged_blocks: Option<u32>,
}

/// What the fit pod (`--fit-only`) did.
#[derive(Clone, Debug)]
pub struct FitSummary {
    /// Images the plan lists.
    pub images: u64,
    /// Images dead-lettered (bad images, and every image of a failed shard).
    pub dead_lettered: u64,
    /// Images the PCA was fitted on (or, reused, its own count).
    pub fitted_on: u64,
    /// Its components.
    pub components: usize,
    /// The fraction of the variance they explain.
    pub explained_variance: f64,
    /// Whether the PCA was reused rather than fitted.
    pub reused: bool,
}

/// What the reduce step did.
#[derive(Clone, Debug)]
pub enum ReduceOutcome {
    /// `--fit-only`: the PCA is written, for the projection Job.
    Fitted(FitSummary),
    /// The summary written to `report/summary.json` and `_SUCCESS`.
    Reduced(Box<ReduceSummary>),
}

impl ReduceOutcome {
    /// The summary of a reduce step that went to the end.
    pub fn summary(&self) -> Option<&ReduceSummary> {
        match self {
            Self::Fitted(_) => None,
            Self::Reduced(summary) => Some(summary),
        }
    }
}

fn secs(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

async fn put(out: &Storage, uri: &str, data: Vec<u8>) -> anyhow::Result<()> {
    out.put(&out.relative(uri)?, Bytes::from(data))
        .await
        .with_context(|| format!("cannot write {uri}"))
}

async fn get(out: &Storage, uri: &str) -> anyhow::Result<Bytes> {
    out.get(&out.relative(uri)?)
        .await
        .with_context(|| format!("cannot read {uri}"))
}

/// The shards of a run, sorted by what their outputs allow.
#[derive(Debug)]
struct Census {
    /// Shards with every output: used to fit and project.
    complete: Vec<u32>,
    /// The feature rows of each complete shard: its manifest's images less its dead letters.
    rows: Vec<u64>,
    /// Shards without them that `--failed-shards` names: dead-lettered whole.
    failed: Vec<u32>,
    /// Dead letters of the complete shards.
    dead_letters: u64,
    /// Shards `--failed-shards` names whose outputs are complete after all: they are used.
    named_but_complete: Vec<u32>,
    /// Feature rows the complete shards copied from previous runs.
    reused: u64,
}

/// What the output holds of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShardOutputs {
    shard: u32,
    /// Dead letters in the shard's dead-letter file, when the shard wrote its statistics,
    /// features and dead letters (the dead letters last); `None` when any is missing.
    complete_with_dead_letters: Option<u64>,
    /// Feature rows the shard copied from previous runs (`--reuse-from`), when complete.
    reused: u64,
}

/// Shards whose outputs are looked at once.
const SHARD_CHECKS_IN_FLIGHT: usize = 32;

/// The run at `out`, its plan's shards in groups of `shards_per_pod`, and the shards of group
/// `index`: what a pod of the projection or merge Job works on. An index past the last group
/// is a usage error, which calls the groups `groups` ("groups", "blocks").
async fn group_of_run(
    out: &Storage,
    index: u32,
    shards_per_pod: u32,
    groups_are: &str,
) -> anyhow::Result<(OutputLayout, ShardGroups, std::ops::Range<u32>)> {
    let layout = OutputLayout::new(&out.uri());
    let plan = pomona_storage::plan::read_plan(out).await?;
    let groups = ShardGroups {
        shards: plan.shards,
        shards_per_pod,
    };
    if index >= groups.groups() {
        return Err(Usage(format!(
            "index {index} is past the last of the {} {groups_are} of {} ({} shards at \
             {shards_per_pod} a group)",
            groups.groups(),
            layout.root(),
            plan.shards,
        ))
        .into());
    }
    let shards = groups.shards_of(index);
    Ok((layout, groups, shards))
}

/// Looks at the outputs of `shards`, [`SHARD_CHECKS_IN_FLIGHT`] at a time, in shard order.
async fn shard_outputs(
    out: &Storage,
    layout: &OutputLayout,
    shards: std::ops::Range<u32>,
) -> anyhow::Result<Vec<ShardOutputs>> {
    futures::stream::iter(shards)
        .map(|shard| async move {
            let mut complete = true;
            for uri in [layout.stats(shard), layout.features(shard)] {
                complete &= out.exists(&out.relative(&uri)?).await?;
            }
            let dead = layout.deadletter(shard);
            let (mut dead_letters, mut reused) = (None, 0);
            if complete && out.exists(&out.relative(&dead)?).await? {
                let data = get(out, &dead).await?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(data)
                    .with_context(|| format!("{dead} is not a Parquet file"))?;
                dead_letters = Some(reader.metadata().file_metadata().num_rows() as u64);
                reused = crate::reuse::recorded(out, shard).await?;
            }
            anyhow::Ok(ShardOutputs {
                shard,
                complete_with_dead_letters: dead_letters,
                reused,
            })
        })
        .buffered(SHARD_CHECKS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Sorts the shards into complete ones and failed ones (`named` and incomplete), counting the
/// complete shards' dead letters; fails with the numbers when a shard has no complete output and
/// is not named, or when there is nothing to reduce.
fn census(
    outputs: &[ShardOutputs],
    named: &BTreeSet<u32>,
    plan: &Plan,
    root: &str,
) -> Result<Census, Permanent> {
    let mut census = Census {
        complete: Vec::new(),
        rows: Vec::new(),
        failed: Vec::new(),
        dead_letters: 0,
        named_but_complete: Vec::new(),
        reused: 0,
    };
    let mut missing = Vec::new();
    for o in outputs {
        match o.complete_with_dead_letters {
            Some(dead_letters) => {
                census.dead_letters += dead_letters;
                census.reused += o.reused;
                census.complete.push(o.shard);
                census
                    .rows
                    .push(plan.shard_len(o.shard).saturating_sub(dead_letters));
                if named.contains(&o.shard) {
                    census.named_but_complete.push(o.shard);
                }
            }
            None if named.contains(&o.shard) => census.failed.push(o.shard),
            None => missing.push(o.shard),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(20).map(u32::to_string).collect();
        return Err(Permanent(format!(
            "accounting does not close: {} images listed in {} shards, but {} shard(s) have no \
             complete output (features, dead letters and statistics): {}{}; extract them first \
             (or name them in --failed-shards if they failed for good)",
            plan.images,
            plan.shards,
            missing.len(),
            shown.join(", "),
            if missing.len() > 20 { ", …" } else { "" }
        )));
    }
    if plan.shards == 0 {
        return Err(Permanent(format!(
            "the plan of {root} lists no images: there is nothing to reduce"
        )));
    }
    if census.complete.is_empty() {
        return Err(Permanent(format!(
            "every shard of the run failed ({} of {}, {} images): there are no features to fit \
             a PCA on or to project",
            census.failed.len(),
            plan.shards,
            plan.images
        )));
    }
    Ok(census)
}

/// Dead-letters every image of each failed shard, removing what the shard left behind (partial
/// features or statistics, reduced vectors of an earlier reduce); returns how many images.
async fn dead_letter_failed(
    out: &Storage,
    layout: &OutputLayout,
    plan: &Plan,
    failed: &[u32],
    provenance: &Provenance,
) -> anyhow::Result<u64> {
    let mut images = 0;
    for &shard in failed {
        // The statistics first: without them the shard never looks complete, whatever happens.
        for uri in [
            layout.stats(shard),
            layout.features(shard),
            layout.reduced(shard),
        ] {
            out.delete_prefix(&out.relative(&uri)?).await?;
        }
        let n = dead_letter_shard(out, plan, shard, &failed_shard_reason(shard), provenance)
            .await
            .with_context(|| format!("cannot dead-letter the failed shard {shard}"))?;
        crate::say!("pomona: reduce: shard {shard} failed: dead-lettered its {n} images");
        images += n;
    }
    Ok(images)
}

/// Statistics files read at once while merging: each is `8·d²` bytes (13 MB at 1280 values),
/// so this bounds the merge's memory to about this many files beyond the tree's accumulators.
pub const STATS_IN_FLIGHT: usize = 8;

/// Reads the PCA at `uri`: a pomona PCA (its folder or its file), or a Spark ML PCAModel's
/// folder ([`spark`]), converted to pomona's format.
async fn read_pca(uri: &str, s3: &S3Config) -> anyhow::Result<(Pca, Vec<u8>)> {
    if !uri.ends_with(".safetensors")
        && let Some(pca) = spark::read(uri, s3).await?
    {
        let bytes = pca.to_bytes();
        return Ok((pca, bytes));
    }
    let file = if uri.ends_with(".safetensors") {
        uri.to_string()
    } else {
        format!("{}/{}", uri.trim_end_matches('/'), pca::FILE_NAME)
    };
    let (folder, key) = split_object_uri(&file)?;
    let storage = Storage::open(&folder, s3).await?;
    let data = storage
        .get(&key)
        .await
        .with_context(|| format!("cannot read the PCA {file}"))?;
    let pca = Pca::from_bytes(&data).map_err(|e| Permanent(format!("{file}: {e}")))?;
    Ok((pca, data.to_vec()))
}

/// The label agreement of a sample of (label, `k` reduced values), rounded to 6 digits;
/// `None` with fewer than two images or a single label.
fn labelled_agreement(sample: &[(String, Vec<f32>)], k: usize) -> Option<f64> {
    let mut ids = std::collections::BTreeMap::new();
    let labels: Vec<u32> = sample
        .iter()
        .map(|(l, _)| {
            let next = ids.len() as u32;
            *ids.entry(l.as_str()).or_insert(next)
        })
        .collect();
    if ids.len() < 2 {
        return None;
    }
    let rows: Vec<f32> = sample.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    agreement::loo_1nn_accuracy(&rows, k, &labels).map(|a| (a * 1e6).round() / 1e6)
}

/// Reads the PCA at `uri` for features of `dim` values made as `origin` says (model and
/// preprocessing), refusing one fitted on others: the PCA `pomona run` and the extract pods
/// project through as they go when it is reused. Returns it with its file's sha256.
pub async fn reusable_pca(
    uri: &str,
    s3: &S3Config,
    dim: usize,
    origin: &pca::Origin,
) -> anyhow::Result<(Pca, String)> {
    let (pca, bytes) = read_pca(uri, s3).await?;
    pca.check_applies_to(dim, origin)
        .map_err(|e| Permanent(format!("cannot reuse the PCA {uri}: {e}")))?;
    Ok((pca, sha256_hex(&bytes)))
}

fn permanent(e: PcaError) -> anyhow::Error {
    Permanent(e.to_string()).into()
}

/// Where the fit finds the shards' statistics.
#[derive(Clone, Copy, Debug)]
struct Statistics<'a> {
    /// Shards of the run (the merge tree's leaves).
    shards: u32,
    /// The complete ones, whose statistics are merged (the others are holes).
    complete: &'a [u32],
    /// Shards a block of the merge Job, when one merged them.
    merged_blocks: Option<u32>,
}

/// The PCA the fit step fitted or read.
struct Fitted {
    pca: Pca,
    /// `pca/pca.safetensors` as written.
    bytes: Vec<u8>,
    /// The cumulative variance asked for (`--variance-to-keep`), if any.
    target: Option<f64>,
}

/// Fit: merges the complete shards' statistics and fits the PCA (`Mode::Fit`), or reads and
/// checks the saved one (`Mode::Reuse`), for features of `dim` values made as `origin` says.
/// After a projection Job, the PCA this run's fit pod wrote is read back instead of fitted
/// again.
async fn fit(
    out: &Storage,
    s3: &S3Config,
    layout: &OutputLayout,
    (mode, stage): (&Mode, ReduceStage),
    statistics: Statistics<'_>,
    (dim, origin): (usize, &pca::Origin),
    timings: &mut Timings,
) -> anyhow::Result<Fitted> {
    let t = Instant::now();
    let fitted = match mode {
        Mode::Fit { keep, .. } if stage == ReduceStage::AfterProjection => {
            let uri = format!("{}{}", layout.pca_dir(), pca::FILE_NAME);
            let bytes = get(out, &uri)
                .await
                .context("the run's fit pod writes its PCA before the projection Job")?;
            let pca = Pca::from_bytes(&bytes).map_err(|e| Permanent(format!("{uri}: {e}")))?;
            pca.check_applies_to(dim, origin)
                .map_err(|e| Permanent(format!("{uri}: {e}")))?;
            timings.fit = secs(t);
            crate::say!("pomona: reduce: read the PCA the fit pod wrote, {uri}");
            Fitted {
                pca,
                bytes: bytes.to_vec(),
                target: match keep {
                    Keep::Variance(f) => Some(*f),
                    Keep::Components(_) => None,
                },
            }
        }
        Mode::Fit { keep, default } => {
            let complete: BTreeSet<u32> = statistics.complete.iter().copied().collect();
            let (moments, how) = match statistics.merged_blocks {
                Some(per_block) => {
                    let (moments, again) =
                        merge::merge_blocks(out, layout, statistics.shards, per_block, &complete)
                            .await?;
                    let how = format!(
                        " from the merge Job's blocks of {per_block} shards ({again} merged \
                         again here)"
                    );
                    (moments, how)
                }
                None => {
                    let all = 0..statistics.shards;
                    let moments =
                        merge::merge_shards(out, layout, all, &complete, STATS_IN_FLIGHT).await?;
                    (moments, String::new())
                }
            };
            let moments = moments.ok_or_else(|| Permanent("no shard to merge".into()))?;
            timings.statistics = secs(t);
            crate::say!(
                "pomona: reduce: merged the statistics of {} shard(s), {} images, in {:.3} s{how}",
                complete.len(),
                moments.count(),
                timings.statistics
            );
            if moments.dim() != dim {
                return Err(Permanent(format!(
                    "the statistics have {} values per row, the features {dim}",
                    moments.dim()
                ))
                .into());
            }
            let keep = match *keep {
                Keep::Components(k) if *default => {
                    Keep::Components(k.min(dim).min(moments.count() as usize).max(1))
                }
                keep => keep,
            };
            let t = Instant::now();
            let pca = Pca::fit(&moments, keep, origin.clone()).map_err(permanent)?;
            timings.fit = secs(t);
            let target = match keep {
                Keep::Variance(f) => Some(f),
                Keep::Components(_) => None,
            };
            let bytes = pca.to_bytes();
            Fitted { pca, bytes, target }
        }
        Mode::Reuse(uri) => {
            let (pca, bytes) = read_pca(uri, s3).await?;
            pca.check_applies_to(dim, origin)
                .map_err(|e| Permanent(format!("cannot reuse the PCA {uri}: {e}")))?;
            timings.fit = secs(t);
            Fitted {
                pca,
                bytes,
                target: None,
            }
        }
    };
    let pca = &fitted.pca;
    crate::say!(
        "pomona: reduce: {} PCA with {} components ({:.1}% of the variance) in {:.3} s{}",
        if matches!(mode, Mode::Reuse(_)) {
            "reused a"
        } else {
            "fitted a"
        },
        pca.k(),
        pca.explained_variance_ratio.sum() * 100.0,
        timings.fit,
        if pca.centred {
            ""
        } else {
            "; it projects without centring, as Spark ML does"
        }
    );
    Ok(fitted)
}

/// What the projection kept of the reduced vectors besides writing them.
struct Projected {
    /// Images projected.
    processed: u64,
    /// The points of `report/scatter.png`, and the label counts.
    scatter: Scatter,
    /// The fixed-seed sample of labelled vectors the label agreement is measured on.
    agreement_sample: Reservoir<(String, Vec<f32>)>,
}

/// Project: every complete shard's features through `pca` into `reduced/part-NNNNN.parquet`,
/// and with `csv` into one `reduced.csv` streamed through a scratch file. `first` is the first
/// complete shard's feature file, already read; every other must come from the same model and
/// preprocessing. A shard whose reduced file this PCA already made (its extract step
/// projected it, with a reused PCA, or an earlier reduce did) is read, not projected again:
/// the extract step deletes the reduced file of a shard it extracts without projecting, so
/// one made by this PCA always belongs to the shard's current features.
async fn project_shards(
    out: &Storage,
    layout: &OutputLayout,
    complete: &[(u32, u64)],
    first: FeatureFile,
    pca: &Pca,
    pca_sha256: &str,
    csv: bool,
) -> anyhow::Result<Projected> {
    let (k, origin) = (pca.k(), first.origin.clone());
    let mut scatter = Scatter::new();
    let mut agreement_sample = Reservoir::new(agreement::MAX_SAMPLE, agreement::SEED);
    let mut csv_file = if csv {
        let file = tempfile::NamedTempFile::new_in(crate::cli::scratch_dir())
            .context("cannot create a scratch file for the CSV")?;
        let mut w = BufWriter::new(file);
        project::csv_header(&mut w, k)?;
        Some(w)
    } else {
        None
    };
    let (mut processed, mut read) = (0u64, 0u64);
    let mut each = |rows: &FeatureRows, reduced: &[f32]| -> anyhow::Result<()> {
        for (i, row) in reduced.chunks_exact(k).enumerate() {
            let label = rows.labels.value(i);
            scatter.push(label, row[0], row.get(1).copied().unwrap_or(0.0));
            if !label.is_empty() {
                agreement_sample.offer_with(|| (label.to_string(), row.to_vec()));
            }
        }
        if let Some(w) = &mut csv_file {
            project::csv_rows(w, &rows.paths, &rows.labels, reduced, k)?;
        }
        processed += (reduced.len() / k) as u64;
        Ok(())
    };
    let mut first = Some(first);
    for &(shard, rows) in complete {
        if let Some(made) = already_projected(out, layout, shard, rows, pca_sha256, k).await? {
            first = None;
            for batch in made.batches()? {
                let batch = batch.with_context(|| layout.reduced(shard))?;
                each(&batch, &batch.values)?;
            }
            read += rows;
            continue;
        }
        let uri = layout.features(shard);
        let features = match first.take() {
            Some(file) => file,
            None => FeatureFile::open_stored(out, &out.relative(&uri)?)
                .await
                .with_context(|| uri.clone())?,
        };
        if features.origin.model_sha256 != origin.model_sha256
            || features.origin.preprocessing != origin.preprocessing
        {
            return Err(Permanent(format!(
                "{uri} was extracted with another model or preprocessing than shard {} (model \
                 sha256 {} vs {}): one run must use one model",
                complete[0].0, features.origin.model_sha256, origin.model_sha256
            ))
            .into());
        }
        let reduced = project::project_file(features, pca, pca_sha256, &mut each)
            .await
            .with_context(|| uri.clone())?;
        put(out, &layout.reduced(shard), reduced).await?;
    }
    if read > 0 {
        crate::say!(
            "pomona: reduce: {read} of the images were already projected by this PCA (reduced \
             files read, not made again)"
        );
    }
    if let Some(w) = csv_file {
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.as_file().sync_all()?;
        out.put_file(&out.relative(&layout.csv())?, file.path())
            .await
            .with_context(|| format!("cannot write {}", layout.csv()))?;
    }
    Ok(Projected {
        processed,
        scatter,
        agreement_sample,
    })
}

/// The reduced file of `shard`, when the PCA of sha256 `pca_sha256` made it for the shard's
/// `rows` feature rows (`k` values each); `None` when there is none, or another.
async fn already_projected(
    out: &Storage,
    layout: &OutputLayout,
    shard: u32,
    rows: u64,
    pca_sha256: &str,
    k: usize,
) -> anyhow::Result<Option<FeatureFile>> {
    let uri = layout.reduced(shard);
    if !out.exists(&out.relative(&uri)?).await? {
        return Ok(None);
    }
    let made = FeatureFile::open_vectors(get(out, &uri).await?, "pca");
    Ok(made
        .ok()
        .filter(|m| m.pca_sha256 == pca_sha256 && m.dim == k && m.rows == rows))
}

/// Checks that the run's images are all accounted for: the PCA, when fitted here, was fitted
/// on as many images (`fitted_on`) as were projected, and listed = processed + dead-lettered.
fn accounting(
    listed: u64,
    processed: u64,
    dead_lettered: u64,
    fitted_on: Option<u64>,
) -> Result<(), Permanent> {
    if let Some(fitted_on) = fitted_on
        && fitted_on != processed
    {
        return Err(Permanent(format!(
            "the shards' statistics count {fitted_on} images, their feature files {processed}"
        )));
    }
    if listed != processed + dead_lettered {
        return Err(Permanent(format!(
            "accounting does not close: {listed} images listed, {processed} processed + \
             {dead_lettered} dead-lettered = {}",
            processed + dead_lettered
        )));
    }
    Ok(())
}

/// What the step found and made, for its summary.
struct Findings<'a> {
    plan: &'a Plan,
    census: &'a Census,
    mode: &'a Mode,
    fitted: &'a Fitted,
    pca_sha256: String,
    origin: &'a pca::Origin,
    dead_lettered: u64,
    processed: u64,
    labels: BTreeMap<String, u64>,
    agreement: Option<(f64, usize)>,
    clustering: Option<grouping::ClusteringSummary>,
    timings: Timings,
    cost: Option<pomona_crds::Cost>,
}

/// The summary of `report/summary.json` and `_SUCCESS`.
fn summarize(f: Findings<'_>) -> ReduceSummary {
    let pca = &f.fitted.pca;
    let ratios = pca.explained_variance_ratio.to_vec();
    ReduceSummary {
        format: "pomona-reduce/1",
        images: f.plan.images,
        processed: f.processed,
        failed: f.dead_lettered,
        reused: f.census.reused,
        shards: f.plan.shards,
        failed_shards: f.census.failed.clone(),
        pca_mode: match f.mode {
            Mode::Fit { .. } => "fit",
            Mode::Reuse(_) => "reuse",
        },
        pca_from: match f.mode {
            Mode::Reuse(uri) => Some(uri.clone()),
            Mode::Fit { .. } => None,
        },
        variance_to_keep: f.fitted.target,
        projection: report::projection(pca.centred),
        components: pca.k(),
        dim: pca.dim(),
        fitted_on: pca.n_samples,
        total_variance: pca.total_variance,
        explained_variance: pca.explained_variance.to_vec(),
        cumulative_explained_variance_ratio: ratios.iter().sum(),
        explained_variance_ratio: ratios,
        pca_sha256: f.pca_sha256,
        model_sha256: f.origin.model_sha256.clone(),
        preprocessing: f.origin.preprocessing.clone(),
        versions: f.origin.versions.clone(),
        labels: f.labels,
        label_agreement_sample: f.agreement.map(|(_, n)| n),
        label_agreement: f.agreement.map(|(a, _)| a),
        clustering: f.clustering,
        seconds: f.timings,
        cost: f.cost,
    }
}

/// Runs the reduce step on the run at `out` (see the module docs) and returns its summary:
/// census, fit, project, label agreement, report and clusters, summary. With
/// [`ReduceStage::Fit`] it stops once the PCA is written; with
/// [`ReduceStage::AfterProjection`] it reads that PCA back and the reduced files the projection
/// Job made. `cost_of`, when the run's cost is known (`pomona run`: this process; a reduce
/// pod: what the operator handed it, and itself), gives it for the images processed, for the
/// summary's `cost`.
pub async fn reduce(
    out: &Storage,
    s3: &S3Config,
    request: &ReduceRequest<'_>,
    cost_of: Option<&dyn Fn(u64) -> pomona_crds::Cost>,
) -> anyhow::Result<ReduceOutcome> {
    let ReduceRequest {
        mode,
        stage,
        csv,
        failed_shards,
        clusters,
        merged_blocks,
    } = *request;
    let started = Instant::now();
    let layout = OutputLayout::new(&out.uri());
    let plan = pomona_storage::plan::read_plan(out).await?;
    let past: Vec<u32> = failed_shards
        .0
        .iter()
        .copied()
        .filter(|&s| s >= plan.shards)
        .collect();
    if !past.is_empty() {
        return Err(Usage(format!(
            "--failed-shards names shard(s) {} but the run {} has {} shard(s), numbered 0 to {}",
            ShardList(past.into_iter().collect()),
            layout.root(),
            plan.shards,
            plan.shards.saturating_sub(1)
        ))
        .into());
    }
    // A rerun starts by withdrawing the previous success marker.
    out.delete_prefix(&out.relative(&layout.success())?).await?;

    // Census.
    let outputs = shard_outputs(out, &layout, 0..plan.shards).await?;
    let census = census(&outputs, &failed_shards.0, &plan, layout.root())?;
    for shard in &census.named_but_complete {
        crate::say!(
            "pomona: reduce: shard {shard} is named in --failed-shards but its outputs are \
             complete: it is used"
        );
    }
    // The first complete shard's features tell the run's dimension and provenance; the
    // projection starts with them.
    let first_uri = layout.features(census.complete[0]);
    let first = FeatureFile::open_stored(out, &out.relative(&first_uri)?)
        .await
        .with_context(|| first_uri.clone())?;
    let (dim, origin) = (first.dim, first.origin.clone());
    let provenance = Provenance {
        model_sha256: origin.model_sha256.clone(),
        model_uri: origin.model_uri.clone(),
        preprocessing: origin.preprocessing.clone(),
        versions: origin.versions.clone(),
    };
    let dead_lettered = census.dead_letters
        + dead_letter_failed(out, &layout, &plan, &census.failed, &provenance).await?;

    // Fit.
    let mut timings = Timings::default();
    let fitted = fit(
        out,
        s3,
        &layout,
        (mode, stage),
        Statistics {
            shards: plan.shards,
            complete: &census.complete,
            merged_blocks,
        },
        (dim, &origin),
        &mut timings,
    )
    .await?;
    let (pca, k) = (&fitted.pca, fitted.pca.k());
    let pca_sha256 = sha256_hex(&fitted.bytes);
    if stage != ReduceStage::AfterProjection {
        put(
            out,
            &format!("{}{}", layout.pca_dir(), pca::FILE_NAME),
            fitted.bytes.clone(),
        )
        .await?;
    }
    if stage == ReduceStage::Fit {
        crate::say!(
            "pomona: reduce: the PCA is written ({}{}); the projection Job projects the \
             shards through it",
            layout.pca_dir(),
            pca::FILE_NAME
        );
        return Ok(ReduceOutcome::Fitted(FitSummary {
            images: plan.images,
            dead_lettered,
            fitted_on: pca.n_samples,
            components: k,
            explained_variance: pca.explained_variance_ratio.sum(),
            reused: matches!(mode, Mode::Reuse(_)),
        }));
    }

    // Project.
    let t = Instant::now();
    let complete: Vec<(u32, u64)> = census
        .complete
        .iter()
        .copied()
        .zip(census.rows.clone())
        .collect();
    let projected = project_shards(out, &layout, &complete, first, pca, &pca_sha256, csv).await?;
    let processed = projected.processed;
    timings.project = secs(t);
    crate::say!(
        "pomona: reduce: projected {processed} images in {:.3} s",
        timings.project
    );

    // Label agreement.
    let t = Instant::now();
    let sample = projected.agreement_sample.into_items();
    let label_agreement = labelled_agreement(&sample, k);
    timings.agreement = secs(t);
    if let Some(a) = label_agreement {
        crate::say!(
            "pomona: reduce: label agreement (leave-one-out 1-NN, cosine) {a:.4} on {} images \
             in {:.3} s",
            sample.len(),
            timings.agreement
        );
    }

    // The report's pictures.
    let t = Instant::now();
    let ratios = pca.explained_variance_ratio.to_vec();
    let axis_ratios = (ratios[0], ratios.get(1).copied());
    let variance_png = report::explained_variance_png(&ratios, fitted.target)?;
    let scatter_png = projected.scatter.png(axis_ratios)?;
    put(out, &layout.explained_variance_png(), variance_png).await?;
    put(out, &layout.scatter_png(), scatter_png).await?;
    timings.report = secs(t);

    // Clusters: written afresh by each reduce, so none of an earlier one is left behind.
    out.delete_prefix(&out.relative(&layout.clusters_dir())?)
        .await?;
    out.delete_prefix(&out.relative(&layout.clusters_png())?)
        .await?;
    let clustering = match clusters {
        Some(count) => {
            let run = grouping::Run {
                out,
                layout: &layout,
                shards: &census.complete,
                images: processed,
                origin: &origin,
                pca_sha256: &pca_sha256,
                axis_ratios,
                mini_batch_above: kmeans::MINI_BATCH_ABOVE as u64,
            };
            Some(grouping::cluster(&run, count).await?)
        }
        None => None,
    };
    timings.total = secs(started);

    // Summary: written to the report, then checked, and only then `_SUCCESS`.
    let summary = summarize(Findings {
        plan: &plan,
        census: &census,
        mode,
        fitted: &fitted,
        pca_sha256,
        origin: &origin,
        dead_lettered,
        processed,
        labels: projected.scatter.label_counts(),
        agreement: label_agreement.map(|a| (a, sample.len())),
        clustering,
        timings,
        cost: cost_of.map(|cost| cost(processed)),
    });
    let mut json = serde_json::to_vec_pretty(&summary)?;
    json.write_all(b"\n")?;
    put(out, &layout.summary_json(), json.clone()).await?;
    let fitted_on = matches!(mode, Mode::Fit { .. }).then_some(summary.fitted_on);
    accounting(summary.images, processed, summary.failed, fitted_on)?;
    put(out, &layout.success(), json).await?;
    Ok(ReduceOutcome::Reduced(Box::new(summary)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_shard() {
        assert_eq!(
            failed_shard_reason(3),
            "shard 3 failed: its extract pods did not complete (see the FeatureExtraction status)"
        );
    }

    fn plan(images: u64, shards: u32) -> Plan {
        Plan {
            format: Plan::FORMAT,
            source: "s3://b/in/".into(),
            images,
            bytes: 0,
            images_per_shard: 10,
            shards,
            identity: None,
        }
    }

    fn outputs(of: &[Option<u64>]) -> Vec<ShardOutputs> {
        of.iter()
            .enumerate()
            .map(|(shard, &d)| ShardOutputs {
                shard: shard as u32,
                complete_with_dead_letters: d,
                reused: d.map_or(0, |_| 5),
            })
            .collect()
    }

    #[test]
    fn the_census_sorts_shards_and_counts_dead_letters() {
        let named = BTreeSet::from([1, 2]);
        let c = census(
            &outputs(&[Some(2), None, Some(0), Some(1)]),
            &named,
            &plan(40, 4),
            "r",
        )
        .expect("every shard accounted for");
        assert_eq!(c.complete, [0, 2, 3]);
        assert_eq!(
            c.rows,
            [8, 10, 9],
            "10 images a shard, less the dead letters"
        );
        assert_eq!(c.failed, [1]);
        assert_eq!(c.dead_letters, 3);
        assert_eq!(c.reused, 15);
        assert_eq!(c.named_but_complete, [2]);
    }

    #[test]
    fn the_census_refuses_what_it_cannot_account_for() {
        let none = BTreeSet::new();
        let e = census(&outputs(&[Some(0), None, None]), &none, &plan(30, 3), "r").unwrap_err();
        assert!(
            e.0.contains("2 shard(s) have no complete output"),
            "{}",
            e.0
        );
        assert!(e.0.contains(": 1, 2;"), "{}", e.0);
        let e = census(&[], &none, &plan(0, 0), "s3://b/out/").unwrap_err();
        assert!(e.0.contains("s3://b/out/ lists no images"), "{}", e.0);
        let e = census(&outputs(&[None]), &BTreeSet::from([0]), &plan(5, 1), "r").unwrap_err();
        assert!(
            e.0.contains("every shard of the run failed (1 of 1, 5 images)"),
            "{}",
            e.0
        );
    }

    #[test]
    fn the_accounting_closes_only_on_every_image() {
        assert!(accounting(10, 7, 3, Some(7)).is_ok());
        assert!(
            accounting(10, 7, 3, None).is_ok(),
            "a reused PCA fitted elsewhere"
        );
        let e = accounting(10, 7, 2, None).unwrap_err();
        assert_eq!(
            e.0,
            "accounting does not close: 10 images listed, 7 processed + 2 dead-lettered = 9"
        );
        let e = accounting(10, 7, 3, Some(8)).unwrap_err();
        assert!(
            e.0.contains("statistics count 8 images, their feature files 7"),
            "{}",
            e.0
        );
    }
}
