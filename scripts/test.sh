#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent, from the package registries only;
# see scripts/tools.sh) and runs them all — the Helm chart's checks (scripts/chart-checks.sh),
# format check, clippy, every test with nextest, then the cluster tests (tests/tests/cluster.rs)
# on the local cluster (scripts/local-cluster.sh: a real control plane built from Kubernetes' Go
# modules, brought up for them and taken down after, unless it was already up).
#
#   ./scripts/test.sh                               everything, as CI runs it
#   ./scripts/test.sh -E 'package(pomona-crds)'     extra arguments go to `cargo nextest run`,
#                                                   and the cluster tests are left out
#   ./scripts/test.sh --without-shared              what runs without ../shared (a fork's pull
#                                                   request on GitHub): every check, and the tests
#                                                   but the runner's and storage's integration
#                                                   tests (the model and images) and the cluster's
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

step() { printf '\n==> %s\n' "$*"; }

if [ "${1:-}" = "--without-shared" ]; then
    shift
    set -- -E 'not ((package(pomona-runner) | package(pomona-storage)) & kind(test))' "$@"
    echo "without the shared material: the runner's and the storage's integration tests are left out"
fi

step "tools"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
ensure_onnxruntime   # ORT_DYLIB_PATH: the runtime the runner loads
ensure_python        # POMONA_PYTHON: onnxruntime + Pillow oracles the preprocessing is checked against
ensure_spark         # ... + pyspark, pandas, duckdb: the Spark ML comparison, docs/from-spark.md's snippets
ensure_s3s_fs        # POMONA_S3S_FS: the S3 server the pipeline tests start on 127.0.0.1
ensure_validators    # POMONA_KUBERNETES_VALIDATE: checks the Jobs `pomona-operator render` prints
ensure_helm          # POMONA_HELM, POMONA_HELM3: the chart checks
ensure_checkov       # POMONA_CHECKOV: the chart's security policies
ensure_actionlint    # POMONA_ACTIONLINT, POMONA_SHELLCHECK: the GitHub workflows' checks
echo "nextest $(cargo nextest --version | head -1), ORT $ORT_DYLIB_PATH"

step "helm chart (scripts/chart-checks.sh)"
./scripts/chart-checks.sh

step "GitHub workflows (actionlint $ACTIONLINT_VERSION, with shellcheck)"
"$POMONA_ACTIONLINT" -shellcheck "$POMONA_SHELLCHECK" .github/workflows/*.yml
echo "actionlint: every workflow passes"

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
status=0
cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?

if [ $# -gt 0 ]; then
    echo "cluster tests left out (arguments were given): run ./scripts/test.sh alone for them"
    exit $status
fi
step "cluster tests on the local cluster (scripts/local-cluster.sh)"
if ./scripts/local-cluster.sh is-up; then
    echo "the local cluster is already up: it stays up"
else
    trap './scripts/local-cluster.sh down' EXIT
fi
./scripts/local-cluster.sh up
eval "$(./scripts/local-cluster.sh env)"
cargo nextest run -p pomona-tests --locked --no-fail-fast --run-ignored only \
    -E 'binary(/^cluster/) | binary(local_cluster)' || status=$?
exit $status
