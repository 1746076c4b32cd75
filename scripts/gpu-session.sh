#!/usr/bin/env bash
# One bounded call's worth of GPU checks, for a lent GPU machine where nothing can be installed
# and at most ten minutes and a few files come back: unpacks the carried Debian build
# dependencies, builds lmtune and its cuda tests (scripts/gpu-check.sh), runs the GoogleTest cuda
# cases, times the speed switches of docs/benchmarks.md ("Speed switches") with `lmtune bench`,
# ranks a profile of the GPT-2 and Llama steps by kernel (profile.md), then runs the end-to-end
# cuda tests in the time left. Every stage has its own time limit, so a slow one cannot take the
# others' results with it; each writes one log into OUT as soon as it ends.
#
# Usage: OUT=DIR scripts/gpu-session.sh
# Environment: DEBS (the .deb files, default .devdeps/debs), SHARED (the shared test data,
#              default .devdeps/shared), BUDGET (seconds for everything, default 570),
#              TORCH_CUDA_ARCH_LIST (default 9.0: the H100/H200 alone, for a shorter build).
# The .deb files are made on a Debian 12 machine with `apt-get download` of the libraries of
# scripts/install-deps.sh and what they need (libpcre2-dev, libicu-dev, libsentencepiece-dev,
# nlohmann-json3-dev, libyaml-cpp-dev, libcli11-dev, libgloo-dev, libspdlog-dev, libfmt-dev,
# libgtest-dev, pkgconf and their runtime libraries); the shared data is ../shared/data.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:?set OUT to the folder that comes back}
debs=${DEBS:-$root/.devdeps/debs}
shared=${SHARED:-$root/.devdeps/shared}
budget=${BUDGET:-570}
build=/tmp/lmtune-gpu
deps=/tmp/lmtune-deps
start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
mkdir -p "$out" "$deps"

left() { echo $((budget - ($(date +%s) - start))); }
stage() { echo "== $1 at $(($(date +%s) - start)) s"; }

stage unpack
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$deps"; done

stage build
OUT=/tmp/lmtune-check LMTUNE_DEPS_ROOT=$deps LMTUNE_SHARED_DIR=$shared GPU_BENCH=0 GPU_TESTS=0 \
  BUILD_TARGETS="lmtune lmtune_cuda_tests" timeout 330 "$root/scripts/gpu-check.sh" "$build" \
  >"$out/build.log" 2>&1
built=$?
tail -n 3 "$out/build.log"
for log in configure build; do tail -n 60 "/tmp/lmtune-check/$log.log" >>"$out/build.log" 2>/dev/null; done
((built == 0)) || { echo "gpu-session: the build failed (build.log)"; exit 1; }
export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

stage "cuda unit tests"
timeout 120 "$build/tests/lmtune_cuda_tests" >"$out/cuda-unit.log" 2>&1
echo "lmtune_cuda_tests exit $?"
grep -E "^\[  (PASSED|FAILED) |FAILED TEST" "$out/cuda-unit.log" | head -40

stage bench
gpt2=(--arch gpt2 --n-layer 12 --n-head 12 --n-embd 768 --vocab 50257 --seq 1024 --batch 16)
llama=(--arch llama --n-layer 16 --n-head 32 --n-kv-head 8 --n-embd 2048 --mlp-width 8192
       --vocab 128256 --seq 1024 --batch 4)
common=(--device cuda --precision bf16 --steps 10 --warmup 3 --threads 1)
bench() {  # case name, then the bench options
  local name=$1 line
  shift
  ((($(left)) > 60)) || { echo "$name: skipped, no time left"; return; }
  line=$(timeout 60 "$build/lmtune" bench "${common[@]}" "$@" 2>>"$out/bench.err" | tail -n 1)
  if [[ $line == "{"* ]]; then
    python3 -c 'import json, sys; r = json.loads(sys.argv[2]); r["case"] = sys.argv[1]
print(json.dumps(r))' "$name" "$line" | tee -a "$out/bench.jsonl"
  else
    echo "$name: failed" | tee -a "$out/bench.err"
  fi
}
bench gpt2 "${gpt2[@]}"
bench gpt2-unpadded "${gpt2[@]}" --vocab-padding 1
bench gpt2-fused-kernels "${gpt2[@]}" --fused-kernels
bench gpt2-fused-clipping "${gpt2[@]}" --fused-clipping
bench gpt2-cudnn-attention "${gpt2[@]}" --attention-backend cudnn
bench gpt2-fused-loss "${gpt2[@]}" --fused-loss
levers=(--fused-kernels --fused-clipping --attention-backend cudnn --fused-loss)
bench gpt2-all "${gpt2[@]}" "${levers[@]}"
bench llama "${llama[@]}"
bench llama-fused-loss "${llama[@]}" --fused-loss
bench llama-all "${llama[@]}" "${levers[@]}"
python3 - "$out/bench.jsonl" <<'PY' 2>/dev/null | tee "$out/bench.md"
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
base = {r["arch"]: r["tokens_per_sec"] for r in runs if r["case"] in ("gpt2", "llama")}
print("| case | tokens/s | vs its base | MFU | peak memory (MB) |")
print("| --- | ---: | ---: | ---: | ---: |")
for r in runs:
    ratio = r["tokens_per_sec"] / base[r["arch"]] if r["arch"] in base else 0
    print(f"| {r['case']} | {r['tokens_per_sec']:,.0f} | {ratio:.3f}x | {100 * r['mfu']:.1f}% | "
          f"{r['peak_memory_mb']:,.0f} |")
PY

stage profile
# The padded GPT-2 step and the Llama step ranked by kernel: one table each, appended to one file.
for name in gpt2 llama; do
  ((($(left)) > 90)) || { echo "profile $name: skipped, no time left"; break; }
  declare -n shape=$name
  timeout 60 "$build/lmtune" bench "${common[@]}" "${shape[@]}" --steps 3 \
    --profile "/tmp/profile-$name" --profile-steps 3 >/dev/null 2>>"$out/bench.err" &&
    { echo "## $name"; python3 "$root/scripts/profile_table.py" "/tmp/profile-$name/trace.json" \
      --top 25; } >>"$out/profile.md" 2>>"$out/bench.err" || echo "profile $name: failed"
  unset -n shape
done

stage "end-to-end cuda tests"
if (($(left) > 30)); then
  (cd "$build" && timeout "$(left)" ctest -L cuda -E lmtune_cuda_tests --output-on-failure \
    --timeout 300) >"$out/cuda-e2e.log" 2>&1
  echo "e2e exit $?"
  grep -E "tests passed|Passed|Failed|\*\*\*" "$out/cuda-e2e.log" | head -20
  grep -h "largest weight difference" "$build"/Testing/Temporary/LastTest.log 2>/dev/null || true
else
  echo "end-to-end cuda tests: skipped, no time left"
fi
stage done
