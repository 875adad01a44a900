#!/usr/bin/env bash
# The GPU check of issue 17, one short script for a device machine (one CUDA GPU, no registry):
#   1. nvidia-smi                       the GPU, its driver and memory                         (15 s)
#   2. environment (benchmarks/gpu_env.py, 30 s): torch / CUDA, lossatlas' dependencies; wheels in
#      .whl/ are installed first (fill it beforehand with `python benchmarks/gpu_env.py --download .whl`
#      and carry it): zarr, gudhi, einconv are missing on the device image and not needed here
#   3. the examples' training           mlp-digits, cnn-digits, resnet-skip on first use       (90 s)
#   4. tests/test_cuda.py               the zoo, loop and vmap, on CUDA against the CPU       (150 s)
#   5. bench_scale.py --sections 4      the mlp-digits plane, loop vs vmap, float32 / bf16    (100 s)
#   6. bench_zoo.py --device cuda       the zoo: auto / loop / vmap, points/s, matmul share   (150 s)
# Each step has its own timeout (535 s in all, under the device tool's 600 s a command); a failed or
# timed-out step is reported and the next one runs.
# Output: one log per step (and wheels.log) and summary.txt in $OUT when set (the device tool's folder), else
# build/gpu-check/. Exit status: the number of failed steps.
#
#   bash benchmarks/gpu_check.sh                          # on the device machine
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh     # rehearsal on a CPU machine: the same steps
#       on the CPU, small planes; PYTHON=.venv/bin/python picks the interpreter (default python3)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
LOGS=${OUT:-$ROOT/build/gpu-check}
mkdir -p "$LOGS"
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: >"$LOGS/summary.txt"
FAILED=0

step() {  # step NAME TIMEOUT_S COMMAND...: run with a timeout, log to $LOGS/NAME.log, record the outcome
  local name=$1 limit=$2 rc start
  shift 2
  echo "=== $name (timeout ${limit}s): $*"
  start=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  local outcome="ok"
  [ "$rc" -eq 124 ] && outcome="TIMED OUT after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && outcome="FAILED (exit $rc)"
  [ "$rc" -ne 0 ] && FAILED=$((FAILED + 1))
  echo "=== $name: $outcome, $(( $(date +%s) - start )) s" | tee -a "$LOGS/summary.txt"
}

if [ "$DEV" = cuda ]; then
  step nvidia-smi 15 nvidia-smi
  SCALE=(--reps 3 --steps 41)
  ZOO=(--reps 3)
else
  echo "=== nvidia-smi: skipped (GPU_CHECK_DEVICE=$DEV, a rehearsal)" | tee -a "$LOGS/summary.txt"
  SCALE=(--reps 1 --steps 5)
  ZOO=(--reps 1 --fwd 1 --gpu-steps 3)
fi

if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then  # optional dependencies carried as wheels (gpu_env.py)
  echo "=== wheels: installing .whl/ into /tmp/lossatlas-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lossatlas-site \
    "$ROOT"/.whl/*.whl 2>&1 | tee "$LOGS/wheels.log"
  if [ "${PIPESTATUS[0]}" -eq 0 ]; then
    export PYTHONPATH="$PYTHONPATH:/tmp/lossatlas-site"
    echo "=== wheels: installed $(ls "$ROOT"/.whl/*.whl | wc -l)" | tee -a "$LOGS/summary.txt"
  else
    echo "=== wheels: NOT installed (another Python or platform?); the checks do not need them" \
      | tee -a "$LOGS/summary.txt"
  fi
fi
step environment 30 "$PY" benchmarks/gpu_env.py
# trained once and cached (~/.cache/lossatlas or $LOSSATLAS_CACHE), so no benchmark's timeout pays for
# it; one thread: 13 s here, where two threads on a loaded 2-core machine took 92 s
OMP_NUM_THREADS=1 step examples 90 "$PY" -W ignore::UserWarning -c "import lossatlas
for name in ('mlp-digits', 'cnn-digits', 'resnet-skip'):
    print(name, lossatlas.examples.load(name).info['data'])"
# the repository's addopts and the image's other pytest plugins left out: none of them is needed here
LOSSATLAS_TEST_DEVICE=$DEV PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
  step test_cuda 150 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider -o addopts=
step bench_scale 100 "$PY" benchmarks/bench_scale.py --sections 4 --gpu-device "$DEV" "${SCALE[@]}"
step bench_zoo 150 "$PY" benchmarks/bench_zoo.py --device cuda --gpu-device "$DEV" "${ZOO[@]}"

echo "=== $FAILED step(s) failed; logs in $LOGS" | tee -a "$LOGS/summary.txt"
exit "$FAILED"
