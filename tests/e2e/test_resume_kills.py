"""Resume is exact from any moment: runs killed with SIGKILL (as a power cut or the OOM killer
would) at chosen points and at seeded random moments, then resumed with `--resume` until they
finish, log the same losses, gradient norms and evaluations and end with bit-identical weights as
the uninterrupted run.

The run has what makes resuming hard: dropout and activation checkpointing (random generators),
bf16, gradient accumulation, an epoch boundary, evaluations with early stopping
(`eval.patience`), logging intervals longer than one step (the running loss), retention that
deletes at every save, and time-based checkpoints (`checkpoint.every_minutes`), which save at
steps that differ from run to run. The chosen points use the test hook LMTUNE_TEST_KILL_AT
(include/lmtune/core/test_hooks.h, docs/checkpoints.md)."""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import LMTUNE, make_tiny_model, shakespeare

pytestmark = pytest.mark.slow  # a dozen runs of 18 steps, killed and resumed

MAX_STEPS = 18


def config(root, output):
    return {"run": {"output_dir": str(output), "threads": 1, "seed": 21},
            "model": {"path": str(root / "model"), "gradient_checkpointing": True},
            "data": {"train": str(root / "train.txt"), "validation": str(root / "valid.txt"),
                     "seq_len": 32},
            # lr 0.02 overfits 35 windows: the validation loss is best at step 8 and worse at
            # 10, 12 and 14, where patience 3 stops the run.
            "train": {"max_steps": MAX_STEPS, "micro_batch_size": 2, "grad_accum_steps": 2,
                      "precision": "bf16", "lr": 0.02, "schedule": "constant", "warmup_steps": 0},
            "eval": {"every_steps": 2, "max_batches": 2, "patience": 3},
            # every_minutes: 0.004 = 0.24 s, a save every few steps wherever the clock says.
            "checkpoint": {"every_steps": 4, "every_minutes": 0.004, "keep_last": 1},
            "logging": {"every_steps": 3, "tensorboard": False}}


def launch(path, resume, env=None):
    args = [LMTUNE, "train", str(path)] + (["--resume"] if resume else [])
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def has_checkpoint(run):
    return any((d / "COMPLETE").exists() for d in (run / "checkpoints").glob("step-*")) \
        if (run / "checkpoints").is_dir() else False


def records(run):
    """The last record of each (kind, step) in metrics.jsonl: a re-run step replaces its first run,
    without the fields that measure time."""
    out = {}
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        kind = "eval" if "eval_loss" in record else "train"
        out[(kind, record["step"])] = {k: v for k, v in record.items() if k not in (
            "tokens_per_sec", "elapsed_s", "rerun", "peak_memory_mb")}
    return out


def weights(run):
    return load_file(run / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its directory, records, final weights, and how long it took."""
    root = tmp_path_factory.mktemp("kills")
    (root / "train.txt").write_text(shakespeare(4_500))
    (root / "valid.txt").write_text(shakespeare(9_000)[7_000:])
    make_tiny_model(root / "model", dropout=0.1)
    path = root / "reference.json"
    path.write_text(json.dumps(config(root, root / "reference")))
    windows = json.loads(subprocess.run([LMTUNE, "prepare", str(path)], capture_output=True,
                                        text=True, check=True).stdout)["train_windows"]
    start = time.monotonic()
    result = subprocess.run([LMTUNE, "train", str(path)], capture_output=True, text=True)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = root / "reference"
    return {"root": root, "run": run, "records": records(run), "weights": weights(run),
            "seconds": seconds, "steps": summary["steps"], "stopped_early": summary["stopped_early"],
            "windows": windows}


def finish(path, run, env=None):
    """Runs to the end, resuming when a complete checkpoint exists (else starting afresh, as a
    user would after a kill before the first save); returns the last process's stderr."""
    process = launch(path, resume=has_checkpoint(run), env=env)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def assert_same_as_reference(reference, run):
    assert records(run) == reference["records"]
    got, expected = weights(run), reference["weights"]
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_the_reference_crosses_an_epoch_and_stops_early(reference):
    # The data holds fewer windows than the run takes (4 a step), so it runs into a second epoch
    # before patience ends it, short of max_steps.
    assert epoch_boundary_step(reference) < reference["steps"], reference["windows"]
    assert reference["stopped_early"] and reference["steps"] < MAX_STEPS, reference["steps"]
    evals = {step: r["eval_loss"] for (kind, step), r in reference["records"].items()
             if kind == "eval" and step > 0}
    best = min(evals, key=evals.get)
    assert reference["steps"] - best == 2 * 3, evals  # three evaluations without improvement


def epoch_boundary_step(reference):
    micro_batches = reference["windows"] // 2  # micro-batches of 2 windows in an epoch
    return micro_batches // 2 + 1  # the first step that takes windows of the second epoch


CHOSEN = {
    # name: (kill points of successive runs, the last of which runs to the end)
    "during an evaluation": ["eval:6"],
    "halfway through a save": ["save:8"],
    "right after a checkpoint's rename": ["rename:8"],
    "during retention (its first deletion)": ["retention:*"],
    "right after a resume, then after its first step": ["step:7", "resume:*", "step:*"],
    "across the epoch boundary": ["step:EPOCH"],
    "during the evaluation that stops early": ["eval:LAST"],
    # The early stop's checkpoint is complete: the resume must finish, not train on.
    "after the early stop's checkpoint": ["rename:LAST"],
}


@pytest.mark.parametrize("name", list(CHOSEN))
def test_a_kill_at_a_chosen_point_resumes_bit_exactly(reference, tmp_path, name):
    run = tmp_path / "run"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(reference["root"], run)))
    for point in CHOSEN[name]:
        point = point.replace("EPOCH", str(epoch_boundary_step(reference)))
        point = point.replace("LAST", str(reference["steps"]))
        if point == "step:*":  # the first step after the resume
            resumed_from = max(int(d.name.split("-")[1]) for d in (run / "checkpoints").glob("step-*")
                               if (d / "COMPLETE").exists())
            point = f"step:{resumed_from + 1}"
        process = launch(path, resume=has_checkpoint(run), env={"LMTUNE_TEST_KILL_AT": point})
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, (point, stderr)
    code, stderr = finish(path, run)
    assert code == 0, stderr
    assert_same_as_reference(reference, run)


def test_kills_at_random_moments_resume_bit_exactly(reference, tmp_path):
    rng = random.Random(18)
    run = tmp_path / "run"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(reference["root"], run)))
    # SIGKILL at random moments until four fell inside runs, each run resumed from what the last
    # left. A run that ends before two kills landed (the moments are drawn against the reference's
    # time, which a loaded machine stretches) must still equal the reference; it is then started
    # over, so that at least two kills are always tested.
    kills, finished = 0, False
    for _ in range(30):
        process = launch(path, resume=has_checkpoint(run))
        try:
            _, stderr = process.communicate(timeout=rng.uniform(0.2, reference["seconds"]))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            kills += 1
            if kills == 4:
                break
            continue
        assert process.returncode == 0, stderr
        finished = True
        if kills >= 2:
            break
        assert_same_as_reference(reference, run)
        shutil.rmtree(run)
        finished = False
    if not finished:
        code, stderr = finish(path, run)
        assert code == 0, stderr
    assert kills >= 2  # the moments fell inside runs
    assert_same_as_reference(reference, run)
