#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (the README's second command).
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${LMTUNE_BUILD_DIR:-$root/build}

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$build_dir"
cd "$build_dir"
ctest --output-on-failure --timeout 900 -j "${LMTUNE_TEST_JOBS:-2}" "$@"
