//! The Parquet files of a shard: features and dead letters.
//!
//! Rows are buffered and written a row group at a time, so memory stays bounded whatever the
//! shard size; the writer targets any `Write` (a scratch file, then uploaded whole).
//!
//! | file | columns |
//! | --- | --- |
//! | `features/part-NNNNN.parquet` | `path` utf8, `label` utf8, `etag` utf8 (nullable), `features` FixedSizeList<Float32, D> |
//! | `deadletter/part-NNNNN.parquet` | `path` utf8, `reason` utf8, `bytes` uint64 |
//!
//! Both carry the run's [`Provenance`] in the file's key-value metadata (`pomona.*` keys).

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

/// Rows per row group (and per write).
const ROW_GROUP: usize = 1024;

/// What produced a file, recorded in its key-value metadata.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Provenance {
    /// sha256 of the ONNX model, hex.
    pub model_sha256: String,
    /// Where the model was read from.
    pub model_uri: String,
    /// The preprocessing, as JSON (size, layout, scale, offset, resize filter).
    pub preprocessing: String,
    /// `pomona <version>` and the ONNX Runtime version.
    pub versions: String,
}

impl Provenance {
    fn key_values(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("pomona.model_sha256".into(), self.model_sha256.clone()),
            KeyValue::new("pomona.model_uri".into(), self.model_uri.clone()),
            KeyValue::new("pomona.preprocessing".into(), self.preprocessing.clone()),
            KeyValue::new("pomona.versions".into(), self.versions.clone()),
        ]
    }
}

fn props(provenance: &Provenance) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_key_value_metadata(Some(provenance.key_values()))
        .build()
}

/// Schema of the feature files for vectors of `dim` values.
pub fn features_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("etag", DataType::Utf8, true),
        Field::new(
            "features",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

/// Schema of the dead-letter files.
pub fn deadletter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("bytes", DataType::UInt64, false),
    ]))
}

/// Writes `features/part-NNNNN.parquet`.
pub struct FeatureWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    dim: usize,
    path: StringBuilder,
    label: StringBuilder,
    etag: StringBuilder,
    values: Vec<f32>,
    rows: u64,
}

impl<W: Write + Send> FeatureWriter<W> {
    /// A writer of `dim`-value feature rows into `sink`.
    pub fn new(sink: W, dim: usize, provenance: &Provenance) -> Result<Self, ParquetError> {
        let schema = features_schema(dim);
        Ok(Self {
            writer: ArrowWriter::try_new(sink, schema.clone(), Some(props(provenance)))?,
            schema,
            dim,
            path: StringBuilder::new(),
            label: StringBuilder::new(),
            etag: StringBuilder::new(),
            values: Vec::with_capacity(ROW_GROUP * dim),
            rows: 0,
        })
    }

    /// Adds one image's features.
    pub fn push(
        &mut self,
        path: &str,
        label: &str,
        etag: Option<&str>,
        features: &[f32],
    ) -> Result<(), ParquetError> {
        assert_eq!(features.len(), self.dim, "one feature vector per row");
        self.path.append_value(path);
        self.label.append_value(label);
        self.etag.append_option(etag);
        self.values.extend_from_slice(features);
        self.rows += 1;
        if self.values.len() >= ROW_GROUP * self.dim {
            self.flush()?;
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.values.is_empty() {
            return Ok(());
        }
        let values = Float32Array::from(std::mem::take(&mut self.values));
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let features = FixedSizeListArray::try_new(item, self.dim as i32, Arc::new(values), None)?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.path.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.etag.finish()),
            Arc::new(features),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)?;
        self.values.reserve(ROW_GROUP * self.dim);
        Ok(())
    }

    /// Writes the remaining rows and the footer, and gives the sink back.
    pub fn finish(mut self) -> Result<W, ParquetError> {
        self.flush()?;
        self.writer.into_inner()
    }
}

/// Writes `deadletter/part-NNNNN.parquet`.
pub struct DeadLetterWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    path: StringBuilder,
    reason: StringBuilder,
    bytes: UInt64Builder,
    pending: usize,
    rows: u64,
}

impl<W: Write + Send> DeadLetterWriter<W> {
    /// A writer of dead letters into `sink`.
    pub fn new(sink: W, provenance: &Provenance) -> Result<Self, ParquetError> {
        let schema = deadletter_schema();
        Ok(Self {
            writer: ArrowWriter::try_new(sink, schema.clone(), Some(props(provenance)))?,
            schema,
            path: StringBuilder::new(),
            reason: StringBuilder::new(),
            bytes: UInt64Builder::new(),
            pending: 0,
            rows: 0,
        })
    }

    /// Records one image that could not become a feature, and why.
    pub fn push(&mut self, path: &str, reason: &str, bytes: u64) -> Result<(), ParquetError> {
        self.path.append_value(path);
        self.reason.append_value(reason);
        self.bytes.append_value(bytes);
        self.pending += 1;
        self.rows += 1;
        if self.pending >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.pending == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.path.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.bytes.finish()),
        ];
        self.writer
            .write(&RecordBatch::try_new(self.schema.clone(), columns)?)?;
        self.pending = 0;
        Ok(())
    }

    /// Writes the remaining rows and the footer (an empty file when nothing failed, so that a
    /// complete shard always has its dead-letter file), and gives the sink back.
    pub fn finish(mut self) -> Result<W, ParquetError> {
        self.flush()?;
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, StringArray, UInt64Array};
    use bytes_reader::read_all;

    mod bytes_reader {
        use super::*;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        pub fn read_all(data: Vec<u8>) -> (Vec<RecordBatch>, Vec<KeyValue>) {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(data)).unwrap();
            let kv = builder
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .cloned()
                .unwrap_or_default();
            let batches = builder.build().unwrap().map(Result::unwrap).collect();
            (batches, kv)
        }
    }

    fn provenance() -> Provenance {
        Provenance {
            model_sha256: "ab".repeat(32),
            model_uri: "file:///m.onnx".into(),
            preprocessing: r#"{"width":224}"#.into(),
            versions: "pomona 0.1.0".into(),
        }
    }

    #[test]
    fn features_round_trip_across_row_groups() {
        let dim = 3;
        let mut w = FeatureWriter::new(Vec::new(), dim, &provenance()).unwrap();
        let n = ROW_GROUP * 2 + 5;
        for i in 0..n {
            let etag = (i % 2 == 0).then(|| format!("e{i}"));
            let f = [i as f32, 0.5, -(i as f32)];
            w.push(&format!("s3://b/{i}.jpg"), "Fig 1", etag.as_deref(), &f)
                .unwrap();
        }
        assert_eq!(w.rows(), n as u64);
        let (batches, kv) = read_all(w.finish().unwrap());
        assert_eq!(batches.len(), 3, "row groups of {ROW_GROUP}");
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, n);
        let last = batches.last().unwrap();
        let paths = last
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(paths.value(4), format!("s3://b/{}.jpg", n - 1));
        let etags = last
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(etags.is_null(4), !(n - 1).is_multiple_of(2));
        let features = last
            .column(3)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        let v = features.value(4);
        let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
        assert_eq!(
            v.values().to_vec(),
            [(n - 1) as f32, 0.5, -((n - 1) as f32)]
        );
        let sha = kv.iter().find(|k| k.key == "pomona.model_sha256").unwrap();
        assert_eq!(sha.value.as_deref(), Some("ab".repeat(32).as_str()));
    }

    #[test]
    fn dead_letters_round_trip_and_an_empty_file_is_valid() {
        let mut w = DeadLetterWriter::new(Vec::new(), &provenance()).unwrap();
        w.push("s3://b/x.jpg", "empty file", 0).unwrap();
        w.push("s3://b/y.png", "image too large", 123).unwrap();
        let (batches, _) = read_all(w.finish().unwrap());
        let reasons = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(reasons.value(1), "image too large");
        let bytes = batches[0]
            .column(2)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(bytes.value(1), 123);

        let empty = DeadLetterWriter::new(Vec::new(), &provenance()).unwrap();
        let (batches, kv) = read_all(empty.finish().unwrap());
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
        assert!(kv.iter().any(|k| k.key == "pomona.versions"));
    }
}
