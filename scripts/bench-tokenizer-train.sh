#!/usr/bin/env bash
# Trains a byte-level BPE tokenizer with `lmtune tokenizer train` and with the `tokenizers`
# package's BpeTrainer on the same documents (the last tenth held out), and prints per vocabulary
# size: training times (the package on one thread and on all), how many merges agree, and bytes
# per token of the held-out text for both and for GPT-2's tokenizer.
# Usage: scripts/bench-tokenizer-train.sh [TEXT_FILE...]  (default: ../shared/data/tinyshakespeare.txt)
# Environment: LMTUNE_BIN (default build/lmtune), VOCAB_SIZES (default "2000 8000"),
# PRE_TOKENIZER (default gpt2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}
shared=$(cd "$root/.." && pwd)/shared
files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=("$shared/data/tinyshakespeare.txt")

# shellcheck disable=SC2086  # VOCAB_SIZES is a list
exec "$venv/bin/python" "$root/scripts/bench_tokenizer_train.py" \
  --lmtune "${LMTUNE_BIN:-$root/build/lmtune}" \
  --files "${files[@]}" \
  --vocab-size ${VOCAB_SIZES:-2000 8000} \
  --pre-tokenizer "${PRE_TOKENIZER:-gpt2}" \
  --base-tokenizer "$shared/data/gpt2-tokenizer"
