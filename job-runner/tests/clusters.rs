//! Label agreement and the k-means grouping (`--clusters`) on real features (the real model on
//! Fruits-360 images): the scores against scikit-learn's KMeans on the same reduced vectors,
//! the files and pictures, `auto`, reruns that repeat their bytes, and runs without labels.

mod common;

use std::path::Path;
use std::process::Command;

use arrow_array::{Array, UInt32Array};
use common::cli::{copy_varieties, pomona, read_parquet, strings, summary};
use pomona_crds::contract::OutputLayout;
use pomona_runner::report::CLUSTERS_SIZE;
use pomona_storage::testing::TempDir;
use serde_json::Value;

const VARIETIES: [&str; 8] = [
    "Apple Red 1",
    "Banana 1",
    "Blueberry 1",
    "Cherry 1",
    "Corn 1",
    "Lemon 1",
    "Pear Kaiser 1",
    "Tomato 1",
];

fn read_json(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn oracle(run: &str, k: usize) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle/kmeans.py");
    let py = common::python();
    let out = Command::new(&py)
        .arg(script)
        .args([run, &k.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{py}` ({e}); set POMONA_PYTHON"));
    assert!(
        out.status.success(),
        "the scikit-learn oracle failed with `{py}` (./scripts/test.sh installs it and sets \
         POMONA_PYTHON):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle JSON")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The cluster files of a run: (paths, clusters), shard after shard.
fn clusters(layout: &OutputLayout, shards: u32) -> (Vec<String>, Vec<u32>) {
    let (mut paths, mut ids) = (Vec::new(), Vec::new());
    for shard in 0..shards {
        for batch in read_parquet(layout.clusters(shard)) {
            paths.extend(strings(&batch, "path"));
            let c = batch.column_by_name("cluster").unwrap();
            let c = c.as_any().downcast_ref::<UInt32Array>().unwrap();
            ids.extend((0..c.len()).map(|i| c.value(i)));
        }
    }
    (paths, ids)
}

#[test]
fn kmeans_scores_match_scikit_learn_and_a_rerun_repeats_its_bytes() {
    common::init_ort();
    let dir = TempDir::new("clusters");
    let input = dir.path().join("images");
    let n = copy_varieties(&input, &VARIETIES);
    let output = dir.path().join("run").to_str().unwrap().to_string();
    let k = VARIETIES.len();
    let out = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            &output,
            "--images-per-shard",
            "200",
            "--components",
            "20",
            "--clusters",
            &k.to_string(),
        ],
        &[],
    );
    assert!(out.status.success(), "pomona run failed");
    let line = summary(&out);
    let layout = OutputLayout::new(&output);
    let report = read_json(&layout.summary_json());

    // Label agreement: in the summary line and summary.json, on every image (fewer than
    // 10,000), and high for eight very different fruits.
    let agreement = line
        .label_agreement
        .expect("labelAgreement in the summary line");
    assert_eq!(num(&report["labelAgreement"]), agreement);
    assert_eq!(report["labelAgreementSample"], n);
    assert!(agreement > 0.9 && agreement <= 1.0, "{agreement}");

    // What the run used, measured by its process: in the summary line and, as `pomona run`'s
    // cost, in summary.json (written before the line, so with no more CPU seconds).
    let cpu = line.cpu_seconds.expect("cpuSeconds in the summary line");
    let cost = &report["cost"];
    let measured = num(&cost["cpuSeconds"]);
    assert!(measured > 0.0 && measured <= cpu, "{cost} vs {cpu}");
    assert_eq!(cost["pods"], 1, "{cost}");
    let per_hour = (num(&report["processed"]) / measured * 3600.0 * 10.0).round() / 10.0;
    assert_eq!(num(&cost["imagesPerCoreHour"]), per_hour, "{cost}");
    for absent in [
        "requestedCoreSeconds",
        "requestedMemoryGiBSeconds",
        "estimated",
    ] {
        assert!(
            cost.get(absent).is_none(),
            "no {absent} outside Kubernetes: {cost}"
        );
    }

    // The grouping, against scikit-learn's KMeans (best of 10 initialisations) on the same
    // reduced vectors.
    let c = &report["clustering"];
    assert_eq!(
        (c["k"].as_u64(), c["images"].as_u64()),
        (Some(k as u64), Some(n))
    );
    assert_eq!(
        (c["method"].as_str(), c["chosenBy"].as_str()),
        (Some("lloyd"), Some("given"))
    );
    let sizes: Vec<u64> = c["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!((sizes.len(), sizes.iter().sum::<u64>()), (k, n));
    assert_eq!(c["labelled"], n);
    let silhouette = num(&c["silhouette"]);
    assert!(silhouette > 0.0 && silhouette < 1.0, "{silhouette}");
    let sk = oracle(&output, k);
    assert_eq!(sk["rows"], n);
    // Our scores are scikit-learn's definitions, computed on our clusters.
    for score in ["ari", "nmi", "purity"] {
        let (ours, theirs) = (num(&c[score]), num(&sk["ours"][score]));
        assert!((ours - theirs).abs() < 1e-9, "{score}: {ours} vs {theirs}");
    }
    assert!(
        (num(&c["inertia"]) - num(&sk["ours"]["inertia"])).abs() <= 1e-3 * num(&c["inertia"]),
        "inertia {} vs {}",
        c["inertia"],
        sk["ours"]["inertia"]
    );
    for score in ["ari", "nmi"] {
        let (ours, theirs) = (num(&c[score]), num(&sk["sklearn"][score]));
        assert!(
            ours >= theirs - 0.05,
            "{score}: ours {ours}, scikit-learn {theirs}"
        );
    }

    // The files: one per shard, in the reduced files' order; the picture.
    let shards = n.div_ceil(200) as u32;
    let (paths, ids) = clusters(&layout, shards);
    assert_eq!(paths.len() as u64, n);
    let mut reduced_paths = Vec::new();
    for shard in 0..shards {
        for batch in read_parquet(layout.reduced(shard)) {
            reduced_paths.extend(strings(&batch, "path"));
        }
    }
    assert_eq!(paths, reduced_paths);
    assert!(ids.iter().all(|&c| (c as usize) < k));
    let png = image::open(layout.clusters_png()).unwrap();
    assert_eq!((png.width(), png.height()), CLUSTERS_SIZE);

    // A rerun of the reduce step writes the same bytes (but its timings).
    let before: Vec<Vec<u8>> = (0..shards)
        .map(|s| std::fs::read(layout.clusters(s)).unwrap())
        .collect();
    let png_before = std::fs::read(layout.clusters_png()).unwrap();
    let reduce = |extra: &[&str]| {
        let mut args = vec!["reduce", "--output", &output, "--components", "20"];
        args.extend_from_slice(extra);
        let out = pomona(&args, &[]);
        assert!(out.status.success(), "pomona reduce {extra:?} failed");
        read_json(&layout.summary_json())
    };
    let k_arg = k.to_string();
    let again = reduce(&["--clusters", &k_arg]);
    let after: Vec<Vec<u8>> = (0..shards)
        .map(|s| std::fs::read(layout.clusters(s)).unwrap())
        .collect();
    assert!(before == after, "the cluster files changed on a rerun");
    assert!(png_before == std::fs::read(layout.clusters_png()).unwrap());
    let without_seconds = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("seconds");
        v
    };
    assert_eq!(without_seconds(&again["clustering"]), without_seconds(c));
    assert_eq!(again["labelAgreement"], report["labelAgreement"]);

    // auto: every k from 2 to 30 scored, the best silhouette kept.
    let auto = reduce(&["--clusters", "auto"]);
    let a = &auto["clustering"];
    assert_eq!(a["chosenBy"], "silhouette");
    let candidates = a["candidates"].as_array().unwrap();
    let ks: Vec<u64> = candidates
        .iter()
        .map(|c| c["k"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, (2..=30).collect::<Vec<u64>>());
    let best = candidates
        .iter()
        .max_by(|x, y| num(&x["silhouette"]).total_cmp(&num(&y["silhouette"])))
        .unwrap();
    assert_eq!(a["k"], best["k"]);

    // Without --clusters, a rerun leaves no clusters behind.
    let plain = reduce(&[]);
    assert!(plain.get("clustering").is_none());
    assert!(!Path::new(&layout.clusters(0)).exists());
    assert!(!Path::new(&layout.clusters_png()).exists());
}

#[test]
fn a_run_without_labels_has_no_label_agreement_but_can_be_grouped() {
    common::init_ort();
    let dir = TempDir::new("clusters-unlabelled");
    let input = dir.path().join("images");
    let n = copy_varieties(&input, &["Banana 1", "Corn 1"]);
    let output = dir.path().join("run").to_str().unwrap().to_string();
    let out = pomona(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            &output,
            "--label",
            "none",
            "--components",
            "5",
            "--clusters",
            "2",
        ],
        &[],
    );
    assert!(out.status.success(), "pomona run failed");
    assert_eq!(summary(&out).label_agreement, None);
    let report = read_json(&OutputLayout::new(&output).summary_json());
    assert!(report.get("labelAgreement").is_none(), "{report}");
    let c = &report["clustering"];
    assert_eq!(c["images"], n);
    for score in ["ari", "nmi", "purity", "labelled"] {
        assert!(c.get(score).is_none(), "{score} without labels");
    }
    let sizes: Vec<u64> = c["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 2);
    assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<u64>(), n);
}
