#!/usr/bin/env bash
# Measures `lmtune prepare` throughput on about 100 MB of text: tinyshakespeare repeated, each
# copy's lines tagged with its number so that no document is a duplicate of another. Prints the
# report line (mb_per_sec) and, where GNU time is installed, the peak resident memory.
#   scripts/bench-prepare.sh [COPIES]     # default 90 copies of 1.1 MB; LMTUNE_BIN, THREADS
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
shared=${LMTUNE_SHARED_DIR:-$root/../shared}
copies=${1:-90}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for ((i = 1; i <= copies; i++)); do
  awk -v copy="$i" 'NF { $0 = $0 " " copy } { print }' "$shared/data/tinyshakespeare.txt"
done >"$work/train.txt"
mkdir "$work/model"
cp "$shared/data/gpt2-tokenizer/vocab.json" "$shared/data/gpt2-tokenizer/merges.txt" "$work/model/"
cat >"$work/config.json" <<JSON
{"model": {"path": "model"}, "data": {"train": "train.txt", "seq_len": 1024},
 "run": {"output_dir": "run", "threads": ${THREADS:-0}}}
JSON

echo "bench-prepare: $(du -m "$work/train.txt" | cut -f1) MB of text, $(nproc) cores" >&2
if [[ -x /usr/bin/time ]]; then
  /usr/bin/time -f "bench-prepare: peak resident memory %M KB, %e s wall" \
    "$lmtune" prepare "$work/config.json"
else
  "$lmtune" prepare "$work/config.json"
fi
