#!/usr/bin/env bash
# Profile a short unet_perf training run.
#   tools/profile.sh [--steps N] [--output DIR] [--top N] [train flags...]
# CPU/GPU: Chrome trace (trace.json), op table (ops.csv, printed), TensorBoard run metadata and TF profiler trace.
# NPU: Ascend profiler (profiling_mode/profiling_options), msprof --export when on the PATH, prints the PROF_* dir.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" "${repo}/tools/profile_run.py" "$@"
