//! A listing that fans out by prefix makes the same plan, byte for byte, as one stream: on a
//! local folder and on a real S3 server (s3s-fs), with nested, empty and large prefixes.

use std::collections::BTreeMap;

use bytes::Bytes;
use pomona_crds::LabelMode;
use pomona_crds::contract::{ManifestEntry, OutputLayout, ShardPlan};
use pomona_storage::listing::{FanOut, Part, split};
use pomona_storage::plan::{self, PlanOptions, PlanRun};
use pomona_storage::testing::{S3Server, TempDir};
use pomona_storage::{S3Config, Storage};

/// The source's objects: images at the top and at every depth, names that sort around `/`
/// (`b-.jpg` < `b/…` < `b0/…`), a folder of more than one listing page, many small folders,
/// and files that are not images.
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a.jpg",
        "b-.jpg",
        "b/1.jpg",
        "b/c/2.jpg",
        "b/c/d/e/f/3.png",
        "b/notes.txt",
        "b0/4.jpg",
        "nested/a/b/c/d/e/deep.jpg",
        "notes.txt",
        "z.jpg",
    ]
    .map(String::from)
    .to_vec();
    keys.extend((0..1200).map(|i| format!("big/{i:04}.jpg")));
    for folder in 0..40 {
        keys.extend((0..3).map(|i| format!("wide/l{folder:03}/{i}.jpg")));
    }
    keys
}

/// Folders with nothing in them.
const EMPTY: [&str; 3] = ["empty", "b/empty", "wide/l005/hollow"];

fn options() -> PlanOptions {
    PlanOptions {
        include: vec!["*.jpg".into(), "*.png".into()],
        label: LabelMode::ParentDirectory,
        images_per_shard: 97,
    }
}

/// One stream, the default, a deep and narrow one (one page of buffer, three parts at once)
/// and a shallow one.
fn fan_outs() -> [FanOut; 4] {
    [
        FanOut::SINGLE,
        FanOut::default(),
        FanOut {
            width: 10_000,
            depth: 8,
            in_flight: 3,
            buffer_pages: 1,
        },
        FanOut {
            width: 2,
            depth: 1,
            in_flight: 8,
            buffer_pages: 2,
        },
    ]
}

async fn open(path: &std::path::Path) -> Storage {
    Storage::open(path.to_str().unwrap(), &S3Config::default())
        .await
        .unwrap()
}

/// Every object under `out`'s `manifests/`, by key.
async fn manifests(out: &Storage) -> BTreeMap<String, Bytes> {
    let mut all = BTreeMap::new();
    for o in out.list("manifests/").await.unwrap() {
        let body = out.get(&o.key).await.unwrap();
        all.insert(o.key, body);
    }
    all
}

/// Plans `source` under each fan-out and checks that every plan is the single stream's.
async fn same_plans(source: &Storage, outputs: &[Storage]) {
    let mut made = Vec::new();
    for (fan, out) in fan_outs().into_iter().zip(outputs) {
        let run = PlanRun {
            fan,
            ..PlanRun::default()
        };
        let plan = plan::create_plan(source, out, &options(), None, &run)
            .await
            .unwrap();
        assert_eq!(plan.images, 1200 + 120 + 8, "{fan:?}");
        assert_eq!(plan.shards, 14, "{fan:?}");
        assert_eq!(
            run.progress
                .shards
                .load(std::sync::atomic::Ordering::Relaxed),
            14
        );
        assert_eq!(run.progress.listed.get(), keys().len() as u64, "{fan:?}");
        made.push(manifests(out).await);
    }
    assert_eq!(made[0].len(), 15, "14 shards and plan.json");
    for (fan, plan) in fan_outs().iter().zip(&made).skip(1) {
        assert_eq!(plan, &made[0], "{fan:?}");
    }
    // The single stream's order is the keys' sorted order.
    let mut listed = Vec::new();
    for shard in 0..14 {
        let body = &made[0][&format!("manifests/shard-{shard:05}.jsonl")];
        listed.extend(plan::from_jsonl("m", body).unwrap());
    }
    let mut images: Vec<String> = keys()
        .into_iter()
        .filter(|k| !k.ends_with(".txt"))
        .collect();
    images.sort();
    let got: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(got, images);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanned_out_local_listing_plans_the_same_bytes_as_one_stream() {
    let dir = TempDir::new("fan-local");
    let source = open(dir.path()).await;
    for key in keys() {
        source.put(&key, Bytes::from(key.clone())).await.unwrap();
    }
    for folder in EMPTY {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
    }
    // The fan-outs do split the source: the large folder stays whole, the rest opens up.
    let deep = split(&source, &fan_outs()[2]).await.unwrap();
    assert!(deep.contains(&Part::Prefix {
        prefix: "big/".into(),
        probed: true
    }));
    assert!(deep.len() > 40, "{}", deep.len());
    assert!(
        !deep
            .iter()
            .any(|p| matches!(p, Part::Prefix { prefix, .. } if prefix == "empty/"))
    );
    let shallow = split(&source, &fan_outs()[3]).await.unwrap();
    assert!(shallow.len() >= 8, "{shallow:?}");

    let outs = TempDir::new("fan-local-out");
    let mut outputs = Vec::new();
    for i in 0..fan_outs().len() {
        outputs.push(open(&outs.path().join(i.to_string())).await);
    }
    same_plans(&source, &outputs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanned_out_s3_listing_plans_the_same_bytes_as_one_stream() {
    let server = S3Server::start();
    let source = server.storage("images/").await;
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys() {
        let source = source.clone();
        tasks.spawn(async move { source.put(&key, Bytes::from(key.clone())).await });
        while tasks.len() >= 16 {
            tasks.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    // Empty folders on the server's disk: s3s-fs shows them as prefixes with nothing under.
    for folder in EMPTY {
        std::fs::create_dir_all(server.root().join("fruits/images").join(folder)).unwrap();
    }
    let mut outputs = Vec::new();
    for i in 0..fan_outs().len() {
        outputs.push(server.storage(&format!("runs/{i}/")).await);
    }
    same_plans(&source, &outputs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_folder_is_not_found_whatever_the_fan_out() {
    let dir = TempDir::new("fan-missing");
    let source = open(&dir.path().join("nothing-here")).await;
    let out = open(&dir.path().join("out")).await;
    for fan in fan_outs() {
        let run = PlanRun {
            fan,
            ..PlanRun::default()
        };
        let err = plan::create_plan(&source, &out, &options(), None, &run)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "NotFound", "{fan:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_streamed_in_small_shards_join_into_the_raised_shards() {
    let dir = TempDir::new("fan-regroup");
    let out = open(dir.path()).await;
    let layout = OutputLayout::new(&out.uri());
    let entries: Vec<ManifestEntry> = (0..29)
        .map(|i| ManifestEntry {
            key: format!("x/{i:03}.jpg"),
            size: i,
            etag: None,
            label: "x".into(),
        })
        .collect();
    // 29 images streamed in shards of 3: 10 manifests; raised to 12 per shard: 3 shards.
    for (i, chunk) in entries.chunks(3).enumerate() {
        let key = out.relative(&layout.manifest(i as u32)).unwrap();
        out.put(&key, plan::to_jsonl(chunk)).await.unwrap();
    }
    let raised = ShardPlan {
        images_per_shard: 12,
        shards: 3,
    };
    plan::regroup(&out, 3, 10, &raised).await.unwrap();
    let found = manifests(&out).await;
    assert_eq!(found.len(), 3, "{:?}", found.keys());
    for (i, chunk) in entries.chunks(12).enumerate() {
        let key = format!("manifests/shard-{i:05}.jsonl");
        assert_eq!(found[&key], plan::to_jsonl(chunk), "{key}");
    }
}
