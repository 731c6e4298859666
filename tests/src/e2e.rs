//! When the cluster tests (`tests/tests/cluster.rs`) run, skip or fail, and the settings they
//! run with.
//!
//! They need a Kubernetes cluster with pomona installed (the API server from `KUBECONFIG`), an
//! S3-compatible service reachable both from the test process and from the cluster's pods, a
//! model and a folder of images. `POMONA_E2E` says what to do when any of that is missing:
//!
//! | `POMONA_E2E` | missing cluster or settings |
//! | --- | --- |
//! | unset, empty or `auto` | the test prints why and passes (skips) |
//! | `required` | the test fails with the same reason (the kind workflow sets this) |
//! | `off` | the tests skip even when everything is there |
//!
//! The settings (see [`E2eSettings`]) come from environment variables named in [`VARS`].

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The environment variable that says whether the cluster tests must run.
pub const MODE_VAR: &str = "POMONA_E2E";

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

/// What `POMONA_E2E` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run when everything is there, else skip.
    Auto,
    /// Run; anything missing fails the test.
    Required,
    /// Never run.
    Off,
}

impl Mode {
    /// Parses the value of `POMONA_E2E`. An unknown value is an error rather than a silent
    /// skip, so that a typo in a workflow (`require`) cannot turn the tests off.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Mode::Auto),
            Some("required") => Ok(Mode::Required),
            Some("off") => Ok(Mode::Off),
            Some(other) => Err(format!(
                "{MODE_VAR}={other:?} is not one of `auto`, `required`, `off`"
            )),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the test.
    Run,
    /// Pass without running, for this reason.
    Skip(String),
    /// Fail at once, for this reason.
    Fail(String),
}

/// Whether a cluster test runs, skips or fails.
///
/// `mode` is the raw value of `POMONA_E2E`; `missing` the [`VARS`] that are unset; `cluster`
/// is `Ok` when the API server answered, else why not (`None`: not checked, because the
/// settings were already missing or the tests are off).
pub fn decide(
    mode: Option<&str>,
    missing: &[&str],
    cluster: Option<Result<(), String>>,
) -> Decision {
    let mode = match Mode::parse(mode) {
        Ok(mode) => mode,
        Err(e) => return Decision::Fail(e),
    };
    if mode == Mode::Off {
        return Decision::Skip(format!("{MODE_VAR}=off"));
    }
    let reason = if !missing.is_empty() {
        Some(format!("not set: {}", missing.join(", ")))
    } else {
        match cluster {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("no reachable Kubernetes API server: {e}")),
            None => Some("the cluster was not checked".into()),
        }
    };
    match (reason, mode) {
        (None, _) => Decision::Run,
        (Some(r), Mode::Required) => Decision::Fail(format!("{MODE_VAR}=required but {r}")),
        (Some(r), _) => Decision::Skip(r),
    }
}

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
}

impl E2eSettings {
    /// The settings in `env`, or `None` when one of [`VARS`] is missing.
    pub fn from_env(env: &BTreeMap<String, String>) -> Option<Self> {
        if !missing_vars(env).is_empty() {
            return None;
        }
        let get = |k: &str| env.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        Some(Self {
            s3_endpoint: get(S3_ENDPOINT),
            s3_cluster_endpoint: get(S3_CLUSTER_ENDPOINT),
            access_key: get(S3_ACCESS_KEY),
            secret_key: get(S3_SECRET_KEY),
            bucket: get(S3_BUCKET),
            images: PathBuf::from(get(IMAGES)),
            model: PathBuf::from(get(MODEL)),
            region: Some(get(REGION))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "eu-west-3".into()),
            timeout_secs: get(TIMEOUT_SECS).parse().unwrap_or(900),
            keep_failed: get(KEEP_FAILED) == "1",
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
    fn mode_values() {
        assert_eq!(Mode::parse(None), Ok(Mode::Auto));
        assert_eq!(Mode::parse(Some("")), Ok(Mode::Auto));
        assert_eq!(Mode::parse(Some("auto")), Ok(Mode::Auto));
        assert_eq!(Mode::parse(Some(" required ")), Ok(Mode::Required));
        assert_eq!(Mode::parse(Some("off")), Ok(Mode::Off));
        assert!(Mode::parse(Some("require")).is_err());
        assert!(Mode::parse(Some("1")).is_err());
    }

    #[test]
    fn runs_only_with_every_setting_and_a_cluster() {
        assert_eq!(decide(None, &[], Some(Ok(()))), Decision::Run);
        assert_eq!(decide(Some("required"), &[], Some(Ok(()))), Decision::Run);
    }

    #[test]
    fn skips_without_settings_or_cluster_unless_required() {
        let no_settings = decide(None, &[S3_ENDPOINT, MODEL], None);
        assert_eq!(
            no_settings,
            Decision::Skip(format!("not set: {S3_ENDPOINT}, {MODEL}"))
        );
        let no_cluster = decide(Some("auto"), &[], Some(Err("connection refused".into())));
        assert!(
            matches!(&no_cluster, Decision::Skip(r) if r.contains("connection refused")),
            "{no_cluster:?}"
        );

        let required = decide(Some("required"), &[IMAGES], None);
        assert!(
            matches!(&required, Decision::Fail(r) if r.contains(IMAGES) && r.contains("required")),
            "{required:?}"
        );
        let required = decide(Some("required"), &[], Some(Err("no kubeconfig".into())));
        assert!(
            matches!(&required, Decision::Fail(r) if r.contains("no kubeconfig")),
            "{required:?}"
        );
        // Missing settings win over an unchecked cluster, and an unchecked cluster never runs.
        assert!(matches!(decide(None, &[], None), Decision::Skip(_)));
    }

    #[test]
    fn off_skips_and_a_typo_fails() {
        assert_eq!(
            decide(Some("off"), &[], Some(Ok(()))),
            Decision::Skip(format!("{MODE_VAR}=off"))
        );
        assert!(matches!(
            decide(Some("yes"), &[], Some(Ok(()))),
            Decision::Fail(_)
        ));
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
        assert!(!s.keep_failed);

        e.insert(TIMEOUT_SECS.into(), "120".into());
        e.insert(KEEP_FAILED.into(), "1".into());
        e.insert(REGION.into(), "eu-central-1".into());
        let s = E2eSettings::from_env(&e).expect("complete");
        assert_eq!(
            (s.timeout_secs, s.keep_failed, s.region.as_str()),
            (120, true, "eu-central-1")
        );

        e.insert(S3_BUCKET.into(), "  ".into());
        assert_eq!(missing_vars(&e), vec![S3_BUCKET]);
        assert_eq!(E2eSettings::from_env(&e), None);
    }
}
