#!/usr/bin/env bash
# The GPU check of issue 24 (docs/benchmarks.md "GPU checks"): GPU tests, benchmarks, a determinism
# rerun and ERM vs ECL vs CGC with the GPU preset, in one run that fits a short GPU lease.
#   scripts/gpu_check.sh --dry-run     # anywhere, seconds (CI runs it)
#   scripts/gpu_check.sh               # on a CUDA machine; results in $OUT or runs/gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py "$@"
