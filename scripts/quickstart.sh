#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the bundled default job.
# Until `lmtune train` lands it validates configs/quickstart.json and prints it resolved.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${LMTUNE_BUILD_DIR:-$root/build}

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$build_dir"
"$build_dir/lmtune" --version
"$build_dir/lmtune" config "$root/configs/quickstart.json"
