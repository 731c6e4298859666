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
    policy.check_endpoint(spec.storage.endpoint.as_deref(), &spec.storage.region)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Refused;

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
