#!/usr/bin/env bash
# The main job: the whole pipeline on this machine, on the shared Fruits-360 sample.
#
#   ./scripts/quickstart.sh                       ../shared/…/Training → out/fruits-360/
#   ./scripts/quickstart.sh --input DIR|s3://… --output DIR|s3://…   (any `pomona run` option)
#
# Installs ONNX Runtime (from the PyPI wheel) into .tools/ the first time, and builds pomona in
# release mode (several minutes the first time on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_onnxruntime
cargo build --release --locked -p pomona-runner --bin pomona
if [ "$#" -eq 0 ]; then
    set -- --input ../shared/data/fruits-360-sample/Training --output out/fruits-360
fi
exec ./target/release/pomona run "$@"
