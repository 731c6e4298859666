#!/usr/bin/env bash
# Benchmarks, printed beside what they are compared with (release build):
#
#   ./scripts/bench.sh extract [-- --copies N]   pomona extract vs raw ONNX Runtime, peak RSS
#   ./scripts/bench.sh reduce                     PCA fit and projection vs scikit-learn and Spark
#   ./scripts/bench.sh NAME                       any bench of job-runner/benches/
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_onnxruntime
ensure_s3s_fs
ensure_python   # the scikit-learn reference of the reduce benchmark
name=${1:-extract}
shift || true
exec cargo bench --locked -p pomona-runner --bench "$name" "$@"
