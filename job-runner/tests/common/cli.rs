//! Running the `pomona` binary and reading what it wrote, for the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

use arrow_array::{Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pomona_crds::contract::PodSummary;

/// The `pomona` binary with `args` and `envs`; `run`, `plan` and `extract` get the shared
/// model. The
/// environment's S3 endpoint and the pod's termination log are kept out.
pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pomona"));
    cmd.args(args);
    if matches!(
        args.first(),
        Some(&"run") | Some(&"extract") | Some(&"plan")
    ) {
        cmd.arg("--model").arg(super::model_path());
    }
    cmd.env_remove("AWS_ENDPOINT_URL")
        .env("POMONA_TERMINATION_LOG", "/nonexistent/termination-log");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `pomona`, echoing its stderr into the test's output.
pub fn pomona(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out = command(args, envs).output().expect("run pomona");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The one-line summary a step printed.
pub fn summary(out: &Output) -> PodSummary {
    PodSummary::from_message(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("no summary in {}", String::from_utf8_lossy(&out.stdout)))
}

/// Every record batch of a Parquet file.
pub fn read_parquet(path: impl AsRef<Path>) -> Vec<RecordBatch> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A string column of a batch.
pub fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let col = batch.column_by_name(column).unwrap();
    let col = col.as_any().downcast_ref::<StringArray>().unwrap();
    (0..col.len()).map(|i| col.value(i).to_string()).collect()
}

/// Copies the sample's images of `varieties` into `dest/<variety>/`; returns how many.
pub fn copy_varieties(dest: &Path, varieties: &[&str]) -> u64 {
    let mut n = 0;
    for variety in varieties {
        let from = super::training_dir().join(variety);
        std::fs::create_dir_all(dest.join(variety)).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dest.join(variety).join(entry.file_name())).unwrap();
            n += 1;
        }
    }
    n
}
