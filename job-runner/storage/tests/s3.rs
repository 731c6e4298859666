//! Storage and planning against a real S3 server (s3s-fs on 127.0.0.1, checking SigV4).

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use pomona_crds::LabelMode;
use pomona_storage::plan::{self, PlanOptions, PlanRun};
use pomona_storage::testing::{self, S3Server, SECRET_KEY, TempDir};
use pomona_storage::{ErrorKind, S3Config, Storage};

fn options(per_shard: u32) -> PlanOptions {
    PlanOptions {
        include: vec!["*.jpg".into(), "*.jpeg".into(), "*.png".into()],
        label: LabelMode::ParentDirectory,
        images_per_shard: per_shard,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_exists_list_delete_round_trip() {
    let server = S3Server::start();
    let s = server.storage("run/").await;
    assert_eq!(s.region(), Some(testing::REGION));
    assert!(!s.exists("a/b.txt").await.unwrap());
    s.put("a/b.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    s.put("a/c.txt", Bytes::new()).await.unwrap();
    s.put("z.txt", Bytes::from_static(b"zz")).await.unwrap();
    assert!(s.exists("a/b.txt").await.unwrap());
    assert_eq!(
        s.get("a/b.txt").await.unwrap(),
        Bytes::from_static(b"hello")
    );
    assert_eq!(s.get("a/c.txt").await.unwrap().len(), 0);

    let all = s.list("").await.unwrap();
    let keys: Vec<_> = all.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["a/b.txt", "a/c.txt", "z.txt"]);
    assert_eq!(all[0].size, 5);
    // s3s-fs lists no ETags (AWS S3 does); HEAD has one.
    let head = s.head("a/b.txt").await.unwrap().unwrap();
    assert_eq!(head.size, 5);
    assert_eq!(
        head.etag.as_deref(),
        Some("\"5d41402abc4b2a76b9719d911017c592\""),
        "MD5 of hello"
    );
    assert_eq!(s.head("a/nope").await.unwrap(), None);
    assert_eq!(s.list("a/").await.unwrap().len(), 2);

    let missing = s.get("nope.txt").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
    assert!(!missing.is_retryable());

    assert_eq!(s.delete_prefix("a/").await.unwrap(), 2);
    let keys: Vec<_> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["z.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_go_up_in_parts() {
    let server = S3Server::start();
    let cfg = S3Config {
        multipart_threshold: 6 << 20,
        part_size: 5 << 20,
        ..server.config()
    };
    let s = Storage::open(&server.uri("big/"), &cfg).await.unwrap();
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    s.put("blob.bin", Bytes::from(data.clone())).await.unwrap();
    let back = s.get("blob.bin").await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "multipart content differs");
    // A multipart ETag is "<md5 of part md5s>-<parts>".
    let etag = s
        .head("blob.bin")
        .await
        .unwrap()
        .unwrap()
        .etag
        .unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");

    // The same content from a file, read one part at a time.
    let dir = TempDir::new("put-file");
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    s.put_file("from-file.bin", &file).await.unwrap();
    assert!(
        s.get("from-file.bin").await.unwrap() == data,
        "file upload differs"
    );
    let meta = s.head("from-file.bin").await.unwrap().unwrap();
    assert!(
        meta.etag
            .unwrap_or_default()
            .trim_matches('"')
            .ends_with("-3")
    );
    // A small file goes up in one request.
    std::fs::write(&file, b"small").unwrap();
    s.put_file("small.bin", &file).await.unwrap();
    assert_eq!(&s.get("small.bin").await.unwrap()[..], b"small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fruits_upload_paginated_list_and_plan() {
    let server = S3Server::start();
    let local = Storage::open(
        testing::fruits_training().to_str().unwrap(),
        &S3Config::default(),
    )
    .await
    .unwrap();
    let images = server.storage("images/Training/").await;

    let t = Instant::now();
    let copied = testing::copy_all(&local, &images, "", 16).await.unwrap();
    eprintln!("uploaded {copied} images in {:.2?}", t.elapsed());
    assert_eq!(copied, 1260);

    let t = Instant::now();
    let listing = images.list_with("", Some(100)).await.unwrap();
    eprintln!(
        "listed {} objects in {} pages of 100 in {:.2?}",
        listing.objects.len(),
        listing.requests,
        t.elapsed()
    );
    assert_eq!(listing.objects.len(), 1260);
    assert_eq!(listing.requests, 13, "1,260 keys in pages of 100");
    let t = Instant::now();
    let default_pages = images.list_with("", None).await.unwrap();
    eprintln!(
        "listed {} objects in {} pages in {:.2?}",
        default_pages.objects.len(),
        default_pages.requests,
        t.elapsed()
    );
    assert_eq!(default_pages.objects, listing.objects);
    let keys: Vec<_> = listing.objects.iter().map(|o| o.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let source = server.storage("images/").await;
    let output = server.storage("runs/r1").await;
    let t = Instant::now();
    let made = plan::create_plan(&source, &output, &options(500), None, &PlanRun::default())
        .await
        .unwrap();
    eprintln!(
        "planned {} images in {} shards in {:.2?}",
        made.images,
        made.shards,
        t.elapsed()
    );
    assert_eq!(
        (made.images, made.shards, made.images_per_shard),
        (1260, 3, 500)
    );
    assert_eq!(made.source, "s3://fruits/images/");

    let plan = plan::read_plan(&output).await.unwrap();
    assert_eq!(plan, made);
    let mut all = Vec::new();
    for shard in 0..plan.shards {
        all.extend(plan::read_shard(&output, &plan, shard).await.unwrap());
    }
    assert_eq!(all.len(), 1260);
    assert!(all.iter().all(|e| e.key.starts_with("Training/")));
    let labels: BTreeSet<_> = all.iter().map(|e| e.label.clone()).collect();
    let folders: BTreeSet<_> = std::fs::read_dir(testing::fruits_training())
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(labels.len(), 21);
    assert_eq!(labels, folders);
    for e in &all {
        assert_eq!(e.key.split('/').nth(1), Some(e.label.as_str()));
    }
    assert_eq!(plan.bytes, all.iter().map(|e| e.size).sum::<u64>());

    // The same images planned from the local folder give the same keys, sizes and labels.
    let local_src = Storage::open(
        testing::fruits_training()
            .parent()
            .unwrap()
            .to_str()
            .unwrap(),
        &S3Config::default(),
    )
    .await
    .unwrap();
    let local_dir = TempDir::new("s3-local-plan");
    let local_out = Storage::open(local_dir.path().to_str().unwrap(), &S3Config::default())
        .await
        .unwrap();
    let local_plan = plan::create_plan(
        &local_src,
        &local_out,
        &options(500),
        None,
        &PlanRun::default(),
    )
    .await
    .unwrap();
    let mut local_entries = Vec::new();
    for shard in 0..local_plan.shards {
        local_entries.extend(
            plan::read_shard(&local_out, &local_plan, shard)
                .await
                .unwrap(),
        );
    }
    let strip = |v: &[pomona_crds::contract::ManifestEntry]| {
        v.iter()
            .filter(|e| e.key.starts_with("Training/"))
            .map(|e| (e.key.clone(), e.size, e.label.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&local_entries), strip(&all));

    // A restart reuses the plan instead of re-planning (a plan without a recorded identity is
    // this run's when the source and shard size are); another shard size is another run.
    let same = testing::identity(&options(500));
    let (again, created) =
        plan::load_or_create_plan(&source, &output, &options(500), &same, &PlanRun::default())
            .await
            .unwrap();
    assert!(!created);
    assert_eq!(again, plan);
    let other = testing::identity(&options(7));
    let err = plan::load_or_create_plan(&source, &output, &options(7), &other, &PlanRun::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "OutputInUse", "{err}");
    assert!(err.to_string().contains("images per shard"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_a_permanent_error_naming_bucket_region_and_operation() {
    let server = S3Server::start();
    let wrong = "definitely-not-the-secret-4242";
    let s = Storage::open(&server.uri("images/"), &server.config_with_secret(wrong))
        .await
        .unwrap();
    let err = s.list("").await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{msg}");
    assert!(!err.is_retryable());
    assert_eq!(err.attempts(), 1, "permanent errors are not retried");
    assert!(msg.starts_with("access denied: s3:ListObjectsV2"), "{msg}");
    assert!(msg.contains(r#"bucket "fruits""#), "{msg}");
    assert!(msg.contains("region eu-west-3"), "{msg}");
    assert!(!msg.contains(wrong) && !msg.contains(SECRET_KEY), "{msg}");
    let debug = format!("{err:?}");
    assert!(!debug.contains(wrong), "the Debug form leaks the secret");

    let put = s.put("x", Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(put.kind(), ErrorKind::AccessDenied);
    assert!(put.to_string().contains("s3:PutObject"), "{put}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_permanent() {
    let server = S3Server::start();
    let s = Storage::open("s3://no-such-bucket/x/", &server.config())
        .await
        .unwrap();
    let err = s.list("").await.unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::NoSuchBucket, "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains(r#"bucket "no-such-bucket""#),
        "{err}"
    );
    let get = s.get("k").await.unwrap_err();
    assert!(!get.is_retryable(), "{get}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_is_retryable_after_bounded_retries() {
    let mut server = S3Server::start();
    let s = server.storage("images/").await;
    s.put("a.jpg", Bytes::from_static(b"x")).await.unwrap();
    server.stop();
    let t = Instant::now();
    let err = s.get("a.jpg").await.unwrap_err();
    eprintln!("{err} after {:.2?}", t.elapsed());
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.attempts(), server.config().retry.max_attempts);
    assert!(
        err.to_string().contains("gave up after 3 attempts"),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 10);
    let list = s.list("").await.unwrap_err();
    assert!(list.is_retryable(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_conditioned_on_the_planned_etag_and_bounded_in_size() {
    let server = S3Server::start();
    let s = server.storage("images/").await;
    let (big, changed) = testing::assert_conditional_reads(&s).await;
    assert_eq!(big.attempts(), 1, "not retried");
    assert!(big.to_string().contains("12-byte limit"), "{big}");
    assert_eq!(changed.attempts(), 1, "not retried");
    let counts = s.counts();
    assert_eq!((counts.retries, counts.throttled), (0, 0), "{counts:?}");
    assert!(counts.requests >= 6, "{counts:?}");
    testing::assert_ranged_reads(&s).await;
}
