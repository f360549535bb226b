#!/usr/bin/env bash
# Every GPU check in one call, ending with one table.
#
#   scripts/gpu-check.sh --bundle      here (no GPU needed): build build-gpu/ for sm_90 with libstdc++ and
#                                      GoogleTest linked statically, then gather the stripped executables and
#                                      the shared libraries a bare GPU machine lacks (not cuBLAS: it comes from
#                                      the machine's Python wheels) into build-gpu-bundle/ (~25 MB). Carry
#                                      build-gpu-bundle/ to the GPU machine.
#   scripts/gpu-check.sh [options]     on the GPU machine: run everything with build-gpu-bundle/ (or build-gpu/;
#                                      builds that first when neither is there and a full toolchain is)
#     --quick            op tests and one bench model only
#     --no-sanitizer     skip the compute-sanitizer passes
#     --out DIR          where logs and JSON go (default: $OUT if set, else build-gpu/gpu-check)
#   Each step runs under a time limit (seconds; MOERUN_STEP_SCALE=2 doubles them all), so a hung
#   kernel costs one step, not the whole lease.
#
# What it runs: every CUDA op test and every end-to-end CUDA-vs-CPU golden test (cuda_tests); the op
# tests once under compute-sanitizer memcheck and the attention/MLA/routing/MoE tests under racecheck;
# `moerun bench --backend cuda` (pp512, tg128; plus tg128 at depth 8192 on the MLA model) on the default
# model's shape, a Qwen3-30B-A3B shape and a DeepSeek-V3 shape with layers and experts capped to fit;
# bench itself measures the device copy bandwidth and a cuBLAS bf16 GEMM rate as the ceilings; the kernel
# microbenchmarks (bench/cuda_kernels_bench.cpp) put the decode GEMV and MLA attention against them.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
build="${MOERUN_GPU_BUILD:-build-gpu}"

mode=run quick=0 sanitizer=1 out="${OUT:-}"
while (($#)); do
  case "$1" in
    --bundle) mode=bundle ;;
    --quick) quick=1 ;;
    --no-sanitizer) sanitizer=0 ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
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

# --- on the GPU machine ---------------------------------------------------------------------------
limit() {  # seconds, command...: run it under a time limit scaled by MOERUN_STEP_SCALE
  local secs=$(( $1 * ${MOERUN_STEP_SCALE:-1} )); shift
  timeout --kill-after=5 "$secs" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "gpu-check: timed out after ${secs}s: $(basename "$1") ${*:2:1}" >&2
  return $rc
}
out="${out:-$build/gpu-check}"
mkdir -p "$out"
if [[ ! -x $build/moerun || ! -x $build/tests/cuda_tests ]]; then
  echo "# $build is missing: building it here" >&2
  configure_and_build || { echo "gpu-check: no usable build" >&2; exit 1; }
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
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
missing="$(ldd "$build/moerun" | grep 'not found' || true)"
[[ -n $missing ]] && { echo "gpu-check: libraries not found:"; echo "$missing"; }

# 1. Tests: every CUDA op test and the end-to-end golden tests (cuda_tests), plus the backend tests.
filter_ops='-*CudaGolden*'
gtest_args=(--gtest_output="json:$out/cuda_tests.json")
((quick)) && gtest_args+=(--gtest_filter="$filter_ops")
limit 120 "$build/tests/cuda_tests" "${gtest_args[@]}" 2>&1 | tee "$out/cuda_tests.log" |
  grep -E '^\[  (FAILED|PASSED|SKIPPED) |cuda golden|^\[==' || true
limit 60 "$build/tests/runtime_tests" --gtest_filter='Backend*' --gtest_output="json:$out/backend_tests.json" >"$out/backend_tests.log" 2>&1 || true

# 2. compute-sanitizer: memcheck over the op tests, racecheck over the kernels with shared memory.
sanitizer_bin="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if ((sanitizer)) && [[ -n $sanitizer_bin ]]; then
  limit 60 "$sanitizer_bin" --tool memcheck --leak-check full --error-exitcode 0 "$build/tests/cuda_tests" \
    --gtest_filter="$filter_ops" >"$out/memcheck.log" 2>&1 || true
  limit 90 "$sanitizer_bin" --tool racecheck --error-exitcode 0 "$build/tests/cuda_tests" \
    --gtest_filter='*Attention*:*Route*:*Moe*:*HeadMatmul*' >"$out/racecheck.log" 2>&1 || true
fi

# 3. Kernel ceilings: decode GEMV (bf16, FP8) and MLA/GQA decode attention against the copy bandwidth.
limit 90 "$build/bench/moerun_cuda_bench" --benchmark_min_time=0.1 --benchmark_format=json --benchmark_out="$out/kernels.json" \
  --benchmark_out_format=json >"$out/kernels.log" 2>&1 || echo "gpu-check: moerun_cuda_bench failed: $(tail -1 "$out/kernels.log")"

# 4. Bench. Models are made in memory from config.json shapes (random weights; speed depends only on
# shapes): the default model's own config when it is here, else its copy in tests/data/configs.
bench() {  # seconds, name, args...
  local secs="$1" name="$2"; shift 2
  limit "$secs" "$build/moerun" bench --backend cuda -o json -r 3 "$@" >"$out/bench_$name.json" 2>"$out/bench_$name.log" ||
    echo "gpu-check: bench $name failed: $(tail -1 "$out/bench_$name.log")"
}
default_cfg=tests/data/configs/smollm2_135m.json
if [[ -f models/default/model.safetensors ]]; then
  bench 40 default -m models/default -p 512,2048 -n 128
else
  bench 40 default --synthetic "$default_cfg" -p 512,2048 -n 128
fi
if ((!quick)); then
  bench 110 qwen3_30b_a3b --synthetic tests/data/configs/qwen3_30b_a3b.json --layers 12 -p 512,2048 -n 128
  bench 110 deepseek_v3 --synthetic tests/data/configs/deepseek_v3.json --layers 5 --experts 64 -p 512 -n 128 -d 0,8192
fi

# 5. The table.
python3 - "$out" <<'EOF'
import glob, json, os, re, sys
out = sys.argv[1]
def tests(path):
    try:
        j = json.load(open(path))
    except Exception:
        return None
    t = f = s = 0
    for suite in j.get("testsuites", []):
        for case in suite.get("testsuite", []):
            t += 1
            if case.get("failures"):
                f += 1
            elif case.get("result") == "SKIPPED" or case.get("status") == "NOTRUN":
                s += 1
    return t - f - s, f, s
def findings(path):
    if not os.path.exists(path):
        return "not run"
    m = re.findall(r"ERROR SUMMARY: (\d+) error", open(path, errors="replace").read())
    return str(sum(map(int, m))) if m else "no summary (see log)"
print("\n## gpu-check")
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "?"
print(f"GPU: {gpu}")
for name in ("cuda_tests", "backend_tests"):
    r = tests(os.path.join(out, name + ".json"))
    print(f"{name}: " + ("no result" if r is None else f"{r[0]} passed, {r[1]} failed, {r[2]} skipped"))
print(f"compute-sanitizer memcheck findings: {findings(os.path.join(out, 'memcheck.log'))}; "
      f"racecheck findings: {findings(os.path.join(out, 'racecheck.log'))}")
try:
    kernels = json.load(open(os.path.join(out, "kernels.json")))["benchmarks"]
except Exception:
    kernels = []
if kernels:
    print("| kernel | time (us) | GB/s | % of copy bw |")
    print("| --- | ---: | ---: | ---: |")
    for b in kernels:
        if "gbps" in b:
            print(f"| {b['name']} | {b['real_time'] * {'ns': 1e-3, 'us': 1, 'ms': 1e3}.get(b.get('time_unit', 'ns'), 1):.1f} | "
                  f"{b['gbps']:.0f} | {100 * b['gbps'] / b['copy_gbps']:.1f} |")
rows = []
for path in sorted(glob.glob(os.path.join(out, "bench_*.json"))):
    try:
        rows += [(os.path.basename(path)[6:-5], r) for r in json.load(open(path))]
    except Exception:
        pass
if rows:
    print(f"ceilings: copy {rows[0][1]['ceiling_gbps']:.0f} GB/s, bf16 GEMM {rows[0][1]['gemm_ceiling_tflops']:.0f} TFLOP/s")
    print("| model | test | t/s | bytes/token | GB/s | % of copy bw | TFLOP/s | % of GEMM |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        tg = r["bytes_per_token"] > 0
        print(f"| {name} | {r['test']} | {r['tps_mean']:.1f} ± {r['tps_sd']:.1f} | "
              + (f"{r['bytes_per_token']/1e6:.1f} MB | {r['gbps']:.0f} | {100*r['bw_fraction']:.1f} | - | - |" if tg else
                 f"- | - | - | {r['tflops']:.1f} | {100*r['gemm_fraction']:.1f} |"))
else:
    print("no bench results")
EOF
