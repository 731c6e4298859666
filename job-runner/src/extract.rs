//! `pomona extract`: one shard of a plan to its feature, dead-letter and statistics files.
//!
//! The model is read once per process ([`Extractor::load`]), and an ONNX Runtime session, once
//! opened, serves shard after shard; each shard streams through the
//! [`pipeline`](crate::pipeline) into scratch files, which are uploaded to their final keys only
//! when complete: features, then (with a reused PCA, [`Extractor::project_through`]) the
//! reduced vectors, then dead letters, then the PCA statistics, last, so that a shard whose
//! statistics exist is complete and is not redone by a rerun. A reduced file left by an earlier
//! extraction of the shard is deleted first, so that none outlives the features it was made
//! from.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use bytes::Bytes;
use pomona_crds::contract::{ManifestEntry, OutputLayout, Plan, Preprocessing, RunIdentity};
use pomona_storage::{ErrorKind, GetOptions, Storage, StorageError, plan::read_shard};

use crate::infer::{Model, ModelOptions, sha256_hex};
use crate::parquet_out::{DeadLetterWriter, FeatureWriter, Provenance};
use crate::pipeline::{
    self, Counts, FetchError, ImageSource, Input, PipelineOptions, Row, Sink, Written,
};
use crate::preprocess::Preprocess;
use crate::reduce::pca::{Origin, Pca};
use crate::reduce::project::{FeatureFile, project_file};
use crate::reuse::{self, Reuse, Reused};
use crate::stats::{Moments, ROWS_PER_UPDATE};
use crate::window::Bounds;
use crate::{Permanent, Threads};

/// Reads images from a [`Storage`], each only if it is still the object planned and not above
/// the size cap: an object missing, changed or too large is the image's problem (dead letter),
/// anything else that survives the retries stops the shard.
struct StorageSource {
    storage: Storage,
    max_bytes: u64,
}

impl ImageSource for StorageSource {
    async fn fetch(&self, key: &str, etag: Option<&str>) -> Result<Bytes, FetchError> {
        let options = GetOptions {
            if_match: etag,
            max_bytes: Some(self.max_bytes),
            range: None,
        };
        match self.storage.get_with(key, &options).await {
            Ok(bytes) => Ok(bytes),
            Err(e) => match e.kind() {
                ErrorKind::NotFound => Err(FetchError::Image(format!(
                    "object missing (deleted since it was listed): {}",
                    e.message()
                ))),
                ErrorKind::Changed | ErrorKind::TooLarge => {
                    Err(FetchError::Image(e.message().to_string()))
                }
                _ => Err(FetchError::Shard(Box::new(e))),
            },
        }
    }

    fn throttled(&self) -> u64 {
        self.storage.counts().throttled
    }
}

/// How a shard is read and batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Images per inference batch.
    pub batch_size: usize,
    /// Bounds of the fetches in flight.
    pub fetch: Bounds,
    /// Images larger than this are dead-lettered, from their listed size before any download
    /// (and a body found larger is cut there).
    pub max_image_bytes: u64,
}

pub use pomona_crds::contract::DEFAULT_MAX_IMAGE_BYTES;

/// Where the model file is: its folder's storage, its key there, and its URI for messages.
#[derive(Clone, Copy)]
pub struct ModelFile<'a> {
    /// Storage opened at the model's folder.
    pub storage: &'a Storage,
    /// The file's key in that storage.
    pub key: &'a str,
    /// The model URI as the user gave it.
    pub uri: &'a str,
}

/// The model and preprocessing of a run, loaded once per process.
pub struct Extractor {
    model_bytes: Bytes,
    /// Sessions not in use: the one opened by `load`, then those of finished shards, each kept
    /// for the next shard (opening a session and its first batches take a while).
    spare: std::sync::Mutex<Vec<Model>>,
    options: ModelOptions,
    preprocess: Arc<Preprocess>,
    provenance: Provenance,
    dim: usize,
    threads: Threads,
    tuning: Tuning,
    /// A reused PCA to project each shard through as it is written, and its file's sha256.
    projection: Option<(Pca, String)>,
}

/// What one shard did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardOutcome {
    /// Images in the shard's manifest.
    pub images: u64,
    /// Counts of features (copied ones included) and dead letters.
    pub counts: Counts,
    /// Of the features, those copied from previous runs (`--reuse-from`).
    pub reused: u64,
    /// The shard was already complete and was not redone.
    pub skipped: bool,
}

impl Extractor {
    /// Reads the model at `uri` (from `storage`, opened at the model's folder), checks its
    /// sha256 when one is expected, and opens an ONNX Runtime session to learn its shape.
    pub async fn load(
        model: &ModelFile<'_>,
        expected_sha256: Option<&str>,
        preprocess: Preprocess,
        options: ModelOptions,
        threads: Threads,
        tuning: Tuning,
    ) -> anyhow::Result<Self> {
        let ModelFile {
            storage: model_storage,
            key: model_key,
            uri: model_uri,
        } = *model;
        let model_bytes = model_storage
            .get(model_key)
            .await
            .with_context(|| format!("cannot read the model {model_uri}"))?;
        let sha256 = sha256_hex(&model_bytes);
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(Permanent(format!(
                "the model {model_uri} has sha256 {sha256}, not the expected {expected}"
            ))
            .into());
        }
        // One ONNX Runtime thread per session, and a session per inference thread: the decode
        // threads share the CPUs with inference, and a session of several threads then spends
        // its time spinning and waiting for a thread of its own that is descheduled (see the
        // README's Performance section).
        let options = ModelOptions {
            intra_threads: 1,
            input_size: Some((preprocess.height(), preprocess.width())),
            ..options
        };
        let model = Model::load(&model_bytes[..], options.clone())
            .map_err(|e| Permanent(format!("cannot open the model {model_uri}: {e}")))?;
        if model.layout() != preprocess.layout() {
            return Err(Permanent(format!(
                "the model {model_uri} takes {:?} input, the preprocessing writes {:?}",
                model.layout(),
                preprocess.layout()
            ))
            .into());
        }
        let provenance = Provenance {
            model_sha256: sha256,
            model_uri: model_uri.to_string(),
            preprocessing: describe(&preprocess),
            versions: format!(
                "pomona {}; onnxruntime {}",
                env!("CARGO_PKG_VERSION"),
                runtime_version()
            ),
        };
        Ok(Self {
            dim: model.feature_dim(),
            spare: std::sync::Mutex::new(vec![model]),
            model_bytes,
            options,
            preprocess: Arc::new(preprocess),
            provenance,
            threads,
            tuning,
            projection: None,
        })
    }

    /// Projects each shard through `pca` (whose file has sha256 `sha256`) as it is written:
    /// its `reduced/part-NNNNN.parquet` is the reduce step's, byte for byte, and the reduce
    /// step reads it instead of the features. For a reused PCA, checked by the caller against
    /// this extractor's model and preprocessing ([`crate::reduce::reusable_pca`]).
    pub fn project_through(mut self, pca: Pca, sha256: String) -> Self {
        self.projection = Some((pca, sha256));
        self
    }

    /// The provenance of the features, as the PCA records what it was fitted on.
    pub fn origin(&self) -> Origin {
        let p = &self.provenance;
        Origin {
            model_sha256: p.model_sha256.clone(),
            model_uri: p.model_uri.clone(),
            preprocessing: p.preprocessing.clone(),
            versions: p.versions.clone(),
        }
    }

    /// The feature dimension of the model.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The provenance written into every output.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// Refuses to extract for a plan made for another model or other preprocessing: its
    /// features would not be comparable with the run's other shards.
    pub fn check_identity(&self, identity: &RunIdentity) -> Result<(), Permanent> {
        let p = &self.preprocess;
        let planned = &identity.preprocessing;
        let mine = Preprocessing {
            input_name: self.options.input_name.clone(),
            output_name: self.options.output_name.clone(),
            width: p.width(),
            height: p.height(),
            layout: p.layout(),
            scale: f64::from(p.scale()),
            offset: f64::from(p.offset()),
            resize_filter: p.filter(),
        };
        // The extractor holds its scale and offset as f32: compare them at that precision.
        let same = Preprocessing {
            scale: planned.scale,
            offset: planned.offset,
            ..mine.clone()
        } == *planned
            && planned.scale as f32 == p.scale()
            && planned.offset as f32 == p.offset();
        if !self
            .provenance
            .model_sha256
            .eq_ignore_ascii_case(&identity.model_sha256)
        {
            return Err(Permanent(format!(
                "the run was planned for the model with sha256 {}, and this step's model {} has \
                 sha256 {}: every shard of a run must use the same model",
                identity.model_sha256, self.provenance.model_uri, self.provenance.model_sha256
            )));
        }
        if !same {
            return Err(Permanent(format!(
                "the run was planned with the preprocessing {planned:?}, and this step has \
                 {mine:?}: every shard of a run must be preprocessed the same way"
            )));
        }
        Ok(())
    }

    /// Extracts shard `shard` of `plan` from `source` into `output`, unless its outputs are
    /// already complete, copying the rows of the images `reuse` finds unchanged in previous
    /// runs. `done` counts the shard's images as they are written.
    #[allow(clippy::too_many_arguments)]
    pub async fn extract_shard(
        &self,
        source: &Storage,
        output: &Storage,
        plan: &Plan,
        shard: u32,
        scratch: &Path,
        done: Arc<AtomicU64>,
        reuse: Option<&Reuse>,
    ) -> anyhow::Result<ShardOutcome> {
        let layout = OutputLayout::new(&output.uri());
        if let Some(identity) = &plan.identity {
            self.check_identity(identity)?;
        }
        let images = plan.shard_len(shard);
        if shard_complete(output, &layout, shard).await? {
            let counts = Counts {
                processed: parquet_rows(output, &layout.features(shard)).await?,
                failed: parquet_rows(output, &layout.deadletter(shard)).await?,
            };
            done.fetch_add(images, std::sync::atomic::Ordering::Relaxed);
            return Ok(ShardOutcome {
                images,
                counts,
                reused: reuse::recorded(output, shard).await?,
                skipped: true,
            });
        }
        let entries = read_shard(output, plan, shard).await?;
        let found = match reuse {
            Some(reuse) => {
                let unstamped = entries.iter().filter(|e| e.etag.is_none()).count();
                if unstamped > 0 {
                    crate::say!(
                        "pomona: shard {shard}: {unstamped} of its {} images were listed \
                         without an ETag (the store gives none in its listings), so they cannot \
                         be matched to a previous run: they are extracted again",
                        entries.len()
                    );
                }
                reuse.find(&plan.source, &entries, self.dim).await?
            }
            None => Default::default(),
        };
        let (entries, reused) = reuse::split(&plan.source, entries, found);
        let copied = reused.len() as u64;
        done.fetch_add(copied, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix(&format!("pomona-shard-{shard}-"))
            .tempdir_in(scratch)
            .with_context(|| format!("cannot create scratch files in {}", scratch.display()))?;
        let sink = ShardSink::create(dir.path(), self.dim, &self.provenance, reused)?;
        let (extracted, sink) = if entries.is_empty() {
            (Counts::default(), sink)
        } else {
            self.run_pipeline(source, plan, entries, sink, done).await?
        };
        let counts = Counts {
            processed: extracted.processed + copied,
            failed: extracted.failed,
        };
        if counts.processed + counts.failed != images {
            return Err(Permanent(format!(
                "shard {shard}: {images} images listed but {} processed ({copied} of them \
                 reused) and {} dead-lettered",
                counts.processed, counts.failed
            ))
            .into());
        }
        let (features, deadletter, stats) = sink.finish()?;
        // A reduced file made from the shard's earlier features never outlives them.
        output
            .delete_prefix(&output.relative(&layout.reduced(shard))?)
            .await?;
        output
            .put_file(&output.relative(&layout.features(shard))?, &features)
            .await?;
        if let Some((pca, sha256)) = &self.projection {
            let file =
                FeatureFile::open_local(&features).context("cannot read back the features")?;
            let reduced = project_file(file, pca, sha256, |_, _| Ok(())).await?;
            output
                .put(
                    &output.relative(&layout.reduced(shard))?,
                    Bytes::from(reduced),
                )
                .await?;
        }
        upload(output, &layout.deadletter(shard), &deadletter).await?;
        let from = reuse.map(Reuse::sources).unwrap_or_default();
        reuse::record(output, shard, copied, &from).await?;
        output
            .put(&output.relative(&layout.stats(shard))?, Bytes::from(stats))
            .await?;
        Ok(ShardOutcome {
            images,
            counts,
            reused: copied,
            skipped: false,
        })
    }

    /// Runs the pipeline over `entries` into `sink`.
    async fn run_pipeline(
        &self,
        source: &Storage,
        plan: &Plan,
        entries: Vec<ManifestEntry>,
        sink: ShardSink,
        done: Arc<AtomicU64>,
    ) -> anyhow::Result<(Counts, ShardSink)> {
        let mut models = Vec::with_capacity(self.threads.inference);
        while models.len() < self.threads.inference {
            let spare = self.spare.lock().expect("not poisoned").pop();
            models.push(match spare {
                Some(model) => model,
                None => Model::load(&self.model_bytes[..], self.options.clone())?,
            });
        }
        let options = PipelineOptions {
            batch_size: self.tuning.batch_size,
            fetch: self.tuning.fetch,
            max_image_bytes: self.tuning.max_image_bytes,
            decode_threads: self.threads.decode,
        };
        let input = Input {
            entries,
            root: plan.source.clone(),
            source: Arc::new(StorageSource {
                storage: source.clone(),
                max_bytes: self.tuning.max_image_bytes,
            }),
        };
        let (counts, sink, models) =
            pipeline::run(input, self.preprocess.clone(), models, sink, options, done).await?;
        self.spare.lock().expect("not poisoned").extend(models);
        Ok((counts, sink))
    }
}

/// Writes the dead-letter file of shard `shard` of `plan` for a shard that has no output
/// because its pods failed for good: every image of its manifest, each with `reason`, in the
/// extractor's dead-letter file and format. Returns how many images it holds.
pub async fn dead_letter_shard(
    output: &Storage,
    plan: &Plan,
    shard: u32,
    reason: &str,
    provenance: &Provenance,
) -> anyhow::Result<u64> {
    let layout = OutputLayout::new(&output.uri());
    let entries = read_shard(output, plan, shard).await?;
    let mut writer = DeadLetterWriter::new(Vec::new(), provenance)?;
    for entry in entries {
        let row = Row::listed(&plan.source, entry);
        writer.push(&row.path, reason, row.bytes)?;
    }
    let rows = writer.rows();
    output
        .put(
            &output.relative(&layout.deadletter(shard))?,
            Bytes::from(writer.finish()?),
        )
        .await?;
    Ok(rows)
}

async fn upload(output: &Storage, uri: &str, file: &Path) -> anyhow::Result<()> {
    let data = tokio::fs::read(file)
        .await
        .with_context(|| format!("cannot read back {}", file.display()))?;
    output
        .put(&output.relative(uri)?, Bytes::from(data))
        .await?;
    Ok(())
}

/// Rows of a Parquet object, from its footer.
async fn parquet_rows(output: &Storage, uri: &str) -> anyhow::Result<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let data = output.get(&output.relative(uri)?).await?;
    let reader = SerializedFileReader::new(data)
        .with_context(|| format!("{uri} is not a readable Parquet file"))?;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}

/// Whether every output of `shard` is in place (the statistics are written last).
pub async fn shard_complete(
    output: &Storage,
    layout: &OutputLayout,
    shard: u32,
) -> Result<bool, StorageError> {
    for uri in [
        layout.stats(shard),
        layout.features(shard),
        layout.deadletter(shard),
    ] {
        if !output.exists(&output.relative(&uri)?).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The writer side of a shard: Parquet files in a scratch folder and the PCA statistics. Rows
/// copied from previous runs are written at their manifest positions between the extracted
/// ones, so the files and the statistics are those of a shard extracted whole.
struct ShardSink {
    /// Feature rows not yet in the statistics: fewer than [`ROWS_PER_UPDATE`], so that the
    /// statistics are added in the same groups of rows whatever the batches and the copies.
    pending: Vec<f32>,
    features: FeatureWriter<BufWriter<File>>,
    deadletter: DeadLetterWriter<BufWriter<File>>,
    moments: Moments,
    features_path: std::path::PathBuf,
    deadletter_path: std::path::PathBuf,
    /// Rows to copy, in manifest order.
    reused: VecDeque<Reused>,
    /// Manifest position of the next row.
    position: usize,
}

impl ShardSink {
    fn create(
        dir: &Path,
        dim: usize,
        provenance: &Provenance,
        reused: VecDeque<Reused>,
    ) -> anyhow::Result<Self> {
        let features_path = dir.join("features.parquet");
        let deadletter_path = dir.join("deadletter.parquet");
        let open = |p: &Path| -> anyhow::Result<BufWriter<File>> {
            Ok(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create {}", p.display())
            })?))
        };
        Ok(Self {
            features: FeatureWriter::new(open(&features_path)?, dim, provenance)?,
            deadletter: DeadLetterWriter::new(open(&deadletter_path)?, provenance)?,
            moments: Moments::new(dim),
            pending: Vec::with_capacity(ROWS_PER_UPDATE * dim),
            features_path,
            deadletter_path,
            reused,
            position: 0,
        })
    }

    /// Writes one row with features and counts it in the statistics.
    fn feature_row(&mut self, row: &Row, features: &[f32]) -> anyhow::Result<()> {
        self.features
            .push(&row.path, &row.label, row.etag.as_deref(), features)?;
        self.pending.extend_from_slice(features);
        if self.pending.len() == ROWS_PER_UPDATE * self.moments.dim() {
            self.moments.add_rows(&self.pending);
            self.pending.clear();
        }
        self.position += 1;
        Ok(())
    }

    /// Writes the copied rows due before the next extracted one (all of them at the end).
    fn copy_due(&mut self, all: bool) -> anyhow::Result<()> {
        while let Some(next) = self.reused.front() {
            if !all && next.position != self.position {
                break;
            }
            let next = self.reused.pop_front().expect("a front");
            self.feature_row(&next.row, &next.features)?;
        }
        Ok(())
    }

    /// Closes the files; returns their paths and the statistics file's bytes.
    fn finish(mut self) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, Vec<u8>)> {
        use std::io::Write;
        self.copy_due(true)?;
        self.moments.add_rows(&self.pending);
        self.features.finish()?.flush()?;
        self.deadletter.finish()?.flush()?;
        Ok((
            self.features_path,
            self.deadletter_path,
            self.moments.to_bytes(),
        ))
    }
}

impl Sink for ShardSink {
    fn write(&mut self, batch: Written<'_>) -> anyhow::Result<()> {
        let dim = self.moments.dim();
        let mut next = 0;
        for (row, failure) in batch.rows.iter().zip(batch.failures) {
            self.copy_due(false)?;
            match failure {
                Some(reason) => {
                    self.deadletter.push(&row.path, reason, row.bytes)?;
                    self.position += 1;
                }
                None => {
                    let features = &batch.features[next * dim..(next + 1) * dim];
                    self.feature_row(row, features)?;
                    next += 1;
                }
            }
        }
        Ok(())
    }
}

/// The preprocessing as JSON, recorded in every output file so that features are only ever
/// compared with features made the same way.
pub fn describe(p: &Preprocess) -> String {
    serde_json::json!({
        "width": p.width(),
        "height": p.height(),
        "layout": format!("{:?}", p.layout()).to_uppercase(),
        "scale": p.scale(),
        "offset": p.offset(),
        "resize": p.filter().as_arg(),
        "color": "RGB",
        "alpha": "composited over white",
        "exifOrientation": true,
    })
    .to_string()
}

/// The ONNX Runtime release in use (`rel-1.32.0`), once the runtime is initialised.
pub fn runtime_version() -> String {
    ort::info()
        .split(',')
        .find_map(|part| part.trim().strip_prefix("git-branch="))
        .unwrap_or("unknown")
        .to_string()
}
