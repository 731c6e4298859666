//! The container images and the kind workflow agree with the rest of the project: the runner
//! image carries the ONNX Runtime release the tests run against, both images run as the user
//! the Jobs expect, and the workflow sets every variable the cluster tests read.

use pomona_tests::e2e::VARS;
use pomona_tests::workspace_root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The values of `NAME=value` lines (shell assignments or Dockerfile `ARG NAME=value`), with any
/// trailing comment dropped.
fn assignments(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .map(|l| l.strip_prefix("ARG ").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn runner_image_carries_the_pinned_onnx_runtime() {
    let pinned = assignments(&read("scripts/tools.sh"), "ORT_VERSION");
    assert_eq!(
        pinned.len(),
        1,
        "one ORT_VERSION in scripts/tools.sh: {pinned:?}"
    );
    let dockerfile = read("job-runner/Dockerfile");
    let args = assignments(&dockerfile, "ORT_VERSION");
    assert!(
        !args.is_empty(),
        "job-runner/Dockerfile declares ARG ORT_VERSION"
    );
    for arg in &args {
        assert_eq!(
            arg, &pinned[0],
            "job-runner/Dockerfile's ORT_VERSION must equal scripts/tools.sh's"
        );
    }
    assert!(
        dockerfile.contains("ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}"),
        "the image tells the runner where ONNX Runtime is"
    );
}

#[test]
fn onnx_runtime_is_checksummed_alike_in_the_tools_and_the_image() {
    let tools = read("scripts/tools.sh");
    let dockerfile = read("job-runner/Dockerfile");
    for name in ["ORT_WHEEL_SHA256_X86_64", "ORT_WHEEL_SHA256_AARCH64"] {
        let pinned = assignments(&tools, name);
        assert_eq!(
            pinned.len(),
            1,
            "one {name} in scripts/tools.sh: {pinned:?}"
        );
        assert!(
            pinned[0].len() == 64 && pinned[0].bytes().all(|b| b.is_ascii_hexdigit()),
            "{name} is a sha256: {}",
            pinned[0]
        );
        assert_eq!(
            assignments(&dockerfile, name),
            pinned,
            "job-runner/Dockerfile's {name} must equal scripts/tools.sh's"
        );
    }
    // pip refuses a wheel of another sha256 only when asked to.
    assert!(
        tools.contains("--require-hashes"),
        "scripts/tools.sh checks the wheel"
    );
    assert!(
        dockerfile.contains("--require-hashes"),
        "job-runner/Dockerfile checks the wheel"
    );
}

#[test]
fn images_run_on_a_maintained_distroless_base() {
    // distroless' Debian 12 images are deprecated: both images run on Debian 13's, and are
    // compiled on the same Debian release (one glibc).
    for file in ["operator/Dockerfile", "job-runner/Dockerfile"] {
        let text = read(file);
        assert_eq!(
            assignments(&text, "RUNTIME_IMAGE"),
            ["gcr.io/distroless/cc-debian13:nonroot"],
            "{file}: RUNTIME_IMAGE"
        );
        assert_eq!(
            assignments(&text, "RUST_IMAGE"),
            ["rust:1.95-trixie"],
            "{file}: RUST_IMAGE"
        );
        assert!(
            !text.contains("debian12") && !text.contains("bookworm"),
            "{file}"
        );
    }
}

#[test]
fn images_run_as_the_runner_user_and_build_the_right_package() {
    for (file, package, binary) in [
        ("operator/Dockerfile", "pomona-operator", "pomona-operator"),
        ("job-runner/Dockerfile", "pomona-runner", "pomona"),
    ] {
        let text = read(file);
        assert!(
            text.contains("\nUSER 65532:65532\n"),
            "{file}: USER 65532:65532"
        );
        assert!(
            text.contains(&format!("cargo build --release --locked -p {package}")),
            "{file} builds {package}"
        );
        assert!(
            text.contains(&format!("/usr/local/bin/{binary}")),
            "{file} installs {binary} on the PATH (the Jobs run `{binary}`)"
        );
    }
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .collect();
    for dir in ["target", ".tools", "out", ".git"] {
        assert!(
            ignored.iter().any(|l| l == dir),
            ".dockerignore leaves out {dir}"
        );
    }
}

#[test]
fn the_kind_workflow_sets_every_cluster_test_variable() {
    let workflow = read(".github/workflows/e2e.yml");
    for var in VARS {
        assert!(
            workflow.contains(&format!("{var}:")),
            ".github/workflows/e2e.yml sets {var}"
        );
    }
    // The cluster tests are ignored unless asked for: the workflow must ask.
    assert!(workflow.contains("--run-ignored only -E 'binary(/^cluster/)'"));
}
