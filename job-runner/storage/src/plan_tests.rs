//! Unit tests of the pure planning steps.

use super::*;

fn obj(key: &str, size: u64) -> ObjectMeta {
    ObjectMeta {
        key: key.into(),
        size,
        etag: Some(format!("\"{size}\"")),
    }
}

fn entries(n: usize) -> Vec<ManifestEntry> {
    (0..n)
        .map(|i| ManifestEntry {
            key: format!("img-{i:06}.jpg"),
            size: 10,
            etag: None,
            label: String::new(),
        })
        .collect()
}

#[test]
fn labels_come_from_the_parent_folder() {
    let p = LabelMode::ParentDirectory;
    assert_eq!(label_of("Training/Banana 1/3_100.jpg", "", p), "Banana 1");
    assert_eq!(label_of("Banana/x.jpg", "", p), "Banana");
    assert_eq!(label_of("x.jpg", "", p), "");
    assert_eq!(label_of("x.jpg", "images/Apple Red 1/", p), "Apple Red 1");
    assert_eq!(label_of("x.jpg", "/data/Kiwi", p), "Kiwi");
    assert_eq!(
        label_of("Training/Banana 1/3_100.jpg", "", LabelMode::None),
        ""
    );
}

#[test]
fn selection_filters_and_labels() {
    let include = Patterns::new(&["*.jpg", "*.png"]).unwrap();
    let objects = vec![
        obj("README.md", 9),
        obj("Test/Kiwi/c.png", 2),
        obj("Training/Apple/a.jpg", 1),
        obj("Training/Apple/notes.txt", 9),
        obj("Training/Kiwi/b.JPG", 3),
    ];
    let got = select(&objects, &include, "", LabelMode::ParentDirectory);
    let keys: Vec<_> = got
        .iter()
        .map(|e| (e.key.as_str(), e.label.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("Test/Kiwi/c.png", "Kiwi"),
            ("Training/Apple/a.jpg", "Apple"),
            ("Training/Kiwi/b.JPG", "Kiwi"),
        ]
    );
    assert_eq!(got[1].etag.as_deref(), Some("\"1\""));
    assert_eq!(got[1].size, 1);
}

#[test]
fn manifests_round_trip_as_json_lines() {
    let mut e = entries(3);
    e[1].etag = Some("\"abc\"".into());
    e[2].label = "Banana 1".into();
    let body = to_jsonl(&e);
    let text = std::str::from_utf8(&body).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.ends_with('\n'));
    assert_eq!(from_jsonl("k", &body).unwrap(), e);
    assert_eq!(from_jsonl("k", b"").unwrap(), vec![]);
    let bad = from_jsonl("m.jsonl", b"{\"key\":1}\n").unwrap_err();
    assert!(
        bad.to_string().starts_with("corrupt m.jsonl: line 1"),
        "{bad}"
    );
}

#[test]
fn locations_overlap_when_one_lies_inside_the_other() {
    let at = |uri: &str| Location::parse(uri).unwrap();
    for (a, b) in [
        ("s3://bkt/images/", "s3://bkt/images/run/"),
        ("s3://bkt/images/run/", "s3://bkt/images/"),
        ("s3://bkt/images/", "s3://bkt/images"),
        ("s3://bkt/", "s3://bkt/images/"),
        ("/data/images", "/data/images/out"),
    ] {
        assert!(overlap(&at(a), &at(b)), "{a} {b}");
    }
    for (a, b) in [
        ("s3://bkt/images/", "s3://bkt/images-run/"),
        ("s3://bkt/images/", "s3://ckt/images/"),
        ("/data/images", "/data/images-out"),
        ("s3://bkt/images/", "/data/images"),
    ] {
        assert!(!overlap(&at(a), &at(b)), "{a} {b}");
    }
}

#[test]
fn only_a_pomona_run_s_own_objects_make_an_output_prefix_reusable() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(foreign_children(&names(&[])).is_empty());
    assert!(foreign_children(&names(&["manifests/", "_SUCCESS"])).is_empty());
    assert_eq!(
        foreign_children(&names(&["holiday.jpg", "manifests/", "notes/"])),
        ["holiday.jpg", "notes/"]
    );
}
