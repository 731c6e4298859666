//! Checks a `FeatureExtraction` passes before it runs, beyond what the CRD schema can check:
//! the ones that depend on the operator's settings, on the runner's abilities or on the plan.
//! Pure: each failure carries the condition reason and the message users read in the status.

use pomona_crds::FeatureExtractionSpec;
use pomona_crds::contract::ShardPlanError;
use thiserror::Error;

use crate::policy::Refused;
use crate::residency::RegionRefused;
use crate::settings::Settings;

/// Why a resource cannot run.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Invalid {
    /// `spec.storage.region` is outside the operator's allowed regions.
    #[error(transparent)]
    Region(#[from] RegionRefused),
    /// The resource names an image, service account or endpoint the policy does not allow.
    #[error(transparent)]
    Policy(#[from] Refused),
    /// Neither the resource nor the operator names a runner image.
    #[error(
        "spec.runner.image is unset and the operator has no default runner image \
         (--runner-image / POMONA_RUNNER_IMAGE): set spec.runner.image"
    )]
    NoRunnerImage,
    /// The run's images cannot be sharded into one Indexed Job
    /// ([`pomona_crds::contract::shard_plan`]).
    #[error(transparent)]
    Shards(#[from] ShardPlanError),
    /// A `spec.source.reuseFrom` location is the run's output, or lies inside it or around it:
    /// the run would copy rows from the output it is writing.
    #[error(
        "spec.source.reuseFrom {uri} overlaps spec.output.uri {output}: name previous runs' \
         outputs, not this run's"
    )]
    ReuseOverlapsOutput {
        /// The reuse location.
        uri: String,
        /// `spec.output.uri`.
        output: String,
    },
    /// The plan step found that the run cannot be planned as specified: an empty source, access
    /// denied, an unusable include pattern, an output prefix holding another run's plan.
    #[error("{message}")]
    Plan {
        /// The condition reason (`EmptySource`, `AccessDenied`, `OutputInUse`, …), from the plan
        /// pod's summary.
        reason: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Invalid {
    /// The reason of the Failed condition (CamelCase, as the API conventions ask).
    pub fn reason(&self) -> &str {
        match self {
            Invalid::Region(_) => "RegionNotAllowed",
            Invalid::Policy(refused) => refused.reason(),
            Invalid::NoRunnerImage => "NoRunnerImage",
            Invalid::ReuseOverlapsOutput { .. } => "ReuseOverlapsOutput",
            Invalid::Shards(ShardPlanError::TooManyImages { .. }) => "TooManyImages",
            Invalid::Shards(ShardPlanError::ZeroShardSize) => "InvalidShardSize",
            Invalid::Plan { reason, .. } => reason,
        }
    }
}

/// The reasons of the refusals [`validate`] makes: they depend on the operator's settings, so a
/// run refused with one is checked again when the operator restarts.
pub const SETTINGS_REASONS: [&str; 5] = [
    "RegionNotAllowed",
    "NoRunnerImage",
    "ImageNotAllowed",
    "ServiceAccountNotAllowed",
    "EndpointNotAllowed",
];

/// Checks a spec against the operator's settings and the admin's policy, before any Job of the
/// run exists.
pub fn validate(spec: &FeatureExtractionSpec, settings: &Settings) -> Result<(), Invalid> {
    settings
        .allowed_regions
        .check("spec.storage.region", &spec.storage.region)?;
    let image = spec.runner.image.as_deref().map(str::trim);
    if image.is_none_or(str::is_empty) && settings.default_image().is_none() {
        return Err(Invalid::NoRunnerImage);
    }
    let policy = settings.policy();
    policy.check_image(image)?;
    policy.check_service_account(spec.runner.service_account_name.as_deref())?;
    // The endpoint policy covers the reuse locations too: they are read through the same
    // storage settings as the source and the output.
    policy.check_endpoint(spec.storage.endpoint.as_deref(), &spec.storage.region)?;
    check_reuse_from(spec)
}

/// Refuses a reuse location that is the output, or lies inside it or around it (prefixes
/// compared with a trailing `/`, as the runner compares them).
fn check_reuse_from(spec: &FeatureExtractionSpec) -> Result<(), Invalid> {
    let folder = |uri: &str| {
        let mut uri = uri.trim().to_string();
        if !uri.ends_with('/') {
            uri.push('/');
        }
        uri
    };
    let output = folder(&spec.output.uri);
    for uri in &spec.source.reuse_from {
        let reuse = folder(uri);
        if reuse.starts_with(&output) || output.starts_with(&reuse) {
            return Err(Invalid::ReuseOverlapsOutput {
                uri: uri.clone(),
                output: spec.output.uri.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Refused;

    #[test]
    fn a_reuse_location_must_be_another_runs_output() {
        let mut spec = serde_yaml::from_str::<pomona_crds::FeatureExtraction>(include_str!(
            "../../crds/examples/minimal.yaml"
        ))
        .unwrap()
        .spec;
        assert_eq!(check_reuse_from(&spec), Ok(()));
        spec.source.reuse_from = vec![
            "s3://fruits-eu/runs/fruits-minimal-w47/".into(),
            "s3://other/runs/fruits-minimal".into(),
        ];
        assert_eq!(check_reuse_from(&spec), Ok(()));
        for overlapping in [
            "s3://fruits-eu/runs/fruits-minimal",
            "s3://fruits-eu/runs/fruits-minimal/",
            "s3://fruits-eu/runs/fruits-minimal/old/",
            "s3://fruits-eu/runs/",
        ] {
            spec.source.reuse_from = vec!["s3://fruits-eu/runs/w47/".into(), overlapping.into()];
            let refused = check_reuse_from(&spec).unwrap_err();
            assert_eq!(refused.reason(), "ReuseOverlapsOutput");
            assert!(refused.to_string().contains(overlapping), "{refused}");
        }
    }

    #[test]
    fn every_settings_refusal_is_checked_again_on_restart() {
        let refusals = [
            Invalid::NoRunnerImage,
            Invalid::Region(RegionRefused {
                what: String::new(),
                region: String::new(),
                allowed: String::new(),
            }),
            Invalid::Policy(Refused::Image {
                image: String::new(),
                allowed: String::new(),
            }),
            Invalid::Policy(Refused::ServiceAccount {
                name: String::new(),
                allowed: String::new(),
            }),
            Invalid::Policy(Refused::Endpoint {
                endpoint: String::new(),
                listed: String::new(),
            }),
        ];
        let reasons: Vec<&str> = refusals.iter().map(Invalid::reason).collect();
        assert_eq!(reasons.len(), SETTINGS_REASONS.len());
        for reason in reasons {
            assert!(SETTINGS_REASONS.contains(&reason), "{reason}");
        }
    }
}
