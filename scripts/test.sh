#!/usr/bin/env bash
# Runs setup, builds the tests and runs them with ctest.
#   scripts/test.sh [--sanitize] [--fuzz SECONDS]
#     --sanitize       also build Debug with AddressSanitizer + UndefinedBehaviorSanitizer into
#                      build-asan/ and run the whole suite there
#     --fuzz SECONDS   also run each libFuzzer target (safetensors, tokenizer) for SECONDS (scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sanitize=0
fuzz_seconds=0
while (($#)); do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --fuzz) fuzz_seconds="${2:?--fuzz needs a number of seconds}"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

jobs="$(nproc)"
./scripts/setup.sh
# Tests hold our code to "no warnings": -Werror here, not in setup.sh, so a user's build never
# fails on a warning from a newer compiler.
cmake -S . -B build -DMOERUN_WERROR=ON >/dev/null
cmake --build build
ctest --test-dir build --output-on-failure -j "$jobs"

if ((sanitize)); then
  # CUDA stays off here: the CUDA runtime and ASan's shadow memory do not mix, and no GPU test runs
  # on a machine without a GPU anyway.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOERUN_SANITIZE=ON -DMOERUN_CUDA=OFF \
    -DMOERUN_WERROR=ON >/dev/null
  cmake --build build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

if ((fuzz_seconds > 0)); then
  ./scripts/fuzz.sh "$fuzz_seconds"
fi
