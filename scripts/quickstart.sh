#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and fine-tunes the bundled default
# model (assets/default-model) on the bundled task (assets/quickstart: word-by-word English to
# Spanish glosses), then prints validation loss and exact-match accuracy on held-out prompts before
# and after, and a sample generation. The run goes to runs/quickstart (replaced on each run).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${LMTUNE_BUILD_DIR:-$root/build}
lmtune=$build_dir/lmtune
run=$root/runs/quickstart
heldout=$root/assets/quickstart/heldout.jsonl

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$build_dir" >/dev/null
"$lmtune" --version

if [[ -e "$run" ]]; then
  echo "quickstart: replacing the previous run in $run"
  rm -rf "$run"
fi
mkdir -p "$run"

generate() {  # MODEL_DIR OUT_FILE: greedy completions of the held-out prompts
  "$lmtune" generate --model "$1" --prompts-file "$heldout" --temperature 0 --max-new-tokens 32 \
    --threads 2 2>/dev/null >"$2"
}

echo "quickstart: scoring the base model on $(wc -l <"$heldout") held-out prompts"
generate "$root/assets/default-model" "$run/before.jsonl"
start=$(date +%s)
"$lmtune" train "$root/configs/quickstart.json" | tee "$run/summary.json"
seconds=$(($(date +%s) - start))
generate "$run/final" "$run/after.jsonl"

python3 - "$run" "$heldout" "$seconds" <<'PY'
import json, subprocess, sys
run, heldout, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
summary = json.load(open(f"{run}/summary.json"))
score = lambda f: json.loads(subprocess.check_output(
    [sys.executable, f"{run}/../../scripts/score_task.py", heldout, f"{run}/{f}"]))
before, after = score("before.jsonl"), score("after.jsonl")
sample = json.loads(open(f"{run}/after.jsonl").readline())
print(f"\nfine-tuning took {seconds} s ({summary['steps']} steps)")
print(f"validation loss:         {summary['eval_before']['loss']:.3f} -> {summary['eval_after']['loss']:.3f}")
print(f"held-out exact match:    {before['exact_match']:.0%} -> {after['exact_match']:.0%} "
      f"({before['correct']} -> {after['correct']} of {after['total']})")
print(f"sample:  {sample['prompt']}{sample['completion']}")
PY
