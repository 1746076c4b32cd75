#!/usr/bin/env bash
# Validation loss over steps with data.order: shuffle against data.order: curriculum (length
# score) on the same small task: a 2-layer GPT-2 (n_embd 64) trained from scratch on
# tinyshakespeare (10% held out for validation), same seeds, same steps. Prints a Markdown table
# of eval_loss per evaluation step; docs/benchmarks.md records the result.
#
# Usage: scripts/bench-curriculum.sh [--steps N] [--seeds "1 2"] [--threads N] [--out DIR]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
python=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}/bin/python
shared=${LMTUNE_SHARED_DIR:-$root/../shared}
steps=100
seeds="1"
threads=1
out=$(mktemp -d)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps=$2; shift ;;
    --seeds) seeds=$2; shift ;;
    --threads) threads=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
export LMTUNE_CACHE_DIR=$out/cache

for seed in $seeds; do
  for order in shuffle curriculum; do
    cat >"$out/$order-$seed.json" <<JSON
{"run": {"output_dir": "$out/$order-$seed", "seed": $seed, "threads": $threads},
 "model": {"path": "$shared/data/gpt2-tokenizer", "init": "random", "n_layer": 2, "n_head": 2,
           "n_embd": 64, "n_positions": 128},
 "data": {"train": "$shared/data/tinyshakespeare.txt", "validation_split": 0.1, "seq_len": 64,
          "order": "$order", "curriculum_start_fraction": 0.2,
          "curriculum_pace_steps": $((steps / 2))},
 "train": {"max_steps": $steps, "micro_batch_size": 8, "precision": "fp32", "lr": 3e-3,
           "schedule": "cosine", "warmup_steps": 20},
 "eval": {"every_steps": $((steps / 5)), "max_batches": 16},
 "checkpoint": {"every_steps": 0, "keep_last": 1},
 "logging": {"every_steps": $((steps / 5)), "tensorboard": false}}
JSON
    "$lmtune" train "$out/$order-$seed.json" >/dev/null 2>"$out/$order-$seed.log"
  done
done

"$python" - "$out" $seeds <<'PY'
import json, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
def evals(run):
    return {r["step"]: r["eval_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "eval_loss" in r}
print("| seed | order | " + " | ".join(f"step {s}" for s in evals(out / f"shuffle-{seeds[0]}")) + " |")
print("| --- | --- |" + " --- |" * len(evals(out / f"shuffle-{seeds[0]}")))
for seed in seeds:
    for order in ("shuffle", "curriculum"):
        print(f"| {seed} | {order} | " + " | ".join(f"{v:.3f}" for v in evals(out / f"{order}-{seed}").values()) + " |")
PY
