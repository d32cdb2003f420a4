#!/usr/bin/env bash
# The project's GPU check, one command:  benchmarks/gpu_check.sh OUT_DIR
#
# On a machine with a CUDA GPU (and torch, Triton, nvcc, ninja, pytest, pytest-benchmark
# already installed; no package registry needed) it installs fusedrnn from this checkout,
# builds the extension for the local GPU when csrc/ has sources, runs the GPU tests of every
# backend, runs the benchmark grid against torch.nn (cuDNN), and writes logs and results
# under OUT_DIR, printing a short summary last. Without a GPU it says so and exits 0;
# FUSEDRNN_GPU_CHECK_DRY=1 then runs every stage on the CPU instead (tiny bench grid, Triton
# in its interpreter), to rehearse the script. Budget: under 9 minutes on one H200 (the
# stage timeouts add up to 540 s; a failing persistent kernel does not stop the rest).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
PY=${PYTHON:-python}
summary=()
stage() {  # stage NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, record pass/fail
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-10s %-6s %4ss  %s' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL:$rc)" $((SECONDS - start)) "$out/$name.log")")
  return $rc
}

device=cuda bench_extra=()
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "${FUSEDRNN_GPU_CHECK_DRY:-0}" != 1 ]; then
    echo "gpu_check: no CUDA device here (or no torch for $PY); nothing to check."
    echo "gpu_check: run it on a GPU machine, or rehearse it with FUSEDRNN_GPU_CHECK_DRY=1."
    exit 0
  fi
  echo "gpu_check: DRY RUN on the CPU (no CUDA device): stages rehearsed, figures meaningless"
  device=cpu bench_extra=(--quick)
  export TRITON_INTERPRET=1
  export FUSEDRNN_BUILD_CUDA=0  # rehearse the install with the CPU extension; CI builds _C
fi
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else 'cpu')")
git rev-parse HEAD >"$out/commit.txt" 2>/dev/null || true
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true

FUSEDRNN_CUDA_ARCHS=${arch/cpu/} stage install 130 $PY -m pip install --no-build-isolation --no-deps -e .
stage info 15 $PY -m fusedrnn.cli info
# -v: each test's result is in the log as soon as it finishes, so a stage cut short by its
# time limit still says what passed and what failed; --durations: where the time went.
test_flags=(--maxfail=25 -v --durations=15 -p no:cacheprovider)
$PY -c "import pytest_timeout" 2>/dev/null && test_flags+=(--timeout=60)
deselect=()  # which tests the stages below leave out: -k expressions, joined by "and"
# The Triton tests compile a kernel for each configuration they launch, one at a time: the
# tests stage runs them in this many processes at once (benchmarks/pytest_shards.py).
shards=$([ "$device" = cuda ] && echo 8 || echo 2)
# The persistent CUDA kernels first, on small shapes: if a design fails or hangs, every
# stage after these runs without it, so that one call still measures the rest.
if [ "$device" = cuda ]; then
  if ! stage grid 20 $PY benchmarks/sanitize_small.py --runs cuda:grid; then
    export FUSEDRNN_CUDA_KERNEL=stepwise
    deselect+=("not persistent")
    summary+=("           grid kernels failed: the stages below ran the stepwise ones")
  elif ! stage cluster 20 $PY benchmarks/sanitize_small.py --runs cuda:cluster; then
    export FUSEDRNN_CUDA_KERNEL=grid
    deselect+=("not persistent_cluster")
    summary+=("           cluster kernels failed: the stages below ran the grid ones")
  fi
  # Triton's cooperative kernels meet at a grid barrier too (18 programs here).
  if ! stage cooperative 20 $PY benchmarks/sanitize_small.py --runs triton:cooperative; then
    export FUSEDRNN_TRITON_KERNEL=persistent,step
    deselect+=("not cooperative")
    summary+=("           Triton cooperative kernels failed: the stages below ran without them")
  fi
fi
select_flags=()
if [ ${#deselect[@]} -gt 0 ]; then
  joined=$(printf ' and %s' "${deselect[@]}")
  select_flags=(-k "${joined# and }")
fi
# GPU tests: the cuda backend's (tests/test_cuda_*.py), then every other test that needs
# CUDA, Triton or the extension (the Triton backend on CUDA tensors), each stage with its own
# time limit so that one running long does not cost the other its results.
gpu_marks="requires_cuda or requires_triton or requires_ext"
stage tests_cuda 55 $PY -m pytest tests/test_cuda_ext.py tests/test_cuda_plan.py \
  "${test_flags[@]}" "${select_flags[@]}" -m "$gpu_marks" --junitxml="$out/tests_cuda.xml"
stage tests 85 $PY benchmarks/pytest_shards.py $shards "$out/tests" "${test_flags[@]}" -- \
  tests/ "${select_flags[@]}" -m "$gpu_marks" --ignore=tests/test_cuda_ext.py \
  --ignore=tests/test_cuda_plan.py
if command -v compute-sanitizer >/dev/null && [ "$device" = cuda ]; then
  stage memcheck 35 compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/sanitize_small.py
  stage racecheck 35 compute-sanitizer --tool racecheck --error-exitcode 1 $PY benchmarks/sanitize_small.py
  stage synccheck 30 compute-sanitizer --tool synccheck --error-exitcode 1 $PY benchmarks/sanitize_small.py
else
  summary+=("sanitizer  skipped (no compute-sanitizer or no GPU)")
fi
if [ "$device" = cuda ]; then
  stage barriers 15 $PY benchmarks/barrier_latency.py --out "$out/barriers.json"
else
  summary+=("barriers   skipped (no GPU)")
fi
stage bench 80 $PY -m fusedrnn.cli bench --device $device --cell lstm,gru --backend auto \
  --backend cuda:stepwise --backend triton --backend reference --repeats 10 --out "$out/bench" "${bench_extra[@]}"

echo
echo "== gpu_check summary ($(cat "$out/commit.txt" 2>/dev/null), $device $arch) =="
printf '%s\n' "${summary[@]}"
tail -n 1 "$out/tests_cuda.log" 2>/dev/null
grep -h -E '^shard ' "$out/tests.log" 2>/dev/null
grep -h -E '^(FAILED|ERROR) ' "$out/tests_cuda.log" "$out/tests.log" 2>/dev/null | head -20
grep -E '^\| (grid|cluster) ' "$out/barriers.log" 2>/dev/null
[ -f "$out/bench/results.md" ] && grep -E '^\| (lstm|gru) ' "$out/bench/results.md" | head -40
