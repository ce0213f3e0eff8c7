#!/usr/bin/env bash
# The GPU proof in one prepared run (issue 13): install pybench against this machine's torch, then the CUDA tests,
# compute-sanitizer, ops-bench and the GPU suite, each within its budget, 9 minutes in all; summary.md at the end.
#   bash benchmarks/gpu_proof.sh                 # on a GPU machine: writes $OUT (or results/gpu-proof/<time>)
#   bash benchmarks/gpu_proof.sh --dry-run       # anywhere: each step's command and budget, the CPU-capable steps
# Options: see `python3 benchmarks/gpu_proof.py --help`; docs/gpu.md says how to read the results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$py" "$here/gpu_proof.py" --python "$py" "$@"
