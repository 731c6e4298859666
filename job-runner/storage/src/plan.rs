//! Planning a run: which images, with which labels, in which shards.
//!
//! The pure steps ([`select`], [`label_of`], [`to_jsonl`], [`from_jsonl`], and the shard
//! arithmetic [`shard_plan`] of the job contract) are separate from the ones that touch storage
//! ([`stream_plan`], [`create_plan`], [`load_or_create_plan`], [`read_plan`], [`read_shard`]) so
//! that both the operator and the runner use the same logic and it is tested without any
//! storage. A plan streams: the listing fans out by prefix ([`crate::listing`]) and the shard
//! manifests are written as the images come, in memory bounded by the listing's parts in
//! flight and one shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pomona_crds::LabelMode;
use pomona_crds::contract::{
    ManifestEntry, OutputLayout, Plan, Preprocessing, RunIdentity, ShardPlan, ShardPlanError,
    shard_plan,
};

use crate::error::{ErrorKind, StorageError};
use crate::listing::{FanOut, Listed, Lister, list_in_order};
use crate::location::Location;
use crate::pattern::{PatternError, Patterns};
use crate::storage::{ObjectMeta, Storage};

/// Shard manifests written at once by [`write_plan`].
const WRITE_CONCURRENCY: usize = 8;

/// What to plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// File-name patterns of the images (`*.jpg`…), case-insensitive.
    pub include: Vec<String>,
    /// How images get their label.
    pub label: LabelMode,
    /// Images per shard (the last shard takes the rest).
    pub images_per_shard: u32,
}

impl PlanOptions {
    /// The identity of a run planned with these options (its source is filled in when it is
    /// planned), for the resource `run_uid` if any, with the model `model_sha256` fed by
    /// `preprocessing`.
    pub fn identity(
        &self,
        run_uid: Option<String>,
        model_sha256: String,
        preprocessing: Preprocessing,
    ) -> RunIdentity {
        RunIdentity {
            run_uid,
            source: String::new(),
            include: self.include.clone(),
            label: self.label,
            model_sha256,
            preprocessing,
            images_per_shard: self.images_per_shard,
        }
    }
}

/// Why a plan could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Listing, reading or writing failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An include pattern is unusable.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// No object of the source matched the include patterns.
    #[error(
        "no images to process under {uri}: {listed} objects listed, none matching {patterns:?}"
    )]
    Empty {
        /// The source URI.
        uri: String,
        /// Objects listed.
        listed: usize,
        /// The include patterns.
        patterns: Vec<String>,
    },
    /// The images cannot be sharded as asked (see [`shard_plan`]).
    #[error(transparent)]
    Shards(#[from] ShardPlanError),
    /// A plan or manifest object does not hold what it should.
    #[error("corrupt {key}: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The output lies inside the input, or the input inside the output: a run would read its
    /// own outputs as images, or clearing the output would delete the images.
    #[error(
        "the output {output} and the input {input} overlap: one lies inside the other, so the \
         run would read its own outputs as images (or --overwrite would delete the images); \
         choose an output outside the input"
    )]
    Overlap {
        /// The input.
        input: String,
        /// The output.
        output: String,
    },
    /// The output prefix holds objects of something other than a pomona run.
    #[error(
        "{output} is not empty and holds no pomona run ({found}): choose an empty output \
         prefix, or pass --overwrite to clear it first"
    )]
    OutputNotEmpty {
        /// The output prefix.
        output: String,
        /// Some of what it holds.
        found: String,
    },
    /// The output prefix holds the plan of another run.
    #[error(
        "{output} holds the plan of another run ({other}, source {other_source}), which differs \
         from this one in {differences}: choose another output prefix, or remove that run's \
         outputs first"
    )]
    OutputInUse {
        /// The output prefix.
        output: String,
        /// The other run, named.
        other: String,
        /// The other run's source.
        other_source: String,
        /// What differs, comma-separated.
        differences: String,
    },
}

impl PlanError {
    /// Whether trying again may help (only for some storage failures).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PlanError::Storage(e) if e.is_retryable())
    }

    /// The failure in one CamelCase word, for the run's condition (see
    /// [`pomona_crds::contract::PodSummary::reason`]).
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Storage(e) => storage_reason(e.kind()),
            PlanError::Pattern(_) => "InvalidInclude",
            PlanError::Empty { .. } => "EmptySource",
            PlanError::Shards(ShardPlanError::TooManyImages { .. }) => "TooManyImages",
            PlanError::Shards(ShardPlanError::ZeroShardSize) => "InvalidShardSize",
            PlanError::Corrupt { .. } => "CorruptPlan",
            PlanError::OutputInUse { .. } => "OutputInUse",
            PlanError::Overlap { .. } => "OutputOverlapsInput",
            PlanError::OutputNotEmpty { .. } => "OutputNotEmpty",
        }
    }

    /// Whether the arguments themselves are wrong (exit code 2): the locations overlap.
    pub fn is_usage(&self) -> bool {
        matches!(self, PlanError::Overlap { .. })
    }
}

/// A storage failure in one CamelCase word.
pub fn storage_reason(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Transient => "StorageUnavailable",
        ErrorKind::Throttled => "StorageThrottled",
        ErrorKind::AccessDenied => "AccessDenied",
        ErrorKind::NoSuchBucket => "NoSuchBucket",
        ErrorKind::NotFound => "NotFound",
        ErrorKind::Invalid => "InvalidLocation",
        ErrorKind::Changed => "ObjectChanged",
        ErrorKind::TooLarge => "ObjectTooLarge",
        ErrorKind::Other => "StorageError",
    }
}

/// The label of the image at `key` (relative to the source) under `mode`: for
/// `ParentDirectory`, the name of the folder holding it (`Training/Banana 1/x.jpg` →
/// `Banana 1`); for an image at the top of the source, the last folder of `base` (the source
/// prefix or directory), or `""` if there is none.
pub fn label_of(key: &str, base: &str, mode: LabelMode) -> String {
    match mode {
        LabelMode::None => String::new(),
        LabelMode::ParentDirectory => match key.rsplit_once('/') {
            Some((dir, _)) => dir.rsplit('/').next().unwrap_or_default().to_string(),
            None => base
                .split('/')
                .rev()
                .find(|s| !s.is_empty())
                .unwrap_or_default()
                .to_string(),
        },
    }
}

/// The folder part of a location that [`label_of`] falls back on.
fn label_base(location: &Location) -> String {
    match location {
        Location::S3 { prefix, .. } => prefix.clone(),
        Location::Local { root } => root.to_string_lossy().into_owned(),
    }
}

/// The images among `objects` (in key order, as a listing gives them): those whose file name
/// matches `include`, labelled.
pub fn select(
    objects: &[ObjectMeta],
    include: &Patterns,
    base: &str,
    label: LabelMode,
) -> Vec<ManifestEntry> {
    objects
        .iter()
        .filter(|o| include.matches(o.key.rsplit('/').next().unwrap_or_default()))
        .map(|o| ManifestEntry {
            key: o.key.clone(),
            size: o.size,
            etag: o.etag.clone(),
            label: label_of(&o.key, base, label),
        })
        .collect()
}

/// A source URI as a plan records it: ending with `/`, since manifest keys are relative to it.
pub fn plan_source(source: &str) -> String {
    let mut source = source.to_string();
    if !source.ends_with('/') {
        source.push('/');
    }
    source
}

/// Whether two locations overlap: one is the other or lies inside it.
pub fn overlap(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (
            Location::S3 {
                bucket: ba,
                prefix: pa,
            },
            Location::S3 {
                bucket: bb,
                prefix: pb,
            },
        ) => ba == bb && (pa.starts_with(pb.as_str()) || pb.starts_with(pa.as_str())),
        (Location::Local { root: ra }, Location::Local { root: rb }) => {
            ra.starts_with(rb) || rb.starts_with(ra)
        }
        _ => false,
    }
}

/// Refuses an output that overlaps the input, before anything is read or written.
pub fn check_locations(source: &Storage, output: &Storage) -> Result<(), PlanError> {
    if overlap(source.location(), output.location()) {
        return Err(PlanError::Overlap {
            input: source.uri(),
            output: output.uri(),
        });
    }
    Ok(())
}

/// What under an output prefix that holds no plan is not a pomona run's own (a plan cut short
/// leaves `manifests/`, a stale marker `_SUCCESS`): the names that make the prefix someone
/// else's.
pub fn foreign_children(children: &[String]) -> Vec<&str> {
    children
        .iter()
        .map(String::as_str)
        .filter(|name| *name != "manifests/" && *name != "_SUCCESS")
        .collect()
}

/// Accepts the plan found under `output` for the run `identity`, or says whose it is: the same
/// run resumes its own plan; any other is refused before it mixes its outputs with this one.
/// A plan written before identities were recorded is this run's when its source and shard size
/// are.
pub fn check_identity(plan: &Plan, identity: &RunIdentity, output: &str) -> Result<(), PlanError> {
    let (other, differences) = match &plan.identity {
        Some(theirs) => (theirs.describe(), theirs.differences(identity)),
        None => {
            let mut differences = Vec::new();
            if plan.source != identity.source {
                differences.push("source");
            }
            if plan.images_per_shard != identity.images_per_shard {
                differences.push("images per shard");
            }
            (
                "a run planned without a recorded identity".to_string(),
                differences,
            )
        }
    };
    if differences.is_empty() {
        return Ok(());
    }
    Err(PlanError::OutputInUse {
        output: output.to_string(),
        other,
        other_source: plan.source.clone(),
        differences: differences.join(", "),
    })
}

/// Appends `entry` to a shard manifest: one JSON object and a newline.
pub fn push_jsonl(out: &mut Vec<u8>, entry: &ManifestEntry) {
    serde_json::to_writer(&mut *out, entry).expect("a manifest entry serializes");
    out.push(b'\n');
}

/// A shard manifest: one JSON object per line.
pub fn to_jsonl(entries: &[ManifestEntry]) -> Bytes {
    let mut out = Vec::with_capacity(entries.len() * 96);
    for e in entries {
        push_jsonl(&mut out, e);
    }
    Bytes::from(out)
}

/// Parses a shard manifest (`key` names it in errors); blank lines are ignored.
pub fn from_jsonl(key: &str, data: &[u8]) -> Result<Vec<ManifestEntry>, PlanError> {
    let text = std::str::from_utf8(data).map_err(|e| PlanError::Corrupt {
        key: key.to_string(),
        reason: format!("not UTF-8: {e}"),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| PlanError::Corrupt {
                key: key.to_string(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// How a plan is made: how the listing fans out, and where it reports its progress.
#[derive(Clone, Debug, Default)]
pub struct PlanRun {
    /// The listing's fan-out.
    pub fan: FanOut,
    /// Counts for progress lines.
    pub progress: Arc<PlanProgress>,
}

/// How far a plan has got: keys listed, images selected, shard manifests written.
#[derive(Debug, Default)]
pub struct PlanProgress {
    /// Keys listed.
    pub listed: Arc<Listed>,
    /// Images selected.
    pub images: AtomicU64,
    /// Shard manifests written.
    pub shards: AtomicU64,
}

/// Writes shard manifests as the images stream in: one shard's bytes in memory, and at most
/// [`WRITE_CONCURRENCY`] uploads at once.
struct ShardWriter<'a> {
    output: Option<&'a Storage>,
    layout: OutputLayout,
    per_shard: u64,
    shard: u32,
    in_shard: u64,
    body: Vec<u8>,
    tasks: tokio::task::JoinSet<Result<(), StorageError>>,
    progress: &'a PlanProgress,
}

impl<'a> ShardWriter<'a> {
    fn new(output: Option<&'a Storage>, per_shard: u32, progress: &'a PlanProgress) -> Self {
        Self {
            layout: OutputLayout::new(&output.map(Storage::uri).unwrap_or_default()),
            output,
            per_shard: u64::from(per_shard),
            shard: 0,
            in_shard: 0,
            body: Vec::new(),
            tasks: tokio::task::JoinSet::new(),
            progress,
        }
    }

    async fn push(&mut self, entry: &ManifestEntry) -> Result<(), PlanError> {
        if self.output.is_some() {
            push_jsonl(&mut self.body, entry);
        }
        self.in_shard += 1;
        if self.in_shard == self.per_shard {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the shard in progress, if it has any image.
    async fn flush(&mut self) -> Result<(), PlanError> {
        if self.in_shard == 0 {
            return Ok(());
        }
        if let Some(output) = self.output {
            while self.tasks.len() >= WRITE_CONCURRENCY {
                join_one(&mut self.tasks).await?;
            }
            let key = output.relative(&self.layout.manifest(self.shard))?;
            let body = Bytes::from(std::mem::take(&mut self.body));
            let out = output.clone();
            self.tasks.spawn(async move { out.put(&key, body).await });
            self.progress.shards.fetch_add(1, Ordering::Relaxed);
        }
        self.shard += 1;
        self.in_shard = 0;
        Ok(())
    }

    /// Writes the last shard and waits for every upload; returns the shards written.
    async fn finish(mut self) -> Result<u32, PlanError> {
        self.flush().await?;
        while !self.tasks.is_empty() {
            join_one(&mut self.tasks).await?;
        }
        Ok(self.shard)
    }
}

async fn join_one(
    tasks: &mut tokio::task::JoinSet<Result<(), StorageError>>,
) -> Result<(), PlanError> {
    match tasks.join_next().await {
        Some(Ok(r)) => Ok(r?),
        Some(Err(e)) => Err(StorageError::new(
            ErrorKind::Other,
            format!("writing a manifest failed: {e}"),
        )
        .into()),
        None => Ok(()),
    }
}

/// Lists `lister` (the source `source`, whose folder part labels top-level images) under
/// `run.fan`, selects its images and, with `output`, writes their shard manifests there as
/// they stream in, in shards of `options.images_per_shard` (raised afterwards when needed:
/// see [`shard_plan`] and [`regroup`]). Returns the plan, not yet written. Memory stays
/// bounded by the listing's parts in flight and one shard, whatever the number of images.
pub async fn stream_plan<L: Lister>(
    lister: L,
    source: &Location,
    output: Option<&Storage>,
    options: &PlanOptions,
    run: &PlanRun,
) -> Result<Plan, PlanError> {
    let include = Patterns::new(&options.include)?;
    let asked = options.images_per_shard;
    if asked == 0 {
        return Err(ShardPlanError::ZeroShardSize.into());
    }
    let base = label_base(source);
    let progress = &*run.progress;
    let mut pages = list_in_order(lister, run.fan, progress.listed.clone());
    let mut writer = ShardWriter::new(output, asked, progress);
    let (mut images, mut bytes) = (0u64, 0u64);
    while let Some(page) = pages.recv().await {
        for entry in select(&page?, &include, &base, options.label) {
            images += 1;
            bytes += entry.size;
            writer.push(&entry).await?;
        }
        progress.images.store(images, Ordering::Relaxed);
    }
    let chunks = writer.finish().await?;
    if images == 0 {
        return Err(PlanError::Empty {
            uri: source.uri(),
            listed: usize::try_from(progress.listed.get()).unwrap_or(usize::MAX),
            patterns: options.include.clone(),
        });
    }
    let sharding = shard_plan(images, asked)?;
    if let Some(output) = output
        && sharding.raised(asked)
    {
        regroup(output, asked, chunks, &sharding).await?;
    }
    Ok(Plan {
        format: Plan::FORMAT,
        source: plan_source(&source.uri()),
        images,
        bytes,
        images_per_shard: sharding.images_per_shard,
        shards: sharding.shards,
        identity: None,
    })
}

/// Joins the `chunks` manifests written in shards of `asked` under `output` into the shards
/// of `sharding` (each a run of neighbouring manifests, since its size is a multiple of
/// `asked`), and removes the manifests past the last shard. Shard `j` replaces manifest `j`
/// only once the shard that reads manifest `j` (`j / factor`) has been written, so the shards
/// can be made several at once.
pub async fn regroup(
    output: &Storage,
    asked: u32,
    chunks: u32,
    sharding: &ShardPlan,
) -> Result<(), PlanError> {
    let factor = sharding.images_per_shard / asked;
    let layout = OutputLayout::new(&output.uri());
    let key = |i: u32| output.relative(&layout.manifest(i));
    // Shards 0..done are written; `finished` holds those written out of order.
    let (mut done, mut next) = (0u32, 0u32);
    let mut finished = std::collections::BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    while done < sharding.shards {
        // Shard `next` overwrites manifest `next`, which shard `next / factor` reads.
        while next < sharding.shards
            && tasks.len() < WRITE_CONCURRENCY
            && (next == 0 || next / factor < done)
        {
            let first = next * factor;
            let reads: Vec<String> = (first..chunks.min(first + factor))
                .map(key)
                .collect::<Result<_, _>>()?;
            let (out, to, shard) = (output.clone(), key(next)?, next);
            tasks.spawn(async move {
                let mut body = Vec::new();
                for k in &reads {
                    body.extend_from_slice(&out.get(k).await?);
                }
                out.put(&to, Bytes::from(body)).await?;
                Ok::<u32, StorageError>(shard)
            });
            next += 1;
        }
        let shard = match tasks.join_next().await {
            Some(Ok(r)) => r?,
            other => {
                return Err(StorageError::new(
                    ErrorKind::Other,
                    format!("joining manifests failed: {other:?}"),
                )
                .into());
            }
        };
        finished.insert(shard);
        while finished.remove(&done) {
            done += 1;
        }
    }
    for i in sharding.shards..chunks {
        output.delete(&key(i)?).await?;
    }
    Ok(())
}

/// Lists `source`, plans the run `identity` (when given) and writes the plan under `output`:
/// the shard manifests as the listing streams in, then (last, so that its presence means the
/// plan is whole) `manifests/plan.json`.
pub async fn create_plan(
    source: &Storage,
    output: &Storage,
    options: &PlanOptions,
    identity: Option<&RunIdentity>,
    run: &PlanRun,
) -> Result<Plan, PlanError> {
    let mut plan = stream_plan(
        source.clone(),
        source.location(),
        Some(output),
        options,
        run,
    )
    .await?;
    plan.identity = identity.cloned();
    let body = serde_json::to_vec_pretty(&plan).expect("a plan serializes");
    let layout = OutputLayout::new(&output.uri());
    output
        .put(&output.relative(&layout.plan())?, Bytes::from(body))
        .await?;
    Ok(plan)
}

/// The plan of the run `identity` under `output`: the one already there if it is this run's (a
/// restarted run never re-plans), else a new one from [`create_plan`]; the flag tells whether it
/// was created now. An output overlapping the source is refused ([`check_locations`]), and so
/// are a plan of another run ([`check_identity`]) and, when there is no plan, a prefix holding
/// anything but a pomona run's own objects ([`foreign_children`]). A `_SUCCESS` left
/// by an earlier pass is removed before any shard starts, so that the output is never marked
/// complete while it is being re-run.
pub async fn load_or_create_plan(
    source: &Storage,
    output: &Storage,
    options: &PlanOptions,
    identity: &RunIdentity,
    run: &PlanRun,
) -> Result<(Plan, bool), PlanError> {
    check_locations(source, output)?;
    let identity = RunIdentity {
        source: plan_source(&source.uri()),
        ..identity.clone()
    };
    let layout = OutputLayout::new(&output.uri());
    let found = match output.exists(&output.relative(&layout.plan())?).await? {
        true => Some(read_plan(output).await?),
        false => None,
    };
    match &found {
        Some(plan) => check_identity(plan, &identity, layout.root())?,
        None => {
            let children = output.children("").await?;
            let foreign = foreign_children(&children);
            if !foreign.is_empty() {
                let mut found = foreign
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                if foreign.len() > 5 {
                    found.push_str(", …");
                }
                return Err(PlanError::OutputNotEmpty {
                    output: layout.root().to_string(),
                    found,
                });
            }
        }
    }
    output.delete(&output.relative(&layout.success())?).await?;
    Ok(match found {
        Some(plan) => (plan, false),
        None => (
            create_plan(source, output, options, Some(&identity), run).await?,
            true,
        ),
    })
}

/// Reads `manifests/plan.json` under `output`.
pub async fn read_plan(output: &Storage) -> Result<Plan, PlanError> {
    let uri = OutputLayout::new(&output.uri()).plan();
    let data = output.get(&output.relative(&uri)?).await?;
    let plan: Plan = serde_json::from_slice(&data).map_err(|e| PlanError::Corrupt {
        key: uri.clone(),
        reason: e.to_string(),
    })?;
    if plan.format != Plan::FORMAT {
        return Err(PlanError::Corrupt {
            key: uri,
            reason: format!(
                "plan format {} is not the supported {}",
                plan.format,
                Plan::FORMAT
            ),
        });
    }
    Ok(plan)
}

/// Reads the manifest of shard `shard` under `output`, checking it against `plan`.
pub async fn read_shard(
    output: &Storage,
    plan: &Plan,
    shard: u32,
) -> Result<Vec<ManifestEntry>, PlanError> {
    let uri = OutputLayout::new(&output.uri()).manifest(shard);
    if shard >= plan.shards {
        return Err(PlanError::Corrupt {
            key: uri,
            reason: format!("shard {shard} is past the plan's {} shards", plan.shards),
        });
    }
    let entries = from_jsonl(&uri, &output.get(&output.relative(&uri)?).await?)?;
    if entries.len() as u64 != plan.shard_len(shard) {
        return Err(PlanError::Corrupt {
            key: uri,
            reason: format!(
                "{} entries, the plan says {}",
                entries.len(),
                plan.shard_len(shard)
            ),
        });
    }
    Ok(entries)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
