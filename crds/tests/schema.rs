//! The committed CRD, the examples, and every validation rule of the schema.
//!
//! - CEL rules (`x-kubernetes-validations`) are evaluated with kube's client-side CEL evaluator
//!   (`kube::core::cel`, the `cel` feature), on the CRD's own schema with its defaults applied,
//!   as the API server does. Every rule of the CRD must be broken by at least one case below, and
//!   every case must break the rule it names.
//! - OpenAPI bounds (minimum, maximum, lengths, patterns, enums, required fields) are checked with
//!   an independent JSON-Schema validator: for every bound of the spec an invalid value is derived
//!   from the schema itself and must be refused, while the examples must pass.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kube::CustomResourceExt;
use kube::core::cel::{ScopeContext, Validator, analyze_rule, compile_schema};
use pomona_crds::FeatureExtraction;
use serde_json::{Value, json};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn crd_schema() -> Value {
    let crd = FeatureExtraction::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).unwrap()
}

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(crate_dir().join("examples").join(name)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The rules an object breaks, as (rule, message) pairs.
fn cel_errors(object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    match Validator::new().validate(&crd_schema(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| (e.rule.clone(), e.to_string()))
            .collect(),
    }
}

fn bound_errors(object: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&crd_schema())
        .unwrap();
    validator
        .iter_errors(object)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Every `x-kubernetes-validations` rule in a schema, with the path of its node.
fn all_rules(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for rule in rules {
            out.push((path.to_string(), rule["rule"].as_str().unwrap().to_string()));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            all_rules(sub, &format!("{path}.{name}"), out);
        }
    }
    if schema["items"].is_object() {
        all_rules(&schema["items"], &format!("{path}[]"), out);
    }
}

/// Sets `value` at a dotted path (`spec.pca.components`), or removes the field for `None`.
fn with(mut object: Value, path: &str, value: Option<Value>) -> Value {
    let (parents, last) = path.rsplit_once('.').unwrap_or(("", path));
    let mut node = &mut object;
    for key in parents.split('.').filter(|k| !k.is_empty()) {
        if node.get(key).is_none() {
            node[key] = json!({});
        }
        node = &mut node[key];
    }
    let map = node.as_object_mut().expect("the parent is an object");
    match value {
        Some(v) => {
            map.insert(last.to_string(), v);
        }
        None => {
            map.remove(last);
        }
    }
    object
}

#[test]
fn committed_crd_matches_the_types() {
    let path = crate_dir().join("featureextraction.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == pomona_crds::crd_yaml(),
        "{} is out of date with the Rust types: regenerate it with\n  \
         cargo run -p pomona-crds --bin crdgen -- crds/featureextraction.yaml",
        path.display()
    );
}

#[test]
fn examples_parse_into_the_types_and_pass_every_rule() {
    for name in [
        "minimal.yaml",
        "fruits-360.yaml",
        "fruits-360-fast.yaml",
        "fruits-360-weekly.yaml",
    ] {
        let value = example(name);
        let typed: FeatureExtraction = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        assert!(typed.metadata.name.is_some(), "{name} has a name");
        assert_eq!(cel_errors(&value, None), vec![], "{name}");
        assert_eq!(bound_errors(&value), Vec::<String>::new(), "{name}");
    }
    let minimal: FeatureExtraction = serde_json::from_value(example("minimal.yaml")).unwrap();
    assert_eq!(
        minimal.spec.sharding.images_per_shard, 2000,
        "defaults apply"
    );
    assert_eq!(minimal.spec.model.input.width, 224);
    assert_eq!(minimal.spec.source.include.len(), 4);
}

/// The complete example sets every field of the spec, so it documents them all.
#[test]
fn complete_example_sets_every_spec_field() {
    fn walk(schema: &Value, value: &Value, path: &str, missing: &mut Vec<String>) {
        // Kubernetes' own types are documented upstream; their top level is enough here.
        if path.ends_with(".resources") || path.ends_with(".tolerations") {
            return;
        }
        let Some(props) = schema["properties"].as_object() else {
            return;
        };
        for (name, sub) in props {
            let field = format!("{path}.{name}");
            match value.get(name) {
                Some(v) => walk(sub, v, &field, missing),
                None => missing.push(field),
            }
        }
    }
    let schema = crd_schema();
    let mut missing = vec![];
    walk(
        &schema["properties"]["spec"],
        &example("fruits-360.yaml")["spec"],
        "spec",
        &mut missing,
    );
    // The PCA modes exclude each other: the example shows varianceToKeep. Reuse needs a
    // previous run: fruits-360-weekly.yaml shows it.
    missing.retain(|f| {
        f != "spec.pca.components" && f != "spec.pca.from" && f != "spec.source.reuseFrom"
    });
    assert_eq!(missing, Vec::<String>::new());
}

/// A case: an object (and, for updates, the old one) and the rule it must break, or none.
struct Case {
    what: &'static str,
    object: Value,
    old: Option<Value>,
    breaks: Option<&'static str>,
}

/// The rule of `spec.clustering.k`.
const K_RULE: &str = "string(self) == 'auto' || (string(self).matches('^[0-9]{1,4}$') && int(string(self)) >= 2 && int(string(self)) <= 1000)";

fn cel_cases() -> Vec<Case> {
    let base = example("minimal.yaml");
    let full = example("fruits-360.yaml");
    let set = |path: &str, v: Value| with(base.clone(), path, Some(v));
    let create = |what, object, breaks| Case {
        what,
        object,
        old: None,
        breaks,
    };
    let update = |what, old: &Value, path: &str, v: Value, breaks| Case {
        what,
        object: with(old.clone(), path, Some(v)),
        old: Some(old.clone()),
        breaks,
    };
    let s3_rule = "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')";
    let model_rule = "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$') || self.matches('^file:///.+$')";
    let one_pca = "(has(self.components) ? 1 : 0) + (has(self.varianceToKeep) ? 1 : 0) + (has(self.from) ? 1 : 0) == 1";
    let inside = "!((self.output.uri + '/').startsWith(self.source.uri.endsWith('/') ? self.source.uri : self.source.uri + '/'))";
    let sharding = "self.imagesPerShard == oldSelf.imagesPerShard && self.retriesPerShard == oldSelf.retriesPerShard && self.maxFailedShards == oldSelf.maxFailedShards && self.shardsPerProjectionPod == oldSelf.shardsPerProjectionPod && self.shardsPerMergePod == oldSelf.shardsPerMergePod";
    let merge_block = "self == 64 || self == 4096 || self == 262144";
    vec![
        // Merge blocks: subtrees of the merge tree only.
        create(
            "merge block of 100 shards",
            set("spec.sharding.shardsPerMergePod", json!(100)),
            Some(merge_block),
        ),
        create(
            "merge block of 64 shards",
            set("spec.sharding.shardsPerMergePod", json!(64)),
            None,
        ),
        // URIs
        create(
            "source on http",
            set("spec.source.uri", json!("https://fruits-eu/images/")),
            Some(s3_rule),
        ),
        create(
            "source bucket with capitals",
            set("spec.source.uri", json!("s3://Fruits_EU/images/")),
            Some(s3_rule),
        ),
        create(
            "source a whole bucket",
            set("spec.source.uri", json!("s3://fruits-images")),
            None,
        ),
        create(
            "output on gs",
            set("spec.output.uri", json!("gs://fruits-eu/runs/a/")),
            Some(s3_rule),
        ),
        create(
            "model over https",
            set("spec.model.uri", json!("https://example.org/m.onnx")),
            Some(model_rule),
        ),
        create(
            "model as a bucket with no key",
            set("spec.model.uri", json!("s3://fruits-eu/")),
            Some(model_rule),
        ),
        create(
            "model baked into the image",
            set("spec.model.uri", json!("file:///models/mobilenetv2.onnx")),
            None,
        ),
        create(
            "pca.from a local path",
            set("spec.pca", json!({"from": "/runs/a/pca/"})),
            Some(s3_rule),
        ),
        create(
            "pca.from an earlier run",
            set("spec.pca", json!({"from": "s3://fruits-eu/runs/a/pca/"})),
            None,
        ),
        // storage
        create(
            "endpoint without scheme",
            set("spec.storage.endpoint", json!("minio:9000")),
            Some("self.matches('^https?://[^/]+/?$')"),
        ),
        create(
            "endpoint with a path",
            set("spec.storage.endpoint", json!("http://minio:9000/bucket")),
            Some("self.matches('^https?://[^/]+/?$')"),
        ),
        create(
            "endpoint with a port",
            set(
                "spec.storage.endpoint",
                json!("http://minio.minio.svc:9000"),
            ),
            None,
        ),
        // model input
        create(
            "scale zero",
            set("spec.model.input", json!({"scale": 0.0})),
            Some("self != 0.0"),
        ),
        create(
            "scale negative",
            set("spec.model.input", json!({"scale": -0.5})),
            None,
        ),
        // pca modes
        create(
            "two pca modes",
            set("spec.pca", json!({"components": 5, "varianceToKeep": 0.9})),
            Some(one_pca),
        ),
        create(
            "three pca modes",
            set(
                "spec.pca",
                json!({"components": 5, "varianceToKeep": 0.9, "from": "s3://b/p/pca/"}),
            ),
            Some(one_pca),
        ),
        create("no pca mode", set("spec.pca", json!({})), Some(one_pca)),
        create(
            "variance zero",
            set("spec.pca", json!({"varianceToKeep": 0.0})),
            Some("self > 0.0 && self <= 1.0"),
        ),
        create(
            "variance above one",
            set("spec.pca", json!({"varianceToKeep": 1.5})),
            Some("self > 0.0 && self <= 1.0"),
        ),
        create(
            "variance of one",
            set("spec.pca", json!({"varianceToKeep": 1.0})),
            None,
        ),
        // clustering
        create(
            "21 clusters",
            set("spec.clustering", json!({"k": 21})),
            None,
        ),
        create(
            "clusters chosen by silhouette",
            set("spec.clustering", json!({"k": "auto"})),
            None,
        ),
        create(
            "one cluster",
            set("spec.clustering", json!({"k": 1})),
            Some(K_RULE),
        ),
        create(
            "too many clusters",
            set("spec.clustering", json!({"k": 1001})),
            Some(K_RULE),
        ),
        create(
            "clusters by another word",
            set("spec.clustering", json!({"k": "many"})),
            Some(K_RULE),
        ),
        // output placement
        create(
            "output inside source",
            set(
                "spec.output.uri",
                json!("s3://fruits-eu/images/Training/runs/a/"),
            ),
            Some(inside),
        ),
        create(
            "output equal to source",
            set("spec.output.uri", json!("s3://fruits-eu/images/Training")),
            Some(inside),
        ),
        create(
            "output beside source sharing a name prefix",
            set(
                "spec.output.uri",
                json!("s3://fruits-eu/images/Training-runs/a/"),
            ),
            None,
        ),
        // immutability
        update(
            "source edited",
            &base,
            "spec.source.uri",
            json!("s3://fruits-eu/other/"),
            Some("self == oldSelf"),
        ),
        update(
            "model edited",
            &full,
            "spec.model.sha256",
            json!("0".repeat(64)),
            Some("self == oldSelf"),
        ),
        update(
            "output edited",
            &base,
            "spec.output.uri",
            json!("s3://fruits-eu/runs/b/"),
            Some("self == oldSelf"),
        ),
        update(
            "pca edited",
            &base,
            "spec.pca",
            json!({"components": 10}),
            Some("self == oldSelf"),
        ),
        update(
            "storage edited",
            &base,
            "spec.storage.region",
            json!("eu-central-1"),
            Some("self == oldSelf"),
        ),
        update(
            "shard size edited",
            &full,
            "spec.sharding.imagesPerShard",
            json!(100),
            Some(sharding),
        ),
        update(
            "retries edited",
            &full,
            "spec.sharding.retriesPerShard",
            json!(5),
            Some(sharding),
        ),
        update(
            "projection pods edited",
            &full,
            "spec.sharding.shardsPerProjectionPod",
            json!(16),
            Some(sharding),
        ),
        update(
            "merge pods edited",
            &full,
            "spec.sharding.shardsPerMergePod",
            json!(64),
            Some(sharding),
        ),
        update(
            "parallelism edited",
            &full,
            "spec.sharding.parallelism",
            json!(10),
            None,
        ),
        update("suspended", &full, "spec.suspend", json!(true), None),
        update(
            "runner edited",
            &full,
            "spec.runner.batchSize",
            json!(8),
            None,
        ),
        update(
            "ttl edited",
            &full,
            "spec.ttlSecondsAfterFinished",
            json!(60),
            None,
        ),
    ]
}

#[test]
fn every_cel_rule_accepts_and_refuses_what_it_should() {
    let mut broken = BTreeSet::new();
    let mut failures = vec![];
    for case in cel_cases() {
        let errors = cel_errors(&case.object, case.old.as_ref());
        match case.breaks {
            None if !errors.is_empty() => {
                failures.push(format!("{}: refused {errors:?}", case.what))
            }
            None => {}
            Some(rule) => {
                if !errors.iter().any(|(r, _)| r == rule) {
                    failures.push(format!(
                        "{}: expected `{rule}` to fail, got {errors:?}",
                        case.what
                    ));
                }
                if let Some((_, message)) = errors.iter().find(|(r, _)| r == rule) {
                    assert!(!message.is_empty(), "{}: a refusal says why", case.what);
                }
                broken.extend(errors.into_iter().map(|(r, _)| r));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let mut rules = vec![];
    all_rules(&crd_schema(), "", &mut rules);
    let untested: Vec<_> = rules.iter().filter(|(_, r)| !broken.contains(r)).collect();
    assert!(rules.len() >= 12, "the CRD has its rules: {rules:?}");
    assert!(untested.is_empty(), "rules no case breaks: {untested:#?}");
}

#[test]
fn refusals_read_well() {
    let object = with(
        example("minimal.yaml"),
        "spec.pca",
        Some(json!({"components": 5, "from": "s3://b/p/pca/"})),
    );
    let errors = cel_errors(&object, None);
    assert!(
        errors.iter().any(|(_, m)| m.contains("spec.pca")
            && m.contains("exactly one of components, varianceToKeep and from")),
        "{errors:?}"
    );
}

#[test]
fn every_rule_compiles_and_stays_within_the_cost_budget() {
    fn walk(schema: &Value, path: &str, warnings: &mut Vec<String>) {
        if schema.get("x-kubernetes-validations").is_some() {
            let compiled = compile_schema(schema);
            for error in compiled.compilation_errors() {
                warnings.push(format!("{path}: {error}"));
            }
            for rule in schema["x-kubernetes-validations"].as_array().unwrap() {
                let rule = rule["rule"].as_str().unwrap();
                for w in analyze_rule(rule, &compiled, ScopeContext::CrdValidation) {
                    warnings.push(format!("{path}: {}", w.message));
                }
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                walk(sub, &format!("{path}.{name}"), warnings);
            }
        }
    }
    let mut warnings = vec![];
    walk(&crd_schema(), "", &mut warnings);
    assert_eq!(warnings, Vec::<String>::new());
}

/// For every OpenAPI bound under `spec`, derives a value that breaks it from the schema itself,
/// puts it in the complete example, and checks that the schema refuses the result.
#[test]
fn every_openapi_bound_refuses_what_breaks_it() {
    fn violations(schema: &Value, path: &str, out: &mut Vec<(String, String, Option<Value>)>) {
        if path.ends_with(".resources") || path.ends_with(".tolerations") {
            return; // Kubernetes' own types
        }
        let mut add =
            |what: &str, v: Option<Value>| out.push((path.to_string(), what.to_string(), v));
        if let Some(min) = schema["minimum"].as_f64() {
            add("minimum", Some(json!(min as i64 - 1)));
        }
        if let Some(max) = schema["maximum"].as_f64() {
            add("maximum", Some(json!(max as i64 + 1)));
        }
        if let Some(min) = schema["minLength"].as_u64().filter(|&m| m > 0) {
            add("minLength", Some(json!("a".repeat(min as usize - 1))));
        }
        if let Some(max) = schema["maxLength"].as_u64() {
            add("maxLength", Some(json!("a".repeat(max as usize + 1))));
        }
        if schema["pattern"].is_string() {
            add("pattern", Some(json!("NOT VALID!")));
        }
        if schema["enum"].is_array() {
            add("enum", Some(json!("Bogus")));
        }
        if let Some(min) = schema["minItems"].as_u64().filter(|&m| m > 0) {
            add("minItems", Some(json!(vec!["*.jpg"; min as usize - 1])));
        }
        if let Some(max) = schema["maxItems"].as_u64() {
            add("maxItems", Some(json!(vec!["*.jpg"; max as usize + 1])));
        }
        if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
            let mut inner = vec![];
            violations(items, "", &mut inner);
            for (_, what, v) in inner {
                out.push((path.to_string(), format!("items.{what}"), Some(json!([v]))));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                violations(sub, &format!("{path}.{name}"), out);
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                let field = format!("{path}.{}", required.as_str().unwrap());
                out.push((field, "required".into(), None));
            }
        }
    }

    let full = example("fruits-360.yaml");
    assert_eq!(bound_errors(&full), Vec::<String>::new());
    let mut cases = vec![];
    violations(&crd_schema()["properties"]["spec"], "spec", &mut cases);
    assert!(
        cases.len() >= 40,
        "the spec has its bounds: {}",
        cases.len()
    );
    let accepted: Vec<_> = cases
        .iter()
        .filter(|(path, _, value)| {
            bound_errors(&with(full.clone(), path, value.clone())).is_empty()
        })
        .map(|(path, what, _)| format!("{path}: {what}"))
        .collect();
    assert!(
        accepted.is_empty(),
        "values that break a bound but pass: {accepted:#?}"
    );
}
