//! Reading a shard's feature (or reduced) file and writing its reduced vectors (Parquet, and CSV
//! rows).
//!
//! | file | columns |
//! | --- | --- |
//! | `reduced/part-NNNNN.parquet` | `path` utf8, `label` utf8, `pca` FixedSizeList<Float32, k> |
//! | `reduced.csv` | `path,label,pc1,…,pck` (a header line, then one line per image) |
//!
//! The reduced Parquet files carry the features' `pomona.*` provenance plus `pomona.pca_sha256`
//! (the sha256 of the `pca.safetensors` used) in their key-value metadata.

use std::io::Write;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderBuilder, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use pomona_storage::Storage;

use super::pca::Origin;
use crate::stored_parquet::StoredParquet;

/// One batch of feature rows of a shard.
pub struct FeatureRows {
    /// Image paths.
    pub paths: StringArray,
    /// Labels.
    pub labels: StringArray,
    /// `paths.len() × dim` values, row after row.
    pub values: Vec<f32>,
}

/// A shard's feature file, opened: its dimension, provenance and rows.
pub struct FeatureFile {
    /// Values per feature vector.
    pub dim: usize,
    /// Rows in the file (from its footer).
    pub rows: u64,
    /// The `pomona.*` provenance of its key-value metadata.
    pub origin: Origin,
    /// For a reduced file, the sha256 of the PCA that made it (`pomona.pca_sha256`); empty for
    /// a feature file.
    pub pca_sha256: String,
    column: &'static str,
    source: Source,
}

/// Where a file's row groups are read from.
enum Source {
    /// All of it, in memory.
    Memory(ParquetRecordBatchReaderBuilder<Bytes>),
    /// A local file, a row group at a time.
    File(ParquetRecordBatchReaderBuilder<std::fs::File>),
    /// An object in storage, a row group (one ranged read) at a time.
    Stored(Box<ParquetRecordBatchStreamBuilder<StoredParquet>>),
}

/// Rows a batch: the writer's row group ([`crate::parquet_out`] writes 1,024), so that every
/// source hands the same batches, and the reduced files the same bytes.
const BATCH_ROWS: usize = 1024;

fn bad(what: &str) -> ParquetError {
    ParquetError::General(format!("not a pomona feature file: {what}"))
}

/// The dimension, rows, provenance and PCA checksum a file's footer and schema give, for its
/// vectors in `column`.
fn describe<T>(
    builder: &ArrowReaderBuilder<T>,
    column: &str,
) -> Result<(usize, u64, Origin, String), ParquetError> {
    let meta = builder.metadata().file_metadata();
    let rows = meta.num_rows() as u64;
    let kv = meta.key_value_metadata().cloned().unwrap_or_default();
    let get = |key: &str| {
        kv.iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.clone())
            .unwrap_or_default()
    };
    let origin = Origin {
        model_sha256: get("pomona.model_sha256"),
        model_uri: get("pomona.model_uri"),
        preprocessing: get("pomona.preprocessing"),
        versions: get("pomona.versions"),
    };
    let field = builder
        .schema()
        .field_with_name(column)
        .map_err(|_| bad(&format!("no {column} column")))?;
    let dim = match field.data_type() {
        DataType::FixedSizeList(item, n) if item.data_type() == &DataType::Float32 => *n as usize,
        other => return Err(bad(&format!("{column} is {other}"))),
    };
    Ok((dim, rows, origin, get("pomona.pca_sha256")))
}

impl FeatureFile {
    /// Opens a feature file held in memory.
    pub fn open(data: Bytes) -> Result<Self, ParquetError> {
        Self::open_vectors(data, "features")
    }

    /// Opens a file of vectors held in memory, with `path`, `label` and the vectors in
    /// `column` (`features`, or `pca` for a reduced file).
    pub fn open_vectors(data: Bytes, column: &'static str) -> Result<Self, ParquetError> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(data)?;
        Self::described(describe(&builder, column)?, column, Source::Memory(builder))
    }

    /// Opens a local feature file, read a row group at a time.
    pub fn open_local(path: &std::path::Path) -> Result<Self, ParquetError> {
        let file = std::fs::File::open(path)
            .map_err(|e| ParquetError::General(format!("cannot open {}: {e}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        Self::described(
            describe(&builder, "features")?,
            "features",
            Source::File(builder),
        )
    }

    /// Opens the feature file `key` of `storage`, read a row group at a time (its footer first,
    /// then one ranged read a row group), so that memory holds one row group whatever the
    /// shard's size.
    pub async fn open_stored(storage: &Storage, key: &str) -> anyhow::Result<Self> {
        let object = StoredParquet::open(storage, key).await?;
        let builder = ParquetRecordBatchStreamBuilder::new(object).await?;
        Ok(Self::described(
            describe(&builder, "features")?,
            "features",
            Source::Stored(Box::new(builder)),
        )?)
    }

    fn described(
        (dim, rows, origin, pca_sha256): (usize, u64, Origin, String),
        column: &'static str,
        source: Source,
    ) -> Result<Self, ParquetError> {
        Ok(Self {
            dim,
            rows,
            origin,
            pca_sha256,
            column,
            source,
        })
    }

    /// The rows, a batch at a time, of a file in memory or on local disk.
    ///
    /// # Panics
    /// On a file opened from storage: its rows are read by [`Self::next_batches`].
    pub fn batches(
        self,
    ) -> Result<impl Iterator<Item = Result<FeatureRows, ParquetError>>, ParquetError> {
        let (dim, name) = (self.dim, self.column);
        let reader = match self.source {
            Source::Memory(b) => b.with_batch_size(BATCH_ROWS).build()?,
            Source::File(b) => b.with_batch_size(BATCH_ROWS).build()?,
            Source::Stored(_) => panic!("a stored feature file is read by next_batches"),
        };
        Ok(reader.map(move |batch| rows_of(&batch?, dim, name)))
    }

    /// The rows, a batch at a time, of a file from any source: a file from storage reads one
    /// row group at a time.
    pub fn next_batches(
        self,
    ) -> Result<BoxStream<'static, Result<FeatureRows, ParquetError>>, ParquetError> {
        let (dim, name) = (self.dim, self.column);
        Ok(match self.source {
            Source::Stored(b) => b
                .with_batch_size(BATCH_ROWS)
                .build()?
                .map(move |batch| rows_of(&batch?, dim, name))
                .boxed(),
            Source::Memory(_) | Source::File(_) => futures::stream::iter(self.batches()?).boxed(),
        })
    }
}

/// The paths, labels and vectors (`dim` values each, in `name`) of a batch.
fn rows_of(batch: &RecordBatch, dim: usize, name: &str) -> Result<FeatureRows, ParquetError> {
    let column = |name: &str| -> Result<&ArrayRef, ParquetError> {
        batch
            .column_by_name(name)
            .ok_or_else(|| bad(&format!("no {name} column")))
    };
    let strings = |name: &str| -> Result<StringArray, ParquetError> {
        column(name)?
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| bad(&format!("{name} is not utf8")))
    };
    let features = column(name)?
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| bad(&format!("{name} is not a fixed-size list")))?;
    let items = features
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| bad(&format!("{name} are not float32")))?;
    let start = features.value_offset_at(0);
    let values = items.values()[start..start + features.len() * dim].to_vec();
    Ok(FeatureRows {
        paths: strings("path")?,
        labels: strings("label")?,
        values,
    })
}

/// Schema of the reduced files for `k` components.
pub fn reduced_schema(k: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new(
            "pca",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                k as i32,
            ),
            false,
        ),
    ]))
}

/// Writes one `reduced/part-NNNNN.parquet` into memory (a shard's reduced vectors are small:
/// `k` floats per image).
pub struct ReducedWriter {
    writer: ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
    k: usize,
}

impl ReducedWriter {
    /// A writer of `k`-value rows, tagged with the features' provenance and the PCA's sha256.
    pub fn new(k: usize, origin: &Origin, pca_sha256: &str) -> Result<Self, ParquetError> {
        let kv = [
            ("pomona.model_sha256", &origin.model_sha256),
            ("pomona.model_uri", &origin.model_uri),
            ("pomona.preprocessing", &origin.preprocessing),
            ("pomona.versions", &origin.versions),
            ("pomona.pca_sha256", &pca_sha256.to_string()),
        ]
        .map(|(key, v)| KeyValue::new(key.into(), v.clone()))
        .to_vec();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(kv))
            .build();
        let schema = reduced_schema(k);
        Ok(Self {
            writer: ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?,
            schema,
            k,
        })
    }

    /// Adds a batch: the paths and labels of the features, and their `k` values per row.
    pub fn push(
        &mut self,
        paths: &StringArray,
        labels: &StringArray,
        reduced: Vec<f32>,
    ) -> Result<(), ParquetError> {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Arc::new(Float32Array::from(reduced));
        let pca = FixedSizeListArray::try_new(item, self.k as i32, values, None)?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(paths.clone()),
            Arc::new(labels.clone()),
            Arc::new(pca),
        ];
        self.writer
            .write(&RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The finished file.
    pub fn finish(self) -> Result<Vec<u8>, ParquetError> {
        self.writer.into_inner()
    }
}

/// Projects a shard's `features` through `pca` (whose file has sha256 `pca_sha256`) into its
/// `reduced/part-NNNNN.parquet` bytes, a batch of rows at a time, handing each batch and its
/// `k` values per row to `each`. The extract step (with a reused PCA), the projection pods and
/// the reduce step all make reduced files here, so they give the same bytes; a file opened from
/// storage or local disk is read a row group at a time.
pub async fn project_file(
    features: FeatureFile,
    pca: &super::pca::Pca,
    pca_sha256: &str,
    mut each: impl FnMut(&FeatureRows, &[f32]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let mut writer = ReducedWriter::new(pca.k(), &features.origin, pca_sha256)?;
    let mut batches = features.next_batches()?;
    while let Some(rows) = batches.next().await {
        let rows = rows?;
        let reduced = pca.project(&rows.values);
        each(&rows, &reduced)?;
        writer.push(&rows.paths, &rows.labels, reduced)?;
    }
    Ok(writer.finish()?)
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Writes the CSV header `path,label,pc1,…,pck`.
pub fn csv_header(out: &mut impl Write, k: usize) -> std::io::Result<()> {
    write!(out, "path,label")?;
    for i in 1..=k {
        write!(out, ",pc{i}")?;
    }
    writeln!(out)
}

/// Writes CSV lines for a batch of reduced rows. Floats are printed in their shortest form that
/// reads back to the same f32.
pub fn csv_rows(
    out: &mut impl Write,
    paths: &StringArray,
    labels: &StringArray,
    reduced: &[f32],
    k: usize,
) -> std::io::Result<()> {
    for (i, row) in reduced.chunks_exact(k).enumerate() {
        write!(
            out,
            "{},{}",
            csv_field(paths.value(i)),
            csv_field(labels.value(i))
        )?;
        for v in row {
            write!(out, ",{v}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let paths = StringArray::from(vec!["a/b.jpg", "c,\"d\".jpg"]);
        let labels = StringArray::from(vec!["Fig 1", "x"]);
        let mut out = Vec::new();
        csv_header(&mut out, 2).unwrap();
        csv_rows(&mut out, &paths, &labels, &[1.5, -0.25, 3.0, 1e-8], 2).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "path,label,pc1,pc2\na/b.jpg,Fig 1,1.5,-0.25\n\"c,\"\"d\"\".jpg\",x,3,0.00000001\n"
        );
    }

    #[test]
    fn reduced_file_reads_back() {
        let origin = Origin {
            model_sha256: "ab".into(),
            ..Origin::default()
        };
        let mut w = ReducedWriter::new(2, &origin, "cd").unwrap();
        let paths = StringArray::from(vec!["p1", "p2"]);
        let labels = StringArray::from(vec!["l", "l"]);
        w.push(&paths, &labels, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let data = w.finish().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(data)).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        assert!(kv.iter().any(|k| k.key == "pomona.pca_sha256"));
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), reduced_schema(2));
    }
}
