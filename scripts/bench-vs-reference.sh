#!/usr/bin/env bash
# Times `lmtune bench` and the plain-PyTorch reference (../shared/bench/reference_gpt2.py bench,
# run by the venv's python, so both use the same LibTorch) alternately on the same shape and
# thread count, and prints each pair's JSON lines and lmtune / reference tokens/s.
# With DEVICE=cuda, or with --arch llama on any device, the peer is scripts/bench_torch_peer.py
# (transformers' GPT-2 or LlamaForCausalLM in plain PyTorch), under PYTHON.
#
# Usage: scripts/bench-vs-reference.sh [BENCH OPTIONS...]     e.g. --precision fp32 --steps 5
# Environment: LMTUNE_BIN (default build/lmtune), REPEATS (pairs, default 2), REFERENCE (script),
#              DEVICE (cpu or cuda, default cpu), PYTHON (default the venv's).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
python=${PYTHON:-${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}/bin/python}
device=${DEVICE:-cpu}
torch_peer=0
[[ "$device" != cpu || " $* " == *" --arch llama "* ]] && torch_peer=1
if ((torch_peer)); then
  reference=${REFERENCE:-$root/scripts/bench_torch_peer.py}
  peer_args=(--device "$device")
else
  reference=${REFERENCE:-$root/../shared/bench/reference_gpt2.py}
  peer_args=()
fi
repeats=${REPEATS:-2}

for tool in "$lmtune" "$python"; do
  command -v "$tool" >/dev/null || { echo "bench-vs-reference: $tool not found; run scripts/build.sh" >&2; exit 2; }
done
[[ -f "$reference" ]] || { echo "bench-vs-reference: no reference at $reference" >&2; exit 2; }

args=("$@")
# Both sides get the same explicit thread count: the reference's default is os.cpu_count(),
# lmtune's 0 means every core; naming it keeps them equal on any machine.
[[ " ${args[*]} " == *" --threads "* ]] || args+=(--threads "$(nproc)")

# The peers know the shape options only, not lmtune's own loss options.
peer_shape=()
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --chunked-loss | --loss-chunk-tokens | --vocab-padding) ((i += 1)) ;;
    # The GPT-2 reference knows neither the architecture nor these shape options.
    --arch | --n-kv-head | --mlp-width) ((torch_peer)) && peer_shape+=("${args[i]}" "${args[i + 1]}"); ((i += 1)) ;;
    *) peer_shape+=("${args[i]}") ;;
  esac
done

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'), args: ${args[*]}"
for ((i = 1; i <= repeats; i++)); do
  ours=$("$lmtune" bench --device "$device" "${args[@]}")
  if ((!torch_peer)); then
    theirs=$("$python" "$reference" bench "${peer_shape[@]}")
  else
    theirs=$("$python" "$reference" "${peer_shape[@]}" "${peer_args[@]}")
  fi
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
