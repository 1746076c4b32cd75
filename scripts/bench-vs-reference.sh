#!/usr/bin/env bash
# Times `lmtune bench` and the plain-PyTorch reference (../shared/bench/reference_gpt2.py bench,
# run by the venv's python, so both use the same LibTorch) alternately on the same shape and
# thread count, and prints each pair's JSON lines and lmtune / reference tokens/s.
#
# Usage: scripts/bench-vs-reference.sh [BENCH OPTIONS...]     e.g. --precision fp32 --steps 5
# Environment: LMTUNE_BIN (default build/lmtune), REPEATS (pairs, default 2), REFERENCE (script).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
python=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}/bin/python
reference=${REFERENCE:-$root/../shared/bench/reference_gpt2.py}
repeats=${REPEATS:-2}

for tool in "$lmtune" "$python"; do
  [[ -x "$tool" ]] || { echo "bench-vs-reference: $tool not found; run scripts/build.sh" >&2; exit 2; }
done
[[ -f "$reference" ]] || { echo "bench-vs-reference: no reference at $reference" >&2; exit 2; }

args=("$@")
# Both sides get the same explicit thread count: the reference's default is os.cpu_count(),
# lmtune's 0 means every core; naming it keeps them equal on any machine.
[[ " ${args[*]} " == *" --threads "* ]] || args+=(--threads "$(nproc)")

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'), args: ${args[*]}"
for ((i = 1; i <= repeats; i++)); do
  ours=$("$lmtune" bench --device cpu "${args[@]}")
  theirs=$("$python" "$reference" bench "${args[@]}")
  echo "lmtune:    $ours"
  echo "reference: $theirs"
  "$python" -c '
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
a, b, mfu = ours["tokens_per_sec"], theirs["tokens_per_sec"], ours["mfu"]
ref_mfu = b * ours["flops_per_token"] / 1e12 / ours["peak_tflops"]
print(f"pair {sys.argv[3]}: lmtune {a:.1f} tok/s (MFU {mfu:.1%}), "
      f"reference {b:.1f} tok/s (MFU {ref_mfu:.1%}), ratio {a / b:.2f}x")
' "$ours" "$theirs" "$i"
done
