"""Trainer paths a user takes that other files do not cover: a NaN step is skipped and a streak of
them stops the run, SIGTERM saves and exits 130, a second signal exits at once, `--resume DIR` from
a chosen checkpoint, `eval --model`, `train.epochs`, `eval.patience`, `checkpoint.every_minutes`
and `max_grad_norm: 0`."""
import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_model, shakespeare, signal_when, step_losses


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("paths") / "model")


@pytest.fixture
def tree(tmp_path, model):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    (tmp_path / "valid.txt").write_text(shakespeare(24_000)[20_000:])
    return {"run": {"output_dir": str(tmp_path / "run"), "threads": 1, "seed": 5},
            "model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32},
            "train": {"max_steps": 4, "micro_batch_size": 2, "precision": "fp32", "lr": 3e-3,
                      "schedule": "constant", "warmup_steps": 0},
            "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 1, "keep_last": 100},
            "logging": {"every_steps": 1, "tensorboard": False}}


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def checkpoint(run, step):
    return run / "checkpoints" / f"step-{step:08d}"


def weights(directory):
    return load_file(directory / "model.safetensors")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def adam_steps(directory):
    """The AdamW step counts of a checkpoint's optimizer state, one per trainable tensor."""
    state = load_file(directory / "optimizer.safetensors")
    return {float(v) for k, v in state.items() if k.endswith(".step")}


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("lmtune error: ")]


def test_a_nan_step_is_skipped_leaving_weights_and_adam_steps_unchanged(lmtune, tmp_path, tree):
    result = lmtune("train", write(tmp_path / "c.json", tree), env={"LMTUNE_TEST_NAN_STEPS": "3"})
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert same(weights(checkpoint(run, 3)), weights(checkpoint(run, 2)))
    assert not same(weights(checkpoint(run, 4)), weights(checkpoint(run, 3)))
    assert adam_steps(checkpoint(run, 2)) == adam_steps(checkpoint(run, 3)) == {2.0}
    assert adam_steps(checkpoint(run, 4)) == {3.0}
    losses = step_losses(run)
    assert losses[3] is None or not math.isfinite(losses[3]), losses
    assert all(math.isfinite(losses[s]) for s in (1, 2, 4)), losses


def test_a_streak_of_nan_steps_stops_the_run_with_exit_1_and_keeps_the_checkpoints(
        lmtune, tmp_path, tree):
    tree["train"].update(max_steps=8, max_nonfinite_steps=2)
    result = lmtune("train", write(tmp_path / "c.json", tree),
                    env={"LMTUNE_TEST_NAN_STEPS": "3,4,5"})
    assert result.returncode == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert "steps 3 to 4" in line and "train.max_nonfinite_steps: 2" in line, line
    run = tmp_path / "run"
    assert not (run / "final").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert saved[0] == 1 and saved[-1] <= 4, saved
    # Every checkpoint from step 2 on holds step 2's weights: nothing NaN reached a checkpoint.
    for step in saved[1:]:
        assert (checkpoint(run, step) / "COMPLETE").exists()
        assert same(weights(checkpoint(run, step)), weights(checkpoint(run, 2))), step


def test_sigterm_saves_a_checkpoint_and_exits_130_and_a_resume_finishes(lmtune, tmp_path, tree):
    tree["train"]["max_steps"] = 400
    tree["checkpoint"]["every_steps"] = 0
    path = write(tmp_path / "c.json", tree)
    process = signal_when(["train", path], "step 3/", signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    [line] = [l for l in stderr.splitlines() if "interrupted at step" in l]
    step = int(line.split("interrupted at step ")[1].split(":")[0])
    assert step >= 3 and (checkpoint(tmp_path / "run", step) / "COMPLETE").exists()
    tree["train"]["max_steps"] = step + 2
    resumed = lmtune("train", write(tmp_path / "c.json", tree), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {step} " in resumed.stderr
    assert max(step_losses(tmp_path / "run")) == step + 2


def test_a_second_signal_exits_at_once_without_saving(tmp_path, tree):
    # Steps long enough (16 x 64 tokens) that the second signal lands inside the step the first
    # one lets finish.
    tree["train"].update(max_steps=400, micro_batch_size=16)
    tree["data"]["seq_len"] = 64
    tree["checkpoint"]["every_steps"] = 0
    path = write(tmp_path / "c.json", tree)
    process = signal_when(["train", path], "step 2/", signal.SIGTERM)
    # Two signals sent together may reach the process as one: wait until the first is handled.
    for line in process.stderr:
        if "stopping after this step" in line:
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "second signal, exiting without saving" in stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_resume_from_a_chosen_checkpoint_directory_retrains_from_there(lmtune, tmp_path, tree):
    path = write(tmp_path / "c.json", tree)
    first = lmtune("train", path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    original_final, original_losses = weights(run / "final"), step_losses(run)
    again = lmtune("train", path, "--resume", checkpoint(run, 2))
    assert again.returncode == 0, again.stderr
    assert f"resuming from {checkpoint(run, 2)} at step 2" in again.stderr
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("rerun")] == [3, 4]
    assert step_losses(run) == original_losses
    assert same(weights(run / "final"), original_final)


def test_eval_model_gives_the_loss_training_logged_for_that_model(lmtune, tmp_path, tree):
    tree["data"]["validation"] = str(tmp_path / "valid.txt")
    tree["eval"] = {"every_steps": 2, "max_batches": 3}
    path = write(tmp_path / "c.json", tree)
    trained = lmtune("train", path)
    assert trained.returncode == 0, trained.stderr
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    for model, step in ((tmp_path / "run" / "final", 4), (checkpoint(tmp_path / "run", 2), 2)):
        result = lmtune("eval", path, "--model", model)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["loss"] == pytest.approx(logged[step], rel=1e-6)
    # And the untrained model scores worse than the trained one.
    base = json.loads(lmtune("eval", path, "--model", tree["model"]["path"]).stdout)["loss"]
    assert base > logged[4]


def test_epochs_set_the_number_of_steps(lmtune, tmp_path, tree):
    (tmp_path / "train.txt").write_text(shakespeare(4_000))
    tree["train"].update(epochs=2, max_steps=1, grad_accum_steps=2)
    tree["checkpoint"]["every_steps"] = 0
    path = write(tmp_path / "c.json", tree)
    windows = json.loads(lmtune("prepare", path).stdout)["train_windows"]
    result = lmtune("train", path)
    assert result.returncode == 0, result.stderr
    steps = max(step_losses(tmp_path / "run"))
    assert f"train.epochs=2 makes {steps} optimizer steps" in result.stderr
    # Checked against what the run did rather than the trainer's formula: the last checkpoint's
    # batcher stands at the start of a third epoch, and the run read every window that fits in
    # whole micro-batches of 2 twice (4 windows of 32 tokens a step).
    state = json.loads((checkpoint(tmp_path / "run", steps) / "trainer_state.json").read_text())
    assert state["data_position"] == {"epoch": 2, "index": 0}
    assert state["tokens_seen"] == 2 * (windows - windows % 2) * 32 == steps * 4 * 32


def test_patience_stops_early_when_the_validation_loss_stops_improving(lmtune, tmp_path, tree):
    # A learning rate far too high makes the validation loss worse after the first steps.
    tree["data"]["validation"] = str(tmp_path / "valid.txt")
    tree["train"].update(max_steps=40, lr=1.0)
    tree["eval"] = {"every_steps": 1, "max_batches": 2, "patience": 2}
    tree["checkpoint"]["every_steps"] = 0
    result = lmtune("train", write(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stopped_early"] and summary["steps"] < 40, summary
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Step 0's evaluation (before training) is logged but is no candidate for the best.
    evals = [r["eval_loss"] for r in records if "eval_loss" in r and r["step"] > 0]
    best = min(range(len(evals)), key=evals.__getitem__)
    assert len(evals) - 1 - best == 2, evals  # stopped two evaluations after the best
    assert f"early stop at step {summary['steps']}: no improvement in 2 evaluations" in result.stderr


def test_every_minutes_saves_checkpoints_on_time_alone(lmtune, tmp_path, tree):
    tree["checkpoint"] = {"every_steps": 0, "every_minutes": 1e-6, "keep_last": 100}
    tree["train"]["max_steps"] = 3
    result = lmtune("train", write(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert saved == [f"step-{s:08d}" for s in (1, 2, 3)]


def test_max_grad_norm_zero_turns_clipping_off(lmtune, tmp_path, tree):
    tree["checkpoint"]["every_steps"] = 0
    losses, norms = {}, {}
    for clip in (0, 1e9, 1e-3):
        tree["run"]["output_dir"] = str(tmp_path / f"run-{clip}")
        tree["train"]["max_grad_norm"] = clip
        result = lmtune("train", write(tmp_path / "c.json", tree))
        assert result.returncode == 0, result.stderr
        records = [json.loads(l) for l in
                   (tmp_path / f"run-{clip}" / "metrics.jsonl").read_text().splitlines()]
        losses[clip] = [r["loss"] for r in records if "loss" in r]
        norms[clip] = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert losses[0] == losses[1e9]
    assert losses[1e-3][0] == losses[0][0] and losses[1e-3][1:] != losses[0][1:]
    assert norms[0][0] > 1e-3  # so a 1e-3 clip really changed the first update
