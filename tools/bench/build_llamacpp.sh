#!/usr/bin/env bash
# Builds the llama.cpp reference for tools/bench/compare_llamacpp.py from the sources that the
# PyPI package llama-cpp-python vendors (no other network access needed):
#   1. `pip download` the llama-cpp-python sdist (vendor/llama.cpp inside),
#   2. CMake Release build of vendor/llama.cpp with native CPU flags, shared libraries, and the
#      llama-bench + llama-quantize tools, plus llama-server for tools/bench/load_serve.py
#      --compare (the side-by-side with `moerun serve`),
#   3. `pip install llama-cpp-python` with LLAMA_BUILD=OFF (Python bindings only) so the
#      Python API (the script's `--llama-backend python`) loads these same shared libraries
#      through LLAMA_CPP_LIB_PATH: one compile of llama.cpp serves both backends.
# Usage: tools/bench/build_llamacpp.sh [WORK_DIR]   (default ./bench-models; -j1, niced)
# Env:   LLAMACPP_PY_VERSION (default: newest on PyPI), JOBS (default 1), NICE (default 19),
#        LLAMA_TARGETS (default "llama-bench llama-quantize llama-server").
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
# The llama.cpp commit the sdist vendors: its CHANGELOG names it ("update llama.cpp to
# ggml-org/llama.cpp@HASH"). Passed to CMake because llama.cpp's build-info.cmake otherwise asks
# git, and the work dir usually sits inside another checkout (this one), whose HEAD it would report.
commit=$(grep -m1 -oE 'llama\.cpp@[0-9a-f]+' "$src/CHANGELOG.md" | cut -d@ -f2 || true)
# GIT_CEILING_DIRECTORIES keeps that git lookup from climbing into the enclosing checkout at all.
export GIT_CEILING_DIRECTORIES="$PWD"
# llama-server embeds a web UI that llama.cpp fetches from a Hugging Face bucket or builds with npm
# at build time: both need network, and the load test needs no UI, so build it with an empty
# asset table (LLAMA_USE_PREBUILT_UI=OFF, LLAMA_BUILD_UI=OFF). The unified `llama` app binary
# (LLAMA_BUILD_APP) is not needed.
cmake -S "$src/vendor/llama.cpp" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_COMMIT="${commit:-unknown}" -DLLAMA_BUILD_NUMBER=0 \
  -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$PWD/build/bin" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/bin"
# shellcheck disable=SC2086  # LLAMA_TARGETS is a space-separated list on purpose
nice -n "${NICE:-19}" cmake --build build --target ${LLAMA_TARGETS:-llama-bench llama-quantize llama-server} -j"$jobs"
echo "${src#llama_cpp_python-} ${commit:-unknown}" > build/version.txt
# -march=native: the binaries fit this CPU only; compare_llamacpp.py warns when run on another.
grep -m1 -E '^(model name|flags)' /proc/cpuinfo > build/cpu.txt || true
grep -m1 '^flags' /proc/cpuinfo >> build/cpu.txt || true
# Python bindings without a second llama.cpp compile (they load build/bin/libllama.so via
# LLAMA_CPP_LIB_PATH, which compare_llamacpp.py sets; without it the import fails, so the check
# sets it too, or every run would reinstall).
if ! LLAMA_CPP_LIB_PATH="$PWD/build/bin" python3 -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install --no-cache-dir "./$sdist"
fi
echo "llama.cpp: $PWD/build/bin (llama-bench, llama-quantize, llama-server, libllama.so);" \
  "$src, llama.cpp commit ${commit:-unknown}"
