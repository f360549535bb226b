#!/usr/bin/env bash
# Every GPU check in one call, in stages, cheapest and most telling first, ending with one table.
#
#   scripts/gpu-check.sh --bundle      here (no GPU needed): build build-gpu/ for sm_90 with libstdc++ and
#                                      GoogleTest linked statically, then gather the stripped executables and
#                                      the shared libraries a bare GPU machine lacks (not cuBLAS: it comes from
#                                      the machine's Python wheels) into build-gpu-bundle/ (~25 MB). Carry
#                                      build-gpu-bundle/ to the GPU machine.
#   scripts/gpu-check.sh [options]     on the GPU machine: run the stages with build-gpu-bundle/ (or build-gpu/;
#                                      builds that first when neither is there and a full toolchain is)
#     --quick            no golden stage, one bench model
#     --no-sanitizer     skip the compute-sanitizer stages
#     --out DIR          where stages.txt, the logs and the JSON go (default: $OUT if set, else build-gpu/gpu-check)
#     --dry-run          print the stages in order, each with its budget and the exact commands it would run,
#                        and the total; runs nothing (needs neither a GPU nor a build)
#
# Stages (budget in seconds; MOERUN_STEP_SCALE=2 doubles them all). A stage's commands share its budget:
# each runs under `timeout` with what is left of it (a bench model under its own share too), so a hung
# kernel costs one stage, not the lease. Measured on the H200 (2026-12-04, docs/performance.md): all of
# cuda_tests 21 s, moerun_cuda_bench 45 s, bench 2 s / 57 s / 98 s for the three models below.
#   0 device     10  nvidia-smi, the driver, the build's `moerun --version`, its CUDA memory plan
#   1 ops        60  cuda_tests without the end-to-end tests and the large or measuring ones
#   2 golden     60  every golden model on CUDA against the CPU backend (CudaGolden*, CudaKv*, CudaEngine*,
#                    CudaBatch*), and runtime_tests' Backend* tests
#   3 kernels    60  moerun_cuda_bench (decode GEMV, MLA/GQA attention against the copy bandwidth), then the
#                    large and measuring tests (MatmulCuda.Ceilings: 1 GiB copies, 8192-cube GEMMs;
#                    LargeTensorCuda.*: multi-GB weights)
#   4 bench     230  `moerun bench --backend cuda` on the default model (20), a Qwen3-30B-A3B shape (80) and a
#                    DeepSeek-V3 shape with layers and experts capped to fit (130)
#   5 memcheck   45  compute-sanitizer memcheck on the small named tests of MEMCHECK_TESTS
#   6 racecheck  60  compute-sanitizer racecheck on the small named tests of RACECHECK_TESTS
#   total       525  under the 540 s (9 minutes) a 10-minute device command leaves for start-up and the table
# A sanitizer that the machine refuses (no debugger interface in a sandbox, an unsupported driver) is
# reported as "refused", not as a finding count.
#
# Output ($OUT comes back with at most 8 files, so there are 8): stages.txt gets one line per stage the
# moment it ends ("stage N name: ok|failed|timed out|skipped|refused (Xs of Ys)[ - detail]"), and log.txt
# the stage's output, so a run cut off at the command limit still returns every stage before the cut;
# cuda_ops.json, cuda_golden.json, backend_tests.json (gtest), kernels.json (Google Benchmark) and
# bench.json (every bench model's rows by name) as their stages end; summary.md, the table, at the end.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
build="${MOERUN_GPU_BUILD:-build-gpu}"

mode=run quick=0 sanitizer=1 dry=0 out="${OUT:-}"
while (($#)); do
  case "$1" in
    --bundle) mode=bundle ;;
    --quick) quick=1 ;;
    --no-sanitizer) sanitizer=0 ;;
    --dry-run) dry=1 ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;p}' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

# One GPU, one process: the bundle leaves out MPI and NCCL (the GPU machine has no Open MPI, and
# libnccl alone is 200 MB, more than a carry may hold).
configure_and_build() {
  local nvcc
  nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOERUN_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DMOERUN_BUILD_BENCH=ON -DMOERUN_MPI=OFF -DMOERUN_NCCL=OFF \
    -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null || return 1
  cmake --build "$build" --target moerun_cli cuda_tests runtime_tests moerun_cuda_bench || return 1
}

bundle="${build}-bundle"
if [[ $mode == bundle ]]; then
  configure_and_build || exit 1
  rm -rf "$bundle"
  mkdir -p "$bundle/lib" "$bundle/tests" "$bundle/bench"
  for exe in moerun tests/cuda_tests tests/runtime_tests bench/moerun_cuda_bench; do
    cp "$build/$exe" "$bundle/$exe" && strip "$bundle/$exe"
  done
  # Shared libraries the GPU machine has no package for: everything outside glibc and the CUDA
  # driver/libraries (cuBLAS and the runtime come from its Python wheels; libcudart is small, so it
  # travels too in case the wheel's is older).
  for exe in "$build/moerun" "$build/tests/cuda_tests" "$build/tests/runtime_tests" "$build/bench/moerun_cuda_bench"; do
    ldd "$exe" | awk '/=> \//{print $3}' | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libcublas*|libnvidia*) ;;
        *) cp -Lu "$lib" "$bundle/lib/" ;;
      esac
    done
  done
  du -sh "$bundle"
  echo "bundle ready: carry '$bundle'"
  exit 0
fi
[[ -x $bundle/moerun ]] && build="$bundle"

# --- what the stages run ----------------------------------------------------------------------------
# The end-to-end suites (golden models, engines, batches) and the large or measuring tests stay out of
# the op stage (they run in stages 2 and 3).
E2E_TESTS='CudaGolden*:CudaKv*:CudaEngine*:CudaBatch*'
MEASURING_TESTS='MatmulCuda.Ceilings:LargeTensorCuda.*'
OPS_FILTER="-${E2E_TESTS}:${MEASURING_TESTS}"
# Under the sanitizers every access is checked (memcheck ~10-50x slower, racecheck slower still): only
# small, named op tests, each with every kernel family once. Never Ceilings (1 GiB copies, 8192-cube
# GEMMs), LargeTensorCuda (multi-GB weights), the golden/engine tests or tests of real-model sizes
# (LargeVectorisedRows, DeepSeekV3Absorption: 15 s of CPU reference alone, MaxLenDoesNotChange). A name
# that stops matching shows as fewer tests run in the stage's detail.
MEMCHECK_TESTS=(
  RmsNormCuda.MatchesCpu
  RmsNormCuda.StridedRowsLeaveTheRestUntouched
  RopeCuda.MatchesCpuBothStyles
  ElementwiseCuda.GatedActMatchesCpuEveryActivation
  ElementwiseCuda.EmbedMatchesCpuEveryDtype
  ElementwiseCuda.AddMatchesCpuPlainAndGated
  ElementwiseCuda.StoreRowsWritesAtDevicePositions
  ElementwiseCuda.CopyStrided
  MatmulCuda.Fp8ScaleBlocksOfOtherSizes
  MatmulCuda.GemmPathHonoursStridesInPlaceOfDenseRows
  HeadMatmulCuda.OddShapesAndStrides
  RouteCuda.ExactTiesGoToTheLowerIndex
  MoeCuda.SelectedNullExpertsAreSkippedOnBothPaths
  MoeCuda.AllPairsOnOneExpert
  AttentionCuda.FewTokenDecode
  AttentionCuda.MlaAbsorbed
  AttentionCuda.OddHeadDims
  AttentionCuda.CapturedGraphFollowsDevicePositions
  AttentionCuda.SixteenBitCachesGqa
  AttentionCuda.SixteenBitCachesMla
)
# racecheck: the kernels that share memory between threads (block reductions, attention tiles and the
# 16-bit caches' MMA tiles, top-k). Under racecheck (2026-12-04) FewTokenDecode took 0.9 s, OddHeadDims
# 2.2 s, MlaAbsorbed 9 s (left out: SixteenBitCachesMla covers the same kernels' MMA form).
RACECHECK_TESTS=(
  RmsNormCuda.MatchesCpu
  RouteCuda.ExactTiesGoToTheLowerIndex
  MoeCuda.SelectedNullExpertsAreSkippedOnBothPaths
  HeadMatmulCuda.OddShapesAndStrides
  AttentionCuda.FewTokenDecode
  AttentionCuda.OddHeadDims
  AttentionCuda.SixteenBitCachesGqa
  AttentionCuda.SixteenBitCachesMla
)
join() { local IFS=:; echo "$*"; }
MEMCHECK_FILTER="$(join "${MEMCHECK_TESTS[@]}")"
RACECHECK_FILTER="$(join "${RACECHECK_TESTS[@]}")"

scale="${MOERUN_STEP_SCALE:-1}"
out="${out:-$build/gpu-check}"
sanitizer_bin="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
default_cfg=tests/data/configs/smollm2_135m.json

# --- stage machinery --------------------------------------------------------------------------------
# A stage is a function of steps; `step LOG CMD...` runs CMD under what is left of the stage's budget
# (and at most step_cap seconds when that is set), its stdout and stderr to $work/LOG.log (stdout to
# step_out instead when that is set), and keeps the worst outcome. Under --dry-run it prints CMD.
work="" stage_deadline=0 stage_worst=0 stage_refused=0 stage_detail="" step_cap=0 step_out=""
step() {
  local log="$1"; shift
  local cap=$((step_cap * scale))
  if ((dry)); then
    printf '    $'
    local arg
    for arg in "$@"; do  # as typed: plain words bare, the rest quoted for the shell
      if [[ $arg =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then printf ' %s' "$arg"; else printf ' %q' "$arg"; fi
    done
    if [[ -n $step_out ]]; then printf ' >%s 2>%s' "$step_out" "\$work/$log.log"; else printf ' >%s 2>&1' "\$work/$log.log"; fi
    ((cap > 0)) && printf '   # at most %ss' "$cap"
    printf '\n'
    return 0
  fi
  local left=$((stage_deadline - SECONDS))
  ((cap > 0 && cap < left)) && left=$cap
  if ((left <= 0)); then
    echo "gpu-check: no time left in the stage for $*" >>"$work/$log.log"
    stage_worst=124
    return 124
  fi
  if [[ -n $step_out ]]; then
    timeout --kill-after=3 "$left" "$@" >"$step_out" 2>>"$work/$log.log"
  else
    timeout --kill-after=3 "$left" "$@" >>"$work/$log.log" 2>&1
  fi
  local rc=$?
  if ((rc == 124 || rc == 137)); then
    echo "gpu-check: timed out after ${left}s: $*" >>"$work/$log.log"
    stage_worst=124
  elif ((rc != 0 && stage_worst != 124)); then
    stage_worst=$rc
  fi
  return $rc
}
note() { ((dry)) || stage_detail="${stage_detail:+$stage_detail; }$*"; }  # the detail after the status

total_budget=0
# stage NUM NAME BUDGET FUNCTION [SKIP-REASON]
stage() {
  local num="$1" name="$2" budget=$(($3 * scale)) fn="$4" skip="${5:-}"
  if ((dry)); then
    if [[ -n $skip ]]; then
      echo "stage $num $name: skipped ($skip)"
    else
      total_budget=$((total_budget + budget))
      echo "stage $num $name: budget ${budget}s"
      "$fn"
    fi
    return 0
  fi
  if [[ -n $skip ]]; then
    echo "stage $num $name: skipped (0s of ${budget}s) - $skip" | tee -a "$out/stages.txt"
    return 0
  fi
  total_budget=$((total_budget + budget))
  echo "=== stage $num $name (budget ${budget}s) started $(date -u +%H:%M:%S)" >>"$out/log.txt"
  local start=$SECONDS
  stage_deadline=$((SECONDS + budget)) stage_worst=0 stage_refused=0 stage_detail=""
  "$fn"
  local took=$((SECONDS - start)) status=ok
  if ((stage_worst == 124)); then
    status="timed out"
  elif ((stage_refused)); then
    status=refused
  elif ((stage_worst != 0)); then
    status=failed
  fi
  for f in "$work"/*.log; do  # the stage's logs, each at most 1 MiB here (a sanitizer can say a lot)
    [[ -f $f ]] || continue
    { echo "--- $(basename "$f")"; head -c 1048576 "$f"; echo; } >>"$out/log.txt"
    mv "$f" "$f.done"
  done
  echo "stage $num $name: $status (${took}s of ${budget}s)${stage_detail:+ - $stage_detail}" | tee -a "$out/stages.txt"
}

# --- the stages -------------------------------------------------------------------------------------
stage_device() {  # nvidia-smi can hang on a sick driver: it gets half the stage
  step version "$build/moerun" --version
  step_cap=5
  step nvidia_smi nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
  step_cap=0
  if ((!dry)); then
    note "$(head -1 "$work/nvidia_smi.log")"
    cp "$work/nvidia_smi.log" "$work/gpu.txt.keep"
    local missing
    missing="$(ldd "$build/moerun" 2>&1 | grep 'not found' || true)"
    [[ -n $missing ]] && { note "libraries not found: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"; stage_worst=1; }
  fi
  step plan "$build/moerun" info --plan --backend cuda "$default_cfg"
  [[ -n $sanitizer_bin ]] && step sanitizer_version "$sanitizer_bin" --version
  return 0
}

count() { local n; n="$(grep -cE "$1" "$2" 2>/dev/null)"; echo "${n:-0}"; }  # lines of file $2 matching $1
gtest_tests_run() { count '^\[ RUN      \]' "$1"; }
gtest_counts() {  # "N passed, N failed, N skipped" from a gtest log (the per-test lines end in "(N ms)")
  echo "$(count '^\[       OK \] .* \([0-9]+ ms\)$' "$1") passed, $(count '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$1") failed," \
    "$(count '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$1") skipped"
}

stage_ops() {
  step cuda_ops "$build/tests/cuda_tests" --gtest_filter="$OPS_FILTER" --gtest_output="json:$out/cuda_ops.json"
  ((dry)) || note "$(gtest_counts "$work/cuda_ops.log")"
}

stage_golden() {
  step cuda_golden "$build/tests/cuda_tests" --gtest_filter="$E2E_TESTS" --gtest_output="json:$out/cuda_golden.json"
  ((dry)) || note "$(gtest_counts "$work/cuda_golden.log")"
  step backend_tests "$build/tests/runtime_tests" --gtest_filter='Backend*' --gtest_output="json:$out/backend_tests.json"
}

stage_kernels() {
  step kernels "$build/bench/moerun_cuda_bench" --benchmark_min_time=0.1 --benchmark_out="$out/kernels.json" --benchmark_out_format=json
  step large "$build/tests/cuda_tests" --gtest_filter="$MEASURING_TESTS"
  ((dry)) || note "$(grep -h '^# copy bandwidth' "$work/large.log" 2>/dev/null | sed 's/^# //'); $(gtest_counts "$work/large.log")"
}

# Models are made in memory from config.json shapes (random weights; speed depends only on shapes): the
# default model's own config when it is here, else its copy in tests/data/configs. bench.json gathers
# every model's rows as each finishes.
bench_one() {  # seconds (its share of the stage), name, args...
  local name="$2"
  step_cap="$1" step_out="$work/bench_$2.json"
  ((dry)) && step_out="\$work/bench_$2.json"
  shift 2
  step "bench_$name" "$build/moerun" bench --backend cuda -o json -r 3 "$@"
  local rc=$?
  step_cap=0 step_out=""
  ((dry)) && return 0
  ((rc == 0)) || note "bench $name: $(tail -1 "$work/bench_$name.log" | cut -c1-200)"
  python3 - "$work/bench_$name.json" "$name" "$out/bench.json" <<'EOF' || note "bench $name: no JSON"
import json, sys
path, name, into = sys.argv[1:4]
rows = json.load(open(path))
try:
    every = json.load(open(into))
except Exception:
    every = {}
every[name] = rows
json.dump(every, open(into, "w"), indent=1)
EOF
}
stage_bench() {
  if [[ -f models/default/model.safetensors ]]; then
    bench_one 20 default -m models/default -p 512,2048 -n 128
  else
    bench_one 20 default --synthetic "$default_cfg" -p 512,2048 -n 128
  fi
  if ((!quick)); then
    bench_one 80 qwen3_30b_a3b --synthetic tests/data/configs/qwen3_30b_a3b.json --layers 12 -p 512,2048 -n 128
    bench_one 130 deepseek_v3 --synthetic tests/data/configs/deepseek_v3.json --layers 5 --experts 64 -p 512 -n 128 -d 0,8192
  fi
}

# One sanitizer pass. The detail is the finding count (memcheck: "ERROR SUMMARY: N errors"; racecheck:
# "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)", where errors fail the stage and
# warnings are reported), with the tests' own result beside it (a target that crashed under the tool
# can still print a clean summary), or "refused" when the tool never got to check: no summary, and
# either it said why or no test started.
sanitize() {  # tool, filter
  local tool="$1" filter="$2" extra=()
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  step "$tool" "$sanitizer_bin" --tool "$tool" "${extra[@]}" --error-exitcode 0 "$build/tests/cuda_tests" --gtest_filter="$filter"
  ((dry)) && return 0
  local log="$work/$tool.log" ran errors hazards
  ran="$(gtest_tests_run "$log")"
  errors="$(grep -oE 'ERROR SUMMARY: [0-9]+ error' "$log" | awk '{s += $3} END {if (NR) print s}')"
  hazards="$(grep -oE 'RACECHECK SUMMARY: [0-9]+ hazards? displayed \([0-9]+ errors?, [0-9]+ warnings?\)' "$log" |
    awk '{h += $3; gsub(/[(,]/, ""); e += $6; w += $8} END {if (NR) print h, e, w}')"
  if [[ -n $errors || -n $hazards ]]; then
    local found=0
    if [[ -n $errors ]]; then
      note "$errors errors"
      found=$errors
    fi
    if [[ -n $hazards ]]; then
      local h e w
      read -r h e w <<<"$hazards"
      note "$h hazards ($e errors, $w warnings)"
      found=$((found + e))
    fi
    note "$ran tests ran: $(gtest_counts "$log")"
    ((found > 0 && stage_worst != 124)) && stage_worst=1
    ((ran == 0 && stage_worst != 124)) && { stage_worst=1; note "no named test ran (renamed?)"; }
  elif ((stage_worst == 124)); then
    note "no summary before the time ran out ($ran tests started, $(count '^========= (Error|Warning|Race|Invalid)' "$log") findings reported before the cut)"
  else
    local why
    why="$(grep -m1 -iE 'internal sanitizer error|not supported|unable to|permission|debugger|terminated before first instrumented|error:' "$log" | cut -c1-200)"
    if [[ -n $why || $ran == 0 ]]; then
      stage_refused=1
      note "the sanitizer was refused: ${why:-no summary and no test started; see log.txt}"
    else
      stage_worst=1
      note "no summary after $ran tests (the target died under the tool?); see log.txt"
    fi
  fi
}
stage_memcheck() { sanitize memcheck "$MEMCHECK_FILTER"; }
stage_racecheck() { sanitize racecheck "$RACECHECK_FILTER"; }

san_skip=""
((sanitizer)) || san_skip="--no-sanitizer"
[[ -z $san_skip && -z $sanitizer_bin ]] && san_skip="no compute-sanitizer on this machine"
run_stages() {
  stage 0 device 10 stage_device
  stage 1 ops 60 stage_ops
  stage 2 golden 60 stage_golden "$( ((quick)) && echo --quick)"
  stage 3 kernels 60 stage_kernels
  stage 4 bench 230 stage_bench
  stage 5 memcheck 45 stage_memcheck "$san_skip"
  stage 6 racecheck 60 stage_racecheck "$san_skip"
}

if ((dry)); then
  echo "# gpu-check dry run: build '$build', output '$out', budgets scaled by $scale; nothing is run"
  sanitizer_bin="${sanitizer_bin:-compute-sanitizer}"  # what would run on a machine that has it
  [[ $san_skip == "no compute-sanitizer on this machine" ]] && san_skip=""
  run_stages
  echo "total budget: ${total_budget}s (limit $((540 * scale))s)"
  exit 0
fi

# --- on the GPU machine -----------------------------------------------------------------------------
mkdir -p "$out"
rm -f "$out/stages.txt" "$out/log.txt" "$out/summary.md" "$out"/{cuda_ops,cuda_golden,backend_tests,kernels,bench}.json
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
if [[ ! -x $build/moerun || ! -x $build/tests/cuda_tests ]]; then
  echo "# $build is missing: building it here" >&2
  configure_and_build || { echo "gpu-check: no usable build" >&2; echo "stage 0 device: failed (0s of 0s) - no usable build" >>"$out/stages.txt"; exit 1; }
fi

# cuBLAS (and a runtime) from the Python wheels, our bundled libraries first.
wheel_libs="$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for pat in ("nvidia/*/lib/libcublas.so*", "nvidia/*/lib/libcublasLt.so*", "nvidia/*/lib/libcudart.so*",
                "nvidia/cu*/lib/libcublas*.so*"):
        for f in glob.glob(os.path.join(base, pat)):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
EOF
)"
export LD_LIBRARY_PATH="$root/$build/lib${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MOERUN_TEST_DATA="$root/tests/data"

run_stages
cp "$work/gpu.txt.keep" "$work/gpu.txt" 2>/dev/null || true

# --- the table --------------------------------------------------------------------------------------
python3 - "$out" "$work" <<'EOF' | tee "$out/summary.md"
import json, os, sys
out, work = sys.argv[1:3]
def load(path):
    try:
        return json.load(open(path))
    except Exception:
        return None
def tests(name):
    j = load(os.path.join(out, name + ".json"))
    if j is None:
        return "no result"
    t = f = s = 0
    for suite in j.get("testsuites", []):
        for case in suite.get("testsuite", []):
            t += 1
            if case.get("failures"):
                f += 1
            elif case.get("result") == "SKIPPED" or case.get("status") == "NOTRUN":
                s += 1
    return f"{t - f - s} passed, {f} failed, {s} skipped"
print("\n## gpu-check")
gpu = os.path.join(work, "gpu.txt")
print(f"GPU: {open(gpu).read().strip() if os.path.exists(gpu) else '?'}")
print("\n| stage | result |")
print("| --- | --- |")
stages = os.path.join(out, "stages.txt")
for line in (open(stages).read().splitlines() if os.path.exists(stages) else []):
    head, _, rest = line.partition(": ")
    print(f"| {head} | {rest} |")
print()
for name in ("cuda_ops", "cuda_golden", "backend_tests"):
    print(f"{name}: {tests(name)}")
kernels = (load(os.path.join(out, "kernels.json")) or {}).get("benchmarks", [])
if kernels:
    print("\n| kernel | time (us) | GB/s | % of copy bw |")
    print("| --- | ---: | ---: | ---: |")
    for b in kernels:
        if "gbps" in b:
            print(f"| {b['name']} | {b['real_time'] * {'ns': 1e-3, 'us': 1, 'ms': 1e3}.get(b.get('time_unit', 'ns'), 1):.1f} | "
                  f"{b['gbps']:.0f} | {100 * b['gbps'] / b['copy_gbps']:.1f} |")
rows = [(name, r) for name, rs in (load(os.path.join(out, "bench.json")) or {}).items() for r in rs]
if rows:
    print(f"\nceilings: copy {rows[0][1]['ceiling_gbps']:.0f} GB/s, bf16 GEMM {rows[0][1]['gemm_ceiling_tflops']:.0f} TFLOP/s")
    print("| model | test | t/s | bytes/token | GB/s | % of copy bw | TFLOP/s | % of GEMM | ops/token | launches/token |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        tg = r["bytes_per_token"] > 0
        # ops a decode step enqueues, and the kernels its recorded CUDA graph launches
        counts = f"{r.get('ops_per_token', 0)} | {r.get('launches_per_token', 0)} |" if tg else "- | - |"
        print(f"| {name} | {r['test']} | {r['tps_mean']:.1f} ± {r['tps_sd']:.1f} | "
              + (f"{r['bytes_per_token']/1e6:.1f} MB | {r['gbps']:.0f} | {100*r['bw_fraction']:.1f} | - | - | " if tg else
                 f"- | - | - | {r['tflops']:.1f} | {100*r['gemm_fraction']:.1f} | ") + counts)
else:
    print("\nno bench results")
EOF
rm -rf "$work"
# The exit status: 0 when every stage that ran is ok (skipped and refused stages do not fail the run).
! grep -qE ': (failed|timed out) \(' "$out/stages.txt"
