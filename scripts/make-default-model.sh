#!/usr/bin/env bash
# Regenerates the bundled default: assets/default-model (a tiny GPT-2 that lmtune pretrains from
# scratch on a generated English corpus) and assets/quickstart (the generated fine-tuning task).
# Recipe: scripts/default_assets.py + configs/default-model/pretrain.json. About 3 minutes on 2 cores.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${LMTUNE_BUILD_DIR:-$root/build}
generated=$root/runs/default-model-assets
run=$root/runs/default-model-pretrain

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$build_dir" >/dev/null
rm -rf "$generated" "$run"
python3 "$root/scripts/default_assets.py" "$generated"
"$build_dir/lmtune" train "$root/configs/default-model/pretrain.json"

rm -rf "$root/assets/default-model" "$root/assets/quickstart"
mkdir -p "$root/assets/quickstart"
cp -r "$run/final" "$root/assets/default-model"
cp "$generated"/quickstart/*.jsonl "$root/assets/quickstart/"
echo "make-default-model: wrote assets/default-model ($(du -sh "$root/assets/default-model" | cut -f1)) and assets/quickstart"
