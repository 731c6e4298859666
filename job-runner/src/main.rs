//! The `pomona` command: the runner of every step of a run.

use clap::Parser;

/// Turns images into MobileNetV2 features, a PCA and reduced vectors.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "pomona {}: no step is built yet (plan, extract, reduce and run arrive with the extractor)",
        env!("CARGO_PKG_VERSION")
    );
}
