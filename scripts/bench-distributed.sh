#!/usr/bin/env bash
# Data-parallel scaling on the CPU: the same global batch trained by 1 process x 1 thread
# (micro-batch 2b) and by 2 ranks x 1 thread each under torchrun (micro-batch b), on a random
# GPT-2 that transformers makes (6 x 384 with the bundled default model's 495-token tokenizer:
# 10.9M parameters, 44 MB of fp32 gradients all-reduced per step). Prints one JSON line per run: median tokens/s over the steps
# after the first two, and for the ranks the median seconds per step spent waiting for the
# gradient all-reduce after backward (comm_wait_s in metrics.jsonl). docs/benchmarks.md records it.
#
# Usage: scripts/bench-distributed.sh [--steps N] [--micro-batch B] [--seq-len T]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
venv=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}
steps=12
micro=4
seq=128
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps=$2; shift ;;
    --micro-batch) micro=$2; shift ;;
    --seq-len) seq=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" - "$work" "$root" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from transformers import GPT2Config, GPT2LMHeadModel
work, root = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=512, vocab_size=495,
                           bos_token_id=494, eos_token_id=494, resid_pdrop=0, embd_pdrop=0,
                           attn_pdrop=0)).save_pretrained(work / "model")
for name in ("vocab.json", "merges.txt"):
    shutil.copy(root / "assets" / "default-model" / name, work / "model" / name)
text = (root / "assets" / "quickstart" / "train.jsonl").read_text()
(work / "train.txt").write_text((text * 20)[:4_000_000])
EOF

config() {  # output dir, micro-batch
  cat <<EOF
{"run": {"output_dir": "$1", "threads": 1, "seed": 1},
 "model": {"path": "$work/model"},
 "data": {"train": "$work/train.txt", "seq_len": $seq},
 "train": {"max_steps": $steps, "micro_batch_size": $2, "precision": "fp32",
           "warmup_steps": 0},
 "eval": {"every_steps": 0, "max_batches": 1},
 "checkpoint": {"every_steps": 0},
 "logging": {"every_steps": 1, "tensorboard": false}}
EOF
}

summarise() {  # run dir, label, ranks
  "$venv/bin/python" - "$1" "$2" "$3" <<'EOF'
import json, statistics, sys
run, label, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"loss"' in l]
later = records[2:]
out = {"run": label, "ranks": ranks, "threads_per_rank": 1, "steps_measured": len(later),
       "tokens_per_sec": round(statistics.median(r["tokens_per_sec"] for r in later), 1)}
if ranks > 1:
    out["comm_wait_s_per_step"] = round(statistics.median(r["comm_wait_s"] for r in later), 4)
    out["seconds_per_step"] = round(statistics.median(
        b["elapsed_s"] - a["elapsed_s"] for a, b in zip(later, later[1:])), 4)
print(json.dumps(out))
EOF
}

config "$work/one" $((2 * micro)) > "$work/one.json"
"$lmtune" prepare "$work/one.json" >/dev/null 2>&1
"$lmtune" train "$work/one.json" >/dev/null 2>"$work/one.log" || { cat "$work/one.log" >&2; exit 1; }
summarise "$work/one" "1 process, micro-batch $((2 * micro))" 1

config "$work/two" "$micro" > "$work/two.json"
"$venv/bin/torchrun" --standalone --nproc-per-node 2 --no-python "$lmtune" train "$work/two.json" \
  >/dev/null 2>"$work/two.log" || { cat "$work/two.log" >&2; exit 1; }
summarise "$work/two" "2 ranks, micro-batch $micro each" 2
