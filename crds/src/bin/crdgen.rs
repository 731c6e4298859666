//! Prints the FeatureExtraction CRD manifest, or writes it to the path given as the only argument.
//!
//! `cargo run -p pomona-crds --bin crdgen -- crds/featureextraction.yaml`

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = pomona_crds::crd_yaml();
    match std::env::args().nth(1) {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(&path, yaml) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crdgen: cannot write {path}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
