//! `pomona project`: one group of a run's shards projected through the PCA the run's fit pod
//! wrote, as one pod of the projection Job.
//!
//! A run of many shards splits its reduce step in three ([`super::ReduceStage`]): the fit pod
//! (census, failed shards dead-lettered, the PCA written to `pca/pca.safetensors`), this Job
//! (each pod reads its group's feature files and writes their `reduced/part-NNNNN.parquet`,
//! through the same [`project::project_file`] as the reduce step), and the reduce pod, which
//! reads those reduced files (`k` values an image instead of 1,280) for the report. Groups come
//! from [`ShardGroups`](pomona_crds::contract::ShardGroups), the one definition the operator sizes the Job with.
//!
//! A shard without features is skipped: the fit pod dead-lettered it (its extract pods failed
//! for good), and its census refused any other missing shard. Feature files are read a row
//! group at a time ([`FeatureFile::open_stored`]), so a pod's memory does not grow with the
//! shards' size. A retried pod projects its group again, into the same bytes.

use std::time::Instant;

use anyhow::Context;
use pomona_storage::Storage;

use super::pca::{self, Pca};
use super::project::{self, FeatureFile};
use super::{get, group_of_run, put, secs};
use crate::Permanent;
use crate::infer::sha256_hex;
use crate::stored_parquet::is_not_found;

/// What one projection pod did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupOutcome {
    /// Shards projected.
    pub shards: u32,
    /// Shards without features (dead-lettered by the fit pod): skipped.
    pub skipped: u32,
    /// Images projected.
    pub images: u64,
}

/// Projects the shards of `group` (at `shards_per_pod` a group) of the run at `out` through
/// its `pca/pca.safetensors`.
pub async fn project_group(
    out: &Storage,
    group: u32,
    shards_per_pod: u32,
) -> anyhow::Result<GroupOutcome> {
    let started = Instant::now();
    let (layout, groups, shards) = group_of_run(out, group, shards_per_pod, "groups").await?;
    let pca_uri = format!("{}{}", layout.pca_dir(), pca::FILE_NAME);
    let bytes = get(out, &pca_uri)
        .await
        .context("the run's fit pod writes its PCA before the projection Job starts")?;
    let pca = Pca::from_bytes(&bytes).map_err(|e| Permanent(format!("{pca_uri}: {e}")))?;
    let pca_sha256 = sha256_hex(&bytes);
    crate::say!(
        "pomona: project: group {group} of {}: shards {} to {} through {pca_uri} ({} components)",
        groups.groups(),
        shards.start,
        shards.end.saturating_sub(1),
        pca.k()
    );
    let mut outcome = GroupOutcome::default();
    for shard in shards {
        let uri = layout.features(shard);
        let features = match FeatureFile::open_stored(out, &out.relative(&uri)?).await {
            Ok(features) => features,
            Err(e) if is_not_found(&e) => {
                crate::say!(
                    "pomona: project: shard {shard} has no features (dead-lettered): skipped"
                );
                outcome.skipped += 1;
                continue;
            }
            Err(e) => return Err(e.context(uri)),
        };
        pca.check_applies_to(features.dim, &features.origin)
            .map_err(|e| Permanent(format!("{uri}: {e}")))?;
        let rows = features.rows;
        let reduced = project::project_file(features, &pca, &pca_sha256, |_, _| Ok(()))
            .await
            .with_context(|| uri.clone())?;
        put(out, &layout.reduced(shard), reduced).await?;
        outcome.shards += 1;
        outcome.images += rows;
    }
    crate::say!(
        "pomona: project: {} images of {} shard(s) projected in {:.3} s",
        outcome.images,
        outcome.shards,
        secs(started)
    );
    Ok(outcome)
}
