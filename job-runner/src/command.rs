//! The `pomona` command line: its subcommands as clap types, and their conversion into the
//! typed step arguments of the job contract ([`pomona_crds::contract::steps`]).
//!
//! The operator writes a pod's arguments from those contract types; parsing them back with
//! [`Cli`] and converting gives the same values, which a test checks for every Job of the
//! examples. The binary (`main.rs`) only runs what this module parsed.

use clap::{Args, Parser, Subcommand};
use pomona_crds::LabelMode;
use pomona_crds::contract::{env, steps};
use pomona_storage::plan::PlanOptions;

use crate::cli::{ModelArgs, S3Args, TuningArgs};
use crate::reduce::grouping::ClusterArgs;
use crate::reduce::{PcaArgs, ShardList};

/// Turns images into MobileNetV2 features, a PCA and reduced vectors.
#[derive(Parser, Debug)]
#[command(name = steps::PROGRAM, version, about, after_help = crate::cli::EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List a source and show the plan (images, bytes, shards); with --output, write it there
    /// with the run's identity (or find the one already written for the same run).
    Plan(PlanCommand),
    /// Extract one shard of a planned run: features, dead letters and PCA statistics.
    Extract(ExtractCommand),
    /// Fit a PCA on every shard's statistics (or reuse one), project the features, write the
    /// report, and mark the run complete (_SUCCESS) when every image is accounted for.
    Reduce(ReduceCommand),
    /// Project one group of a run's shards through the PCA its fit pod wrote (a pod of the
    /// projection Job, between `reduce --fit-only` and `reduce --after-projection`).
    Project(ProjectCommand),
    /// Merge the statistics of one block of a run's shards (a pod of the merge Job, before
    /// `reduce --merged-blocks`).
    Merge(MergeCommand),
    /// Run the whole pipeline on this machine: plan, extract every shard not yet done, then
    /// reduce (a PCA of 50 components unless told otherwise).
    Run(RunCommand),
    /// Compare models and input sizes on labelled images: images/s, label agreement on the
    /// features and on a PCA, cosine to the reference; prints a table and a recommendation,
    /// writes sweep.json and report/sweep.png.
    Sweep(crate::sweep::SweepArgs),
}

/// `pomona plan`.
#[derive(Args, Debug)]
pub struct PlanCommand {
    /// The images: s3://bucket/prefix/ or a folder.
    #[arg(long)]
    pub input: String,
    /// Where to write the plan and shard manifests (a run's output prefix).
    #[arg(long)]
    pub output: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub options: PlanOptionsArgs,
    /// The FeatureExtraction this run belongs to (its uid), recorded in the plan's identity.
    #[arg(long)]
    pub run_uid: Option<String>,
    /// Remove everything under --output first (an output is otherwise resumed by the same run
    /// and refused to any other).
    #[arg(long, requires = "output")]
    pub overwrite: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: S3Args,
}

/// `pomona extract`.
#[derive(Args, Debug)]
pub struct ExtractCommand {
    /// The run's output prefix (s3://bucket/prefix/ or a folder).
    #[arg(long)]
    pub output: String,
    /// The folder of the plan and shard manifests. Default: <output>/manifests/.
    #[arg(long)]
    pub manifest: Option<String>,
    /// The shard to extract. Default: $JOB_COMPLETION_INDEX (set by an Indexed Job).
    #[arg(long, env = env::SHARD)]
    pub shard: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub reuse: ReuseArgs,
    /// The PCA the run reuses (as `pomona reduce --pca-from` takes it): the shard is projected
    /// through it as it is written (reduced/part-NNNNN.parquet), so that the reduce step need
    /// not read its features again. A PCA fitted on other features is refused.
    #[arg(long, value_name = "URI")]
    pub pca_from: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: S3Args,
}

/// Features of previous runs to copy instead of extracting them again.
#[derive(Args, Debug)]
pub struct ReuseArgs {
    /// The output of a previous run made with the same model and preprocessing (repeat for
    /// several; the first that holds an image wins). An image whose key, ETag and size match
    /// a row of its features is neither read nor inferred: the row is copied into this run.
    #[arg(long = "reuse-from", value_name = "URI")]
    pub reuse_from: Vec<String>,
}

/// `pomona reduce`.
#[derive(Args, Debug)]
pub struct ReduceCommand {
    /// The run's output prefix (s3://bucket/prefix/ or a folder).
    #[arg(long)]
    pub output: String,
    /// Shards whose extract pods failed for good, as the Job's failed indexes: "3,7" or
    /// "1,3-5,7". Those without complete outputs get every image of their manifest
    /// dead-lettered (deadletter/part-NNNNN.parquet, with the reason) and the PCA is fitted
    /// on the other shards; a shard missing but not named still fails the step.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "",
        hide_default_value = true
    )]
    pub failed_shards: ShardList,
    /// The same list read from a file (what the operator passes: a list of tens of thousands
    /// of shards does not fit in one argument).
    #[arg(long, value_name = "PATH", conflicts_with = "failed_shards")]
    pub failed_shards_file: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pca: PcaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub clusters: ClusterArgs,
    /// Stop once the PCA is written (pca/pca.safetensors), after the census and the failed
    /// shards' dead letters: the first pod of a run whose projection Job projects the shards.
    #[arg(long, conflicts_with = "after_projection")]
    pub fit_only: bool,
    /// Run after the projection Job: read the PCA `--fit-only` wrote instead of fitting it
    /// again, and the reduced files the Job made.
    #[arg(long, conflicts_with = "pca_from")]
    pub after_projection: bool,
    /// Fit on the statistics the merge Job merged in blocks of this many shards
    /// (stats/blocks/), not on every shard's: a block whose shards are not the ones the census
    /// finds complete is merged again here, from its shards.
    #[arg(long, value_name = "SHARDS", conflicts_with_all = ["pca_from", "after_projection"], value_parser = crate::reduce::merge::block_size)]
    pub merged_blocks: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: S3Args,
}

/// `pomona merge`.
#[derive(Args, Debug)]
pub struct MergeCommand {
    /// The run's output prefix (s3://bucket/prefix/ or a folder).
    #[arg(long)]
    pub output: String,
    /// Shards a block (the merge Job's pod): 64, 4096 or 262144.
    #[arg(long, value_parser = crate::reduce::merge::block_size)]
    pub shards_per_pod: u32,
    /// The block to merge. Default: $JOB_COMPLETION_INDEX (set by an Indexed Job).
    #[arg(long, env = env::SHARD)]
    pub block: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: S3Args,
}

impl From<&MergeCommand> for steps::MergeArgs {
    fn from(c: &MergeCommand) -> Self {
        Self {
            output: c.output.clone(),
            shards_per_pod: c.shards_per_pod,
            storage: (&c.s3).into(),
        }
    }
}

/// `pomona project`.
#[derive(Args, Debug)]
pub struct ProjectCommand {
    /// The run's output prefix (s3://bucket/prefix/ or a folder), with its PCA written by
    /// `pomona reduce --fit-only`.
    #[arg(long)]
    pub output: String,
    /// Shards a group (the projection Job's pod).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards_per_pod: u32,
    /// The group to project. Default: $JOB_COMPLETION_INDEX (set by an Indexed Job).
    #[arg(long, env = env::SHARD)]
    pub group: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: S3Args,
}

impl From<&ProjectCommand> for steps::ProjectArgs {
    fn from(c: &ProjectCommand) -> Self {
        Self {
            output: c.output.clone(),
            shards_per_pod: c.shards_per_pod,
            storage: (&c.s3).into(),
        }
    }
}

/// `pomona run`.
#[derive(Args, Debug)]
pub struct RunCommand {
    /// The images: s3://bucket/prefix/ or a folder.
    #[arg(long)]
    pub input: String,
    /// Where the run's outputs go: s3://bucket/prefix/ or a folder.
    #[arg(long)]
    pub output: String,
    /// Shards extracted at once (the CPUs are shared between them).
    #[arg(long, default_value_t = 1, value_parser = crate::cli::at_least_one())]
    pub workers: usize,
    /// Remove everything under --output first. Without it, an output is resumed by the same
    /// run (same inputs, model and preprocessing) and refused to any other.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub plan: PlanOptionsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pca: PcaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub clusters: ClusterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub reuse: ReuseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: S3Args,
}

/// Which images a plan takes, how it labels them and how it shards them.
#[derive(Args, Debug)]
pub struct PlanOptionsArgs {
    /// Images per shard (one extractor pod each).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub images_per_shard: u32,
    /// File-name patterns of the images (case-insensitive); repeat for several.
    #[arg(long = "include", default_values = ["*.jpg", "*.jpeg", "*.png", "*.webp"])]
    pub include: Vec<String>,
    /// How an image gets its label: parent-directory (the name of the folder holding it) or
    /// none.
    #[arg(long, default_value = "parent-directory")]
    pub label: LabelMode,
}

impl PlanOptionsArgs {
    /// The planner's options.
    pub fn options(&self) -> PlanOptions {
        PlanOptions {
            include: self.include.clone(),
            label: self.label,
            images_per_shard: self.images_per_shard,
        }
    }
}

impl PlanCommand {
    /// The contract's arguments of a plan step, when it writes its plan (`--output`).
    pub fn contract(&self) -> Option<steps::PlanArgs> {
        Some(steps::PlanArgs {
            input: self.input.clone(),
            output: self.output.clone()?,
            include: self.options.include.clone(),
            label: self.options.label,
            images_per_shard: self.options.images_per_shard,
            run_uid: self.run_uid.clone(),
            model: (&self.model).into(),
            storage: (&self.s3).into(),
        })
    }
}

impl From<&ExtractCommand> for steps::ExtractArgs {
    fn from(c: &ExtractCommand) -> Self {
        Self {
            output: c.output.clone(),
            model: (&c.model).into(),
            batch_size: c
                .tuning
                .batch_size
                .map(|b| u32::try_from(b).unwrap_or(u32::MAX)),
            max_image_bytes: c.tuning.max_image_bytes,
            reuse_from: c.reuse.reuse_from.clone(),
            pca_from: c.pca_from.clone(),
            storage: (&c.s3).into(),
        }
    }
}

impl ReduceCommand {
    /// The shards that failed for good: `--failed-shards`, or the list in
    /// `--failed-shards-file` (a file that cannot be read or parsed is a usage error).
    pub fn failed_shards(&self) -> Result<ShardList, crate::Usage> {
        let Some(path) = &self.failed_shards_file else {
            return Ok(self.failed_shards.clone());
        };
        let list = std::fs::read_to_string(path)
            .map_err(|e| crate::Usage(format!("cannot read --failed-shards-file {path}: {e}")))?;
        list.trim()
            .parse()
            .map_err(|e| crate::Usage(format!("--failed-shards-file {path}: {e}")))
    }

    /// The part of the step asked for.
    pub fn stage(&self) -> steps::ReduceStage {
        match (self.fit_only, self.after_projection) {
            (true, _) => steps::ReduceStage::Fit,
            (false, true) => steps::ReduceStage::AfterProjection,
            (false, false) => steps::ReduceStage::Whole,
        }
    }

    /// The contract's arguments of a reduce step; `None` without a PCA mode.
    pub fn contract(&self) -> Option<steps::ReduceArgs> {
        let pca = &self.pca;
        let mode = match (&pca.pca_from, pca.components, pca.variance_to_keep) {
            (Some(from), _, _) => steps::PcaMode::From(from.clone()),
            (None, Some(k), _) => steps::PcaMode::Components(u32::try_from(k).ok()?),
            (None, None, Some(f)) => steps::PcaMode::VarianceToKeep(f),
            (None, None, None) => return None,
        };
        Some(steps::ReduceArgs {
            output: self.output.clone(),
            pca: mode,
            csv: pca.csv,
            clusters: self.clusters.clusters,
            failed_shards: match &self.failed_shards_file {
                Some(path) => steps::FailedShards::File(path.clone()),
                None => steps::FailedShards::Listed(self.failed_shards.clone()),
            },
            stage: self.stage(),
            merged_blocks: self.merged_blocks,
            storage: (&self.s3).into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[String]) -> Command {
        let argv = std::iter::once(steps::PROGRAM.to_string()).chain(args.iter().cloned());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    fn model() -> steps::ModelArgs {
        steps::ModelArgs {
            uri: "s3://models/m.onnx".into(),
            sha256: Some("ab".repeat(32)),
            preprocessing: pomona_crds::contract::Preprocessing {
                input_name: "pixels".into(),
                output_name: "embedding".into(),
                width: 192,
                height: 160,
                layout: pomona_crds::TensorLayout::NCHW,
                scale: 1.0 / 255.0,
                offset: -0.5,
                resize_filter: Default::default(),
            },
        }
    }

    #[test]
    fn every_step_parses_back_into_the_contract_it_was_written_from() {
        let storage = steps::StorageArgs {
            path_style: Some(false),
        };
        let plan = steps::PlanArgs {
            input: "s3://b/images/".into(),
            output: "s3://b/runs/1/".into(),
            include: vec!["*.jpg".into()],
            label: LabelMode::None,
            images_per_shard: 7,
            run_uid: Some("0b0e".into()),
            model: model(),
            storage: storage.clone(),
        };
        let Command::Plan(parsed) = parse(&plan.to_args()) else {
            panic!("not a plan")
        };
        assert_eq!(parsed.contract(), Some(plan));

        let extract = steps::ExtractArgs {
            output: "s3://b/runs/1/".into(),
            model: model(),
            batch_size: Some(8),
            max_image_bytes: 1 << 20,
            reuse_from: vec!["s3://b/runs/0/".into(), "s3://b/runs/00/".into()],
            pca_from: Some("s3://b/runs/0/pca/".into()),
            storage: storage.clone(),
        };
        let Command::Extract(parsed) = parse(&extract.to_args()) else {
            panic!("not an extract")
        };
        assert_eq!(steps::ExtractArgs::from(&parsed), extract);

        for (pca, stage) in [
            (steps::PcaMode::Components(50), steps::ReduceStage::Whole),
            (
                steps::PcaMode::VarianceToKeep(0.95),
                steps::ReduceStage::Whole,
            ),
            (
                steps::PcaMode::From("s3://b/runs/0/pca/".into()),
                steps::ReduceStage::Whole,
            ),
            (steps::PcaMode::Components(50), steps::ReduceStage::Fit),
            (
                steps::PcaMode::From("s3://b/runs/0/pca/".into()),
                steps::ReduceStage::Fit,
            ),
            (
                steps::PcaMode::VarianceToKeep(0.95),
                steps::ReduceStage::AfterProjection,
            ),
        ] {
            let merged_blocks = (stage == steps::ReduceStage::Fit
                && !matches!(pca, steps::PcaMode::From(_)))
            .then_some(64);
            let reduce = steps::ReduceArgs {
                output: "s3://b/runs/1/".into(),
                pca,
                csv: true,
                clusters: Some(steps::ClusterCount::Auto),
                failed_shards: steps::FailedShards::Listed("1,3-5".parse().unwrap()),
                stage,
                merged_blocks,
                storage: storage.clone(),
            };
            let Command::Reduce(parsed) = parse(&reduce.to_args()) else {
                panic!("not a reduce")
            };
            assert_eq!(parsed.contract(), Some(reduce.clone()));
            let in_file = steps::ReduceArgs {
                failed_shards: steps::FailedShards::File("/etc/pomona/failed".into()),
                ..reduce
            };
            let Command::Reduce(parsed) = parse(&in_file.to_args()) else {
                panic!("not a reduce")
            };
            assert_eq!(parsed.contract(), Some(in_file));
        }

        let merge = steps::MergeArgs {
            output: "s3://b/runs/1/".into(),
            shards_per_pod: 4096,
            storage: storage.clone(),
        };
        let Command::Merge(parsed) = parse(&merge.to_args()) else {
            panic!("not a merge")
        };
        assert_eq!(steps::MergeArgs::from(&parsed), merge);
        let project = steps::ProjectArgs {
            output: "s3://b/runs/1/".into(),
            shards_per_pod: 3,
            storage,
        };
        let Command::Project(parsed) = parse(&project.to_args()) else {
            panic!("not a project")
        };
        assert_eq!(steps::ProjectArgs::from(&parsed), project);
    }
}
