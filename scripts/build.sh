#!/usr/bin/env bash
# Configures and builds a Release build of lmtune (default build/) against the LibTorch of the
# virtual environment, unless CMAKE_PREFIX_PATH names another LibTorch 2.x.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$root/build}
venv=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}

if [[ -z "${CMAKE_PREFIX_PATH:-}" ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "build: no virtual environment at $venv; run scripts/install-deps.sh first" >&2
    exit 2
  fi
  CMAKE_PREFIX_PATH=$("$venv/bin/python" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  export CMAKE_PREFIX_PATH
fi

generator=()
command -v ninja >/dev/null && [[ ! -f "$build_dir/Makefile" ]] && generator=(-G Ninja)
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLMTUNE_PYTHON="$venv/bin/python" >/dev/null
fi
cmake --build "$build_dir" --parallel "${LMTUNE_BUILD_JOBS:-$(nproc)}"
