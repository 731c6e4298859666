#!/usr/bin/env bash
# Checks that the shared material (models/ and data/, normally ../shared beside the project) is
# the one the tests expect: the MobileNetV2 feature model by checksum and the Fruits-360 sample.
#
#   .github/scripts/check-shared.sh [SHARED_DIR]      (default: ../shared from the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${1:-$root/../shared}
model="$shared/models/mobilenetv2_features.onnx"
model_sha256=5353f63fa16e6c2d25805d6201db45bb040868bad6a3751ed13602136780629a
training="$shared/data/fruits-360-sample/Training"

fail() { echo "::error::$*" >&2; exit 1; }

[ -f "$model" ] || fail "missing $model (see docs/images.md, 'The shared material in GitHub Actions')"
actual=$(sha256sum "$model" | cut -d' ' -f1)
[ "$actual" = "$model_sha256" ] || fail "$model has sha256 $actual, expected $model_sha256"
[ -d "$training" ] || fail "missing $training"
images=$(find "$training" -type f -name '*.jpg' | wc -l)
[ "$images" -gt 0 ] || fail "no images under $training"
echo "shared material OK: $model (sha256 $actual), $images training images"
