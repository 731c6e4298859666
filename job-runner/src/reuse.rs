//! `--reuse-from`: the features of previous runs, copied into this run for the images that have
//! not changed since.
//!
//! An image of this run is one a previous run already extracted when its URI (the plan's source
//! and the image's key) is the same and the ETag (S3's, or a local file's stamp) and size it was
//! listed with are the ones the previous run's manifest recorded. Feature rows carry the path
//! and the ETag but not the size, so the match is made on the previous run's manifests; the
//! vector then comes from the feature file of the same shard (an image the previous run
//! dead-lettered has no row there, and is extracted again).
//!
//! The copied row is this run's own: path, label and ETag from this run's manifest, the vector
//! from the previous run. The inference of one image does not depend on the batch it is in, so
//! the row is the one a fresh run writes, bit for bit, and the shard's statistics (added in
//! manifest order, [`crate::stats::ROWS_PER_UPDATE`] rows at a time) are too.
//!
//! Read, decide, act: [`Reuse::open`] reads the previous runs' plans and refuses one made with
//! another model or preprocessing ([`compatible`]); [`Reuse::find`] reads the manifests and
//! dead letters of their complete shards (once per process) and the feature files of the shards
//! holding matches ([`same_object`] decides); [`split`] parts a shard into the images to
//! extract and the rows to copy. A previous shard that never completed lends nothing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use anyhow::Context;
use arrow_array::{Array, StringArray};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_crds::contract::{ManifestEntry, OutputLayout, Plan, RunIdentity};
use pomona_storage::plan::{overlap, read_plan, read_shard};
use pomona_storage::{ErrorKind, S3Config, Storage};
use serde::{Deserialize, Serialize};

use crate::pipeline::Row;
use crate::reduce::project::FeatureFile;
use crate::{Permanent, Usage};

/// Manifests of previous runs read at once.
const MANIFESTS_IN_FLIGHT: usize = 16;

/// A previous run whose features may be copied.
struct Previous {
    storage: Storage,
    plan: Plan,
}

/// A complete shard of a previous run: its run (index and plan), number, manifest and the paths
/// it dead-lettered.
type CompleteShard<'a> = (
    usize,
    &'a Previous,
    u32,
    Vec<ManifestEntry>,
    HashSet<String>,
);

/// Where a previous run recorded an image: its run (index in `--reuse-from` order), its shard,
/// and the size and ETag it was listed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prior {
    /// Index of the previous run.
    pub run: usize,
    /// The shard of that run holding the image.
    pub shard: u32,
    /// Size in bytes when that run listed it.
    pub size: u64,
    /// ETag or stamp when that run listed it.
    pub etag: String,
}

/// The previous runs of `--reuse-from`, opened and checked.
pub struct Reuse {
    previous: Vec<Previous>,
    /// Every image of the previous runs, by URI (the first run named wins), read on first use.
    index: tokio::sync::OnceCell<HashMap<String, Prior>>,
}

/// A row copied from a previous run, at its position in this run's shard manifest.
#[derive(Clone, Debug)]
pub struct Reused {
    /// Position in the shard's manifest.
    pub position: usize,
    /// This run's row (path, label, ETag).
    pub row: Row,
    /// The previous run's vector.
    pub features: Vec<f32>,
}

/// What `reuse/part-NNNNN.json` records: how many of the shard's feature rows were copied, and
/// from which runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReuseRecord {
    /// Rows copied.
    pub reused: u64,
    /// The previous runs' output prefixes, as `--reuse-from` named them.
    pub from: Vec<String>,
}

/// Whether a previous run (at `uri`, of identity `theirs`) made features this run (`ours`) may
/// copy: the same model file and the same preprocessing. Else, why not.
pub fn compatible(
    uri: &str,
    theirs: Option<&RunIdentity>,
    ours: &RunIdentity,
) -> Result<(), String> {
    let Some(theirs) = theirs else {
        return Err(format!(
            "cannot reuse the features of {uri}: its plan records no run identity (it was \
             planned before pomona recorded one), so its model and preprocessing are unknown"
        ));
    };
    if !theirs.model_sha256.eq_ignore_ascii_case(&ours.model_sha256) {
        return Err(format!(
            "cannot reuse the features of {uri}: they were made with the model of sha256 {}, \
             this run uses the model of sha256 {}",
            theirs.model_sha256, ours.model_sha256
        ));
    }
    if theirs.preprocessing != ours.preprocessing {
        return Err(format!(
            "cannot reuse the features of {uri}: they were made with the preprocessing {:?}, \
             this run uses {:?}",
            theirs.preprocessing, ours.preprocessing
        ));
    }
    Ok(())
}

/// Whether this run's manifest entry is the object a previous run recorded as `prior` (same
/// URI, checked by the caller): same ETag and size. An entry without an ETag never matches.
pub fn same_object(entry: &ManifestEntry, prior: &Prior) -> bool {
    entry.etag.as_deref() == Some(prior.etag.as_str()) && entry.size == prior.size
}

/// Parts a shard's `entries` (keys relative to `source`) into the entries to extract and the
/// rows to copy, given the vectors `found` by manifest position. Both keep manifest order.
pub fn split(
    source: &str,
    entries: Vec<ManifestEntry>,
    mut found: BTreeMap<usize, Vec<f32>>,
) -> (Vec<ManifestEntry>, VecDeque<Reused>) {
    let mut extract = Vec::with_capacity(entries.len() - found.len().min(entries.len()));
    let mut reused = VecDeque::with_capacity(found.len());
    for (position, entry) in entries.into_iter().enumerate() {
        match found.remove(&position) {
            Some(features) => reused.push_back(Reused {
                position,
                row: Row::listed(source, entry),
                features,
            }),
            None => extract.push(entry),
        }
    }
    (extract, reused)
}

impl Reuse {
    /// Opens the previous runs at `uris` for a run of identity `ours` writing to `output`:
    /// reads their plans and refuses (with the reason) one that overlaps the output, that has
    /// no plan, or that was made with another model or preprocessing.
    pub async fn open(
        uris: &[String],
        s3: &S3Config,
        ours: &RunIdentity,
        output: &Storage,
    ) -> anyhow::Result<Self> {
        let mut previous = Vec::with_capacity(uris.len());
        for uri in uris {
            let storage = Storage::open(uri, s3)
                .await
                .with_context(|| format!("--reuse-from {uri}"))?;
            if overlap(storage.location(), output.location()) {
                return Err(Usage(format!(
                    "--reuse-from {uri} overlaps the output {}: name previous runs' outputs, \
                     not this run's",
                    output.uri()
                ))
                .into());
            }
            let plan = read_plan(&storage)
                .await
                .with_context(|| format!("cannot read the run to reuse, {uri}"))?;
            compatible(uri, plan.identity.as_ref(), ours).map_err(Permanent)?;
            previous.push(Previous { storage, plan });
        }
        Ok(Self {
            previous,
            index: tokio::sync::OnceCell::new(),
        })
    }

    /// The previous runs' output prefixes.
    pub fn sources(&self) -> Vec<String> {
        self.previous.iter().map(|p| p.storage.uri()).collect()
    }

    /// Reads the manifests and dead letters of the previous runs' complete shards (those with a
    /// dead-letter file, uploaded after the features) into one index, by image URI, of the
    /// images they turned into features.
    async fn build_index(&self) -> anyhow::Result<HashMap<String, Prior>> {
        let shards = self
            .previous
            .iter()
            .enumerate()
            .flat_map(|(run, p)| (0..p.plan.shards).map(move |shard| (run, p, shard)));
        let manifests: Vec<CompleteShard<'_>> = futures::stream::iter(shards)
            .map(|(run, p, shard)| async move {
                let layout = OutputLayout::new(&p.storage.uri());
                let context = || format!("the run to reuse, {}", p.storage.uri());
                let dead = match get_if_present(&p.storage, &layout.deadletter(shard)).await? {
                    Some(data) => dead_letter_paths(data)
                        .with_context(|| layout.deadletter(shard))
                        .with_context(context)?,
                    None => return anyhow::Ok(None), // never completed
                };
                let entries = read_shard(&p.storage, &p.plan, shard)
                    .await
                    .with_context(context)?;
                anyhow::Ok(Some((run, p, shard, entries, dead)))
            })
            .buffered(MANIFESTS_IN_FLIGHT)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await?;
        let mut index = HashMap::new();
        for (run, p, shard, entries, dead) in manifests {
            for entry in entries {
                let path = format!("{}{}", p.plan.source, entry.key);
                let Some(etag) = entry.etag else { continue };
                if dead.contains(&path) {
                    continue;
                }
                index.entry(path).or_insert(Prior {
                    run,
                    shard,
                    size: entry.size,
                    etag,
                });
            }
        }
        Ok(index)
    }

    /// How many of `entries` (keys relative to `source`) are unchanged images the previous runs
    /// turned into features: what [`Self::find`] will copy.
    pub async fn count(&self, source: &str, entries: &[ManifestEntry]) -> anyhow::Result<u64> {
        let index = self.index.get_or_try_init(|| self.build_index()).await?;
        Ok(entries
            .iter()
            .filter(|entry| prior_of(index, source, entry).is_some())
            .count() as u64)
    }

    /// How many images of the run planned in `output` are unchanged images the previous runs
    /// turned into features (the images the run will copy rather than extract).
    pub async fn count_plan(&self, output: &Storage, plan: &Plan) -> anyhow::Result<u64> {
        let mut unchanged = 0;
        for shard in 0..plan.shards {
            let entries = read_shard(output, plan, shard).await?;
            unchanged += self.count(&plan.source, &entries).await?;
        }
        Ok(unchanged)
    }

    /// The vectors of `dim` values the previous runs hold for `entries` (keys relative to
    /// `source`), by position in `entries`: for each image that is the same object as one a
    /// previous run turned into features.
    pub async fn find(
        &self,
        source: &str,
        entries: &[ManifestEntry],
        dim: usize,
    ) -> anyhow::Result<BTreeMap<usize, Vec<f32>>> {
        let index = self.index.get_or_try_init(|| self.build_index()).await?;
        let mut wanted: BTreeMap<(usize, u32), HashMap<String, usize>> = BTreeMap::new();
        for (position, entry) in entries.iter().enumerate() {
            if let Some(prior) = prior_of(index, source, entry) {
                wanted
                    .entry((prior.run, prior.shard))
                    .or_default()
                    .insert(format!("{source}{}", entry.key), position);
            }
        }
        let mut found = BTreeMap::new();
        for ((run, shard), paths) in wanted {
            let previous = &self.previous[run];
            let uri = OutputLayout::new(&previous.storage.uri()).features(shard);
            let key = previous.storage.relative(&uri)?;
            let file = match FeatureFile::open_stored(&previous.storage, &key).await {
                Ok(file) => file,
                Err(e) if crate::stored_parquet::is_not_found(&e) => {
                    return Err(Permanent(format!(
                        "{uri} is gone: the run to reuse lost the features of a complete shard"
                    ))
                    .into());
                }
                Err(e) => return Err(e.context(format!("{uri} is not a readable feature file"))),
            };
            if file.dim != dim {
                return Err(Permanent(format!(
                    "{uri} holds {}-value features, this run's model gives {dim}",
                    file.dim
                ))
                .into());
            }
            let mut batches = file.next_batches()?;
            while let Some(batch) = batches.next().await {
                let batch = batch.with_context(|| format!("cannot read {uri}"))?;
                for (i, path) in batch.paths.iter().enumerate() {
                    if let Some(&position) = path.and_then(|p| paths.get(p)) {
                        found.insert(position, batch.values[i * dim..(i + 1) * dim].to_vec());
                    }
                }
            }
        }
        Ok(found)
    }
}

/// Where the previous runs hold the features of `entry` (key relative to `source`), when it is
/// the same object.
fn prior_of<'a>(
    index: &'a HashMap<String, Prior>,
    source: &str,
    entry: &ManifestEntry,
) -> Option<&'a Prior> {
    index
        .get(&format!("{source}{}", entry.key))
        .filter(|prior| same_object(entry, prior))
}

/// The image paths of a dead-letter file.
fn dead_letter_paths(data: Bytes) -> anyhow::Result<HashSet<String>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)?.build()?;
    let mut paths = HashSet::new();
    for batch in reader {
        let batch = batch?;
        let column = batch
            .column_by_name("path")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .context("not a dead-letter file: no utf8 path column")?;
        paths.extend(column.iter().flatten().map(str::to_string));
    }
    Ok(paths)
}

async fn get_if_present(storage: &Storage, uri: &str) -> anyhow::Result<Option<Bytes>> {
    match storage.get(&storage.relative(uri)?).await {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records that shard `shard` of the run at `output` copied `reused` rows from `from`, or
/// removes the record of an earlier attempt when it copied none.
pub async fn record(
    output: &Storage,
    shard: u32,
    reused: u64,
    from: &[String],
) -> anyhow::Result<()> {
    let key = output.relative(&OutputLayout::new(&output.uri()).reuse(shard))?;
    if reused == 0 {
        output.delete(&key).await?;
        return Ok(());
    }
    let record = ReuseRecord {
        reused,
        from: from.to_vec(),
    };
    let json = serde_json::to_vec(&record).expect("a record serializes");
    output.put(&key, Bytes::from(json)).await?;
    Ok(())
}

/// The rows shard `shard` of the run at `output` copied from previous runs (0 without a record).
pub async fn recorded(output: &Storage, shard: u32) -> anyhow::Result<u64> {
    let uri = OutputLayout::new(&output.uri()).reuse(shard);
    let Some(data) = get_if_present(output, &uri).await? else {
        return Ok(0);
    };
    let record: ReuseRecord = serde_json::from_slice(&data)
        .map_err(|e| Permanent(format!("{uri} is not a reuse record: {e}")))?;
    Ok(record.reused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomona_crds::LabelMode;
    use pomona_crds::contract::Preprocessing;

    fn identity() -> RunIdentity {
        RunIdentity {
            run_uid: None,
            source: "s3://b/images/".into(),
            include: vec!["*.jpg".into()],
            label: LabelMode::ParentDirectory,
            model_sha256: "ab".repeat(32),
            preprocessing: Preprocessing {
                input_name: "input".into(),
                output_name: "features".into(),
                width: 224,
                height: 224,
                layout: pomona_crds::TensorLayout::NHWC,
                scale: 1.0 / 127.5,
                offset: -1.0,
                resize_filter: Default::default(),
            },
            images_per_shard: 2000,
        }
    }

    #[test]
    fn only_a_run_of_the_same_model_and_preprocessing_lends_its_features() {
        let ours = identity();
        // Another source, shard size, label mode or resource: the features are still the same.
        let other_run = RunIdentity {
            run_uid: Some("uid-1".into()),
            source: "s3://b/older/".into(),
            label: LabelMode::None,
            images_per_shard: 500,
            model_sha256: "AB".repeat(32),
            ..identity()
        };
        assert_eq!(compatible("s3://b/w47/", Some(&other_run), &ours), Ok(()));

        let model = RunIdentity {
            model_sha256: "cd".repeat(32),
            ..identity()
        };
        let why = compatible("s3://b/w47/", Some(&model), &ours).unwrap_err();
        assert!(
            why.contains("s3://b/w47/") && why.contains(&"cd".repeat(32)),
            "{why}"
        );

        let mut size = identity();
        size.preprocessing.width = 160;
        let why = compatible("s3://b/w47/", Some(&size), &ours).unwrap_err();
        assert!(
            why.contains("preprocessing") && why.contains("160"),
            "{why}"
        );

        let mut filter = identity();
        filter.preprocessing.resize_filter = pomona_crds::ResizeFilter::Nearest;
        assert!(compatible("s3://b/w47/", Some(&filter), &ours).is_err());

        let why = compatible("s3://b/w47/", None, &ours).unwrap_err();
        assert!(why.contains("no run identity"), "{why}");
    }

    #[test]
    fn an_image_is_the_same_only_with_its_etag_and_size() {
        let entry = |size, etag: Option<&str>| ManifestEntry {
            key: "Banana/1.jpg".into(),
            size,
            etag: etag.map(str::to_string),
            label: "Banana".into(),
        };
        let prior = Prior {
            run: 0,
            shard: 3,
            size: 100,
            etag: "\"e1\"".into(),
        };
        assert!(same_object(&entry(100, Some("\"e1\"")), &prior));
        assert!(!same_object(&entry(101, Some("\"e1\"")), &prior));
        assert!(!same_object(&entry(100, Some("\"e2\"")), &prior));
        assert!(!same_object(&entry(100, None), &prior));
    }

    #[test]
    fn a_shard_splits_into_images_to_extract_and_rows_to_copy_in_order() {
        let entries: Vec<ManifestEntry> = (0..5)
            .map(|i| ManifestEntry {
                key: format!("F/{i}.jpg"),
                size: i,
                etag: Some(format!("e{i}")),
                label: "F".into(),
            })
            .collect();
        let found = BTreeMap::from([(1, vec![1.0, 1.5]), (4, vec![4.0, 4.5])]);
        let (extract, reused) = split("s3://b/in/", entries, found);
        let keys: Vec<&str> = extract.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["F/0.jpg", "F/2.jpg", "F/3.jpg"]);
        let copied: Vec<(usize, &str, &[f32])> = reused
            .iter()
            .map(|r| (r.position, r.row.path.as_str(), r.features.as_slice()))
            .collect();
        assert_eq!(
            copied,
            [
                (1, "s3://b/in/F/1.jpg", &[1.0, 1.5][..]),
                (4, "s3://b/in/F/4.jpg", &[4.0, 4.5][..])
            ]
        );
        assert_eq!(reused[1].row.etag.as_deref(), Some("e4"));
        assert_eq!(reused[1].row.label, "F");
    }
}
