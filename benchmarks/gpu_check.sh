#!/usr/bin/env bash
# The project's GPU check, one command:  benchmarks/gpu_check.sh OUT_DIR
#
# On a machine with a CUDA GPU (and torch, Triton, nvcc, ninja, pytest, pytest-benchmark
# already installed; no package registry needed) it installs fusedrnn from this checkout,
# building the CUDA extension for the local GPU, probes each multi-block kernel design on a
# small shape, times the anchor shapes against torch.nn (cuDNN), runs the GPU tests of every
# backend, compute-sanitizer's memcheck, the barrier microbenchmark, the benchmark grid, then
# racecheck and synccheck, in that order (what matters most first), and prints a summary last. Without a GPU it says so and exits 0;
# FUSEDRNN_GPU_CHECK_DRY=1 then runs the stages on the CPU instead (tiny bench grids, Triton
# in its interpreter, limits x3), to rehearse the script.
#
# Budget: FUSEDRNN_GPU_CHECK_BUDGET seconds (default 520) for the whole run: each stage has
# its own time limit, cut to what is left less 10 s for the summary, and a stage left under
# 10 s is skipped, so the run ends inside a device machine's 10-minute command limit. FUSEDRNN_GPU_CHECK_STAGES
# (comma-separated names) runs only those stages, after the install (which
# FUSEDRNN_GPU_CHECK_INSTALL=0 skips). FUSEDRNN_COMMIT: the commit being checked, for a
# checkout that travels without .git.
#
# OUT_DIR receives at most 8 files (what a device machine sends back): summary.txt (each
# stage's line as it ends, then the summary), logs.tar.gz (every log, JUnit XML and report
# of the stages so far, rewritten after each, the benchmarks' reports as they measured up to
# a cut), bench_anchors.md/.json and bench_grid.md/.json (the benchmarks' reports, copied
# when their stage ends, cut or not) and barriers.json.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
dry=${FUSEDRNN_GPU_CHECK_DRY:-0}
scale=$([ "$dry" = 1 ] && echo 3 || echo 1)
budget=$(( ${FUSEDRNN_GPU_CHECK_BUDGET:-520} * scale ))
only=${FUSEDRNN_GPU_CHECK_STAGES:-}
: >"$out/summary.txt"

note() {  # a line of the summary: printed now and kept in OUT/summary.txt
  printf '%s\n' "$*" | tee -a "$out/summary.txt"
}
pack() {  # every log so far into OUT/logs.tar.gz, replaced whole
  tar -czf "$out/logs.tar.gz.partial" -C "$work" . 2>/dev/null &&
    mv -f "$out/logs.tar.gz.partial" "$out/logs.tar.gz"
}
verdict() {  # an exit status in words
  case $1 in
    0) echo ok ;; 124) echo TIMEOUT ;; 137) echo KILLED ;;
    *) if [ "$1" -gt 128 ]; then echo "SIGNAL$(($1 - 128))"; else echo "FAIL:$1"; fi ;;
  esac
}
wanted() {  # whether stage NAME runs (FUSEDRNN_GPU_CHECK_STAGES)
  [ -z "$only" ] || [[ ",$only,install,import,sanitizer_ok," == *",$1,"* ]]
}
stage() {  # stage NAME LIMIT_S COMMAND...: run it within its limit (cut to the budget left),
  # log to NAME.log, note its verdict; returns the command's status (125: not run)
  local name=$1 limit=$(($2 * scale)); shift 2
  wanted "$name" || return 125
  local left=$((budget - SECONDS - 10))
  if [ "$left" -lt 10 ]; then
    note "$(printf '%-17s skipped: the budget is spent' "$name")"
    return 125
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  note "$(printf '%-17s %-9s %4ss (limit %ss)' "$name" "$(verdict $rc)" $((SECONDS - start)) "$limit")"
  pack
  return $rc
}

device=cuda
if ! timeout -k 5 90 $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "$dry" != 1 ]; then
    note "gpu_check: no CUDA device here (or no torch for $PY); nothing to check."
    note "gpu_check: run it on a GPU machine, or rehearse it with FUSEDRNN_GPU_CHECK_DRY=1."
    exit 0
  fi
  note "gpu_check: DRY RUN on the CPU (no CUDA device): stages rehearsed, figures meaningless"
  device=cpu
  export TRITON_INTERPRET=1
  export FUSEDRNN_BUILD_CUDA=0  # rehearse the install with the CPU extension; CI builds _C
else
  # The GPU stages need only the CUDA extension: the CPU ones (about half the build) are left
  # out, and a CUDA extension that cannot be built fails the install instead of passing it.
  export FUSEDRNN_BUILD_CUDA=1 FUSEDRNN_BUILD_CPU=0
  if ! command -v nvcc >/dev/null; then
    for home in "${CUDA_HOME:-}" /usr/local/cuda; do
      [ -n "$home" ] && [ -x "$home/bin/nvcc" ] && export PATH=$home/bin:$PATH && break
    done
  fi
fi
arch=$(timeout -k 5 60 $PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else 'cpu')")
commit=${FUSEDRNN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export FUSEDRNN_COMMIT=$commit
note "gpu_check: commit $commit, device $device (capability $arch), budget ${budget}s"
timeout -k 5 20 nvidia-smi >"$work/nvidia-smi.txt" 2>&1

if [ "${FUSEDRNN_GPU_CHECK_INSTALL:-1}" = 0 ]; then
  note "install           skipped (FUSEDRNN_GPU_CHECK_INSTALL=0): the fusedrnn $PY imports"
else
  FUSEDRNN_CUDA_ARCHS=${arch/cpu/} stage install 150 $PY -m pip install -v --no-index \
    --no-build-isolation --no-deps --disable-pip-version-check -e .
fi
has_cuda_ext=0
if [ "$device" = cuda ]; then
  stage import 60 $PY -c "import fusedrnn, fusedrnn._C; print(fusedrnn.available_backends())" &&
    has_cuda_ext=1
  [ $has_cuda_ext = 1 ] || note "NO fusedrnn._C (install.log, import.log): the cuda stages test nothing"
fi
stage info 30 $PY -m fusedrnn.cli info

# The multi-block designs first, each on a small shape: one that hangs or crashes is left
# out of every later stage; one that gives wrong numbers stays in the tests (they show
# where) and out of the benchmarks (they would time it as "wrong result").
cuda_k=() triton_k=() bench_env=()
probe() {  # probe NAME LIMIT_S BACKEND:KERNEL VARIABLE=FALLBACK DESELECT WHAT LIST
  local name=$1 limit=$2 run=$3 fallback=$4 deselect=$5 what=$6
  local -n list=$7  # the -k expressions of the test stage that runs these kernels
  stage "$name" "$limit" $PY benchmarks/sanitize_small.py --device $device --runs "$run"
  local rc=$?
  case $rc in
    0|125) return 0 ;;
    3) note "  $what: backend unavailable ($name.log)" ;;
    1) [[ " ${bench_env[*]-} " == *" ${fallback%%=*}="* ]] || bench_env+=("$fallback")
       note "  $what wrong: the tests run them (showing where), the benchmarks do not" ;;
    *) export "${fallback?}"  # (status 4: a CUDA error broke the process's context)
       list+=("$deselect")
       note "  $what hung or crashed: every later stage runs without them" ;;
  esac
  return 1
}
# (test ids: persistent_* in test_cuda_ext.py, cuda:* in test_cuda_graphs.py)
if [ $has_cuda_ext = 1 ] || [ "$device" = cpu ]; then  # (dry run: the unavailable branch)
  probe probe_grid 40 cuda:grid FUSEDRNN_CUDA_KERNEL=stepwise "not persistent_grid and \
not persistent_cluster and not cuda:grid and not cuda:cluster" "cuda grid kernels" cuda_k
  if [ -z "${FUSEDRNN_CUDA_KERNEL:-}" ]; then  # the cluster kernels, unless already left out
    probe probe_cluster 40 cuda:cluster FUSEDRNN_CUDA_KERNEL=grid \
      "not persistent_cluster and not cuda:cluster" "cuda cluster kernels" cuda_k
  fi
fi
# Triton's cooperative kernels meet at a grid barrier too (18 programs here); the limit
# covers compiling them (8 kernels, cold cache).
probe probe_cooperative 60 triton:cooperative FUSEDRNN_TRITON_KERNEL=persistent,step \
  "not cooperative" "Triton cooperative kernels" triton_k

bench() {  # bench NAME LIMIT_S ARGS...: fusedrnn bench into WORK/NAME, its reports to OUT
  local name=$1 limit=$2; shift 2
  stage "$name" "$limit" env ${bench_env[@]+"${bench_env[@]}"} $PY -m fusedrnn.cli bench \
    --device $device --cell lstm,gru --out "$work/$name" "$@"
  local rc=$?
  for kind in md json; do
    [ -f "$work/$name/results.$kind" ] && cp "$work/$name/results.$kind" "$out/$name.$kind"
  done
  return $rc
}
quick=() ; [ "$device" = cpu ] && quick=(--quick)
# The issues' goal shapes (B16 T1024 H768, B64 T100 H512) in bfloat16, with the reference
# backend (the Triton goal: 20x faster than it).
bench bench_anchors 100 ${quick[@]+"${quick[@]}"} $([ "$device" = cuda ] && echo --anchors) \
  --dtype bfloat16 --mode inference,training --backend auto --backend triton \
  --backend cuda:stepwise --backend reference --repeats 10

# -v: each test's result is in the log as soon as it finishes, so a stage cut short by its
# time limit still says what passed and what failed; --durations: where the time went.
test_flags=(--maxfail=25 -v --durations=15 -p no:cacheprovider -o junit_family=xunit2)
# a hung test ends its pytest process with its stack dumped (thread method: a CUDA wait
# ignores signals) before the stage's limit: a sharded stage loses one shard, not all
$PY -c "import pytest_timeout" 2>/dev/null && test_flags+=(--timeout=60 --timeout-method=thread)
k_flags() {  # the -k flags of a list of expressions, joined by "and"
  [ $# -gt 0 ] || return 0
  local joined
  joined=$(printf ' and %s' "$@")
  printf '%s\n' -k "${joined# and }"
}
mapfile -t cuda_select < <(k_flags ${cuda_k[@]+"${cuda_k[@]}"})
mapfile -t all_select < <(k_flags ${cuda_k[@]+"${cuda_k[@]}"} ${triton_k[@]+"${triton_k[@]}"})
gpu_marks="requires_cuda or requires_triton or requires_ext"
# The cuda backend's tests, then every other test that needs CUDA, Triton or the extension
# (the Triton backend on CUDA tensors), each with its own limit. The second compiles a
# Triton kernel for each configuration it launches: it runs in 8 processes at once.
stage tests_cuda 75 $PY -m pytest tests/test_cuda_ext.py tests/test_cuda_plan.py \
  "${test_flags[@]}" ${cuda_select[@]+"${cuda_select[@]}"} -m "$gpu_marks" \
  --junitxml="$work/tests_cuda.xml"
shards=$([ "$device" = cuda ] && echo 8 || echo 2)
stage tests 100 $PY benchmarks/pytest_shards.py $shards "$work/tests" "${test_flags[@]}" -- \
  tests/ ${all_select[@]+"${all_select[@]}"} -m "$gpu_marks" \
  --ignore=tests/test_cuda_ext.py --ignore=tests/test_cuda_plan.py

sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -n 1)
sanitize() {  # sanitize TOOL LIMIT_S: sanitize_small.py under compute-sanitizer --tool TOOL
  # (torch's caching allocator off: it hides overruns into neighbouring tensors; status 86:
  # the sanitizer's finding, 1: a wrong result)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 stage "$1" "$2" "$sanitizer" --tool "$1" \
    --error-exitcode 86 $PY benchmarks/sanitize_small.py
}
sanitizing=0
if ! wanted memcheck && ! wanted racecheck && ! wanted synccheck; then
  :
elif [ "$device" = cuda ] && [ -n "$sanitizer" ] && [ $has_cuda_ext = 1 ]; then
  # On some runtimes compute-sanitizer refuses the device: found out in seconds
  if stage sanitizer_ok 30 "$sanitizer" --tool memcheck $PY -c \
      "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()"; then
    sanitizing=1
    sanitize memcheck 60
  else
    note "  compute-sanitizer cannot run here (sanitizer_ok.log): no sanitizer stages"
  fi
else
  note "sanitizers        skipped (no compute-sanitizer, GPU or cuda extension)"
fi
if [ "$device" = cuda ]; then
  stage barriers 20 $PY benchmarks/barrier_latency.py --out "$work/barriers.json"
  [ -f "$work/barriers.json" ] && cp "$work/barriers.json" "$out/barriers.json"
elif wanted barriers; then
  note "barriers          skipped (no GPU)"
fi
bench bench_grid 90 ${quick[@]+"${quick[@]}"} --mode inference,training --backend auto \
  --backend triton --backend cuda:stepwise --repeats 10
if [ $sanitizing = 1 ]; then
  sanitize racecheck 45
  sanitize synccheck 40
fi
pack

echo
note "== gpu_check summary: commit $commit, $device $arch, ${SECONDS}s =="
summary() {
  grep -h -E '^(=+ .* in [0-9.]+s|shard [0-9]+:)' "$work/tests_cuda.log" "$work/tests.log" 2>/dev/null
  # failures in pytest's summary form and in -v's result form, cut to a line each
  grep -h -E '^(FAILED|ERROR) |::[^ ]* (FAILED|ERROR)' "$work/tests_cuda.log" \
    "$work"/tests-*.log 2>/dev/null | cut -c1-160 | sort -u | head -25
  grep -h -E 'max relative error|RAISED|UNAVAILABLE' "$work"/probe_*.log 2>/dev/null
  grep -h -E 'ERROR SUMMARY' "$work"/{memcheck,racecheck,synccheck}.log 2>/dev/null
  grep -E '^\| (grid|cluster) ' "$work/barriers.log" 2>/dev/null
  for name in bench_anchors bench_grid; do  # cell, shape, mode, provider, median ms, ratio
    [ -f "$out/$name.md" ] && echo "$name:" && grep -E '^\| (lstm|gru) ' "$out/$name.md" |
      awk -F'|' '{for (i = 2; i <= 8; i++) gsub(/^ +| +$/, "", $i)
                  printf "%-4s %-22s %-9s %-30s %9s %6s\n", $2, $3, $4, $5, substr($6, 1, 40), $8}' |
      head -48
  done
}
summary | tee -a "$out/summary.txt"
rm -rf "$work"
