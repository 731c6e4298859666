//! The extractor's pipeline: fetch → decode and preprocess → batched inference → write.
//!
//! ```text
//!  fetch tasks (in manifest order; as many in flight as the adaptive window allows, see
//!  `window`, within a byte budget; images listed above the size cap are not fetched)
//!    └─ decode + resize + normalise on blocking threads (at most `decode_threads` at once)
//!         └─ batches of `batch_size`, dealt in turn ──chan(1) each──► inference threads (one
//!              single-threaded ONNX Runtime session each; vectors with NaN or infinity become
//!              dead letters)
//!              └──chan(1) each, taken in the same turn──► writer thread
//!                                                   (Parquet, dead letters, PCA statistics)
//! ```
//!
//! Every stage is bounded, so a slow stage holds back the ones before it (backpressure) and memory
//! stays flat whatever the shard size: the fetched bodies within the byte budget, twice
//! `decode_threads` decoded images, and two batches per inference thread and one more being
//! filled exist at once. The model, the slowest stage, always has the next batch ready. Rows keep
//! their manifest order. An image that cannot
//! be fetched as an image (missing, changed since planning, too large, corrupt or absurd file)
//! becomes a dead letter with its reason and never stops the shard; a failure of the pipeline
//! itself (the model, the writer, storage after its retries) stops it with an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use pomona_crds::contract::ManifestEntry;
use tokio::sync::{Semaphore, mpsc};

use crate::fetch::Fetcher;
use crate::finite;
use crate::infer::Model;
use crate::preprocess::Preprocess;
use crate::window::Bounds;

/// Why an image's bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// This image only: it goes to the dead-letter output with the reason.
    #[error("{0}")]
    Image(String),
    /// The shard cannot go on (storage unreachable after retries, access denied…).
    #[error(transparent)]
    Shard(Box<dyn std::error::Error + Send + Sync>),
}

/// Where the pipeline reads images from.
pub trait ImageSource: Send + Sync + 'static {
    /// The bytes of the image at `key` (relative to the source), which had `etag` (ETag or
    /// stamp) when it was planned.
    fn fetch(
        &self,
        key: &str,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Bytes, FetchError>> + Send;

    /// Requests throttled by the source so far (it slows the fetches down).
    fn throttled(&self) -> u64 {
        0
    }
}

/// One image of the shard, as the writer sees it.
#[derive(Clone, Debug)]
pub struct Row {
    /// Full URI of the image.
    pub path: String,
    /// Its label.
    pub label: String,
    /// Its ETag when listed.
    pub etag: Option<String>,
    /// Its size in bytes when listed.
    pub bytes: u64,
}

impl Row {
    /// The row of a manifest entry whose key is relative to the source URI `root`.
    pub fn listed(root: &str, entry: ManifestEntry) -> Self {
        Self {
            path: format!("{root}{}", entry.key),
            label: entry.label,
            etag: entry.etag,
            bytes: entry.size,
        }
    }
}

/// What the writer receives: rows in manifest order, each with features or a dead-letter reason.
pub struct Written<'a> {
    /// The rows of one batch.
    pub rows: &'a [Row],
    /// For each row, `None` if it has features, else why it failed.
    pub failures: &'a [Option<String>],
    /// The features of the rows that have some, one after the other (`dim` values each).
    pub features: &'a [f32],
}

/// Receives the pipeline's output on the writer thread.
pub trait Sink: Send {
    /// Takes one batch.
    fn write(&mut self, batch: Written<'_>) -> anyhow::Result<()>;
}

/// Tuning of the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct PipelineOptions {
    /// Images per inference batch.
    pub batch_size: usize,
    /// Bounds of the fetches in flight.
    pub fetch: Bounds,
    /// Images listed larger than this are dead-lettered without being fetched.
    pub max_image_bytes: u64,
    /// Images being decoded at once.
    pub decode_threads: usize,
}

/// Counts of a finished pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Images turned into features.
    pub processed: u64,
    /// Images dead-lettered.
    pub failed: u64,
}

struct Batch {
    rows: Vec<Row>,
    failures: Vec<Option<String>>,
    tensor: Vec<f32>,
    ok: usize,
}

struct Inferred {
    rows: Vec<Row>,
    failures: Vec<Option<String>>,
    features: Vec<f32>,
}

/// The images a pipeline reads.
pub struct Input<S> {
    /// The images, with keys relative to `root`.
    pub entries: Vec<ManifestEntry>,
    /// The source URI the keys are relative to (ends with `/`).
    pub root: String,
    /// Where the bytes come from.
    pub source: Arc<S>,
}

/// Runs the pipeline over the input's images, feeding `sink`, with one inference thread per
/// model (at least one). `done` counts images as they are written, for progress reports. Gives
/// the sink and the models back, for the next shard.
pub async fn run<S: ImageSource, K: Sink + 'static>(
    input: Input<S>,
    preprocess: Arc<Preprocess>,
    models: Vec<Model>,
    mut sink: K,
    options: PipelineOptions,
    done: Arc<AtomicU64>,
) -> anyhow::Result<(Counts, K, Vec<Model>)> {
    anyhow::ensure!(!models.is_empty(), "the pipeline needs a model");
    let batch_size = options.batch_size.max(1);
    let per_image = preprocess.tensor_len();
    // Batch k goes to inference thread k mod n and the writer takes its result from there, so
    // rows keep their order. Per thread, one batch waits while the model runs another: enough
    // to keep it busy; every extra slot would only cost a batch of memory (19 MiB at 32×224²).
    let mut batch_txs = Vec::with_capacity(models.len());
    let mut out_rxs = Vec::with_capacity(models.len());
    let mut infers = Vec::with_capacity(models.len());
    for (i, mut model) in models.into_iter().enumerate() {
        let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(1);
        let (out_tx, out_rx) = mpsc::channel::<Inferred>(1);
        batch_txs.push(batch_tx);
        out_rxs.push(out_rx);
        infers.push(
            std::thread::Builder::new()
                .name(format!("pomona-infer-{i}"))
                .spawn(move || -> anyhow::Result<Model> {
                    while let Some(mut batch) = batch_rx.blocking_recv() {
                        let mut features = model.run(&batch.tensor, batch.ok)?.to_vec();
                        let dim = features.len() / batch.ok.max(1);
                        finite::screen(&mut batch.failures, &mut features, dim);
                        let message = Inferred {
                            rows: batch.rows,
                            failures: batch.failures,
                            features,
                        };
                        if out_tx.blocking_send(message).is_err() {
                            break; // the writer stopped; its error is reported
                        }
                    }
                    Ok(model)
                })?,
        );
    }

    let writer_done = done.clone();
    let writer = std::thread::Builder::new()
        .name("pomona-write".into())
        .spawn(move || -> anyhow::Result<(Counts, K)> {
            let mut counts = Counts::default();
            // The batches' turn; a thread that has no next batch (the input is done, or the
            // thread stopped on an error, reported) ends the output.
            for turn in (0..out_rxs.len()).cycle() {
                let Some(out) = out_rxs[turn].blocking_recv() else {
                    break;
                };
                let failed = out.failures.iter().filter(|f| f.is_some()).count() as u64;
                sink.write(Written {
                    rows: &out.rows,
                    failures: &out.failures,
                    features: &out.features,
                })?;
                counts.failed += failed;
                counts.processed += out.rows.len() as u64 - failed;
                writer_done.fetch_add(out.rows.len() as u64, Ordering::Relaxed);
            }
            Ok((counts, sink))
        })?;

    let decode_threads = options.decode_threads.max(1);
    let decode_slots = Arc::new(Semaphore::new(decode_threads));
    let Input {
        entries,
        root,
        source,
    } = input;
    let rows: Vec<Row> = entries
        .into_iter()
        .map(|entry| Row::listed(&root, entry))
        .collect();
    let fetcher = Fetcher::new(
        source,
        root.len(),
        rows,
        options.fetch,
        options.max_image_bytes,
    );
    let fetched = futures::stream::unfold(fetcher, |mut f| async move {
        f.next().await.map(|item| (item, f))
    });
    let mut images = fetched
        .map(|(row, fetched)| {
            let preprocess = preprocess.clone();
            let slots = decode_slots.clone();
            async move {
                let bytes = match fetched {
                    Ok(bytes) => bytes,
                    Err(FetchError::Image(reason)) => return Ok((row, Err(reason))),
                    Err(FetchError::Shard(e)) => return Err(anyhow::anyhow!(e)),
                };
                let _slot = slots.acquire_owned().await?;
                let tensor = tokio::task::spawn_blocking(move || {
                    let image = preprocess.decode(&bytes).map_err(|e| e.to_string())?;
                    let mut tensor = vec![0f32; preprocess.tensor_len()];
                    preprocess.to_tensor(&image, &mut tensor);
                    Ok::<_, String>(tensor)
                })
                .await?;
                anyhow::Ok((row, tensor))
            }
        })
        .buffered(2 * decode_threads)
        .boxed();

    let new_batch = || Batch {
        rows: Vec::with_capacity(batch_size),
        failures: Vec::with_capacity(batch_size),
        tensor: Vec::with_capacity(batch_size * per_image),
        ok: 0,
    };
    let mut batch = new_batch();
    let mut batches = 0;
    let mut feed_error = None;
    while let Some(item) = images.next().await {
        let (row, outcome) = match item {
            Ok(item) => item,
            Err(e) => {
                feed_error = Some(e);
                break;
            }
        };
        batch.rows.push(row);
        match outcome {
            Ok(tensor) => {
                batch.tensor.extend_from_slice(&tensor);
                batch.ok += 1;
                batch.failures.push(None);
            }
            Err(reason) => batch.failures.push(Some(reason)),
        }
        if batch.rows.len() == batch_size {
            let full = std::mem::replace(&mut batch, new_batch());
            let turn = batches % batch_txs.len();
            batches += 1;
            if batch_txs[turn].send(full).await.is_err() {
                break; // inference stopped; its error is reported below
            }
        }
    }
    if feed_error.is_none() && !batch.rows.is_empty() {
        let _ = batch_txs[batches % batch_txs.len()].send(batch).await;
    }
    drop(batch_txs);

    let infer_results = tokio::task::spawn_blocking(move || {
        infers
            .into_iter()
            .map(|infer| infer.join())
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .map_err(|_| anyhow::anyhow!("an inference thread panicked"))?;
    let write_result = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    if let Some(e) = feed_error {
        return Err(e);
    }
    let models = infer_results.into_iter().collect::<anyhow::Result<_>>()?;
    let (counts, sink) = write_result?;
    Ok((counts, sink, models))
}
