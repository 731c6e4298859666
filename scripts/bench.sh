#!/usr/bin/env bash
# Benchmarks, printed beside what they are compared with (release build):
#
#   ./scripts/bench.sh extract [-- --copies N]   pomona extract vs raw ONNX Runtime, peak RSS
#   ./scripts/bench.sh reduce                     PCA fit and projection vs scikit-learn and Spark
#   ./scripts/bench.sh s3 [-- --copies N]         the same images from a folder, from s3s-fs, and
#                                                 from s3s-fs behind 30 ms of latency: images/s,
#                                                 ratio to the folder, client CPU/image, peak RSS
#   ./scripts/bench.sh merge [-- --files N]       the reduce step's statistics merge from s3s-fs,
#                                                 direct and behind 30 ms, 1 and 8 files at once
#                                                 (--distinct K --in-flight 8: 5,000 files as hard
#                                                 links of K, 8 at a time)
#   ./scripts/bench.sh incremental [-- --new N]   the weekly case: a fresh run of the sample plus N
#                                                 new images beside the run reusing last week's
#   ./scripts/bench.sh plan [-- --keys N]         a streamed plan of 10^7 synthetic keys (S3 pages
#                                                 of 1,000) to a local folder: time, peak RSS;
#                                                 20,000 objects of s3s-fs (--s3-keys K) listed
#                                                 with fan-out and with one stream, side by side
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
