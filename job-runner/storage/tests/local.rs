//! Storage and planning on local folders.

use std::time::Instant;

use bytes::Bytes;
use pomona_crds::LabelMode;
use pomona_crds::contract::{OutputLayout, RunIdentity};
use pomona_storage::plan::{self, PlanError, PlanOptions, PlanRun};
use pomona_storage::testing::{self, TempDir};
use pomona_storage::{ErrorKind, GetOptions, Location, S3Config, Storage};

async fn local(path: &std::path::Path) -> Storage {
    Storage::new(&Location::Local { root: path.into() }, &S3Config::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_round_trip() {
    let dir = TempDir::new("local-rt");
    let s = Storage::open(
        &format!("file://{}", dir.path().display()),
        &S3Config::default(),
    )
    .await
    .unwrap();
    assert_eq!(s.region(), None);
    assert!(!s.exists("a/b.txt").await.unwrap());
    s.put("a/b.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    s.put("c.txt", Bytes::from_static(b"c")).await.unwrap();
    assert!(s.exists("a/b.txt").await.unwrap());
    assert!(!s.exists("a").await.unwrap(), "folders are not objects");
    assert_eq!(
        s.get("a/b.txt").await.unwrap(),
        Bytes::from_static(b"hello")
    );
    let listed = s.list("").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["a/b.txt", "c.txt"]);
    assert!(listed.iter().all(|o| o.etag.is_some()));
    assert_eq!(s.list("a/").await.unwrap().len(), 1);
    assert_eq!(s.list("c").await.unwrap().len(), 1);
    assert_eq!(s.list("zz/").await.unwrap().len(), 0);

    let missing = s.get("nope").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    for bad in ["../x", "/etc/passwd", "a//b", ""] {
        let e = s.put(bad, Bytes::new()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
    }
    let gone = Storage::open("/definitely/not/here", &S3Config::default())
        .await
        .unwrap();
    assert_eq!(gone.list("").await.unwrap_err().kind(), ErrorKind::NotFound);

    assert_eq!(s.delete_prefix("a/").await.unwrap(), 1);
    assert!(
        !dir.path().join("a").exists(),
        "emptied folders are removed"
    );
    assert_eq!(s.list("").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_put_is_atomic_for_readers() {
    let dir = TempDir::new("local-atomic");
    let s = local(dir.path()).await;
    let size = 4 << 20;
    s.put("x.bin", Bytes::from(vec![b'a'; size])).await.unwrap();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..20u8 {
                s.put("x.bin", Bytes::from(vec![b'a' + (i % 2 + 1); size]))
                    .await
                    .unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let data = s.get("x.bin").await.unwrap();
        assert_eq!(data.len(), size, "a partial file was seen");
        assert!(data.iter().all(|&b| b == data[0]), "a mixed file was seen");
        let listed = s.list("").await.unwrap();
        assert_eq!(listed.len(), 1, "temporary files are listed: {listed:?}");
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");

    // put_file gives the same guarantee, from a file elsewhere.
    let source = TempDir::new("local-source");
    let file = source.path().join("y.bin");
    std::fs::write(&file, vec![b'z'; size]).unwrap();
    s.put_file("sub/y.bin", &file).await.unwrap();
    assert_eq!(s.get("sub/y.bin").await.unwrap(), vec![b'z'; size]);
    assert_eq!(s.list("").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fruits_plan_and_read_back() {
    let src = local(testing::fruits_training().parent().unwrap()).await;
    let t = Instant::now();
    let listed = src.list("Training/").await.unwrap();
    eprintln!("listed {} local files in {:.2?}", listed.len(), t.elapsed());
    assert_eq!(listed.len(), 1260);
    let src = local(&testing::fruits_training()).await;

    let out_dir = TempDir::new("local-plan");
    let out = local(out_dir.path()).await;
    let options = PlanOptions {
        include: vec!["*.JPG".into()],
        label: LabelMode::ParentDirectory,
        images_per_shard: 500,
    };
    let made = plan::create_plan(&src, &out, &options, None, &PlanRun::default())
        .await
        .unwrap();
    assert_eq!((made.images, made.shards), (1260, 3));
    let layout = OutputLayout::new(&out.uri());
    assert!(std::path::Path::new(&layout.plan()).is_file());
    assert!(std::path::Path::new(&layout.manifest(2)).is_file());
    let plan = plan::read_plan(&out).await.unwrap();
    assert_eq!(plan, made);
    let last = plan::read_shard(&out, &plan, 2).await.unwrap();
    assert_eq!(last.len(), 260);
    assert!(
        last.iter()
            .all(|e| e.key.split('/').next() == Some(e.label.as_str()))
    );
    assert!(matches!(
        plan::read_shard(&out, &plan, 3).await,
        Err(PlanError::Corrupt { .. })
    ));

    // Unlabelled runs.
    let out2 = TempDir::new("local-plan2");
    let none = PlanOptions {
        label: LabelMode::None,
        images_per_shard: 2000,
        ..options.clone()
    };
    let p = plan::create_plan(
        &src,
        &local(out2.path()).await,
        &none,
        None,
        &PlanRun::default(),
    )
    .await
    .unwrap();
    assert_eq!(p.shards, 1);
    let entries = plan::read_shard(&local(out2.path()).await, &p, 0)
        .await
        .unwrap();
    assert!(entries.iter().all(|e| e.label.is_empty()));

    // Nothing matching: a clear error, not an empty plan.
    let nothing = PlanOptions {
        include: vec!["*.tiff".into()],
        ..options.clone()
    };
    let err = plan::create_plan(&src, &out, &nothing, None, &PlanRun::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlanError::Empty { listed: 1260, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("*.tiff"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reads_are_conditioned_on_the_planned_stamp_and_bounded_in_size() {
    let dir = TempDir::new("local-cond");
    let s = local(dir.path()).await;
    testing::assert_conditional_reads(&s).await;
    let read = GetOptions {
        if_match: Some("planned"),
        max_bytes: None,
        range: None,
    };
    let missing = s.get_with("b.jpg", &read).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
    testing::assert_ranged_reads(&s).await;
}

#[tokio::test]
async fn a_plan_belongs_to_one_run_and_a_rerun_clears_its_success_marker() {
    let src = local(&testing::fruits_training()).await;
    let out_dir = TempDir::new("identity");
    let out = local(out_dir.path()).await;
    let options = PlanOptions {
        include: vec!["*.jpg".into()],
        label: LabelMode::ParentDirectory,
        images_per_shard: 500,
    };
    let mine = PlanOptions::identity(
        &options,
        Some("uid-1".into()),
        "a".repeat(64),
        testing::identity(&options).preprocessing,
    );
    let (made, created) =
        plan::load_or_create_plan(&src, &out, &options, &mine, &PlanRun::default())
            .await
            .unwrap();
    assert!(created);
    let recorded = made.identity.clone().expect("the plan records its run");
    assert_eq!(recorded.run_uid.as_deref(), Some("uid-1"));
    assert_eq!(recorded.source, made.source);
    assert_eq!(plan::read_plan(&out).await.unwrap(), made);

    // The same run again: its own plan, and the marker of its earlier pass is gone.
    let success = out_dir.path().join("_SUCCESS");
    std::fs::write(&success, b"").unwrap();
    let (again, created) =
        plan::load_or_create_plan(&src, &out, &options, &mine, &PlanRun::default())
            .await
            .unwrap();
    assert!(!created);
    assert_eq!(again, made);
    assert!(!success.exists(), "a stale _SUCCESS survived the re-plan");

    // Another resource, another model or other preprocessing: refused, naming the other run and
    // what differs; the plan is left as it was.
    let other_run = RunIdentity {
        run_uid: Some("uid-2".into()),
        ..mine.clone()
    };
    let mut resized = mine.clone();
    resized.preprocessing.width = 160;
    let command_line = RunIdentity {
        run_uid: None,
        model_sha256: "b".repeat(64),
        ..mine.clone()
    };
    for (other, differs) in [
        (other_run, "run"),
        (resized, "preprocessing"),
        (command_line, "run, model sha256"),
    ] {
        let err = plan::load_or_create_plan(&src, &out, &options, &other, &PlanRun::default())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "OutputInUse");
        let message = err.to_string();
        assert!(message.contains("uid uid-1"), "{message}");
        assert!(message.contains(&format!("in {differs}:")), "{message}");
        assert!(!err.is_retryable());
    }
    assert_eq!(plan::read_plan(&out).await.unwrap(), made);
}

#[tokio::test]
async fn an_output_that_overlaps_the_input_or_holds_something_else_is_refused() {
    let src_dir = TempDir::new("refuse-src");
    std::fs::create_dir_all(src_dir.path().join("Kiwi")).unwrap();
    std::fs::write(src_dir.path().join("Kiwi/1.jpg"), b"jpeg").unwrap();
    let src = local(src_dir.path()).await;
    let options = PlanOptions {
        include: vec!["*.jpg".into()],
        label: LabelMode::ParentDirectory,
        images_per_shard: 10,
    };
    let identity = testing::identity(&options);

    // Inside the input: the run would read its own outputs as images.
    let inside = local(&src_dir.path().join("run")).await;
    let err = plan::load_or_create_plan(&src, &inside, &options, &identity, &PlanRun::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "OutputOverlapsInput", "{err}");
    assert!(err.is_usage());
    assert!(!src_dir.path().join("run").exists(), "nothing written");

    // A folder holding other things: refused, naming some of them.
    let out_dir = TempDir::new("refuse-out");
    std::fs::write(out_dir.path().join("thesis.pdf"), b"pdf").unwrap();
    let out = local(out_dir.path()).await;
    let err = plan::load_or_create_plan(&src, &out, &options, &identity, &PlanRun::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "OutputNotEmpty", "{err}");
    assert!(err.to_string().contains("thesis.pdf"), "{err}");
    assert!(!out_dir.path().join("manifests").exists());

    // What a plan cut short leaves (manifests/ without plan.json) is the run's own.
    let partial_dir = TempDir::new("refuse-partial");
    std::fs::create_dir_all(partial_dir.path().join("manifests")).unwrap();
    std::fs::write(partial_dir.path().join("manifests/shard-00000.jsonl"), b"").unwrap();
    let partial = local(partial_dir.path()).await;
    let (plan, created) =
        plan::load_or_create_plan(&src, &partial, &options, &identity, &PlanRun::default())
            .await
            .unwrap();
    assert!(created);
    assert_eq!(plan.images, 1);
}
