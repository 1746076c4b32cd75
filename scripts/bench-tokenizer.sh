#!/usr/bin/env bash
# Times single-thread GPT-2 encoding of one text by `lmtune tokenize --bench` and by tiktoken (Rust
# core) in the same run, best of the same repeats each, and prints both rates and their ratio.
# Usage: scripts/bench-tokenizer.sh [TEXT_FILE]   (default: ../shared/data/tinyshakespeare.txt)
# Environment: LMTUNE_BIN (default build/lmtune), TOKENIZER_DIR (vocab.json + merges.txt), REPEATS.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}
shared=$(cd "$root/.." && pwd)/shared

exec "$venv/bin/python" "$root/scripts/bench_tokenizer.py" \
  --lmtune "${LMTUNE_BIN:-$root/build/lmtune}" \
  --tokenizer "${TOKENIZER_DIR:-$shared/data/gpt2-tokenizer}" \
  --file "${1:-$shared/data/tinyshakespeare.txt}" \
  --repeats "${REPEATS:-5}"
