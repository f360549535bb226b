#!/usr/bin/env bash
# Builds the llama.cpp reference for tools/bench/compare_llamacpp.py from the sources that the
# PyPI package llama-cpp-python vendors (no other network access needed):
#   1. `pip download` the llama-cpp-python sdist (vendor/llama.cpp inside),
#   2. CMake Release build of vendor/llama.cpp with native CPU flags, shared libraries, and the
#      llama-bench + llama-quantize tools,
#   3. `pip install llama-cpp-python` with LLAMA_BUILD=OFF (Python bindings only) so the
#      Python API (the script's `--llama-backend python`) loads these same shared libraries
#      through LLAMA_CPP_LIB_PATH: one compile of llama.cpp serves both backends.
# Usage: tools/bench/build_llamacpp.sh [WORK_DIR]   (default ./bench-models; -j1, niced)
# Env:   LLAMACPP_PY_VERSION (default: newest on PyPI), JOBS (default 1), NICE (default 19).
set -euo pipefail
work=${1:-bench-models}
jobs=${JOBS:-1}
mkdir -p "$work/llamacpp"
cd "$work/llamacpp"
spec=llama-cpp-python${LLAMACPP_PY_VERSION:+==$LLAMACPP_PY_VERSION}
if ! ls llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  pip download --no-deps --no-binary :all: "$spec" -d .
fi
sdist=$(ls llama_cpp_python-*.tar.gz | sort -V | tail -1)
src=${sdist%.tar.gz}
[ -d "$src" ] || tar xzf "$sdist"
cmake -S "$src/vendor/llama.cpp" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
  -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$PWD/build/bin" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/bin"
nice -n "${NICE:-19}" cmake --build build --target llama-bench llama-quantize -j"$jobs"
# -march=native: the binaries fit this CPU only; compare_llamacpp.py warns when run on another.
grep -m1 -E '^(model name|flags)' /proc/cpuinfo > build/cpu.txt || true
grep -m1 '^flags' /proc/cpuinfo >> build/cpu.txt || true
# Python bindings without a second llama.cpp compile (they load build/bin/libllama.so via
# LLAMA_CPP_LIB_PATH, which compare_llamacpp.py sets).
if ! python3 -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install --no-cache-dir "./$sdist"
fi
echo "llama.cpp: $PWD/build/bin (llama-bench, llama-quantize, libllama.so); version $src"
