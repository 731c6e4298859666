//! The statistics' merge, by blocks of shards: `pomona merge` (one pod of the merge Job) and
//! the fit step's reading of what those pods merged.
//!
//! A run of many shards merges its statistics in a Job of its own before the fit pod: each pod
//! merges one block of `shards_per_pod` consecutive shards (a power of [`MERGE_FAN_IN`], so that
//! the block is a subtree of [`MergeTree`]) into `stats/blocks/block-NNNNN.safetensors`, and
//! records which shards it merged ([`MergedBlock`]). The fit pod then merges the blocks' results
//! in a tree of their own: the same bytes as merging every shard in one stream. A block's shards
//! are those the census calls complete (statistics, features and dead letters written; the
//! others are holes of the tree); when the fit pod's census finds others than a block's record
//! names (its statistics changed since, or the record is missing), the fit pod merges that block
//! again itself, from its shards, which gives the bytes the merge pod would have.

use std::collections::BTreeSet;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pomona_crds::contract::{MergedBlock, OutputLayout, ShardGroups};
use pomona_storage::Storage;

use super::{STATS_IN_FLIGHT, ShardList, get, group_of_run, put, secs, shard_outputs};
use crate::Permanent;
use crate::stats::{MERGE_FAN_IN, MergeTree, Moments};

/// `--shards-per-pod` of `pomona merge` and `--merged-blocks` of `pomona reduce`: a power of
/// [`MERGE_FAN_IN`] from 64 to 262,144 (the resource schema's values).
pub fn block_size(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|e| format!("{e}"))?;
    let fan_in = MERGE_FAN_IN as u32;
    if [fan_in, fan_in.pow(2), fan_in.pow(3)].contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is not a block of the merge tree: 64, 4096 or 262144 shards"
        ))
    }
}

/// What one merge pod did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOutcome {
    /// Shards of the block.
    pub shards: u32,
    /// Of them, the complete shards whose statistics were merged.
    pub merged: u32,
    /// Images those statistics count.
    pub images: u64,
}

/// Merges the statistics of the complete shards among `shards` (the others are holes) in the
/// fixed order of [`MergeTree`], reading up to `in_flight` files at once (the steps read
/// [`STATS_IN_FLIGHT`]); `None` when none is complete.
pub async fn merge_shards(
    out: &Storage,
    layout: &OutputLayout,
    shards: std::ops::Range<u32>,
    complete: &BTreeSet<u32>,
    in_flight: usize,
) -> anyhow::Result<Option<Moments>> {
    let mut parts = futures::stream::iter(shards)
        .map(|shard| async move {
            if !complete.contains(&shard) {
                return anyhow::Ok(None);
            }
            let uri = layout.stats(shard);
            let bytes = get(out, &uri).await?;
            let part = Moments::from_bytes(&bytes).map_err(|e| Permanent(format!("{uri}: {e}")))?;
            Ok(Some((uri, part)))
        })
        .buffered(in_flight.max(1));
    let mut tree = MergeTree::new();
    while let Some(part) = parts.try_next().await? {
        let uri = part.as_ref().map(|(uri, _)| uri.clone());
        tree.push_part(part.map(|(_, m)| m))
            .map_err(|e| Permanent(format!("{}: {e}", uri.unwrap_or_default())))?;
    }
    Ok(tree.finish().map_err(|e| Permanent(e.to_string()))?)
}

/// `pomona merge`: merges block `block` (at `shards_per_pod` shards a block) of the run at
/// `out`, writing its statistics (when a shard of it is complete) and then its record.
pub async fn merge_block(
    out: &Storage,
    block: u32,
    shards_per_pod: u32,
) -> anyhow::Result<BlockOutcome> {
    let started = std::time::Instant::now();
    let (layout, blocks, shards) = group_of_run(out, block, shards_per_pod, "blocks").await?;
    let complete: BTreeSet<u32> = shard_outputs(out, &layout, shards.clone())
        .await?
        .into_iter()
        .filter(|o| o.complete_with_dead_letters.is_some())
        .map(|o| o.shard)
        .collect();
    // The old record goes first and the new one last: a record always describes the
    // statistics beside it.
    out.delete_prefix(&out.relative(&layout.merged_record(block))?)
        .await?;
    let merged = merge_shards(out, &layout, shards.clone(), &complete, STATS_IN_FLIGHT).await?;
    let images = merged.as_ref().map_or(0, Moments::count);
    let stats = layout.merged_stats(block);
    match &merged {
        Some(m) => put(out, &stats, m.to_bytes()).await?,
        None => {
            out.delete_prefix(&out.relative(&stats)?).await?;
        }
    }
    let record = MergedBlock {
        format: MergedBlock::FORMAT.into(),
        shards: ShardList(shards.clone().collect()).to_string(),
        merged: ShardList(complete.clone()).to_string(),
    };
    put(
        out,
        &layout.merged_record(block),
        serde_json::to_vec(&record)?,
    )
    .await?;
    crate::say!(
        "pomona: merge: block {block} of {}: the statistics of {} of its {} shards ({images} \
         images) merged in {:.3} s",
        blocks.groups(),
        complete.len(),
        shards.len(),
        secs(started)
    );
    Ok(BlockOutcome {
        shards: shards.len() as u32,
        merged: complete.len() as u32,
        images,
    })
}

/// The merge of the run's statistics from the merge Job's blocks of `shards_per_pod` shards,
/// `complete` being the census's complete shards of the run's `shards`: each block's
/// statistics when its record names exactly its complete shards, else merged again here from
/// them. Returns the merge (`None` if no shard is complete) and how many blocks were merged
/// again.
pub async fn merge_blocks(
    out: &Storage,
    layout: &OutputLayout,
    shards: u32,
    shards_per_pod: u32,
    complete: &BTreeSet<u32>,
) -> anyhow::Result<(Option<Moments>, u32)> {
    let blocks = ShardGroups {
        shards,
        shards_per_pod,
    };
    let mut tree = MergeTree::new();
    let mut again = 0;
    for block in 0..blocks.groups() {
        let range = blocks.shards_of(block);
        let expected: BTreeSet<u32> = complete.range(range.clone()).copied().collect();
        let part = match recorded(out, layout, block).await? {
            Some(record) if record.merged == ShardList(expected.clone()).to_string() => {
                if expected.is_empty() {
                    None
                } else {
                    let uri = layout.merged_stats(block);
                    let bytes: Bytes = get(out, &uri).await?;
                    Some(
                        Moments::from_bytes(&bytes)
                            .map_err(|e| Permanent(format!("{uri}: {e}")))?,
                    )
                }
            }
            found => {
                crate::say!(
                    "pomona: reduce: block {block} (shards {} to {}) {}: merged again here",
                    range.start,
                    range.end.saturating_sub(1),
                    if found.is_some() {
                        "merged other shards than the census finds complete"
                    } else {
                        "has no record of its merge"
                    }
                );
                again += 1;
                merge_shards(out, layout, range, complete, STATS_IN_FLIGHT).await?
            }
        };
        tree.push_part(part).map_err(|e| Permanent(e.to_string()))?;
    }
    Ok((tree.finish().map_err(|e| Permanent(e.to_string()))?, again))
}

/// The record of block `block`'s merge, if there is one of this format.
async fn recorded(
    out: &Storage,
    layout: &OutputLayout,
    block: u32,
) -> anyhow::Result<Option<MergedBlock>> {
    let uri = layout.merged_record(block);
    if !out.exists(&out.relative(&uri)?).await? {
        return Ok(None);
    }
    let record: MergedBlock = serde_json::from_slice(&get(out, &uri).await?)
        .with_context(|| format!("{uri} is not a record of a merge"))?;
    Ok((record.format == MergedBlock::FORMAT).then_some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_subtrees_of_the_merge_tree() {
        for ok in ["64", "4096", "262144"] {
            assert_eq!(block_size(ok), Ok(ok.parse().unwrap()));
        }
        for bad in ["0", "1", "63", "100", "8192", "16777216", "x"] {
            assert!(block_size(bad).is_err(), "{bad}");
        }
    }
}
