#!/usr/bin/env bash
# Builds the libFuzzer targets with clang + ASan/UBSan and runs each for SECONDS (default 60):
#   fuzz_safetensors  the safetensors header parser and validator, from tests/fuzz/corpus; first it
#                     runs once on a generated header of 50k tensors, too big for the mutation
#                     corpus, so a parse that grows faster than the header is a finding (-timeout)
#   fuzz_tokenizer    random bytes as text and as ids through every test tokenizer
#   fuzz_serve_request  request bodies through moerun serve's parsers and validators (src/serve/api.cpp),
#                     from tests/fuzz/corpus-serve
# Fails on any finding (the input lands in build-fuzz/findings/).
#   scripts/fuzz.sh [SECONDS]      (MOERUN_FUZZ_BUILD_DIR: the build folder, default build-fuzz)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
build_dir="${MOERUN_FUZZ_BUILD_DIR:-build-fuzz}"
CC=clang CXX=clang++ cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOERUN_FUZZ=ON -DMOERUN_CUDA=OFF -DMOERUN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" --target fuzz_safetensors fuzz_tokenizer fuzz_serve_request
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

# many_tensors FILE N: a valid safetensors file of N one-byte tensors named like MoE experts (a 4.6 MB
# header for N = 50000). A quadratic header parse once took 44 s for 40k tensors in a Release build;
# linear, this build (-O1, ASan, UBSan) takes about 3 s, so a 60 s limit tells the two apart.
many_tensors() {
  local file=$1 n=$2 header len i
  header=$(awk -v n="$n" 'BEGIN {
    printf "{\"__metadata__\":{\"format\":\"pt\"}"
    for (i = 0; i < n; i++)
      printf ",\"model.layers.%d.mlp.experts.%d.w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}", int(i / 256), i % 256, i, i + 1
    printf "}" }')
  len=${#header}
  {
    for ((i = 0; i < 8; i++)); do printf "\\x$(printf %02x $(((len >> (8 * i)) & 255)))"; done
    printf '%s' "$header"
    head -c "$n" /dev/zero
  } >"$file"
}

mkdir -p "$build_dir/seeds"
LC_ALL=C many_tensors "$build_dir/seeds/many_tensors.safetensors" 50000
set +e
"$build_dir/fuzz_safetensors" -timeout=60 -rss_limit_mb=2048 -artifact_prefix="$build_dir/findings/fuzz_safetensors-" \
  "$build_dir/seeds/many_tensors.safetensors" >"$build_dir/many_tensors.log" 2>&1
rc=$?
set -e
echo "fuzz: fuzz_safetensors on a header of 50000 tensors"
if ((rc != 0)); then
  tail -n 30 "$build_dir/many_tensors.log"
  echo "fuzz: fuzz_safetensors FAILED on $build_dir/seeds/many_tensors.safetensors (exit $rc)" >&2
  exit 1
fi

run fuzz_safetensors -dict=tests/fuzz/safetensors.dict -max_len=4096 tests/fuzz/corpus
run fuzz_tokenizer -max_len=1024
run fuzz_serve_request -dict=tests/fuzz/serve_request.dict -max_len=8192 tests/fuzz/corpus-serve
echo "fuzz: no findings in ${seconds}s per target" >&2
