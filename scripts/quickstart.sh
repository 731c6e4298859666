#!/usr/bin/env bash
# The main job: the whole pipeline on one machine, on the shared Fruits-360 sample.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "pomona: the local pipeline (pomona run) is not built yet; it arrives with the extractor." >&2
exit 1
