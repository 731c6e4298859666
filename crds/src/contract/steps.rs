//! The command line of each step the operator runs as a pod, as typed values.
//!
//! The operator builds every runner container's arguments through [`PlanArgs`],
//! [`ExtractArgs`], [`ReduceArgs`] and [`ProjectArgs`] (`to_args()`), and the runner's own
//! parser converts its parsed command back into them. A test renders the Jobs of every example
//! and parses each container's arguments with the runner's parser, so a renamed or dropped flag
//! fails there, not on a cluster.
//!
//! What is not on the command line reaches the pod through the environment ([`super::env`]):
//! the region, endpoint and credentials of the storage, the scratch folder, and the shard of an
//! extract pod or the group of a projection pod (`JOB_COMPLETION_INDEX`, set by the Indexed
//! Job).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use super::{MAX_SHARDS, Preprocessing};
use crate::api::LabelMode;

/// The runner's executable in its image.
pub const PROGRAM: &str = "pomona";

/// Storage options on the command line of every step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageArgs {
    /// Address buckets by path; `None`: the runner's default (path style when an endpoint is
    /// set).
    pub path_style: Option<bool>,
}

impl StorageArgs {
    fn push(&self, args: &mut Vec<String>) {
        if let Some(path_style) = self.path_style {
            args.push(format!("--path-style={path_style}"));
        }
    }
}

/// The model and the preprocessing that feeds it: what makes two runs' features comparable.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelArgs {
    /// The ONNX file: a path, `file:///path` or `s3://bucket/key`.
    pub uri: String,
    /// Its expected sha256, when the run names one.
    pub sha256: Option<String>,
    /// The model's input and output names, and the preprocessing (as a run's identity records
    /// it).
    pub preprocessing: Preprocessing,
}

impl ModelArgs {
    fn push(&self, args: &mut Vec<String>) {
        args.push(format!("--model={}", self.uri));
        if let Some(sha) = &self.sha256 {
            args.push(format!("--model-sha256={sha}"));
        }
        let p = &self.preprocessing;
        args.extend([
            format!("--input-name={}", p.input_name),
            format!("--output-name={}", p.output_name),
            format!("--width={}", p.width),
            format!("--height={}", p.height),
            format!("--layout={}", p.layout.as_arg()),
            format!("--scale={}", p.scale),
            format!("--offset={}", p.offset),
            format!("--resize-filter={}", p.resize_filter.as_arg()),
        ]);
    }
}

/// `pomona plan`: list the source, write the shard manifests and the plan (with the run's
/// identity) under the output prefix, or report the plan already there.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanArgs {
    /// The images: `s3://bucket/prefix/` or a folder.
    pub input: String,
    /// The run's output prefix.
    pub output: String,
    /// File-name patterns of the images.
    pub include: Vec<String>,
    /// How an image gets its label.
    pub label: LabelMode,
    /// Images per shard.
    pub images_per_shard: u32,
    /// The run this plan belongs to (the resource's uid); `None` for a run of the command line.
    pub run_uid: Option<String>,
    /// The model the run will extract with (its checksum and preprocessing go into the plan's
    /// identity).
    pub model: ModelArgs,
    /// Storage options.
    pub storage: StorageArgs,
}

impl PlanArgs {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "plan".to_string(),
            format!("--input={}", self.input),
            format!("--output={}", self.output),
        ];
        for pattern in &self.include {
            args.push(format!("--include={pattern}"));
        }
        args.push(format!("--label={}", self.label.as_arg()));
        args.push(format!("--images-per-shard={}", self.images_per_shard));
        if let Some(uid) = &self.run_uid {
            args.push(format!("--run-uid={uid}"));
        }
        self.model.push(&mut args);
        self.storage.push(&mut args);
        args
    }
}

/// `pomona extract`: one shard of a planned run (the shard comes from `JOB_COMPLETION_INDEX`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractArgs {
    /// The run's output prefix (its `manifests/` holds the plan).
    pub output: String,
    /// The model and its preprocessing.
    pub model: ModelArgs,
    /// Images per inference batch; `None`: the runner's default.
    pub batch_size: Option<u32>,
    /// Images larger than this many bytes are dead-lettered unread.
    pub max_image_bytes: u64,
    /// Output prefixes of previous runs (same model and preprocessing) whose features are
    /// copied for the images that have not changed since (`--reuse-from`, repeatable).
    pub reuse_from: Vec<String>,
    /// The PCA the run reuses (`--pca-from`): each shard is projected through it as it is
    /// written, so the reduce step does not read the features again.
    pub pca_from: Option<String>,
    /// Storage options.
    pub storage: StorageArgs,
}

impl ExtractArgs {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["extract".to_string(), format!("--output={}", self.output)];
        self.model.push(&mut args);
        if let Some(batch) = self.batch_size {
            args.push(format!("--batch-size={batch}"));
        }
        args.push(format!("--max-image-bytes={}", self.max_image_bytes));
        for uri in &self.reuse_from {
            args.push(format!("--reuse-from={uri}"));
        }
        if let Some(uri) = &self.pca_from {
            args.push(format!("--pca-from={uri}"));
        }
        self.storage.push(&mut args);
        args
    }
}

/// Components of the PCA fitted when a run asks for none (`pomona run`).
pub const DEFAULT_COMPONENTS: u32 = 50;

/// How many clusters: a number, or `auto` (chosen by silhouette).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterCount {
    /// This many.
    Fixed(usize),
    /// The k from 2 to 30 with the largest silhouette on a sample (the runner's
    /// `AUTO_RANGE`).
    Auto,
}

impl FromStr for ClusterCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match s.trim().parse::<usize>() {
            Ok(k) if k >= 2 => Ok(Self::Fixed(k)),
            _ => Err(format!(
                "`{s}` is neither a number of clusters (2 or more) nor `auto`"
            )),
        }
    }
}

impl fmt::Display for ClusterCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(k) => write!(f, "{k}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// How the reduce step gets its PCA.
#[derive(Clone, Debug, PartialEq)]
pub enum PcaMode {
    /// Fit keeping this many components.
    Components(u32),
    /// Fit keeping the fewest components reaching this fraction of the variance.
    VarianceToKeep(f64),
    /// Reuse the PCA saved under this prefix.
    From(String),
}

/// `pomona reduce`: fit or reuse the PCA, project every shard, write the report and
/// `_SUCCESS`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceArgs {
    /// The run's output prefix.
    pub output: String,
    /// The PCA.
    pub pca: PcaMode,
    /// Also write the reduced vectors as one CSV.
    pub csv: bool,
    /// Group the reduced vectors by k-means.
    pub clusters: Option<ClusterCount>,
    /// Shards that failed for good, within the run's tolerance: their images are
    /// dead-lettered.
    pub failed_shards: FailedShards,
    /// The whole step, or the part before or after a projection Job.
    pub stage: ReduceStage,
    /// Shards a block of the merge Job (`--merged-blocks`), when one merged the statistics:
    /// the fit reads the blocks' statistics rather than every shard's.
    pub merged_blocks: Option<u32>,
    /// Storage options.
    pub storage: StorageArgs,
}

/// Which part of the reduce step a pod runs. A run with a projection Job
/// ([`super::ShardGroups`]) runs it in two pods around that Job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReduceStage {
    /// Census, fit (or reuse), projection, report and `_SUCCESS`, in one pod.
    #[default]
    Whole,
    /// The census (failed shards dead-lettered) and the fit, ending once
    /// `pca/pca.safetensors` is written (`--fit-only`).
    Fit,
    /// The rest, once the projection Job projected every shard: the PCA is the one the fit
    /// pod wrote, read back (`--after-projection`); the reduced files are read, not made.
    AfterProjection,
}

/// `pomona merge`: the statistics of one block of shards merged (the block comes from
/// `JOB_COMPLETION_INDEX`; its shards from [`super::ShardGroups`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeArgs {
    /// The run's output prefix.
    pub output: String,
    /// Shards a block: a power of 64.
    pub shards_per_pod: u32,
    /// Storage options.
    pub storage: StorageArgs,
}

impl MergeArgs {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "merge".to_string(),
            format!("--output={}", self.output),
            format!("--shards-per-pod={}", self.shards_per_pod),
        ];
        self.storage.push(&mut args);
        args
    }
}

/// `pomona project`: one group of shards projected through the PCA the run's fit pod wrote
/// (the group comes from `JOB_COMPLETION_INDEX`; its shards from
/// [`super::ShardGroups`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectArgs {
    /// The run's output prefix.
    pub output: String,
    /// Shards a group.
    pub shards_per_pod: u32,
    /// Storage options.
    pub storage: StorageArgs,
}

impl ProjectArgs {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "project".to_string(),
            format!("--output={}", self.output),
            format!("--shards-per-pod={}", self.shards_per_pod),
        ];
        self.storage.push(&mut args);
        args
    }
}

/// Where `pomona reduce` learns which shards failed for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailedShards {
    /// On the command line (`--failed-shards=1,3-5`), as a person types them.
    Listed(ShardList),
    /// In a file holding a [`ShardList`] (`--failed-shards-file=PATH`), as the operator passes
    /// them: the list of a Job with tens of thousands of failed indexes would pass the kernel's
    /// limit on one argument (128 KiB).
    File(String),
}

impl Default for FailedShards {
    fn default() -> Self {
        Self::Listed(ShardList::default())
    }
}

impl ReduceArgs {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["reduce".to_string(), format!("--output={}", self.output)];
        args.push(match &self.pca {
            PcaMode::Components(k) => format!("--components={k}"),
            PcaMode::VarianceToKeep(f) => format!("--variance-to-keep={f}"),
            PcaMode::From(uri) => format!("--pca-from={uri}"),
        });
        if self.csv {
            args.push("--csv".into());
        }
        if let Some(clusters) = self.clusters {
            args.push(format!("--clusters={clusters}"));
        }
        match &self.failed_shards {
            FailedShards::Listed(list) if list.0.is_empty() => {}
            FailedShards::Listed(list) => args.push(format!("--failed-shards={list}")),
            FailedShards::File(path) => args.push(format!("--failed-shards-file={path}")),
        }
        match self.stage {
            ReduceStage::Whole => {}
            ReduceStage::Fit => args.push("--fit-only".into()),
            ReduceStage::AfterProjection => args.push("--after-projection".into()),
        }
        if let Some(block) = self.merged_blocks {
            args.push(format!("--merged-blocks={block}"));
        }
        self.storage.push(&mut args);
        args
    }
}

/// Shard numbers (the extract Job's indexes) as `--failed-shards` takes them: the comma list of
/// numbers and inclusive ranges of Kubernetes' `status.failedIndexes`, e.g. `1,3-5,7`. An empty
/// list is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardList(pub BTreeSet<u32>);

impl FromStr for ShardList {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        let mut shards = BTreeSet::new();
        if list.trim().is_empty() {
            return Ok(Self(shards));
        }
        let number = |s: &str| -> Result<u32, String> {
            let s = s.trim();
            match s.parse::<u32>() {
                Ok(n) if n < MAX_SHARDS => Ok(n),
                Ok(_) => Err(format!(
                    "shard {s} is past the largest possible shard, {}",
                    MAX_SHARDS - 1
                )),
                Err(_) => Err(format!("`{s}` is not a shard number")),
            }
        };
        for item in list.split(',') {
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(item)?;
                    (n, n)
                }
            };
            if first > last {
                return Err(format!("the range {} runs backwards", item.trim()));
            }
            shards.extend(first..=last);
        }
        Ok(Self(shards))
    }
}

impl fmt::Display for ShardList {
    /// The compact form, ranges joined: `1,3-5,7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shards = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = shards.next() {
            let mut end = start;
            while shards.peek() == Some(&(end + 1)) {
                end = shards.next().expect("peeked");
            }
            let sep = if first { "" } else { "," };
            first = false;
            if end == start {
                write!(f, "{sep}{start}")?;
            } else {
                write!(f, "{sep}{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelArgs {
        ModelArgs {
            uri: "s3://b/m.onnx".into(),
            sha256: None,
            preprocessing: Preprocessing {
                input_name: "input".into(),
                output_name: "features".into(),
                width: 160,
                height: 128,
                layout: crate::api::TensorLayout::NCHW,
                scale: 1.0 / 127.5,
                offset: -1.0,
                resize_filter: Default::default(),
            },
        }
    }

    fn parse(list: &str) -> Result<Vec<u32>, String> {
        list.parse::<ShardList>().map(|l| l.0.into_iter().collect())
    }

    #[test]
    fn shard_lists_take_kubernetes_failed_indexes() {
        assert_eq!(parse("3,7"), Ok(vec![3, 7]));
        assert_eq!(parse("1,3-5,7"), Ok(vec![1, 3, 4, 5, 7]));
        assert_eq!(parse(" 7 , 0 ,3-3"), Ok(vec![0, 3, 7]));
        assert_eq!(parse("2,2,1-3"), Ok(vec![1, 2, 3]));
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(
            parse(&format!("{}", MAX_SHARDS - 1)),
            Ok(vec![MAX_SHARDS - 1])
        );
        for bad in ["x", "1,,2", "1,", "-1", "5-3", "1-", "3-5-7", "1.5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let error = parse(&format!("0-{MAX_SHARDS}")).unwrap_err();
        assert!(error.contains("past the largest possible shard"), "{error}");
        assert_eq!(parse("5-3").unwrap_err(), "the range 5-3 runs backwards");
    }

    #[test]
    fn shard_lists_print_compactly() {
        for (list, shown) in [
            ("", ""),
            ("4", "4"),
            ("7,1,3-5", "1,3-5,7"),
            ("0,1,2,9,10", "0-2,9-10"),
        ] {
            assert_eq!(list.parse::<ShardList>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn each_step_writes_its_flags_once() {
        let plan = PlanArgs {
            input: "s3://b/in/".into(),
            output: "s3://b/out/".into(),
            include: vec!["*.jpg".into(), "*.png".into()],
            label: LabelMode::None,
            images_per_shard: 500,
            run_uid: Some("u-1".into()),
            model: model(),
            storage: StorageArgs {
                path_style: Some(true),
            },
        };
        let args = plan.to_args();
        assert_eq!(args[0], "plan");
        for flag in [
            "--include=*.jpg",
            "--include=*.png",
            "--label=none",
            "--images-per-shard=500",
            "--run-uid=u-1",
            "--layout=nchw",
            "--width=160",
            "--height=128",
            "--path-style=true",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
        }
        let reduce = ReduceArgs {
            output: "s3://b/out/".into(),
            pca: PcaMode::VarianceToKeep(0.9),
            csv: true,
            clusters: None,
            failed_shards: FailedShards::Listed("2,3,9".parse().unwrap()),
            stage: ReduceStage::Whole,
            merged_blocks: None,
            storage: StorageArgs::default(),
        };
        assert_eq!(
            reduce.to_args(),
            [
                "reduce",
                "--output=s3://b/out/",
                "--variance-to-keep=0.9",
                "--csv",
                "--failed-shards=2-3,9"
            ]
        );
        let from_file = ReduceArgs {
            failed_shards: FailedShards::File("/etc/failed/shards".into()),
            ..reduce
        };
        assert_eq!(
            from_file.to_args().last().map(String::as_str),
            Some("--failed-shards-file=/etc/failed/shards")
        );
        for (stage, flag) in [
            (ReduceStage::Fit, "--fit-only"),
            (ReduceStage::AfterProjection, "--after-projection"),
        ] {
            let staged = ReduceArgs {
                stage,
                ..from_file.clone()
            };
            assert_eq!(staged.to_args().last().map(String::as_str), Some(flag));
        }
        let merged = ReduceArgs {
            stage: ReduceStage::Fit,
            merged_blocks: Some(4096),
            ..from_file.clone()
        };
        assert_eq!(
            merged.to_args()[merged.to_args().len() - 2..],
            ["--fit-only", "--merged-blocks=4096"]
        );
        let merge = MergeArgs {
            output: "s3://b/out/".into(),
            shards_per_pod: 64,
            storage: StorageArgs::default(),
        };
        assert_eq!(
            merge.to_args(),
            ["merge", "--output=s3://b/out/", "--shards-per-pod=64"]
        );
        let project = ProjectArgs {
            output: "s3://b/out/".into(),
            shards_per_pod: 16,
            storage: StorageArgs {
                path_style: Some(false),
            },
        };
        assert_eq!(
            project.to_args(),
            [
                "project",
                "--output=s3://b/out/",
                "--shards-per-pod=16",
                "--path-style=false"
            ]
        );
    }
}
