#!/usr/bin/env bash
# The loss's own memory, measured: peak memory of `lmtune bench` on a one-block GPT-2 (so the
# model is small next to the loss) at the docs/benchmarks.md memory shape, with the plain loss
# and with the chunked loss at several chunk sizes, and with a 64-token vocabulary (no loss
# memory to speak of). The loss's memory is the plain run's peak minus the small-vocabulary run's
# and minus the output matrix's own state (V x C x 16 bytes: weight, gradient, two AdamW moments).
# Usage: scripts/bench-loss-memory.sh        Environment: LMTUNE_BIN, SEQ=512, BATCH=8,
#        N_EMBD=384, PRECISION=bf16, THREADS=0, CHUNKS="128 256 512 1024", DEVICE=cpu.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
vocab=50257
embd=${N_EMBD:-384}
common=(--n-layer 1 --n-head 6 --n-embd "$embd" --batch "${BATCH:-8}" --seq "${SEQ:-512}"
        --precision "${PRECISION:-bf16}" --steps 1 --warmup 1 --threads "${THREADS:-0}"
        --device "${DEVICE:-cpu}")

# Prints "peak_memory_mb step_ms" of one run.
peak() {
  "$lmtune" bench "${common[@]}" "$@" |
    python3 -c 'import json, sys; j = json.load(sys.stdin); print(round(j["peak_memory_mb"]), round(j["step_ms"]))'
}

read -r small _ < <(peak --vocab 64 --chunked-loss off)
read -r plain plain_ms < <(peak --vocab "$vocab" --chunked-loss off)
state=$((vocab * embd * 16 / 1048576))
loss=$((plain - small - state))
echo "one block, ${BATCH:-8} x ${SEQ:-512} tokens, ${PRECISION:-bf16}: vocabulary-64 peak $small MB;" \
     "output matrix state $state MB; the plain loss's own memory $loss MB"
echo "| loss | peak memory (MB) | loss memory left (MB) | removed | step (ms) |"
echo "| --- | ---: | ---: | ---: | ---: |"
echo "| plain | $plain | $loss | 0% | $plain_ms |"
for chunk in ${CHUNKS:-128 256 512 1024}; do
  read -r mb ms < <(peak --vocab "$vocab" --chunked-loss on --loss-chunk-tokens "$chunk")
  left=$((mb - small - state))
  awk -v c="$chunk" -v mb="$mb" -v left="$left" -v loss="$loss" -v ms="$ms" \
    'BEGIN { printf "| chunked, %d tokens | %d | %d | %.0f%% | %d |\n", c, mb, left, 100 * (1 - left / loss), ms }'
done
