//! The `pomona-operator` command.

use clap::{Parser, Subcommand};

/// Kubernetes operator for pomona FeatureExtraction resources.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the FeatureExtraction CRD manifest (what `kubectl apply -f crds/` installs).
    Crd,
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", pomona_crds::crd_yaml()),
    }
}
