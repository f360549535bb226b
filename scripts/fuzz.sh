#!/usr/bin/env bash
# Builds the libFuzzer target for the safetensors header parser with clang + ASan/UBSan and runs it
# for SECONDS (default 60) from the committed seed corpus. Fails on any finding.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
build_dir=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOERUN_FUZZ=ON -DMOERUN_CUDA=OFF -DMOERUN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" --target fuzz_safetensors

# Work on a copy so the committed seeds stay as they are; findings land in $build_dir/findings.
corpus="$build_dir/corpus"
rm -rf "$corpus" "$build_dir/findings"
mkdir -p "$corpus" "$build_dir/findings"
cp tests/fuzz/corpus/* "$corpus/"
log="$build_dir/fuzz.log"
set +e
"$build_dir/fuzz_safetensors" "$corpus" -dict=tests/fuzz/safetensors.dict -max_total_time="$seconds" \
  -max_len=4096 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$build_dir/findings/" >"$log" 2>&1
rc=$?
set -e
grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$log" || true
if ((rc != 0)); then
  tail -n 60 "$log"
  echo "fuzz: FAILED (exit $rc); the input is in $build_dir/findings/" >&2
  exit 1
fi
echo "fuzz: no findings in ${seconds}s" >&2
