#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent, from the package registries only)
# and runs them all — format check, clippy, and every test with nextest.
#
#   ./scripts/test.sh            everything, as CI runs it
#   ./scripts/test.sh -E 'package(pomona-crds)'   extra arguments go to `cargo nextest run`
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
cargo nextest --version

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
