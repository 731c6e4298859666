//! The process contract of `pomona`: usage errors exit 2 before any work, stdout carries only
//! JSON summary lines, a closed stdout and SIGTERM end the process cleanly, and `--help` lists
//! the exit codes.
//!
//! Needs `ORT_DYLIB_PATH` and the shared model and images.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cli::{command, copy_varieties, pomona};
use common::{scratch_dir, training_dir};

/// `pomona run --input <input> --output <output>`, to extend.
fn run_args<'a>(input: &'a Path, output: &'a Path) -> Vec<&'a str> {
    let utf8 = |p: &'a Path| p.to_str().expect("a UTF-8 path");
    vec!["run", "--input", utf8(input), "--output", utf8(output)]
}

fn out_str(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_exit_codes() {
    let out = pomona(&["--help"], &[]);
    assert!(out.status.success());
    let help = out_str(&out.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    for code in ["  0 ", "  1 ", "  2 ", "  3 ", "  143 "] {
        assert!(help.contains(code), "--help lists exit code{code}:\n{help}");
    }
}

#[test]
fn out_of_range_arguments_are_usage_errors_before_any_work() {
    let scratch = scratch_dir("usage");
    let images = scratch.join("images");
    copy_varieties(&images, &["Banana 1"]);
    for (i, bad) in [
        &["--batch-size", "0"][..],
        &["--workers", "0"],
        &["--variance-to-keep", "1.5"],
        &["--variance-to-keep", "0"],
        &["--components", "0"],
        &["--size", "0"],
        &["--size", "5000"],
        &["--images-per-shard", "0"],
        &["--threads", "0"],
    ]
    .into_iter()
    .enumerate()
    {
        let output = scratch.join(format!("out-{i}"));
        let mut args = run_args(&images, &output);
        args.extend(bad);
        let out = pomona(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{bad:?} is a usage error");
        assert!(out.stdout.is_empty(), "{bad:?}: nothing on stdout");
        assert!(!output.exists(), "{bad:?}: nothing was written");
    }
}

#[test]
fn a_missing_model_runtime_or_pca_is_a_usage_error_before_any_work() {
    let scratch = scratch_dir("preflight");
    let images = scratch.join("images");
    copy_varieties(&images, &["Banana 1"]);
    let missing = scratch.join("missing");
    let missing = missing.to_str().unwrap();
    let model = common::model_path();
    for (i, bad) in [
        &["--model", "/nonexistent/model.onnx"][..],
        &["--onnxruntime", "/nonexistent/libonnxruntime.so"],
        &["--pca-from", missing],
        &["--model-sha256", "00"],
    ]
    .into_iter()
    .enumerate()
    {
        let output = scratch.join(format!("out-{i}"));
        let mut args = run_args(&images, &output);
        args.extend(bad);
        if bad[0] != "--model" {
            args.extend(["--model", model.to_str().unwrap()]);
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pomona"))
            .args(&args)
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("POMONA_MODEL")
            .output()
            .unwrap();
        let stderr = out_str(&out.stderr);
        eprintln!("{bad:?}: {stderr}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?} is a usage error: {stderr}"
        );
        assert!(
            stderr.contains("nothing was done"),
            "{bad:?}: found by the checks: {stderr}"
        );
        assert!(
            !output.exists(),
            "{bad:?}: nothing was written (no manifests/)"
        );
    }
}

#[test]
fn stdout_holds_only_json_lines() {
    let scratch = scratch_dir("stdout-json");
    let images = scratch.join("images");
    copy_varieties(&images, &["Banana 1", "Lemon 1"]);
    let input = images.to_str().unwrap();
    let output = scratch.join("out");
    let output = output.to_str().unwrap();
    let runs = [
        vec!["plan", "--input", input],
        vec!["plan", "--input", input, "--output", output],
        vec![
            "run",
            "--input",
            input,
            "--output",
            output,
            "--components",
            "3",
        ],
    ];
    let mut summaries = 0;
    for args in runs {
        let out = pomona(&args, &[]);
        assert!(out.status.success(), "{args:?}");
        // Not a terminal: pomona's human lines on stderr start with their UTC time.
        for line in out_str(&out.stderr)
            .lines()
            .filter(|l| l.contains("pomona: ") || l.contains("plan: "))
        {
            let (stamp, _) = line.split_once(' ').unwrap_or((line, ""));
            assert!(
                stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
                "{args:?}: an unstamped stderr line: {line}"
            );
        }
        for line in out_str(&out.stdout).lines() {
            let json: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?} printed a non-JSON line ({e}): {line}"));
            assert!(json.is_object());
            summaries += 1;
        }
    }
    assert!(summaries >= 1, "`pomona run` printed its summary");
}

#[test]
fn a_closed_stdout_ends_the_step_normally() {
    let scratch = scratch_dir("broken-pipe");
    let images = scratch.join("images");
    copy_varieties(&images, &["Banana 1"]);
    let output = scratch.join("out");
    // A pipe whose reader is gone: every write to it fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut args = run_args(&images, &output);
    args.extend(["--components", "3"]);
    let out = command(&args, &[])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = out_str(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "no panic (101) on a closed pipe"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.join("_SUCCESS").is_file(), "the run finished");
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn sigterm_stops_cleanly_with_exit_143() {
    let scratch = scratch_dir("sigterm");
    let tmp = scratch.join("scratch");
    std::fs::create_dir_all(&tmp).unwrap();
    let output = scratch.join("out");
    let training = training_dir();
    let mut child = command(
        &run_args(&training, &output),
        &[("POMONA_SCRATCH", tmp.to_str().unwrap())],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the extraction has started (the plan is shown just before), then a moment more.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("pomona ended before extracting:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains("plan: ") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{seen}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    eprintln!("{seen}{rest}");
    assert_eq!(status.code(), Some(143), "SIGTERM exits 143, by itself");
    assert!(rest.contains("SIGTERM"), "it says why it stops: {rest}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        summary["error"].as_str().unwrap_or("").contains("SIGTERM"),
        "the summary names the stop: {stdout}"
    );
    let left = files_under(&tmp);
    assert!(left.is_empty(), "scratch files left behind: {left:?}");
    assert!(!output.join("_SUCCESS").exists());
}
