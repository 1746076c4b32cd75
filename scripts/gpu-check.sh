#!/usr/bin/env bash
# On a machine with a CUDA GPU: builds lmtune against the PyTorch installed there, runs the tests
# labelled `cuda`, and times training steps against plain PyTorch on the same GPU
# (scripts/bench-vs-reference.sh with DEVICE=cuda). Logs and JSON lines go to $OUT.
#
# Usage: scripts/gpu-check.sh [BUILD_DIR]          (default build-gpu/)
# Environment:
#   PYTHON            python with torch, transformers, safetensors and pytest (default python3)
#   LMTUNE_DEPS_ROOT  a folder holding lmtune's Debian build dependencies unpacked with
#                     `dpkg -x` (for a machine where nothing can be installed); unset: the system's
#   LMTUNE_SHARED_DIR the shared test data (default ../shared beside the checkout)
#   OUT               where logs go (default BUILD_DIR/gpu-check)
#   GPU_BENCH         0 skips the benchmarks; GPU_TESTS=0 skips the tests
#   BUILD_TARGETS     the targets to build (default all; `lmtune lmtune_cuda_tests` is what the
#                     cuda tests and the benchmarks need)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$root/build-gpu}
python=$(command -v "${PYTHON:-python3}")
out=${OUT:-$build_dir/gpu-check}
mkdir -p "$build_dir" "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
prefix=$("$python" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

cmake_args=(-DCMAKE_BUILD_TYPE=Release -DLMTUNE_PYTHON="$python")
[[ -n "${LMTUNE_SHARED_DIR:-}" ]] && cmake_args+=(-DLMTUNE_SHARED_DIR="$LMTUNE_SHARED_DIR")
if [[ -n "${LMTUNE_DEPS_ROOT:-}" ]]; then
  deps=$(cd "$LMTUNE_DEPS_ROOT" && pwd)
  prefix="$prefix;$deps/usr"
  # Their libraries' own dependencies (libicuuc's libicudata) are found at run time through this.
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # pkg-config reads only the unpacked .pc files and puts the folder before their /usr paths.
  export PKG_CONFIG_SYSROOT_DIR=$deps
  export PKG_CONFIG_LIBDIR=$deps/usr/lib/x86_64-linux-gnu/pkgconfig:$deps/usr/share/pkgconfig
  # The system's pkg-config, else the unpacked one with its library beside it (named explicitly:
  # CMake would otherwise find the unpacked binary first, through the prefix path).
  pkg_config=$(command -v pkg-config || true)
  if [[ -z "$pkg_config" ]]; then
    pkg_config=$build_dir/tools/pkg-config
    mkdir -p "$build_dir/tools"
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$deps/usr/lib/x86_64-linux-gnu" \
      "$deps/usr/bin/pkgconf" >"$pkg_config"
    chmod +x "$pkg_config"
  fi
  cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$pkg_config")
fi

start=$(date +%s)
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" "${cmake_args[@]}" \
  >"$out/configure.log" 2>&1 ||
  { tail -n 40 "$out/configure.log"; exit 1; }
targets=()
for target in ${BUILD_TARGETS:-}; do targets+=(--target "$target"); done
cmake --build "$build_dir" --parallel "$(nproc)" "${targets[@]}" >"$out/build.log" 2>&1 ||
  { grep -E -m 20 -A 5 "error|Error" "$out/build.log"; exit 1; }
echo "gpu-check: configured and built in $(($(date +%s) - start)) s"
"$build_dir/lmtune" --version

status=0
if [[ "${GPU_TESTS:-1}" != 0 ]]; then
  (cd "$build_dir" && ctest -L cuda --output-on-failure --timeout 600 -j 1) 2>&1 |
    tee "$out/ctest-cuda.log" | grep -E -v "^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed" || true
  grep -q "100% tests passed" "$out/ctest-cuda.log" || status=1
  # The largest weight difference of the resumed GPU run, for the notes.
  grep -h "largest weight difference" "$build_dir"/Testing/Temporary/LastTest.log || true
fi

if [[ "${GPU_BENCH:-1}" != 0 ]]; then
  export LMTUNE_BIN=$build_dir/lmtune PYTHON=$python DEVICE=cuda REPEATS=${REPEATS:-2}
  bench=("$root/scripts/bench-vs-reference.sh")
  {
    # GPT-2 124M at seq 1024, bf16: the trainer's defaults, then each loss path.
    "${bench[@]}" --n-layer 12 --n-head 12 --n-embd 768 --seq 1024 --batch 16 --precision bf16 \
      --steps 20 --threads 1
    REPEATS=1 "${bench[@]}" --n-layer 12 --n-head 12 --n-embd 768 --seq 1024 --batch 16 \
      --precision bf16 --steps 20 --threads 1 --chunked-loss off
    # The CPU benchmark's shape, fp32 and bf16.
    REPEATS=1 "${bench[@]}" --precision fp32 --steps 20 --threads 1
    REPEATS=1 "${bench[@]}" --precision bf16 --steps 20 --threads 1
  } 2>&1 | tee "$out/bench.log"
fi
exit "$status"
