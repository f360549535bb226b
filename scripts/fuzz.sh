#!/usr/bin/env bash
# Builds the libFuzzer targets with clang + ASan/UBSan and runs each for SECONDS (default 60):
#   fuzz_safetensors  the safetensors header parser and validator, from tests/fuzz/corpus
#   fuzz_tokenizer    random bytes as text and as ids through every test tokenizer
# Fails on any finding (the input lands in build-fuzz/findings/).
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
build_dir=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOERUN_FUZZ=ON -DMOERUN_CUDA=OFF -DMOERUN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" --target fuzz_safetensors fuzz_tokenizer
rm -rf "$build_dir/findings"
mkdir -p "$build_dir/findings"

# run NAME EXTRA_ARGS...: a fresh working corpus; seed folders given in EXTRA_ARGS are only read
# (libFuzzer writes new inputs into the first corpus folder).
run() {
  local name=$1
  shift
  local corpus="$build_dir/corpus-$name" log="$build_dir/$name.log"
  rm -rf "$corpus"
  mkdir -p "$corpus"
  set +e
  "$build_dir/$name" "$corpus" "$@" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$build_dir/findings/$name-" >"$log" 2>&1
  local rc=$?
  set -e
  echo "fuzz: $name"
  grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$log" || true
  if ((rc != 0)); then
    tail -n 60 "$log"
    echo "fuzz: $name FAILED (exit $rc); the input is in $build_dir/findings/" >&2
    exit 1
  fi
}

run fuzz_safetensors -dict=tests/fuzz/safetensors.dict -max_len=4096 tests/fuzz/corpus
run fuzz_tokenizer -max_len=1024
echo "fuzz: no findings in ${seconds}s per target" >&2
