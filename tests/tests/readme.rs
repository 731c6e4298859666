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
