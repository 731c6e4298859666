//! `--clusters K|auto`: the unsupervised grouping of a run's reduced vectors, after the
//! projection, from the `reduced/part-NNNNN.parquet` files it wrote.
//!
//! 1. A first pass gathers what the fit needs: every vector when the run has at most
//!    [`kmeans::MINI_BATCH_ABOVE`], else a fixed-seed sample to start mini-batch k-means from;
//!    and for `auto`, a fixed-seed sample of [`kmeans::AUTO_SAMPLE`] to choose k on
//!    (silhouette over [`kmeans::AUTO_RANGE`]).
//! 2. k-means ([`kmeans`]): Lloyd's on every vector, or mini-batch passes over the files.
//! 3. A second pass assigns each image its nearest centroid and writes
//!    `clusters/part-NNNNN.parquet` (path, label, cluster), summing the inertia and counting
//!    the (label, cluster) table for the scores against the labels
//!    ([`scores`](super::scores)), and keeps fixed-seed samples for the silhouette and for
//!    `report/clusters.png`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use clap::Args;
use ndarray::Array2;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use pomona_crds::contract::OutputLayout;
use pomona_storage::Storage;
use serde::Serialize;

use super::kmeans::{self, Centroids, MiniBatch};
use super::pca::Origin;
use super::project::{FeatureFile, FeatureRows};
use super::sample::Reservoir;
use super::scores::{Contingency, silhouette};
use crate::Permanent;
use crate::report::{self, ClusterPoint};

pub use pomona_crds::contract::steps::ClusterCount;

/// The clustering option of `pomona reduce` and `pomona run`.
#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Group the images by k-means of their reduced vectors into K clusters, or `auto` (K from
    /// 2 to 30 by silhouette): clusters/part-*.parquet and report/clusters.png.
    #[arg(long, value_name = "K|auto")]
    pub clusters: Option<ClusterCount>,
}

/// A candidate k of `auto` and its silhouette.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Candidate {
    /// Clusters.
    pub k: usize,
    /// Mean silhouette on the sample.
    pub silhouette: f64,
}

/// `clustering` in `report/summary.json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusteringSummary {
    /// Clusters.
    pub k: usize,
    /// `given`, or `silhouette` for `auto`.
    pub chosen_by: &'static str,
    /// For `auto`: the silhouette of each k tried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// `lloyd` (every vector at once) or `mini-batch`.
    pub method: &'static str,
    /// k-means++ initialisations, the least inertia kept.
    pub runs: usize,
    /// The seed.
    pub seed: u64,
    /// Images grouped.
    pub images: u64,
    /// Sum of squared distances of the images to their centroids.
    pub inertia: f64,
    /// Mean silhouette (Euclidean) on a fixed-seed sample.
    pub silhouette: Option<f64>,
    /// Images in that sample.
    pub silhouette_sample: usize,
    /// Images per cluster.
    pub sizes: Vec<u64>,
    /// Images with a label, scored against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labelled: Option<u64>,
    /// Adjusted Rand index against the labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ari: Option<f64>,
    /// Normalised mutual information against the labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nmi: Option<f64>,
    /// Purity against the labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purity: Option<f64>,
    /// Seconds the grouping took.
    pub seconds: f64,
}

/// What [`cluster`] needs of the run.
pub struct Run<'a> {
    /// The run's storage.
    pub out: &'a Storage,
    /// Its layout.
    pub layout: &'a OutputLayout,
    /// The shards with reduced vectors, in order.
    pub shards: &'a [u32],
    /// Images with reduced vectors.
    pub images: u64,
    /// The features' provenance, for the files' metadata.
    pub origin: &'a Origin,
    /// sha256 of the PCA.
    pub pca_sha256: &'a str,
    /// Explained variance ratios of the first two components (for the picture's axes).
    pub axis_ratios: (f64, Option<f64>),
    /// More images than this are clustered by mini-batch k-means
    /// ([`kmeans::MINI_BATCH_ABOVE`] in a run).
    pub mini_batch_above: u64,
}

const SEED_AUTO: u64 = 0xa070_5eed;
const SEED_INIT: u64 = 0x1417_5eed;
const SEED_SILHOUETTE: u64 = 0x5170_5eed;
const SEED_PICTURE: u64 = 0x9c7e_5eed;

/// Opens the reduced vectors of one shard.
async fn open_reduced(run: &Run<'_>, shard: u32) -> anyhow::Result<FeatureFile> {
    let uri = run.layout.reduced(shard);
    let data = run
        .out
        .get(&run.out.relative(&uri)?)
        .await
        .with_context(|| format!("cannot read {uri}"))?;
    FeatureFile::open_vectors(data, "pca").with_context(|| uri.clone())
}

/// Calls `each` with every batch of reduced vectors of the run (and their dimension), in
/// shard order.
async fn for_each_batch(
    run: &Run<'_>,
    mut each: impl FnMut(&FeatureRows, usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for &shard in run.shards {
        let file = open_reduced(run, shard).await?;
        let dim = file.dim;
        for rows in file.batches()? {
            each(&rows.with_context(|| run.layout.reduced(shard))?, dim)?;
        }
    }
    Ok(())
}

fn to_f64(row: &[f32]) -> Vec<f64> {
    row.iter().map(|&v| f64::from(v)).collect()
}

fn matrix(rows: Vec<Vec<f64>>, dim: usize) -> Array2<f64> {
    let n = rows.len();
    Array2::from_shape_vec((n, dim), rows.into_iter().flatten().collect())
        .expect("rows of one dimension")
}

fn failure(e: kmeans::KMeansFailure) -> anyhow::Error {
    Permanent(e.to_string()).into()
}

/// Groups the run's images (see the module docs): writes `clusters/` and
/// `report/clusters.png`, and returns the summary.
pub async fn cluster(run: &Run<'_>, count: ClusterCount) -> anyhow::Result<ClusteringSummary> {
    let started = Instant::now();
    let in_memory = run.images <= run.mini_batch_above;
    // Pass 1.
    let mut all: Vec<Vec<f64>> = Vec::new();
    let mut init = Reservoir::new(kmeans::INIT_SAMPLE, SEED_INIT);
    let mut auto = Reservoir::new(kmeans::AUTO_SAMPLE, SEED_AUTO);
    let mut dim = 0;
    for_each_batch(run, |rows, d| {
        dim = d;
        for row in rows.values.chunks_exact(d) {
            if in_memory {
                all.push(to_f64(row));
            } else {
                init.offer_with(|| to_f64(row));
            }
            if count == ClusterCount::Auto {
                auto.offer_with(|| to_f64(row));
            }
        }
        Ok(())
    })
    .await?;
    let (k, candidates) = match count {
        ClusterCount::Fixed(k) => (k, Vec::new()),
        ClusterCount::Auto => {
            let scores =
                kmeans::silhouettes(matrix(auto.into_items(), dim).view(), kmeans::AUTO_RANGE)
                    .map_err(failure)?;
            let k = kmeans::choose_k(&scores).ok_or_else(|| {
                Permanent(format!(
                    "--clusters auto needs at least 3 images, the run has {}",
                    run.images
                ))
            })?;
            let candidates = scores
                .into_iter()
                .map(|(k, silhouette)| Candidate { k, silhouette })
                .collect();
            (k, candidates)
        }
    };
    // Fit.
    let centroids: Centroids = if in_memory {
        kmeans::lloyd(matrix(all, dim).view(), k, kmeans::RUNS, kmeans::SEED).map_err(failure)?
    } else {
        let start = kmeans::lloyd(
            matrix(init.into_items(), dim).view(),
            k,
            kmeans::RUNS,
            kmeans::SEED,
        )
        .map_err(failure)?;
        let mut mb = MiniBatch::new(start).map_err(failure)?;
        for _ in 0..kmeans::EPOCHS {
            let mut batch: Vec<f64> = Vec::with_capacity(kmeans::BATCH_ROWS * dim);
            for_each_batch(run, |rows, d| {
                for row in rows.values.chunks_exact(d) {
                    batch.extend(row.iter().map(|&v| f64::from(v)));
                    if batch.len() == kmeans::BATCH_ROWS * d {
                        let m = Array2::from_shape_vec((kmeans::BATCH_ROWS, d), batch.clone())?;
                        mb.update(m.view()).map_err(failure)?;
                        batch.clear();
                    }
                }
                Ok(())
            })
            .await?;
            if !batch.is_empty() {
                let m = Array2::from_shape_vec((batch.len() / dim, dim), batch)?;
                mb.update(m.view()).map_err(failure)?;
            }
        }
        mb.centroids()
    };
    crate::say!(
        "pomona: reduce: k-means with k = {k} ({}) in {:.3} s",
        if in_memory { "Lloyd" } else { "mini-batch" },
        started.elapsed().as_secs_f64()
    );

    // Pass 2.
    let mut labels: BTreeMap<String, u32> = BTreeMap::new();
    let mut table = Contingency::default();
    let mut sizes = vec![0u64; k];
    let mut inertia = 0.0;
    let mut sil = Reservoir::new(kmeans::SILHOUETTE_SAMPLE, SEED_SILHOUETTE);
    let mut points = Reservoir::new(report::MAX_POINTS, SEED_PICTURE);
    for &shard in run.shards {
        let file = open_reduced(run, shard).await?;
        let d = file.dim;
        let mut writer = ClusterWriter::new(run.origin, run.pca_sha256, k)?;
        for rows in file.batches()? {
            let rows = rows.with_context(|| run.layout.reduced(shard))?;
            let mut ids = Vec::with_capacity(rows.labels.len());
            for (i, row) in rows.values.chunks_exact(d).enumerate() {
                let (c, dist) = centroids.nearest(row);
                inertia += dist;
                sizes[c as usize] += 1;
                let label = rows.labels.value(i);
                let next = labels.len() as u32;
                let id = *labels.entry(label.to_string()).or_insert(next);
                if !label.is_empty() {
                    table.add(id, c);
                }
                sil.offer_with(|| (row.to_vec(), c));
                points.offer(ClusterPoint {
                    x: row[0],
                    y: row.get(1).copied().unwrap_or(0.0),
                    label: id,
                    cluster: c,
                });
                ids.push(c);
            }
            writer.push(&rows.paths, &rows.labels, ids)?;
        }
        let uri = run.layout.clusters(shard);
        run.out
            .put(&run.out.relative(&uri)?, Bytes::from(writer.finish()?))
            .await
            .with_context(|| format!("cannot write {uri}"))?;
    }
    let sample = sil.into_items();
    let flat: Vec<f32> = sample.iter().flat_map(|(r, _)| r.iter().copied()).collect();
    let ids: Vec<u32> = sample.iter().map(|(_, c)| *c).collect();
    let silhouette = silhouette(&flat, dim, &ids);
    let scores = table.scores();
    let mut names = vec![String::new(); labels.len()];
    for (name, id) in labels {
        names[id as usize] = name;
    }
    let png = report::clusters_png(points.items(), &names, k, run.axis_ratios)?;
    let uri = run.layout.clusters_png();
    run.out
        .put(&run.out.relative(&uri)?, Bytes::from(png))
        .await
        .with_context(|| format!("cannot write {uri}"))?;
    Ok(ClusteringSummary {
        k,
        chosen_by: match count {
            ClusterCount::Fixed(_) => "given",
            ClusterCount::Auto => "silhouette",
        },
        candidates,
        method: if in_memory { "lloyd" } else { "mini-batch" },
        runs: kmeans::RUNS,
        seed: kmeans::SEED,
        images: sizes.iter().sum(),
        inertia,
        silhouette,
        silhouette_sample: ids.len(),
        sizes,
        labelled: scores.map(|_| table.total()),
        ari: scores.map(|s| s.ari),
        nmi: scores.map(|s| s.nmi),
        purity: scores.map(|s| s.purity),
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

/// Schema of the cluster files.
pub fn clusters_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("cluster", DataType::UInt32, false),
    ]))
}

/// Writes one `clusters/part-NNNNN.parquet` into memory.
struct ClusterWriter {
    writer: ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
}

impl ClusterWriter {
    fn new(origin: &Origin, pca_sha256: &str, k: usize) -> Result<Self, ParquetError> {
        let kv = [
            ("pomona.model_sha256", origin.model_sha256.clone()),
            ("pomona.preprocessing", origin.preprocessing.clone()),
            ("pomona.pca_sha256", pca_sha256.to_string()),
            (
                "pomona.kmeans",
                format!("k={k} seed={} runs={}", kmeans::SEED, kmeans::RUNS),
            ),
        ]
        .map(|(key, v)| KeyValue::new(key.into(), v))
        .to_vec();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(kv))
            .build();
        let schema = clusters_schema();
        Ok(Self {
            writer: ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?,
            schema,
        })
    }

    fn push(
        &mut self,
        paths: &StringArray,
        labels: &StringArray,
        clusters: Vec<u32>,
    ) -> Result<(), ParquetError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(paths.clone()),
            Arc::new(labels.clone()),
            Arc::new(UInt32Array::from(clusters)),
        ];
        self.writer
            .write(&RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn finish(self) -> Result<Vec<u8>, ParquetError> {
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::project::ReducedWriter;

    /// Writes `shards` reduced files of `per` rows each: 2-D points around four well-apart
    /// centres, labelled by their centre.
    async fn blobs(out: &Storage, layout: &OutputLayout, shards: u32, per: usize) {
        let centres = [(0.0f32, 0.0f32), (20.0, 0.0), (0.0, 20.0), (20.0, 20.0)];
        let mut state = 7u64;
        let mut jitter = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1000) as f32 / 500.0 - 1.0
        };
        for shard in 0..shards {
            let mut w = ReducedWriter::new(2, &Origin::default(), "pca").unwrap();
            let (mut paths, mut labels, mut values) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..per {
                let c = (i + shard as usize) % 4;
                paths.push(format!("s{shard}/{i}.jpg"));
                labels.push(format!("fruit {c}"));
                values.extend([centres[c].0 + jitter(), centres[c].1 + jitter()]);
            }
            w.push(
                &StringArray::from(paths),
                &StringArray::from(labels),
                values,
            )
            .unwrap();
            let uri = layout.reduced(shard);
            out.put(
                &out.relative(&uri).unwrap(),
                Bytes::from(w.finish().unwrap()),
            )
            .await
            .unwrap();
        }
    }

    #[test]
    fn both_methods_group_separated_blobs_and_write_every_shard() {
        let dir = pomona_storage::testing::TempDir::new("grouping");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let out = Storage::open(dir.path().to_str().unwrap(), &Default::default())
                .await
                .unwrap();
            let layout = OutputLayout::new(&out.uri());
            blobs(&out, &layout, 3, 5000).await;
            let origin = Origin::default();
            let shards = [0, 1, 2];
            let run = |mini_batch_above| Run {
                out: &out,
                layout: &layout,
                shards: &shards,
                images: 15_000,
                origin: &origin,
                pca_sha256: "pca",
                axis_ratios: (0.5, Some(0.3)),
                mini_batch_above,
            };
            for (above, method) in [(20_000, "lloyd"), (1_000, "mini-batch")] {
                let s = cluster(&run(above), ClusterCount::Fixed(4)).await.unwrap();
                assert_eq!(s.method, method);
                assert_eq!((s.k, s.images, s.labelled), (4, 15_000, Some(15_000)));
                assert_eq!(s.ari, Some(1.0), "{method}");
                assert_eq!(s.purity, Some(1.0), "{method}");
                assert_eq!(s.sizes, [3750; 4], "{method}");
                assert!(s.silhouette.unwrap() > 0.9, "{method}: {:?}", s.silhouette);
                for shard in shards {
                    assert!(std::path::Path::new(&layout.clusters(shard)).exists());
                }
                assert!(std::path::Path::new(&layout.clusters_png()).exists());
            }
        });
    }

    #[test]
    fn cluster_counts_parse() {
        assert_eq!("21".parse(), Ok(ClusterCount::Fixed(21)));
        assert_eq!(" Auto ".parse(), Ok(ClusterCount::Auto));
        for bad in ["0", "1", "-3", "many", ""] {
            assert!(bad.parse::<ClusterCount>().is_err(), "{bad}");
        }
        assert_eq!(ClusterCount::Fixed(7).to_string(), "7");
        assert_eq!(ClusterCount::Auto.to_string(), "auto");
    }
}
