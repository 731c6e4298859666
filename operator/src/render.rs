//! `pomona-operator render`: the Jobs (and the reduce step's ConfigMap) the operator would
//! create for a resource, without a cluster, so users see what will run and tests can check
//! it.

use anyhow::Context;
use pomona_crds::FeatureExtraction;
use pomona_crds::contract::cost::Usage;

use crate::jobs::{extract_job, failed_shards_config_map, plan_job, reduce_step, reduce_step_job};
use crate::settings::Settings;
use pomona_crds::contract::{PlanTotals, shard_plan};

use crate::validate::{Invalid, validate};

/// The owner uid written in rendered Jobs: a placeholder, since no cluster assigned one.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";
/// The namespace of rendered Jobs when the resource names none.
pub const PLACEHOLDER_NAMESPACE: &str = "default";

/// The Jobs of the resource in `yaml` (plan, extract, then reduce, or for a run of many
/// shards merge, fit, projection and reduce, as it needs them), with the ConfigMap of the failed shards before
/// the reduce step's, as a multi-document YAML stream, for a listing of `images` images (and
/// `images_per_shard` overriding the resource's, if given).
pub fn render(
    yaml: &str,
    images: u64,
    images_per_shard: Option<u32>,
    settings: &Settings,
) -> anyhow::Result<String> {
    let mut fx: FeatureExtraction =
        serde_yaml::from_str(yaml).context("not a FeatureExtraction")?;
    if let Some(per_shard) = images_per_shard {
        fx.spec.sharding.images_per_shard = per_shard;
    }
    validate(&fx.spec, settings)?;
    let asked = fx.spec.sharding.images_per_shard;
    let sharding = shard_plan(images, asked).map_err(Invalid::from)?;
    let shards = sharding.shards;
    let mut header = format!(
        "# Rendered by pomona-operator without a cluster, for {images} images in {shards} \
         shards of up to {}.\n# PLACEHOLDER: the ownerReference uid ({PLACEHOLDER_UID}) is not a real one",
        sharding.images_per_shard
    );
    if fx.metadata.namespace.is_none() {
        fx.metadata.namespace = Some(PLACEHOLDER_NAMESPACE.into());
        header.push_str(&format!(
            ", and the namespace ({PLACEHOLDER_NAMESPACE}) stands in for the resource's"
        ));
    }
    header.push_str(".\n");
    fx.metadata.uid = Some(PLACEHOLDER_UID.into());
    let mut out = header;
    for job in [
        plan_job(&fx, settings),
        extract_job(&fx, sharding, settings),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&job)?);
    }
    // The fit and reduce Jobs read the failed shards from a ConfigMap made just before the
    // first of them: here, none failed (and no pod has run, so the cost so far is nothing).
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&failed_shards_config_map(&fx, &[]))?);
    let plan = PlanTotals {
        images,
        bytes: 0,
        shards,
        images_per_shard: sharding.images_per_shard,
    };
    for step in reduce_step(&fx.spec, shards) {
        let job = reduce_step_job(&fx, step, plan, Usage::default(), settings);
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&job)?);
    }
    Ok(out)
}
