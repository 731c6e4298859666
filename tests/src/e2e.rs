//! The settings of the cluster tests (`tests/tests/cluster.rs`).
//!
//! They need a Kubernetes cluster with pomona installed (the API server from `KUBECONFIG`), an
//! S3-compatible service reachable both from the test process and from the cluster's pods, a
//! model and a folder of images. The tests are `#[ignore]`d, so a plain `cargo test` or
//! `cargo nextest run` lists them as skipped, with the reason; `scripts/test.sh` runs them on the
//! local cluster (`--run-ignored only`), and the kind workflow on kind. Once asked to run, a
//! test fails when anything is missing: a cluster test that cannot run is never counted as
//! passed.
//!
//! `scripts/local-cluster.sh env` prints every variable for the local cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The host-side URL of the S3 service (`http://127.0.0.1:30900` on kind).
pub const S3_ENDPOINT: &str = "POMONA_E2E_S3_ENDPOINT";
/// The URL pods use for the same service, put into `spec.storage.endpoint`
/// (`http://minio.minio.svc.cluster.local:9000`).
pub const S3_CLUSTER_ENDPOINT: &str = "POMONA_E2E_S3_CLUSTER_ENDPOINT";
/// Access key of the S3 service.
pub const S3_ACCESS_KEY: &str = "POMONA_E2E_S3_ACCESS_KEY";
/// Secret key of the S3 service.
pub const S3_SECRET_KEY: &str = "POMONA_E2E_S3_SECRET_KEY";
/// A bucket that exists; every test writes under its own prefix in it.
pub const S3_BUCKET: &str = "POMONA_E2E_S3_BUCKET";
/// A folder of images laid out as `<Variety>/<file>.jpg` (the Fruits-360 `Training/` folder).
pub const IMAGES: &str = "POMONA_E2E_IMAGES";
/// The ONNX feature model file (`mobilenetv2_features.onnx`).
pub const MODEL: &str = "POMONA_E2E_MODEL";

/// Every variable the cluster tests need, in the order they are reported when missing.
pub const VARS: [&str; 7] = [
    S3_ENDPOINT,
    S3_CLUSTER_ENDPOINT,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    S3_BUCKET,
    IMAGES,
    MODEL,
];

/// Optional: the region written into `spec.storage.region` (default `eu-west-3`, which the
/// operator allows by default; MinIO ignores it).
pub const REGION: &str = "POMONA_E2E_REGION";
/// Optional: seconds a run may take before the test gives up (default 900).
pub const TIMEOUT_SECS: &str = "POMONA_E2E_TIMEOUT_SECS";
/// Optional: when set to `1`, a failed test leaves its namespace in place for inspection
/// (the workflow then prints its objects and logs).
pub const KEEP_FAILED: &str = "POMONA_E2E_KEEP_FAILED";
/// Optional: the namespace of the operator's Deployment (default `pomona-system`).
pub const OPERATOR_NAMESPACE: &str = "POMONA_E2E_OPERATOR_NAMESPACE";
/// Optional: the runner service account the operator gives runner pods (the chart's
/// `runner.serviceAccount`); each test creates it in its namespace, as a cluster admin lists a
/// namespace in `runner.serviceAccount.namespaces`. Unset: runner pods use `default`.
pub const RUNNER_SERVICE_ACCOUNT: &str = "POMONA_E2E_RUNNER_SERVICE_ACCOUNT";
/// Optional: the local kubelet's folder of pods (`<uid>/containers/<name>-<n>.log`), where the
/// operator's logs are read when the node serves no logs (the local cluster). Unset: logs come
/// from the API (`pods/log`).
pub const POD_LOGS: &str = "POMONA_E2E_POD_LOGS";

/// The variables of [`VARS`] that are unset or empty in `env`.
pub fn missing_vars(env: &BTreeMap<String, String>) -> Vec<&'static str> {
    VARS.iter()
        .copied()
        .filter(|v| env.get(*v).is_none_or(|s| s.trim().is_empty()))
        .collect()
}

/// The cluster tests' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct E2eSettings {
    /// See [`S3_ENDPOINT`].
    pub s3_endpoint: String,
    /// See [`S3_CLUSTER_ENDPOINT`].
    pub s3_cluster_endpoint: String,
    /// See [`S3_ACCESS_KEY`].
    pub access_key: String,
    /// See [`S3_SECRET_KEY`].
    pub secret_key: String,
    /// See [`S3_BUCKET`].
    pub bucket: String,
    /// See [`IMAGES`].
    pub images: PathBuf,
    /// See [`MODEL`].
    pub model: PathBuf,
    /// See [`REGION`].
    pub region: String,
    /// See [`TIMEOUT_SECS`].
    pub timeout_secs: u64,
    /// See [`KEEP_FAILED`].
    pub keep_failed: bool,
    /// See [`OPERATOR_NAMESPACE`].
    pub operator_namespace: String,
    /// See [`RUNNER_SERVICE_ACCOUNT`].
    pub runner_service_account: Option<String>,
    /// See [`POD_LOGS`].
    pub pod_logs: Option<PathBuf>,
}

impl E2eSettings {
    /// The settings in `env`, or which of [`VARS`] are missing.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, String> {
        let missing = missing_vars(env);
        if !missing.is_empty() {
            return Err(format!(
                "not set: {} (`eval \"$(scripts/local-cluster.sh env)\"` sets them for the local cluster)",
                missing.join(", ")
            ));
        }
        let get = |k: &str| env.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        let optional = |k: &str| Some(get(k)).filter(|s| !s.is_empty());
        Ok(Self {
            s3_endpoint: get(S3_ENDPOINT),
            s3_cluster_endpoint: get(S3_CLUSTER_ENDPOINT),
            access_key: get(S3_ACCESS_KEY),
            secret_key: get(S3_SECRET_KEY),
            bucket: get(S3_BUCKET),
            images: PathBuf::from(get(IMAGES)),
            model: PathBuf::from(get(MODEL)),
            region: optional(REGION).unwrap_or_else(|| "eu-west-3".into()),
            timeout_secs: get(TIMEOUT_SECS).parse().unwrap_or(900),
            keep_failed: get(KEEP_FAILED) == "1",
            operator_namespace: optional(OPERATOR_NAMESPACE)
                .unwrap_or_else(|| "pomona-system".into()),
            runner_service_account: optional(RUNNER_SERVICE_ACCOUNT),
            pod_logs: optional(POD_LOGS).map(PathBuf::from),
        })
    }
}

/// The process environment as a map (values that are not UTF-8 are left out).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn full_env() -> BTreeMap<String, String> {
        env(&[
            (S3_ENDPOINT, "http://127.0.0.1:30900"),
            (
                S3_CLUSTER_ENDPOINT,
                "http://minio.minio.svc.cluster.local:9000",
            ),
            (S3_ACCESS_KEY, "ak"),
            (S3_SECRET_KEY, "sk"),
            (S3_BUCKET, "pomona-e2e"),
            (IMAGES, "/data/Training"),
            (MODEL, "/models/m.onnx"),
        ])
    }

    #[test]
    fn settings_come_from_the_environment() {
        assert_eq!(missing_vars(&BTreeMap::new()), VARS.to_vec());
        let mut e = full_env();
        assert!(missing_vars(&e).is_empty());
        let s = E2eSettings::from_env(&e).expect("complete");
        assert_eq!(s.bucket, "pomona-e2e");
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.timeout_secs, 900);
        assert_eq!(s.operator_namespace, "pomona-system");
        assert_eq!((s.runner_service_account, s.pod_logs), (None, None));
        assert!(!s.keep_failed);

        e.insert(TIMEOUT_SECS.into(), "120".into());
        e.insert(KEEP_FAILED.into(), "1".into());
        e.insert(REGION.into(), "eu-central-1".into());
        e.insert(RUNNER_SERVICE_ACCOUNT.into(), "pomona-runner".into());
        let s = E2eSettings::from_env(&e).expect("complete");
        assert_eq!(
            (s.timeout_secs, s.keep_failed, s.region.as_str()),
            (120, true, "eu-central-1")
        );
        assert_eq!(s.runner_service_account.as_deref(), Some("pomona-runner"));

        e.insert(S3_BUCKET.into(), "  ".into());
        e.remove(MODEL);
        let err = E2eSettings::from_env(&e).expect_err("incomplete");
        assert!(
            err.starts_with(&format!("not set: {S3_BUCKET}, {MODEL}")),
            "{err}"
        );
    }
}
