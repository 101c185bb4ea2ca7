#!/usr/bin/env bash
# The GPU session of issue 24 in one go, from the repo root: install the Grad-CAM peers offline from .whl/
# (only those not importable already, into a private folder, so no installed package is replaced), run the
# gpu-marked tests, then the benchmarks with --device cuda, and the Grad-CAM benchmark on the CPU too.
# Results: OUTDIR/pytest_gpu.txt, OUTDIR/*.txt (tables) and OUTDIR/bench.jsonl (one JSON line per benchmark).
#
#   bash benchmarks/gpu_checks.sh [OUTDIR]      # OUTDIR: $OUT if set, else gpu_results
#   GPU_TESTS="tests/test_gpu.py tests/train/test_preload.py" bash benchmarks/gpu_checks.sh   # more gpu tests
#
# A failing step does not stop the later ones; the exit status is the number of failed steps.
set -u
OUTDIR=${1:-${OUT:-gpu_results}}
PEERS=${PEERS:-/tmp/consistcam_peers}
PY=${PYTHON:-python}
mkdir -p "$OUTDIR" "$PEERS"
export PYTHONPATH="$PWD/src:$PWD:$PEERS${PYTHONPATH:+:$PYTHONPATH}"
failed=0
step() { echo "== $*"; "$@" || { echo "!! failed ($?): $*"; failed=$((failed + 1)); }; }

install() {  # module, wheel glob: install the wheel unless the module imports already
    if "$PY" -c "import $1" 2>/dev/null; then return 0; fi
    local wheel
    wheel=$(ls .whl/$2 2>/dev/null | head -1)
    if [ -z "$wheel" ]; then echo "note: $1 missing and no .whl/$2"; return 0; fi
    "$PY" -m pip install --quiet --no-index --no-deps --target "$PEERS" "$wheel"
}
# grad-cam's package imports scikit-learn and scipy eagerly; captum and torchcam need nothing beyond torch
for pair in captum:captum-*.whl torchcam:torchcam-*.whl ttach:ttach-*.whl scipy:scipy-*.whl \
            joblib:joblib-*.whl threadpoolctl:threadpoolctl-*.whl sklearn:scikit_learn-*.whl \
            pytorch_grad_cam:grad_cam-*.whl; do
    step install "${pair%%:*}" "${pair#*:}"
done
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUTDIR/machine.txt"

step bash -c "'$PY' -m pytest -q -m gpu -p no:cacheprovider ${GPU_TESTS:-tests/test_gpu.py} \
    tests/attack/test_attack.py::test_range_is_checked_on_gpu 2>&1 | tee '$OUTDIR/pytest_gpu.txt'; exit \${PIPESTATUS[0]}"
J="$OUTDIR/bench.jsonl"
step bash -c "'$PY' benchmarks/bench_train_throughput.py --device cuda --preload on --epochs 6 --json '$J' \
    2>&1 | tee '$OUTDIR/train_throughput.txt'; exit \${PIPESTATUS[0]}"
step bash -c "'$PY' benchmarks/bench_train_throughput.py --device cuda --preload off --epochs 3 --json '$J' \
    2>&1 | tee '$OUTDIR/train_throughput_dataloader.txt'; exit \${PIPESTATUS[0]}"
step bash -c "'$PY' benchmarks/bench_ecl_scoring.py --device cuda --json '$J' \
    2>&1 | tee '$OUTDIR/ecl_scoring.txt'; exit \${PIPESTATUS[0]}"
step bash -c "'$PY' benchmarks/bench_gradcam.py --device cuda --batch 64 --size 224 --repeats 20 --json '$J' \
    2>&1 | tee '$OUTDIR/gradcam_cuda.txt'; exit \${PIPESTATUS[0]}"
step bash -c "'$PY' benchmarks/bench_gradcam.py --device cpu --batch 16 \
    --size 160 --repeats 5 --json '$J' 2>&1 | tee '$OUTDIR/gradcam_cpu.txt'; exit \${PIPESTATUS[0]}"
echo "failed steps: $failed"
exit "$failed"
