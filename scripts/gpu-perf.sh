#!/usr/bin/env bash
# On a machine with a CUDA GPU, after scripts/gpu-check.sh has built lmtune there: the GPU
# benchmarks of docs/benchmarks.md, each beside its peer run in the same call (transformers, and
# PEFT for adapters, plain PyTorch eager on the same GPU), profiles, and `lmtune plan` against the
# peaks the GPU measures. One JSON line per run in OUT/perf.jsonl; Markdown tables at the end.
# Sections, run in the order given:
#   gpt2     GPT-2 124M, seq 1024, batch 16, bf16 (the trainer's defaults)
#   pad      the same with --vocab-padding 1: the output head on GPT-2's odd vocabulary as it is
#            (train.vocab_padding pads it to a multiple of 64 by default on a GPU)
#   llama    a Llama 3.2 1B shape, seq 1024, batch 4, bf16, full fine-tuning
#   lora     the same shape with LoRA r 16 on every linear layer over a bf16-autocast fp32 base
#            and an nf4 base (PEFT's peer: the fp32 base; bitsandbytes is not on the GPU machine)
#   levers   the speed switches of issue 19 at the gpt2 shape, each alone and all together
#            (--fused-kernels, --fused-clipping, --attention-backend cudnn, --fused-loss),
#            and all of them at the llama shape; the cases compare with `gpt2` and `llama`
#   profile  `lmtune bench --profile` of 3 steps of the gpt2 and llama shapes, ranked by
#            scripts/profile_table.py into OUT/profile-*.md (traces in OUT/profile-*/)
#   plan     scripts/plan-vs-measured.sh on the GPU at seq 1024, micro-batch 8
#
# Usage: scripts/gpu-perf.sh [BUILD_DIR]        (default build-gpu/)
# Environment: PYTHON (python3), OUT (BUILD_DIR/gpu-perf), STEPS (10),
#              SECTIONS ("gpt2 pad llama levers lora profile plan"), RUN_TIMEOUT (seconds per run, 150),
#              LMTUNE_DEPS_ROOT (as for scripts/gpu-check.sh: where its libraries were unpacked).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$root/build-gpu}
python=$(command -v "${PYTHON:-python3}")
out=${OUT:-$build_dir/gpu-perf}
steps=${STEPS:-10}
limit=${RUN_TIMEOUT:-150}
mkdir -p "$out"
[[ -n ${LMTUNE_DEPS_ROOT:-} ]] &&
  export LD_LIBRARY_PATH=$LMTUNE_DEPS_ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
lmtune=$build_dir/lmtune
log=$out/perf.jsonl
: >"$log"
: >"$out/failures.txt"

fail() { echo "gpu-perf: $1 failed: $(tail -n 3 "$2" | tr '\n' ' ')" | tee -a "$out/failures.txt"; }

# Runs one side and keeps its JSON line, tagged with the case, in perf.jsonl.
record() {
  local name=$1
  shift
  local line
  if line=$(timeout "$limit" "$@" 2>"$out/$name.err" | tail -n 1) && [[ $line == "{"* ]]; then
    "$python" -c 'import json, sys; r = json.loads(sys.argv[2]); r["case"] = sys.argv[1]
print(json.dumps(r))' "$name" "$line" | tee -a "$log"
  else
    fail "$name" "$out/$name.err"
  fi
}

common=(--precision bf16 --steps "$steps" --warmup 3 --threads 1)
gpt2=(--arch gpt2 --n-layer 12 --n-head 12 --n-embd 768 --vocab 50257 --seq 1024 --batch 16)
llama=(--arch llama --n-layer 16 --n-head 32 --n-kv-head 8 --n-embd 2048 --mlp-width 8192
       --vocab 128256 --seq 1024 --batch 4)
peer=("$python" "$root/scripts/bench_torch_peer.py" --device cuda)

for section in ${SECTIONS:-gpt2 pad llama levers lora profile plan}; do
  case $section in
    gpt2 | llama)
      declare -n shape=$section
      record "$section" "$lmtune" bench --device cuda "${shape[@]}" "${common[@]}"
      record "$section-peer" "${peer[@]}" "${shape[@]}" "${common[@]}"
      ;;
    pad)
      record gpt2-unpadded "$lmtune" bench --device cuda "${gpt2[@]}" "${common[@]}" --vocab-padding 1
      ;;
    levers)
      all_levers=(--fused-kernels --fused-clipping --attention-backend cudnn --fused-loss)
      for lever in --fused-kernels --fused-clipping "--attention-backend cudnn" --fused-loss; do
        # shellcheck disable=SC2086  # the attention option is two words
        record "gpt2-lever${lever// /-}" "$lmtune" bench --device cuda "${gpt2[@]}" "${common[@]}" $lever
      done
      record gpt2-levers-all "$lmtune" bench --device cuda "${gpt2[@]}" "${common[@]}" \
        "${all_levers[@]}"
      record llama-levers-all "$lmtune" bench --device cuda "${llama[@]}" "${common[@]}" \
        "${all_levers[@]}"
      ;;
    lora)
      for quantize in none nf4; do
        record "lora-$quantize" "$lmtune" bench --device cuda "${llama[@]}" "${common[@]}" \
          --lora-r 16 --quantize "$quantize"
      done
      record lora-peer "${peer[@]}" "${llama[@]}" "${common[@]}" --lora-r 16
      ;;
    profile)
      for name in gpt2 llama; do
        declare -n shape=$name
        timeout "$limit" "$lmtune" bench --device cuda "${shape[@]}" --precision bf16 --steps 2 \
          --warmup 3 --threads 1 --profile "$out/profile-$name" --profile-steps 3 \
          >"$out/profile-$name.json" 2>"$out/profile-$name.err" &&
          "$python" "$root/scripts/profile_table.py" "$out/profile-$name/trace.json" --top 30 \
            >"$out/profile-$name.md" 2>>"$out/profile-$name.err" ||
          fail "profile of $name" "$out/profile-$name.err"
      done
      ;;
    plan)
      DEVICE=cuda SEQ=1024 BATCH=8 STEPS=3 LMTUNE_BIN=$lmtune PYTHON=$python \
        timeout $((4 * limit)) "$root/scripts/plan-vs-measured.sh" gpt2-full \
        gpt2-full-checkpointing llama-lora llama-qlora-nf4 >"$out/plan.md" 2>"$out/plan.err" ||
        fail plan-vs-measured "$out/plan.err"
      ;;
    *) echo "gpu-perf: unknown section $section" >&2; exit 2 ;;
  esac
done

# The runs against their peers: tokens/s, the ratio, MFU (of the measured matmul peak) and peak
# memory.
"$python" - "$log" <<'PY' | tee "$out/perf.md"
import json, sys
runs = {r["case"]: r for r in map(json.loads, open(sys.argv[1]))}
print("| case | tokens/s | vs peer | MFU | peak memory (MB) |")
print("| --- | ---: | ---: | ---: | ---: |")
for case, r in runs.items():
    peer = None if case.endswith("-peer") else runs.get(case.split("-")[0] + "-peer")
    ratio = f"{r['tokens_per_sec'] / peer['tokens_per_sec']:.2f}x" if peer else ""
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
    print(f"| {case} | {r['tokens_per_sec']:,.0f} | {ratio} | {mfu} | "
          f"{r.get('peak_memory_mb') or 0:,.0f} |")
PY
cat "$out/plan.md" 2>/dev/null
for table in "$out"/profile-*.md; do [[ -f $table ]] && echo "$(basename "$table"):" && head -n 14 "$table"; done
[[ ! -s $out/failures.txt ]]
