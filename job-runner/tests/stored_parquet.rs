//! Feature files read from S3 a row group at a time: the same rows as the file read whole, in
//! the same batches, with one ranged read per row group (the column chunks of a row group
//! coalesced) besides the size and the footer.

use bytes::Bytes;
use futures::StreamExt;
use pomona_runner::parquet_out::{FeatureWriter, Provenance};
use pomona_runner::reduce::project::{FeatureFile, FeatureRows};
use pomona_storage::testing::S3Server;

const DIM: usize = 1280;

/// A feature file of `rows` rows of pseudo-random values (so that compression keeps their
/// size), written as the extract step writes it.
fn feature_file(rows: usize) -> Vec<u8> {
    let provenance = Provenance {
        model_sha256: "ab".repeat(32),
        model_uri: "file:///m.onnx".into(),
        preprocessing: r#"{"width":224}"#.into(),
        versions: "pomona test".into(),
    };
    let mut w = FeatureWriter::new(Vec::new(), DIM, &provenance).unwrap();
    let mut x: u32 = 12345;
    let mut values = vec![0f32; DIM];
    for i in 0..rows {
        for v in &mut values {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = (x >> 8) as f32 / (1u32 << 24) as f32;
        }
        let label = if i % 3 == 0 { "Fig 1" } else { "Kiwi" };
        w.push(&format!("images/{i:05}.jpg"), label, Some("\"e\""), &values)
            .unwrap();
    }
    w.finish().unwrap()
}

/// (paths, labels, value bits) of each batch.
fn shown(batches: &[FeatureRows]) -> Vec<(Vec<String>, Vec<String>, Vec<u32>)> {
    batches
        .iter()
        .map(|b| {
            let strings = |a: &arrow_array::StringArray| {
                a.iter()
                    .map(|s| s.unwrap_or_default().to_string())
                    .collect()
            };
            let bits = b.values.iter().map(|v| v.to_bits()).collect();
            (strings(&b.paths), strings(&b.labels), bits)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_feature_file_is_read_one_row_group_at_a_time() {
    let server = S3Server::start();
    let s = server.storage("runs/one/").await;
    // Four row groups of up to 1,024 rows (5 MB each).
    let rows = 3 * 1024 + 7;
    let data = feature_file(rows);
    let key = "features/part-00000.parquet";
    s.put(key, Bytes::from(data.clone())).await.unwrap();

    let whole: Vec<FeatureRows> = FeatureFile::open(Bytes::from(data))
        .unwrap()
        .batches()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let before = s.counts().requests;
    let stored = FeatureFile::open_stored(&s, key).await.unwrap();
    assert_eq!((stored.dim, stored.rows), (DIM, rows as u64));
    assert_eq!(stored.origin.model_sha256, "ab".repeat(32));
    let opened = s.counts().requests - before;
    let mut batches = stored.next_batches().unwrap();
    let mut read = Vec::new();
    while let Some(batch) = batches.next().await {
        read.push(batch.unwrap());
    }
    let requests = s.counts().requests - before;
    assert_eq!(read.len(), 4, "one batch a row group");
    assert!(
        shown(&read) == shown(&whole),
        "the rows of the file read whole"
    );
    // Its size and its footer, then one read a row group.
    assert_eq!(opened, 2, "HEAD and the footer");
    assert_eq!(requests, 2 + 4, "one ranged read a row group");

    let missing = FeatureFile::open_stored(&s, "features/part-00001.parquet")
        .await
        .err()
        .expect("no such file");
    assert!(missing.to_string().contains("not found"), "{missing:#}");
}
