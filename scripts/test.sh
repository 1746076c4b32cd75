#!/usr/bin/env bash
# Installs what is missing, builds, and runs the test suite (the README's second command): all of
# it but the tests labelled slow, unless LMTUNE_SLOW_TESTS=1, and those labelled cuda without a GPU.
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${LMTUNE_BUILD_DIR:-$root/build}

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$build_dir"
cd "$build_dir"

# Tests labelled `cuda` need a GPU. Without one they are left out (and said to be), never counted
# as passed; LMTUNE_CUDA_TESTS=1 or 0 overrides the detection.
if [[ -z "${LMTUNE_CUDA_TESTS:-}" ]]; then
  LMTUNE_CUDA_TESTS=0
  command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU' && LMTUNE_CUDA_TESTS=1
fi
left_out=()  # labels not run
untested_gpu=0
if [[ "$LMTUNE_CUDA_TESTS" != 1 ]]; then
  echo "test: no GPU visible: the tests labelled cuda are not run (scripts/gpu-check.sh runs them)"
  left_out+=(cuda)
elif ! ctest -N -L cuda | grep -q "Total Tests: [1-9]"; then
  # The cuda tests are built only against a LibTorch with CUDA: a GPU with a CPU-only LibTorch
  # would otherwise pass the suite without a single GPU test.
  untested_gpu=1
fi
# Tests labelled `slow` (long training loops) would take the suite past 10 minutes on 2 cores;
# CI (.ci/run) runs them.
if [[ "${LMTUNE_SLOW_TESTS:-0}" != 1 ]]; then
  echo "test: the tests labelled slow are not run; LMTUNE_SLOW_TESTS=1 runs them"
  left_out+=(slow)
fi
exclude=()
if ((${#left_out[@]})); then
  exclude=(-LE "^($(IFS='|' && echo "${left_out[*]}"))\$")  # e.g. ^(cuda|slow)$
fi
status=0
ctest --output-on-failure --timeout 900 -j "${LMTUNE_TEST_JOBS:-2}" "${exclude[@]}" "$@" || status=$?
if ((untested_gpu)); then
  echo "test: a GPU is visible but $build_dir holds no tests labelled cuda: the LibTorch it was" \
    "built against has no CUDA, so the GPU code paths went untested (build against a CUDA" \
    "LibTorch, as scripts/gpu-check.sh does)" >&2
  ((status)) || status=1
fi
exit "$status"
