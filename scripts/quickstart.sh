#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and fine-tunes the bundled default
# model (assets/default-model) on the bundled task (assets/quickstart: word-by-word English to
# Spanish glosses), then prints validation loss and exact-match accuracy on held-out prompts before
# and after, and a sample generation. The run goes to runs/quickstart (replaced on each run).
# Its measured figures go to runs/quickstart/measured.json; with --record they also replace
# docs/quickstart-measured.json, from which scripts/render_quickstart.py rewrites README.md's
# figures.
#
# Usage: scripts/quickstart.sh [--record]
set -euo pipefail

record=0
case "${1:-}" in
  "") ;;
  --record) record=1 ;;
  *) echo "usage: scripts/quickstart.sh [--record]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${LMTUNE_BUILD_DIR:-$root/build}
lmtune=$build_dir/lmtune
run=$root/runs/quickstart
heldout=$root/assets/quickstart/heldout.jsonl

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$build_dir" >/dev/null
"$lmtune" --version
now() { date +%s.%N; }
script_start=$(now)  # after the build: the figure is the script's time once built

if [[ -e "$run" ]]; then
  echo "quickstart: replacing the previous run in $run"
  rm -rf "$run"
fi
mkdir -p "$run"

generate() {  # MODEL_DIR OUT_FILE: greedy completions of the held-out prompts
  "$lmtune" generate --model "$1" --prompts-file "$heldout" --temperature 0 --max-new-tokens 32 \
    --threads 2 2>/dev/null >"$2"
}

echo "quickstart: scoring the base model on $(wc -l <"$heldout") held-out prompts"
generate "$root/assets/default-model" "$run/before.jsonl"
train_start=$(now)
# stderr is kept too: its "device cpu, 2 thread(s), ..." line says where training ran.
"$lmtune" train "$root/configs/quickstart.json" 2> >(tee "$run/train.stderr" >&2) |
  tee "$run/summary.json"
train_end=$(now)
generate "$run/final" "$run/after.jsonl"

python3 - "$root" "$run" "$heldout" "$train_start" "$train_end" "$script_start" "$(now)" \
  "$("$lmtune" --version | sed -n 's/.*(git \(.*\))/\1/p')" <<'PY'
import datetime, json, os, re, subprocess, sys
root, run, heldout = sys.argv[1:4]
train_start, train_end, script_start, script_end = map(float, sys.argv[4:8])
revision = sys.argv[8] or "unknown"
summary = json.load(open(f"{run}/summary.json"))
run_config = json.load(open(f"{run}/config.json"))  # the run's resolved config
score = lambda f: json.loads(subprocess.check_output(
    [sys.executable, f"{root}/scripts/score_task.py", heldout, f"{run}/{f}"]))
before, after = score("before.jsonl"), score("after.jsonl")
sample = json.loads(open(f"{run}/after.jsonl").readline())
train_seconds = train_end - train_start
print(f"\nfine-tuning took {train_seconds:.0f} s ({summary['steps']} steps)")
print(f"validation loss:         {summary['eval_before']['loss']:.3f} -> {summary['eval_after']['loss']:.3f}")
print(f"held-out exact match:    {before['exact_match']:.0%} -> {after['exact_match']:.0%} "
      f"({before['correct']} -> {after['correct']} of {after['total']})")
print(f"sample:  {sample['prompt']}{sample['completion']}")

# The machine: the device and threads as lmtune train reported them, the CPU as lscpu names it.
device = re.search(r"device (\S+), (\d+) thread", open(f"{run}/train.stderr").read())
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = re.search(r"^Model name:\s*(.+)$", cpu, re.M)
record = {
    "about": "What scripts/quickstart.sh measured; scripts/render_quickstart.py writes README.md's "
             "quickstart figures from this file. Replace it by running "
             "scripts/quickstart.sh --record.",
    "date": datetime.date.today().isoformat(),
    "machine": f"{os.cpu_count()}-core {model.group(1).strip() if model else 'CPU'}",
    "device": "CPU" if not device or device.group(1) == "cpu" else f"GPU ({device.group(1)})",
    "threads": int(device.group(2)) if device else run_config["run"]["threads"],
    "lmtune_revision": revision,
    "config": "configs/quickstart.json",
    "steps": summary["steps"],
    "train_seconds": round(train_seconds, 1),
    "script_seconds": round(script_end - script_start, 1),
    "eval_loss_before": summary["eval_before"]["loss"],
    "eval_loss_after": summary["eval_after"]["loss"],
    "heldout_total": after["total"],
    "heldout_correct_before": before["correct"],
    "heldout_correct_after": after["correct"],
    "source": "scripts/quickstart.sh --record: train_seconds is the wall time of `lmtune train`, "
              "script_seconds that of the whole script after install-deps.sh and build.sh.",
}
with open(f"{run}/measured.json", "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
PY

if ((record)); then
  cp "$run/measured.json" "$root/docs/quickstart-measured.json"
  python3 "$root/scripts/render_quickstart.py"
fi
