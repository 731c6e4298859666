//! A Parquet object in storage read the way Parquet is meant to be read from S3: its footer by
//! one ranged read, then each row group by its own, so memory holds one row group, not the file.
//!
//! It is parquet's [`AsyncFileReader`] over [`Storage::get_range`]; every read goes through the
//! storage's timeouts and retries, and a storage error stays in the error's chain (the exit
//! code tells a retryable failure from a permanent one by it).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use pomona_storage::{Storage, StorageError};

/// Bytes read from the end of the object at first: the footer of a feature file (its schema,
/// row groups and key-value metadata) is a few KB, so one read usually holds all of it.
pub const FOOTER_PREFETCH: usize = 64 * 1024;

/// Object `key` of `storage`, of `size` bytes, read by ranges.
#[derive(Clone, Debug)]
pub struct StoredParquet {
    storage: Storage,
    key: String,
    size: u64,
}

impl StoredParquet {
    /// Object `key` of `storage` (its size is asked for once).
    pub async fn open(storage: &Storage, key: &str) -> Result<Self, StorageError> {
        let size = match storage.head(key).await? {
            Some(meta) => meta.size,
            None => {
                return Err(StorageError::new(
                    pomona_storage::ErrorKind::NotFound,
                    format!("not found: {}{key}", storage.uri()),
                ));
            }
        };
        Ok(Self {
            storage: storage.clone(),
            key: key.to_string(),
            size,
        })
    }
}

/// Whether `e` says the object is not there (a storage error anywhere in its chain).
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<StorageError>())
        .any(|s| s.kind() == pomona_storage::ErrorKind::NotFound)
}

fn external(e: StorageError) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// Ranges this close are read as one: the column chunks of a row group lie end to end, so a
/// row group is one request rather than one per column.
pub const COALESCE_GAP: u64 = 1024 * 1024;

/// Ranged reads in flight at once for the ranges of one call.
const READS_IN_FLIGHT: usize = 4;

/// The reads that cover `ranges`: sorted, and merged where they overlap or lie less than `gap`
/// bytes apart.
pub fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.end > r.start).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

impl AsyncFileReader for StoredParquet {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.storage
                .get_range(&self.key, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let reads = coalesce(&ranges, COALESCE_GAP);
            let (storage, key) = (&self.storage, self.key.as_str());
            let read: Vec<Bytes> = futures::stream::iter(reads.clone())
                .map(|r| async move { storage.get_range(key, r).await.map_err(external) })
                .buffered(READS_IN_FLIGHT)
                .try_collect()
                .await?;
            ranges
                .iter()
                .map(|r| {
                    let i = reads
                        .iter()
                        .position(|m| m.start <= r.start && r.end <= m.end)
                        .expect("every range is covered by a read");
                    let offset = usize::try_from(r.start - reads[i].start).unwrap_or(usize::MAX);
                    let len = usize::try_from(r.end - r.start).unwrap_or(usize::MAX);
                    read[i]
                        .get(offset..offset + len)
                        .map(|b| read[i].slice_ref(b))
                        .ok_or_else(|| {
                            ParquetError::EOF(format!(
                                "{}{}: bytes {}..{} past the end of the object",
                                self.storage.uri(),
                                self.key,
                                r.start,
                                r.end
                            ))
                        })
                })
                .collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_ranges_are_read_as_one() {
        assert_eq!(coalesce(&[], 10), Vec::<Range<u64>>::new());
        // A row group's column chunks, end to end, out of order: one read.
        assert_eq!(coalesce(&[40..90, 0..40, 90..100], 0), vec![(0..100)]);
        // Apart by less than the gap: one read; by more: two; empty ranges need none.
        assert_eq!(coalesce(&[0..10, 15..20, 5..5], 5), vec![(0..20)]);
        assert_eq!(coalesce(&[0..10, 16..20], 5), [0..10, 16..20]);
        // Overlapping and nested ranges.
        assert_eq!(coalesce(&[0..50, 10..20, 40..60], 0), vec![(0..60)]);
    }
}
