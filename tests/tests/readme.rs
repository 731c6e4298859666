//! The README's quickstart is what CI runs: exactly two set-up commands, the second of which is
//! the test command `.ci/run` calls.

use pomona_tests::workspace_root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The commands of the first fenced block under the `## Quickstart` heading.
fn quickstart_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Quickstart")
        .nth(1)
        .expect("the README has a Quickstart section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Quickstart has a fenced block");
    block
        .lines()
        .skip(1) // the info string (`bash`)
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn quickstart_has_two_commands_and_ci_runs_the_second() {
    let commands = quickstart_commands(&read("README.md"));
    assert_eq!(
        commands.len(),
        2,
        "exactly two set-up commands: {commands:?}"
    );
    let ci = read(".ci/run");
    assert!(
        ci.lines()
            .any(|l| l.trim() == format!("exec {}", commands[1])),
        ".ci/run must `exec {}`:\n{ci}",
        commands[1]
    );
}

#[test]
fn every_script_the_readme_names_exists_and_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    for command in quickstart_commands(&read("README.md")) {
        let program = command.split_whitespace().next().unwrap();
        if let Some(script) = program.strip_prefix("./") {
            let meta = std::fs::metadata(workspace_root().join(script))
                .unwrap_or_else(|e| panic!("{script}: {e}"));
            assert!(
                meta.permissions().mode() & 0o111 != 0,
                "{script} is executable"
            );
        }
    }
}

/// The fenced block after the `**On kind**` paragraph.
fn kind_steps(readme: &str) -> String {
    let section = readme
        .split("**On kind**")
        .nth(1)
        .expect("the README has the kind walk-through");
    section
        .split("```")
        .nth(1)
        .expect("the kind walk-through has a fenced block")
        .to_string()
}

#[test]
fn the_kind_walk_through_matches_the_files_it_uses() {
    let readme = read("README.md");
    let steps = kind_steps(&readme);
    // Every repository file it names exists.
    for word in steps.split_whitespace() {
        let path = word.trim_matches(|c| c == '\'' || c == '"');
        let repo_file = [".github/", "crds/", "charts/", "operator/", "job-runner/"]
            .iter()
            .any(|p| path.starts_with(p));
        if repo_file {
            assert!(
                workspace_root().join(path).exists(),
                "{path} does not exist"
            );
        }
    }
    // The MinIO keys are the ones the MinIO manifest sets.
    let minio = read(".github/kind/minio.yaml");
    for (key, var) in [
        ("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"),
        ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"),
    ] {
        let value = minio
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("{key} in minio.yaml"))
            .trim();
        assert!(
            steps.contains(&format!("{var}={value}")),
            "the README exports {var}={value}"
        );
    }
    // The images are tagged with the workspace version (the operator's default runner image).
    let version = env!("CARGO_PKG_VERSION");
    for image in ["pomona-operator", "pomona"] {
        let tag = format!("ghcr.io/pomona-dev/{image}:{version}");
        assert!(steps.contains(&tag), "{tag} in the kind steps");
    }
    // The example it applies uses the Secret, bucket and service account the steps create.
    let example = read("crds/examples/fruits-360.yaml");
    assert!(
        steps.contains("create secret generic fruits-s3") && example.contains("name: fruits-s3")
    );
    assert!(
        steps.contains("s3 mb s3://fruits")
            && example.contains("uri: s3://fruits/images/Training/")
    );
    assert!(
        steps.contains(
            "s3 sync ../shared/data/fruits-360-sample/Training s3://fruits/images/Training"
        )
    );
    assert!(
        steps.contains("s3://fruits/models/")
            && example.contains("uri: s3://fruits/models/mobilenetv2_features.onnx")
    );
    assert!(example.contains("serviceAccountName: pomona-runner"));
    assert!(steps.contains("runner.serviceAccount.namespaces=[\"fruits\"]"));
}
