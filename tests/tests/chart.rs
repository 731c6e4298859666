//! The Helm chart `charts/pomona` agrees with the rest of the project: its CRD is the generated
//! one, its versions are the workspace's, its defaults are the operator's, it sets only the
//! environment variables the operator reads, and its values schema accepts the chart's values
//! files and refuses the wrong ones of `ci/invalid/`.
//!
//! These checks need no tool. `scripts/chart-checks.sh` runs the ones that need Helm, checkov
//! and kubernetes-validate.

use std::path::{Path, PathBuf};

use pomona_operator::residency::EU_REGIONS;
use pomona_operator::settings::DEFAULT_RUNNER_IMAGE;
use pomona_tests::workspace_root;
use serde_json::Value;

const CHART: &str = "charts/pomona";

fn path(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// The YAML files of a folder of the repository, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let generated = read("crds/featureextraction.yaml");
    let in_chart = read(&format!("{CHART}/crds/featureextraction.yaml"));
    assert!(
        in_chart == generated,
        "{CHART}/crds/featureextraction.yaml differs from crds/featureextraction.yaml (the CRD \
         generated from the API types). Copy it into the chart, from the repository root:\n\
         \n    cp crds/featureextraction.yaml charts/pomona/crds/\n"
    );
    let files = yaml_files(&format!("{CHART}/crds"));
    assert_eq!(
        files.len(),
        1,
        "the chart's crds/ holds the one CRD: {files:?}"
    );
}

#[test]
fn chart_versions_follow_the_workspace() {
    let chart = yaml(&format!("{CHART}/Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2", "Helm 3 and 4 both read v2");
    assert_eq!(chart["name"], "pomona");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml's appVersion is the release of the images it installs: the workspace version"
    );
    let version = chart["version"].as_str().expect("Chart.yaml has a version");
    assert_eq!(
        version.split('.').count(),
        3,
        "the chart version is SemVer: {version}"
    );
}

#[test]
fn chart_defaults_are_the_operators() {
    let values = yaml(&format!("{CHART}/values.yaml"));
    let app_version = env!("CARGO_PKG_VERSION");

    let regions: Vec<&str> = values["config"]["allowedRegions"]
        .as_array()
        .expect("config.allowedRegions is a list")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        regions, EU_REGIONS,
        "config.allowedRegions defaults to the operator's EU regions"
    );

    // The runner image with an empty tag is "<repository>:<appVersion>", the operator's default.
    let runner = &values["runner"]["image"];
    assert_eq!(
        runner["tag"], "",
        "the runner tag defaults to the appVersion"
    );
    assert_eq!(runner["digest"], "");
    assert_eq!(
        format!("{}:{app_version}", runner["repository"].as_str().unwrap()),
        DEFAULT_RUNNER_IMAGE,
        "POMONA_RUNNER_IMAGE defaults to the operator's own default runner image"
    );
    assert_eq!(values["image"]["tag"], "");
    assert_eq!(
        values["image"]["repository"],
        "ghcr.io/pomona-dev/pomona-operator"
    );

    assert_eq!(values["config"]["logLevel"], "info");
    assert_eq!(values["config"]["logFormat"], "json");
    assert_eq!(values["config"]["watchNamespace"], "");
    assert_eq!(values["leaderElection"]["enabled"], true);
    assert_eq!(values["replicaCount"], 2);
    assert_eq!(values["metrics"]["port"], 8080);
}

/// Every environment variable the Deployment sets, in template order.
fn deployment_env_names() -> Vec<String> {
    read(&format!("{CHART}/templates/deployment.yaml"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|n| n.starts_with("POMONA_") || n.starts_with("POD_"))
        .map(String::from)
        .collect()
}

#[test]
fn deployment_sets_the_operators_environment() {
    let names = deployment_env_names();
    // The operator's interface (its settings read these), fixed.
    let interface = [
        "POMONA_ALLOWED_REGIONS",
        "POMONA_RUNNER_IMAGE",
        "POMONA_RUNNER_SERVICE_ACCOUNT",
        "POMONA_ALLOWED_IMAGES",
        "POMONA_ALLOWED_SERVICE_ACCOUNTS",
        "POMONA_ALLOWED_ENDPOINTS",
        "POMONA_COST_PER_CORE_HOUR",
        "POMONA_COST_PER_GIB_HOUR",
        "POMONA_COST_CURRENCY",
        "POMONA_LOG_LEVEL",
        "POMONA_LOG_FORMAT",
        "POMONA_METRICS_ADDR",
        "POMONA_WATCH_NAMESPACE",
        "POMONA_LEADER_ELECTION",
        "POMONA_LEASE_NAME",
        "POMONA_LEASE_SECONDS",
        "POMONA_LEASE_NAMESPACE",
        "POD_NAME",
        "POD_NAMESPACE",
    ];
    assert_eq!(names, interface, "the Deployment's environment");

    // And the operator does read each of them: its sources name every variable.
    let mut sources = String::new();
    for entry in std::fs::read_dir(path("operator/src")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    let unread: Vec<&String> = names
        .iter()
        .filter(|n| !sources.contains(&format!("\"{n}\"")))
        .collect();
    assert!(
        unread.is_empty(),
        "the chart sets variables the operator (operator/src) does not read: {unread:?}"
    );
}

/// `overlay` merged over `base`, as Helm merges a values file over the chart's values.yaml.
fn merged(base: &Value, overlay: &Value) -> Value {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged_value = match b.get(k) {
                    Some(bv) => merged(bv, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged_value);
            }
            Value::Object(out)
        }
        (_, o) => o.clone(),
    }
}

fn schema_errors(validator: &jsonschema::Validator, values: &Value) -> Vec<String> {
    validator
        .iter_errors(values)
        .map(|e| format!("{e} at '{}'", e.instance_path()))
        .collect()
}

#[test]
fn values_schema_accepts_the_chart_values_and_refuses_wrong_ones() {
    let schema: Value = serde_json::from_str(&read(&format!("{CHART}/values.schema.json")))
        .expect("values.schema.json is JSON");
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-07/schema#",
        "draft-07: read by Helm 3 and Helm 4"
    );
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&schema)
        .expect("values.schema.json is a valid schema");

    let defaults = yaml(&format!("{CHART}/values.yaml"));
    let errors = schema_errors(&validator, &defaults);
    assert!(errors.is_empty(), "values.yaml: {errors:?}");

    let good = yaml_files(&format!("{CHART}/ci"));
    assert!(
        good.iter()
            .any(|p| p.ends_with("ci/all-options-values.yaml")),
        "{good:?}"
    );
    for file in &good {
        let values = merged(&defaults, &yaml(&rel(file)));
        let errors = schema_errors(&validator, &values);
        assert!(errors.is_empty(), "{}: {errors:?}", rel(file));
    }

    let bad = yaml_files(&format!("{CHART}/ci/invalid"));
    assert!(
        bad.len() >= 10,
        "ci/invalid/ holds the wrong values: {bad:?}"
    );
    for file in &bad {
        let values = merged(&defaults, &yaml(&rel(file)));
        assert!(
            !validator.is_valid(&values),
            "{} should be refused by values.schema.json",
            rel(file)
        );
    }
}

#[test]
fn all_options_values_set_every_value() {
    // Every leaf of values.yaml (objects descended, lists and maps of the user's own keys taken
    // whole) is set in ci/all-options-values.yaml, so the checks render every branch.
    fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, sub) in map {
                    leaves(sub, &format!("{prefix}.{k}"), out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut defaults = Vec::new();
    leaves(&yaml(&format!("{CHART}/values.yaml")), "", &mut defaults);
    let all = yaml(&format!("{CHART}/ci/all-options-values.yaml"));
    let missing: Vec<&String> = defaults
        .iter()
        .filter(|leaf| {
            let pointer = leaf.replace('.', "/");
            all.pointer(&pointer).is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ci/all-options-values.yaml leaves these values unset: {missing:?}"
    );
}
