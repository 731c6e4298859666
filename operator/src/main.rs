//! The `pomona-operator` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pomona_operator::app::{RunArgs, init_logging, run};
use pomona_operator::render::render;
use pomona_operator::settings::Settings;

/// Kubernetes operator for pomona FeatureExtraction resources.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: watch FeatureExtraction resources and run them (in a cluster, or
    /// against the cluster of the current kubeconfig).
    Run {
        #[command(flatten)]
        args: RunArgs,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print the FeatureExtraction CRD manifest (what `kubectl apply -f crds/` installs).
    Crd,
    /// Print, without a cluster, the Jobs the operator would create for a FeatureExtraction.
    Render {
        /// The FeatureExtraction manifest (YAML).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Images the source listing is taken to hold (the Fruits-360 sample has 1,260).
        #[arg(long, default_value_t = 1260)]
        images: u64,
        /// Override spec.sharding.imagesPerShard.
        #[arg(long)]
        images_per_shard: Option<u32>,
        #[command(flatten)]
        settings: Settings,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { args, settings } => {
            if let Err(e) = init_logging(&args) {
                eprintln!("pomona-operator run: {e:#}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("pomona-operator run: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = runtime.block_on(run(args, settings)) {
                // kube's errors print their causes in their own message: each cause is shown
                // only when the message before it does not already hold it.
                let mut text = String::new();
                for cause in e.chain().map(ToString::to_string) {
                    if !text.contains(&cause) {
                        if !text.is_empty() {
                            text.push_str(": ");
                        }
                        text.push_str(&cause);
                    }
                }
                tracing::error!("{text}");
                return ExitCode::FAILURE;
            }
        }
        Command::Crd => print!("{}", pomona_crds::crd_yaml()),
        Command::Render {
            file,
            images,
            images_per_shard,
            settings,
        } => {
            let rendered = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))
                .and_then(|yaml| render(&yaml, images, images_per_shard, &settings));
            match rendered {
                Ok(out) => print!("{out}"),
                Err(e) => {
                    eprintln!("pomona-operator render: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    ExitCode::SUCCESS
}
