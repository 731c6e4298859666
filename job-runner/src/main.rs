//! The `pomona` command: every step of a run, on one machine or as a Kubernetes Job pod.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use pomona_crds::contract::{PodSummary, Step};
use pomona_crds::{LabelMode, PcaResult};
use pomona_runner::cli::{self, ModelArgs, S3Args};
use pomona_runner::reduce::{self, DEFAULT_COMPONENTS, PcaArgs, ShardList};
use pomona_runner::report::ReduceSummary;
use pomona_runner::{Threads, exit_code};
use pomona_storage::Storage;
use pomona_storage::plan::{PlanOptions, load_or_create_plan, read_plan};

/// Turns images into MobileNetV2 features, a PCA and reduced vectors.
#[derive(Parser)]
#[command(version, about, after_help = cli::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a source and show the plan (images, bytes, shards); with --output, write it there.
    Plan {
        #[command(flatten)]
        plan: PlanArgs,
        /// Where to write the plan and shard manifests (a run's output prefix).
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Extract one shard of a planned run: features, dead letters and PCA statistics.
    Extract {
        /// The run's output prefix (s3://bucket/prefix/ or a folder).
        #[arg(long)]
        output: String,
        /// The folder of the plan and shard manifests. Default: <output>/manifests/.
        #[arg(long)]
        manifest: Option<String>,
        /// The shard to extract. Default: $JOB_COMPLETION_INDEX (set by an Indexed Job).
        #[arg(long, env = "JOB_COMPLETION_INDEX")]
        shard: u32,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Fit a PCA on every shard's statistics (or reuse one), project the features, write the
    /// report, and mark the run complete (_SUCCESS) when every image is accounted for.
    Reduce {
        /// The run's output prefix (s3://bucket/prefix/ or a folder).
        #[arg(long)]
        output: String,
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
        failed_shards: ShardList,
        #[command(flatten)]
        pca: PcaArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Run the whole pipeline on this machine: plan, extract every shard not yet done, then
    /// reduce (a PCA of 50 components unless told otherwise).
    Run {
        /// The images: s3://bucket/prefix/ or a folder.
        #[arg(long)]
        input: String,
        /// Where the run's outputs go: s3://bucket/prefix/ or a folder.
        #[arg(long)]
        output: String,
        /// Shards extracted at once (the CPUs are shared between them).
        #[arg(long, default_value_t = 1, value_parser = cli::at_least_one())]
        workers: usize,
        #[command(flatten)]
        plan: PlanOptionsArgs,
        #[command(flatten)]
        pca: PcaArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        s3: S3Args,
    },
}

#[derive(Args)]
struct PlanArgs {
    /// The images: s3://bucket/prefix/ or a folder.
    #[arg(long)]
    input: String,
    #[command(flatten)]
    options: PlanOptionsArgs,
}

#[derive(Args)]
struct PlanOptionsArgs {
    /// Images per shard (one extractor pod each).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    images_per_shard: u32,
    /// File-name patterns of the images (case-insensitive); repeat for several.
    #[arg(long = "include", default_values = ["*.jpg", "*.jpeg", "*.png", "*.webp"])]
    include: Vec<String>,
    /// How an image gets its label.
    #[arg(long, value_enum, default_value_t = Label::ParentDirectory)]
    label: Label,
}

#[derive(Clone, Copy, ValueEnum)]
enum Label {
    /// The name of the folder holding the image.
    ParentDirectory,
    /// No label.
    None,
}

impl PlanOptionsArgs {
    fn options(&self) -> PlanOptions {
        PlanOptions {
            include: self.include.clone(),
            label: match self.label {
                Label::ParentDirectory => LabelMode::ParentDirectory,
                Label::None => LabelMode::None,
            },
            images_per_shard: self.images_per_shard,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Reduce { pca, .. } = &cli.command
        && pca.mode(None).is_none()
    {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "reduce needs one of --components, --variance-to-keep or --pca-from",
            )
            .exit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            pomona_runner::say!("pomona: cannot start the async runtime: {e}");
            return ExitCode::from(pomona_crds::contract::exit::RETRYABLE as u8);
        }
    };
    let started = Instant::now();
    let mut outcome = Outcome::default();
    // SIGTERM drops the step's future: its scratch files are removed as their owners drop.
    let result = runtime.block_on(async {
        tokio::select! {
            result = execute(cli.command, &mut outcome) => result,
            () = cli::sigterm() => {
                pomona_runner::say!("pomona: SIGTERM: stopping; the step's work in progress is dropped");
                Err(anyhow::Error::new(pomona_runner::Terminated))
            }
        }
    });
    // Threads still finishing a batch are not waited for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            pomona_runner::say!("pomona: error: {e:#}");
            exit_code(e)
        }
    };
    if let Some(step) = outcome.step {
        let summary = PodSummary {
            step,
            shard: outcome.shard,
            images: outcome.images,
            processed: outcome.processed,
            failed: outcome.failed,
            seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            peak_rss_mib: cli::peak_rss_mib(),
            pca: outcome.pca,
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        };
        let storage = cli::storage_counts(&outcome.storages);
        cli::report_summary(&summary, storage.as_ref());
    }
    ExitCode::from(code as u8)
}

/// What a command did, or got to before it failed, for its summary line: the step it was in
/// (a failed `pomona run` names the step that failed), the counts so far, and the storages
/// whose requests it reports.
#[derive(Debug, Default)]
struct Outcome {
    step: Option<Step>,
    shard: Option<u32>,
    images: u64,
    processed: u64,
    failed: u64,
    pca: Option<PcaResult>,
    storages: Vec<Storage>,
}

impl Outcome {
    fn reduced(&mut self, summary: &ReduceSummary) {
        self.images = summary.images;
        self.processed = summary.processed;
        self.failed = summary.failed;
        self.pca = Some(PcaResult {
            components: summary.components as u32,
            explained_variance: summary.cumulative_explained_variance_ratio,
            reused: summary.pca_mode == "reuse",
        });
    }
}

/// Runs a command, keeping `outcome` up to date.
async fn execute(command: Command, outcome: &mut Outcome) -> anyhow::Result<()> {
    match command {
        Command::Plan { plan, output, s3 } => {
            let config = s3.config();
            let source = Storage::open(&plan.input, &config).await?;
            let options = plan.options.options();
            match output {
                Some(output) => {
                    let out = Storage::open(&output, &config).await?;
                    let (plan, created) = load_or_create_plan(&source, &out, &options).await?;
                    cli::print_plan(&plan);
                    pomona_runner::say!(
                        "{} {}",
                        if created {
                            "written to"
                        } else {
                            "already planned in"
                        },
                        out.uri()
                    );
                }
                None => {
                    let entries = pomona_storage::plan::list_images(&source, &options).await?;
                    let plan = pomona_storage::plan::build_plan(
                        &source.uri(),
                        &entries,
                        options.images_per_shard,
                    )?;
                    cli::print_plan(&plan);
                }
            }
            Ok(())
        }
        Command::Extract {
            output,
            manifest,
            shard,
            model,
            s3,
        } => {
            outcome.step = Some(Step::Extract);
            outcome.shard = Some(shard);
            let config = s3.config();
            let plan_root = match manifest {
                Some(m) => cli::run_root_of_manifests(&m)?,
                None => output.clone(),
            };
            let plan_store = Storage::open(&plan_root, &config).await?;
            let plan = read_plan(&plan_store).await?;
            let out = Storage::open(&output, &config).await?;
            let source = Storage::open(&plan.source, &config).await?;
            outcome.images = plan.shard_len(shard);
            outcome.storages = vec![source.clone(), out.clone()];
            let extractor = model.load(&config, Threads::detect(None, None)).await?;
            let done = Arc::new(AtomicU64::new(0));
            let progress =
                cli::Progress::start(plan.shard_len(shard), done.clone(), source.clone());
            let scratch = cli::scratch_dir();
            let result = extractor
                .extract_shard(&source, &out, &plan, shard, &scratch, done)
                .await
                .with_context(|| format!("shard {shard}"));
            progress.finish();
            let extracted = result?;
            outcome.processed = extracted.counts.processed;
            outcome.failed = extracted.counts.failed;
            Ok(())
        }
        Command::Run {
            input,
            output,
            workers,
            plan,
            pca,
            model,
            s3,
        } => {
            outcome.step = Some(Step::Plan);
            let config = s3.config();
            // Checks before any work: ONNX Runtime, the model (found, loads, its checksum, the
            // size it takes) and a PCA to reuse.
            let extractor = model
                .load(&config, cli::worker_threads(workers))
                .await
                .map_err(cli::before_any_work)?;
            let mode = pca.mode(Some(DEFAULT_COMPONENTS)).expect("a default mode");
            if let reduce::Mode::Reuse(uri) = &mode {
                reduce::check_pca_source(uri, &config, extractor.dim())
                    .await
                    .map_err(cli::before_any_work)?;
            }
            let source = Storage::open(&input, &config).await?;
            let out = Storage::open(&output, &config).await?;
            outcome.storages = vec![source.clone(), out.clone()];
            let (plan, created) = load_or_create_plan(&source, &out, &plan.options()).await?;
            cli::print_plan(&plan);
            if !created {
                pomona_runner::say!("pomona: resuming the run planned in {}", out.uri());
            }
            outcome.step = Some(Step::Extract);
            outcome.images = plan.images;
            let mut totals = cli::ShardTotals::default();
            let extracted = cli::run_shards(
                &plan,
                &source,
                &out,
                Arc::new(extractor),
                workers.max(1),
                &mut totals,
            )
            .await;
            outcome.processed = totals.processed;
            outcome.failed = totals.failed;
            outcome.shard = totals.failed_shard;
            extracted?;
            outcome.step = Some(Step::Reduce);
            let reduced =
                reduce::reduce(&out, &config, &mode, pca.csv, &ShardList::default()).await?;
            outcome.reduced(&reduced.summary);
            Ok(())
        }
        Command::Reduce {
            output,
            failed_shards,
            pca,
            s3,
        } => {
            outcome.step = Some(Step::Reduce);
            let config = s3.config();
            let out = Storage::open(&output, &config).await?;
            outcome.storages = vec![out.clone()];
            let mode = pca.mode(None).expect("checked in main");
            let reduced = reduce::reduce(&out, &config, &mode, pca.csv, &failed_shards).await?;
            outcome.reduced(&reduced.summary);
            Ok(())
        }
    }
}
