#!/usr/bin/env bash
# Fuzzes lmtune's parsers of user files with libFuzzer (docs/fuzzing.md): builds the clang fuzz
# tree if needed, runs each target for SECONDS_PER_TARGET (default 180) seeded from its regression
# corpus tests/fuzz/<target>/ and from real files, and copies every crash, timeout and
# out-of-memory input (minimized when that is quick) into tests/fuzz/<target>/.
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Runs one target at a time; LMTUNE_FUZZ_BUILD=0 skips rebuilding an existing fuzzer.
# Exits 1 when an input was found that fails (the corpus test will fail on it until it is fixed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-180}
(($# > 0)) && shift
build_dir=${LMTUNE_FUZZ_BUILD_DIR:-$root/build-fuzz}
venv=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}
all_targets=(safetensors config_json config_yaml tokenizer_json vocab_merges trainer_state
  adapter_config token_cache data_lines)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

if ! command -v clang++ >/dev/null; then
  echo "fuzz: needs clang with libFuzzer: apt-get install clang libclang-rt-14-dev" >&2
  exit 2
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "fuzz: no virtual environment at $venv; run scripts/install-deps.sh first" >&2
  exit 2
fi

# The library is compiled with clang for libFuzzer's coverage and AddressSanitizer; LibTorch
# itself stays the wheel's (gcc, libstdc++), which links with clang's objects as it is.
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  prefix=${CMAKE_PREFIX_PATH:-$("$venv/bin/python" -c \
    "import torch.utils; print(torch.utils.cmake_prefix_path)")}
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER=clang++ -DLMTUNE_FUZZ=ON -DLMTUNE_BUILD_TESTS=OFF \
    -DCMAKE_PREFIX_PATH="$prefix" -DLMTUNE_PYTHON="$venv/bin/python" >/dev/null
fi
fuzzer=$build_dir/fuzz/lmtune_fuzz
# LMTUNE_FUZZ_BUILD=0 runs the fuzzer already built (while another build holds the machine).
if [[ "${LMTUNE_FUZZ_BUILD:-1}" != 0 || ! -x "$fuzzer" ]]; then
  cmake --build "$build_dir" --target lmtune_fuzz --parallel "${LMTUNE_BUILD_JOBS:-$(nproc)}"
fi

seeds=$build_dir/fuzz-seeds
if [[ ! -d "$seeds" ]]; then
  "$venv/bin/python" "$root/fuzz/make_seeds.py" "$seeds.tmp" "$root" "$root/../shared"
  mv "$seeds.tmp" "$seeds"
fi

# LibTorch's allocations at start-up and exit are not the parsers' and would drown real reports in
# leaks: leak checking is off. Inputs run in one process, so a crash stops a child, not the run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
found=0
for target in "${targets[@]}"; do
  work=$build_dir/fuzz-work/$target
  mkdir -p "$work/corpus" "$work/artifacts" "$root/tests/fuzz/$target"
  echo "fuzz: $target for ${seconds}s (log: $work/fuzz.log)"
  LMTUNE_FUZZ_TARGET=$target "$fuzzer" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
    "$work/corpus" "$root/tests/fuzz/$target" "$seeds/$target" >"$work/fuzz.log" 2>&1 || true
  grep -E '^#[0-9]+' "$work/fuzz.log" | tail -1 || true
  for artifact in "$work"/artifacts/{crash,timeout,oom,leak}-*; do
    [[ -f "$artifact" ]] || continue
    name=$(basename "$artifact")
    [[ -f "$root/tests/fuzz/$target/$name" ]] && continue
    found=1
    kept=$root/tests/fuzz/$target/$name
    cp "$artifact" "$kept"
    if [[ $name == crash-* ]]; then
      rm -f "$work/minimized"
      # -max_total_time bounds each of minimization's steps, not their sum: timeout bounds it.
      LMTUNE_FUZZ_TARGET=$target timeout -s INT 30 "$fuzzer" -minimize_crash=1 -timeout=10 \
        -exact_artifact_path="$work/minimized" "$artifact" >"$work/minimize.log" 2>&1 || true
      [[ -s "$work/minimized" ]] && mv "$work/minimized" "$kept"
    fi
    echo "fuzz: $target: new failing input tests/fuzz/$target/$name"
  done
done
exit "$found"
