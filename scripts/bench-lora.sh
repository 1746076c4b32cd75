#!/usr/bin/env bash
# Full fine-tuning against LoRA (rank 16 on every linear layer) over an fp32, an int8 and an nf4
# base, at one shape, with `lmtune bench`; and the same LoRA step in transformers + PEFT
# (scripts/bench_torch_peer.py --lora-r) on the same shape, threads and precision. One JSON line
# per run; docs/benchmarks.md and docs/memory.md record the results.
#
# Usage: scripts/bench-lora.sh gpt2-medium|llama-1b [--skip-full] [--threads N]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
python=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}/bin/python
shape_name=${1:?usage: scripts/bench-lora.sh gpt2-medium|llama-1b [--skip-full] [--threads N]}
shift
skip_full=0
threads=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --skip-full) skip_full=1 ;;
    --threads) threads=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

case "$shape_name" in
  # GPT-2 medium: 24 x 1024, 16 heads, 355M parameters.
  gpt2-medium) shape=(--arch gpt2 --n-layer 24 --n-head 16 --n-embd 1024 --vocab 50257
                      --batch 2 --seq 256) ;;
  # Llama 3.2 1B: 16 x 2048, 32 query and 8 key/value heads, MLP 8192, vocabulary 128256.
  llama-1b) shape=(--arch llama --n-layer 16 --n-head 32 --n-kv-head 8 --n-embd 2048
                   --mlp-width 8192 --vocab 128256 --batch 1 --seq 128) ;;
  *) echo "unknown shape $shape_name" >&2; exit 2 ;;
esac
common=(--precision fp32 --steps 2 --warmup 1 --threads "$threads")

if [[ $skip_full == 0 ]]; then
  "$lmtune" bench "${shape[@]}" "${common[@]}" 2>/dev/null
fi
for quantize in none int8 nf4; do
  "$lmtune" bench "${shape[@]}" "${common[@]}" --lora-r 16 --quantize "$quantize" 2>/dev/null
done
"$python" "$root/scripts/bench_torch_peer.py" "${shape[@]}" "${common[@]}" --lora-r 16 \
  --device cpu 2>/dev/null
