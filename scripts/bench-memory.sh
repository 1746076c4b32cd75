#!/usr/bin/env bash
# Peak memory and step time of a few `lmtune train` steps with and without gradient checkpointing
# and the chunked loss, on a randomly initialised GPT-2 and random text; prints a Markdown table.
# Usage: scripts/bench-memory.sh
# Environment (defaults: the docs/benchmarks.md shape): LMTUNE_BIN (build/lmtune), N_LAYER=12,
# N_HEAD=6, N_EMBD=384, SEQ=512, BATCH=8, PRECISION=bf16, STEPS=3, DEVICE=cpu, THREADS=0.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$(cd "$root/.." && pwd)/shared
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Random words: enough windows for STEPS micro-batches of BATCH x SEQ tokens.
words=$(( ${BATCH:-8} * (${SEQ:-512} + 1) * ${STEPS:-3} * 2 ))
awk -v n="$words" 'BEGIN { srand(1); for (i = 0; i < n; i++) {
  w = ""; for (j = 0; j < 2 + int(rand() * 6); j++) w = w sprintf("%c", 97 + int(rand() * 26));
  printf "%s%s", w, (i % 12 == 11 ? ".\n" : " ") } }' > "$work/train.txt"

cat > "$work/bench.json" <<JSON
{"run": {"seed": 1, "threads": ${THREADS:-0}, "device": "${DEVICE:-cpu}"},
 "model": {"init": "random", "tokenizer": "$shared/data/gpt2-tokenizer", "n_layer": ${N_LAYER:-12},
           "n_head": ${N_HEAD:-6}, "n_embd": ${N_EMBD:-384}, "vocab_size": 50257,
           "n_positions": ${SEQ:-512}},
 "data": {"train": "$work/train.txt", "seq_len": ${SEQ:-512}, "cache_dir": "$work/cache"},
 "train": {"max_steps": ${STEPS:-3}, "micro_batch_size": ${BATCH:-8},
           "precision": "${PRECISION:-bf16}", "schedule": "constant"},
 "eval": {"every_steps": 0}, "checkpoint": {"every_steps": 0}, "logging": {"every_steps": 1}}
JSON

# Prints "peak_memory_mb seconds_per_step" of one run; steps after the first are timed, the first
# pays for allocation.
run() {
  local name=$1
  shift
  "$lmtune" train "$work/bench.json" --set run.output_dir="$work/$name" "$@" > "$work/$name.out"
  python3 - "$work/$name.out" "$work/$name/metrics.jsonl" <<'PY'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
steps = [json.loads(l) for l in open(sys.argv[2]) if '"loss"' in l]
times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])] or [steps[0]["elapsed_s"]]
print(f'{summary["peak_memory_mb"]:.0f} {sum(times) / len(times):.2f}')
PY
}

echo "| variant | peak memory (MB) | vs plain | step time (s) | vs plain |"
echo "| --- | ---: | ---: | ---: | ---: |"
read -r base_mb base_s < <(run plain --set train.chunked_loss=off)
echo "| plain | $base_mb | 100% | $base_s | 1.00x |"
for variant in "checkpointing:--set model.gradient_checkpointing=true --set train.chunked_loss=off" \
               "chunked loss:--set train.chunked_loss=on" \
               "chunked loss, 1024-token chunks:--set train.chunked_loss=on --set train.loss_chunk_tokens=1024" \
               "both:--set model.gradient_checkpointing=true --set train.chunked_loss=on"; do
  name=${variant%%:*}
  # shellcheck disable=SC2086
  read -r mb s < <(run "${name// /_}" ${variant#*:})
  awk -v n="$name" -v mb="$mb" -v s="$s" -v bmb="$base_mb" -v bs="$base_s" \
    'BEGIN { printf "| %s | %d | %.0f%% | %.2f | %.2fx |\n", n, mb, 100 * mb / bmb, s, s / bs }'
done
