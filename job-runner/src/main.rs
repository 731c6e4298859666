//! The `pomona` command: every step of a run, on one machine or as a Kubernetes Job pod.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use pomona_crds::PcaResult;
use pomona_crds::contract::{PlanTotals, PodSummary, Step};
use pomona_runner::cli;
use pomona_runner::command::{
    Cli, Command, ExtractCommand, MergeCommand, PlanCommand, ProjectCommand, ReduceCommand,
    RunCommand,
};
use pomona_runner::reduce::{self, DEFAULT_COMPONENTS, ReduceOutcome, ReduceRequest, ShardList};
use pomona_runner::report::ReduceSummary;
use pomona_runner::reuse::Reuse;
use pomona_runner::{Permanent, Threads, Usage, exit_code, failure_reason};
use pomona_storage::Storage;
use pomona_storage::plan::{PlanRun, load_or_create_plan, read_plan, stream_plan};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Reduce(ReduceCommand { pca, .. }) = &cli.command
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
            result = execute(cli.command, started, &mut outcome) => result,
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
            reused: (outcome.reused > 0).then_some(outcome.reused),
            seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            peak_rss_mib: cli::peak_rss_mib(),
            cpu_seconds: cli::cpu_seconds(),
            pca: outcome.pca,
            plan: outcome.plan,
            label_agreement: outcome.label_agreement,
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            reason: result.as_ref().err().map(|e| failure_reason(e).to_string()),
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
    reused: u64,
    pca: Option<PcaResult>,
    plan: Option<PlanTotals>,
    label_agreement: Option<f64>,
    storages: Vec<Storage>,
}

impl Outcome {
    fn reduce_step(&mut self, outcome: &ReduceOutcome) {
        match outcome {
            ReduceOutcome::Reduced(summary) => self.reduced(summary),
            ReduceOutcome::Fitted(fit) => {
                self.images = fit.images;
                self.processed = fit.fitted_on;
                self.failed = fit.dead_lettered;
                self.pca = Some(PcaResult {
                    components: fit.components as u32,
                    explained_variance: fit.explained_variance,
                    reused: fit.reused,
                });
            }
        }
    }

    fn reduced(&mut self, summary: &ReduceSummary) {
        self.images = summary.images;
        self.processed = summary.processed;
        self.failed = summary.failed;
        self.reused = summary.reused;
        self.pca = Some(PcaResult {
            components: summary.components as u32,
            explained_variance: summary.cumulative_explained_variance_ratio,
            reused: summary.pca_mode == "reuse",
        });
        self.label_agreement = summary.label_agreement;
    }
}

/// Runs a command that started at `started`, keeping `outcome` up to date.
async fn execute(command: Command, started: Instant, outcome: &mut Outcome) -> anyhow::Result<()> {
    match command {
        Command::Plan(c) => plan(c, outcome).await,
        Command::Extract(c) => extract(c, outcome).await,
        Command::Run(c) => run(c, outcome).await,
        Command::Project(c) => project(c, outcome).await,
        Command::Merge(c) => merge(c, outcome).await,
        Command::Sweep(args) => {
            pomona_runner::sweep::sweep(&args).await?;
            Ok(())
        }
        Command::Reduce(c) => {
            outcome.step = Some(Step::Reduce);
            let config = c.s3.config();
            let out = Storage::open(&c.output, &config).await?;
            outcome.storages = vec![out.clone()];
            let mode = c.pca.mode(None).expect("checked in main");
            let failed_shards = c.failed_shards()?;
            // In a reduce pod, the run's cost: what the operator counted before, and this pod.
            let so_far = cli::cost_so_far();
            let cost_of = so_far.as_ref().map(|so_far| {
                move |processed| {
                    let run_seconds = started.elapsed().as_secs_f64();
                    so_far.with_reduce_pod(cli::cpu_seconds(), run_seconds, processed)
                }
            });
            let request = ReduceRequest {
                mode: &mode,
                stage: c.stage(),
                csv: c.pca.csv,
                failed_shards: &failed_shards,
                clusters: c.clusters.clusters,
                merged_blocks: c.merged_blocks,
            };
            let cost_of = cost_of
                .as_ref()
                .map(|f| f as &dyn Fn(u64) -> pomona_crds::Cost);
            let reduced = reduce::reduce(&out, &config, &request, cost_of).await?;
            outcome.reduce_step(&reduced);
            Ok(())
        }
    }
}

/// The `what` (shard, group, block) of a step run by an Indexed Job's pod: `--<what> N`, else
/// `JOB_COMPLETION_INDEX` (which clap read into it); a usage error without either.
fn job_index(index: Option<u32>, what: &str) -> Result<u32, Usage> {
    index.ok_or_else(|| {
        Usage(format!(
            "no {what}: pass --{what} N, or run as an Indexed Job pod (JOB_COMPLETION_INDEX)"
        ))
    })
}

/// `pomona merge`: one block of shards' statistics merged.
async fn merge(c: MergeCommand, outcome: &mut Outcome) -> anyhow::Result<()> {
    outcome.step = Some(Step::Merge);
    let block = job_index(c.block, "block")?;
    let config = c.s3.config();
    let out = Storage::open(&c.output, &config).await?;
    outcome.storages = vec![out.clone()];
    let merged = reduce::merge::merge_block(&out, block, c.shards_per_pod).await?;
    outcome.images = merged.images;
    outcome.processed = merged.images;
    Ok(())
}

/// `pomona project`: one group of shards through the run's fitted PCA.
async fn project(c: ProjectCommand, outcome: &mut Outcome) -> anyhow::Result<()> {
    outcome.step = Some(Step::Project);
    let group = job_index(c.group, "group")?;
    let config = c.s3.config();
    let out = Storage::open(&c.output, &config).await?;
    outcome.storages = vec![out.clone()];
    let projected = reduce::projection::project_group(&out, group, c.shards_per_pod).await?;
    outcome.images = projected.images;
    outcome.processed = projected.images;
    Ok(())
}

/// `pomona plan`: with `--output`, the plan of this run written there (or found there, when
/// the same run planned it before); without, the plan shown and nothing written.
async fn plan(c: PlanCommand, outcome: &mut Outcome) -> anyhow::Result<()> {
    outcome.step = Some(Step::Plan);
    let config = c.s3.config();
    let options = c.options.options();
    let plan = match &c.output {
        Some(output) => {
            let sha = c.model.sha256(&config).await?;
            let identity = options.identity(c.run_uid.clone(), sha, c.model.preprocessing());
            let source = Storage::open(&c.input, &config).await?;
            let out = Storage::open(output, &config).await?;
            outcome.storages = vec![source.clone(), out.clone()];
            if c.overwrite {
                cli::clear_output(&source, &out).await?;
            }
            let run = PlanRun::default();
            let lines = cli::PlanProgressLines::start(run.progress.clone());
            let made = load_or_create_plan(&source, &out, &options, &identity, &run).await;
            drop(lines);
            let (plan, created) = made?;
            cli::print_plan(&plan);
            cli::say_if_raised(&plan, options.images_per_shard);
            cli::say_if_raised(&plan, options.images_per_shard);
            let how = if created {
                "written to"
            } else {
                "already planned in"
            };
            pomona_runner::say!("pomona: {how} {}", out.uri());
            plan
        }
        None => {
            let source = Storage::open(&c.input, &config).await?;
            outcome.storages = vec![source.clone()];
            let run = PlanRun::default();
            let lines = cli::PlanProgressLines::start(run.progress.clone());
            let made = stream_plan(source.clone(), source.location(), None, &options, &run).await;
            drop(lines);
            let plan = made?;
            cli::print_plan(&plan);
            cli::say_if_raised(&plan, options.images_per_shard);
            cli::say_if_raised(&plan, options.images_per_shard);
            plan
        }
    };
    outcome.images = plan.images;
    outcome.plan = Some(plan.totals());
    Ok(())
}

/// `pomona extract`: one shard of the plan under the output prefix.
async fn extract(c: ExtractCommand, outcome: &mut Outcome) -> anyhow::Result<()> {
    outcome.step = Some(Step::Extract);
    let shard = job_index(c.shard, "shard")?;
    outcome.shard = Some(shard);
    let config = c.s3.config();
    let plan_root = match &c.manifest {
        Some(m) => cli::run_root_of_manifests(m)?,
        None => c.output.clone(),
    };
    let plan_store = Storage::open(&plan_root, &config).await?;
    let plan = read_plan(&plan_store).await?;
    let out = Storage::open(&c.output, &config).await?;
    let source = Storage::open(&plan.source, &config).await?;
    outcome.images = plan.shard_len(shard);
    outcome.storages = vec![source.clone(), out.clone()];
    let mut extractor = c
        .model
        .load(&c.tuning, &config, Threads::detect(None, None))
        .await?;
    if let Some(uri) = &c.pca_from {
        let (pca, sha256) =
            reduce::reusable_pca(uri, &config, extractor.dim(), &extractor.origin()).await?;
        extractor = extractor.project_through(pca, sha256);
    }
    let reuse = match (&c.reuse.reuse_from[..], &plan.identity) {
        ([], _) => None,
        (uris, Some(identity)) => Some(Reuse::open(uris, &config, identity, &out).await?),
        (_, None) => {
            return Err(Permanent(format!(
                "--reuse-from needs the run's identity, and the plan of {} records none (it \
                 was planned before pomona recorded one)",
                out.uri()
            ))
            .into());
        }
    };
    let done = Arc::new(AtomicU64::new(0));
    let progress = cli::Progress::start(plan.shard_len(shard), done.clone(), source.clone());
    let scratch = cli::scratch_dir();
    let result = extractor
        .extract_shard(&source, &out, &plan, shard, &scratch, done, reuse.as_ref())
        .await
        .with_context(|| format!("shard {shard}"));
    progress.finish();
    let extracted = result?;
    outcome.processed = extracted.counts.processed;
    outcome.failed = extracted.counts.failed;
    outcome.reused = extracted.reused;
    Ok(())
}

/// `pomona run`: plan (or resume the same run's plan), extract every shard not yet done, reduce.
async fn run(c: RunCommand, outcome: &mut Outcome) -> anyhow::Result<()> {
    let started = Instant::now();
    outcome.step = Some(Step::Plan);
    let config = c.s3.config();
    let options = c.plan.options();
    // Checks before any work: ONNX Runtime, the model (found, loads, its checksum, the size it
    // takes) and a PCA to reuse. A failure writes nothing.
    let workers = c.workers.max(1);
    let mut extractor = c
        .model
        .load(&c.tuning, &config, cli::worker_threads(workers))
        .await
        .map_err(cli::before_any_work)?;
    let mode = c
        .pca
        .mode(Some(DEFAULT_COMPONENTS))
        .expect("a default mode");
    if let reduce::Mode::Reuse(uri) = &mode {
        // A reused PCA is checked before any work, and each shard is projected as it is
        // written.
        let (pca, sha256) =
            reduce::reusable_pca(uri, &config, extractor.dim(), &extractor.origin())
                .await
                .map_err(cli::before_any_work)?;
        extractor = extractor.project_through(pca, sha256);
    }
    let sha = extractor.provenance().model_sha256.clone();
    let identity = options.identity(None, sha, c.model.preprocessing());
    let source = Storage::open(&c.input, &config).await?;
    let out = Storage::open(&c.output, &config).await?;
    outcome.storages = vec![source.clone(), out.clone()];
    let reuse = if c.reuse.reuse_from.is_empty() {
        None
    } else {
        let reuse = Reuse::open(&c.reuse.reuse_from, &config, &identity, &out)
            .await
            .map_err(cli::before_any_work)?;
        Some(reuse)
    };
    if c.overwrite {
        cli::clear_output(&source, &out).await?;
    }
    let run = PlanRun::default();
    let lines = cli::PlanProgressLines::start(run.progress.clone());
    let made = load_or_create_plan(&source, &out, &options, &identity, &run).await;
    drop(lines);
    let (plan, created) = made?;
    cli::print_plan(&plan);
    cli::say_if_raised(&plan, options.images_per_shard);
    if let Some(reuse) = &reuse {
        let unchanged = reuse.count_plan(&out, &plan).await?;
        pomona_runner::say!(
            "plan: {unchanged} of the {} images are unchanged since the run(s) reused: their \
             features are copied; {} to extract",
            plan.images,
            plan.images - unchanged
        );
    }
    if !created {
        pomona_runner::say!("pomona: resuming the run planned in {}", out.uri());
    }
    outcome.plan = Some(plan.totals());
    outcome.step = Some(Step::Extract);
    outcome.images = plan.images;
    let mut totals = cli::ShardTotals::default();
    let extracted = cli::run_shards(
        &plan,
        &source,
        &out,
        Arc::new(extractor),
        workers,
        reuse.as_ref(),
        &mut totals,
    )
    .await;
    outcome.processed = totals.processed;
    outcome.failed = totals.failed;
    outcome.reused = totals.reused;
    if reuse.is_some() {
        pomona_runner::say!(
            "pomona: {} images extracted, {} copied from the previous run(s)",
            totals.processed + totals.failed - totals.reused,
            totals.reused
        );
    }
    outcome.shard = totals.failed_shard;
    extracted?;
    outcome.step = Some(Step::Reduce);
    let request = ReduceRequest {
        mode: &mode,
        stage: reduce::ReduceStage::Whole,
        csv: c.pca.csv,
        failed_shards: &ShardList::default(),
        clusters: c.clusters.clusters,
        merged_blocks: None,
    };
    let reduced = reduce::reduce(&out, &config, &request, Some(&cli::process_cost)).await?;
    let ReduceOutcome::Reduced(summary) = reduced else {
        unreachable!("the whole step ends with its summary")
    };
    outcome.reduced(&summary);
    if let Some(cost) = &summary.cost {
        cli::print_cost(cost, started.elapsed().as_secs_f64(), cli::peak_rss_mib());
    }
    Ok(())
}
