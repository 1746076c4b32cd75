#!/usr/bin/env bash
# `lmtune plan`'s predicted peak against the peak `lmtune train` measures (peak_memory_mb), on
# random models made by transformers: a GPT-2 124M and a 114M Llama (GQA, tied embeddings), a few
# steps each at seq 256, micro-batch 4; prints a Markdown table (docs/memory.md, "What fits").
# Usage: scripts/plan-vs-measured.sh [SHAPE...]   (default: every shape below)
# Environment: LMTUNE_BIN (build/lmtune), PYTHON (the venv's), THREADS=2, STEPS=2, SEQ=256,
#              BATCH=4, DEVICE=cpu (cuda: the caching allocator's peak against the plan).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$(cd "$root/.." && pwd)/shared
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
python=${PYTHON:-${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" - "$work" "$shared/data/gpt2-tokenizer" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
work, tokenizer = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
models = {
    "gpt2-124m": GPT2LMHeadModel(GPT2Config()),
    "llama-114m": LlamaForCausalLM(LlamaConfig(
        vocab_size=50257, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True)),
}
for name, model in models.items():
    model.save_pretrained(work / name)
    for file in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer / file, work / name / file)
PY

cat > "$work/plan.json" <<JSON
{"run": {"seed": 1, "threads": ${THREADS:-2}, "device": "${DEVICE:-cpu}"},
 "model": {"path": "$work/gpt2-124m"},
 "data": {"train": "$shared/data/tinyshakespeare.txt", "seq_len": ${SEQ:-256},
          "cache_dir": "$work/cache"},
 "train": {"max_steps": ${STEPS:-2}, "micro_batch_size": ${BATCH:-4}, "precision": "fp32",
           "schedule": "constant"},
 "eval": {"every_steps": 0}, "checkpoint": {"every_steps": 0}, "logging": {"every_steps": 1}}
JSON

declare -A shapes=(
  [gpt2-full]="--set model.path=$work/gpt2-124m"
  [gpt2-full-checkpointing]="--set model.path=$work/gpt2-124m --set model.gradient_checkpointing=true"
  [gpt2-full-bf16]="--set model.path=$work/gpt2-124m --set train.precision=bf16"
  [gpt2-full-plain-loss]="--set model.path=$work/gpt2-124m --set train.chunked_loss=off"
  [llama-full]="--set model.path=$work/llama-114m"
  [llama-lora]="--set model.path=$work/llama-114m --set lora.enabled=true"
  [llama-lora-checkpointing]="--set model.path=$work/llama-114m --set lora.enabled=true --set model.gradient_checkpointing=true"
  [llama-qlora-nf4]="--set model.path=$work/llama-114m --set lora.enabled=true --set model.quantize=nf4"
  [llama-lora-int8]="--set model.path=$work/llama-114m --set lora.enabled=true --set model.quantize=int8"
  [gpt2-lora-all-linear]="--set model.path=$work/gpt2-124m --set lora.enabled=true --set lora.target_modules=all-linear"
)
order=(gpt2-full gpt2-full-checkpointing gpt2-full-bf16 gpt2-full-plain-loss llama-full
       llama-lora llama-lora-checkpointing llama-qlora-nf4 llama-lora-int8 gpt2-lora-all-linear)
(($# > 0)) && order=("$@")

echo "| shape | predicted (MB) | at | measured (MB) | error |"
echo "| --- | ---: | --- | ---: | ---: |"
for name in "${order[@]}"; do
  # shellcheck disable=SC2086
  predicted=$("$lmtune" plan "$work/plan.json" ${shapes[$name]} | tail -n 1)
  # shellcheck disable=SC2086
  measured=$("$lmtune" train "$work/plan.json" --set run.output_dir="$work/run-$name" \
    ${shapes[$name]} 2>/dev/null | tail -n 1)
  "$python" - "$name" "$predicted" "$measured" <<'PY'
import json, sys
name, plan, run = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
p, m = plan["total_mb"], run["peak_memory_mb"]
moment = plan["peak"].replace("at the ", "").replace("while ", "")  # the moment of the peak
print(f"| {name} | {p:.0f} | {moment} | {m:.0f} | {100 * (p - m) / m:+.1f}% |")
PY
done
