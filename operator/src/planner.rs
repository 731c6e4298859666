//! Planning a run from the operator: the S3 connection a resource asks for, and the shared
//! planner of `pomona-storage` (the same code `pomona plan` runs), which lists the source, writes
//! the shard manifests and `manifests/plan.json` under the output prefix.
//!
//! A plan is made once. The plan already under the output prefix is reused (so a status write
//! lost after planning never leads to a different plan), and it must be the plan of this
//! resource: same source, same shard size.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use pomona_crds::FeatureExtractionSpec;
use pomona_crds::contract::Plan;
use pomona_storage::plan::{PlanError, PlanOptions, load_or_create_plan};
use pomona_storage::{S3Config, StaticCredentials, Storage, StorageError};

use crate::status::PlanTotals;
use crate::validate::Invalid;

/// Keys the credentials Secret holds (the names of the AWS SDK's environment variables, which
/// is also how the runner pods receive them).
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// See [`ACCESS_KEY_ID`]; optional.
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// Why planning did not give a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanFailure {
    /// The resource can never be planned as it is (empty source, bad pattern, too many shards,
    /// an output prefix holding another run's plan): the run fails with this reason.
    #[error(transparent)]
    Permanent(Invalid),
    /// Storage could not be reached or refused the request (network, credentials, permissions,
    /// a missing bucket): retried with backoff, since the cause can be fixed outside the
    /// resource.
    #[error("listing the source failed: {0}")]
    Storage(#[from] StorageError),
    /// The credentials Secret is missing or lacks a key.
    #[error("{0}")]
    Credentials(String),
}

/// The S3 client settings of a resource: its region, endpoint and addressing, with the keys
/// of its credentials Secret when it names one (`data` of that Secret), else the default AWS
/// chain of the operator's pod (IRSA, Pod Identity, instance profile).
pub fn s3_config(
    spec: &FeatureExtractionSpec,
    secret: Option<&BTreeMap<String, ByteString>>,
) -> Result<S3Config, PlanFailure> {
    let storage = &spec.storage;
    let credentials = match (&storage.credentials_secret, secret) {
        (None, _) => None,
        (Some(reference), None) => {
            return Err(PlanFailure::Credentials(format!(
                "the credentials Secret {:?} named in spec.storage.credentialsSecret was not found",
                reference.name
            )));
        }
        (Some(reference), Some(data)) => {
            let key = |k: &str| -> Result<Option<String>, PlanFailure> {
                match data.get(k) {
                    None => Ok(None),
                    Some(ByteString(bytes)) => String::from_utf8(bytes.clone())
                        .map(|s| Some(s.trim().to_string()))
                        .map_err(|_| {
                            PlanFailure::Credentials(format!(
                                "key {k} of Secret {:?} is not UTF-8",
                                reference.name
                            ))
                        }),
                }
            };
            let required = |k: &str| {
                key(k)?.filter(|v| !v.is_empty()).ok_or_else(|| {
                    PlanFailure::Credentials(format!(
                        "Secret {:?} has no {k} (it needs {ACCESS_KEY_ID} and \
                         {SECRET_ACCESS_KEY}, and may hold {SESSION_TOKEN})",
                        reference.name
                    ))
                })
            };
            Some(StaticCredentials {
                access_key_id: required(ACCESS_KEY_ID)?,
                secret_access_key: required(SECRET_ACCESS_KEY)?,
                session_token: key(SESSION_TOKEN)?.filter(|v| !v.is_empty()),
            })
        }
    };
    Ok(S3Config {
        region: Some(storage.region.clone()),
        endpoint: storage.endpoint.clone(),
        force_path_style: storage.force_path_style,
        credentials,
        ..S3Config::default()
    })
}

/// What the shared planner is asked for.
pub fn plan_options(spec: &FeatureExtractionSpec) -> PlanOptions {
    PlanOptions {
        include: spec.source.include.clone(),
        label: spec.source.label,
        images_per_shard: spec.sharding.images_per_shard,
    }
}

/// Lists the source and writes the plan under the output prefix, or reads the plan already
/// there; returns its totals.
pub async fn plan(spec: &FeatureExtractionSpec, config: &S3Config) -> Result<Plan, PlanFailure> {
    let source = Storage::open(&spec.source.uri, config).await?;
    let output = Storage::open(&spec.output.uri, config).await?;
    let (plan, _created) = load_or_create_plan(&source, &output, &plan_options(spec))
        .await
        .map_err(classify)?;
    check_plan(spec, &source.uri(), &plan)?;
    Ok(plan)
}

/// Sorts planner errors into the ones a retry may fix and the ones it never will.
fn classify(error: PlanError) -> PlanFailure {
    let permanent = |reason: &'static str, e: &PlanError| {
        PlanFailure::Permanent(Invalid::Plan {
            reason,
            message: e.to_string(),
        })
    };
    match error {
        PlanError::Storage(e) => PlanFailure::Storage(e),
        e @ PlanError::Empty { .. } => permanent("EmptySource", &e),
        e @ PlanError::Pattern(_) => permanent("InvalidInclude", &e),
        e @ (PlanError::TooManyShards { .. } | PlanError::ZeroShardSize) => {
            permanent("TooManyShards", &e)
        }
        e @ PlanError::Corrupt { .. } => permanent("CorruptPlan", &e),
    }
}

/// A plan found under the output prefix must be this resource's: another source or shard size
/// means the prefix belongs to another run, whose outputs this one would mix with.
pub fn check_plan(
    spec: &FeatureExtractionSpec,
    source_uri: &str,
    plan: &Plan,
) -> Result<(), PlanFailure> {
    let per_shard = spec.sharding.images_per_shard;
    if plan.source != source_uri || plan.images_per_shard != per_shard {
        return Err(PlanFailure::Permanent(Invalid::Plan {
            reason: "OutputInUse",
            message: format!(
                "{} already holds the plan of another run (source {}, {} images per shard), \
                 not of this one (source {source_uri}, {per_shard} per shard): choose another \
                 spec.output.uri",
                spec.output.uri, plan.source, plan.images_per_shard
            ),
        }));
    }
    Ok(())
}

/// The totals of a plan, as the status records them.
pub fn totals(plan: &Plan) -> PlanTotals {
    PlanTotals {
        images: plan.images,
        shards: plan.shards,
        images_per_shard: plan.images_per_shard,
    }
}
