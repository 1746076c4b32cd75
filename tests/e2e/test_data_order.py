"""`data.order`: a curriculum run trains and logs its pacing in metrics.jsonl, resumes from a mid
checkpoint with bit-identical losses and weights, reuses the token cache of a shuffled run, and
cannot be switched on resume; `sequential` ignores the seed; the `loss` score is computed once by
`prepare` (the losses transformers gives), reused by later runs and recomputed for another model."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_model, shakespeare, step_losses


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("order") / "model")


@pytest.fixture
def tree(tmp_path, model):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    return {"run": {"output_dir": str(tmp_path / "run"), "threads": 1, "seed": 5},
            "model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32, "order": "curriculum",
                     "curriculum_start_fraction": 0.25, "curriculum_pace_steps": 4},
            "train": {"max_steps": 6, "micro_batch_size": 2, "grad_accum_steps": 2,
                      "precision": "fp32", "lr": 3e-3, "schedule": "constant",
                      "warmup_steps": 0},
            "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 1, "keep_last": 100},
            "logging": {"every_steps": 1, "tensorboard": False}}


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b):
    a, b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_curriculum_run_trains_and_logs_the_windows_it_draws_from(lmtune, tmp_path, tree):
    result = lmtune("train", write(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    assert "data.order: curriculum:" in result.stderr
    assert "the easiest 25% are available at step 0, all of them from step 4" in result.stderr
    logged = [r for r in records(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    windows = [r["curriculum_windows"] for r in logged]
    # Logged after step s, the windows the next step draws from: 25% + 75% * s/4 of them, then all.
    total = windows[-1]
    assert total > 100
    expected = [max(2, -(-total * (4 + 3 * s) // 16)) if s < 4 else total for s in range(1, 7)]
    assert windows == expected
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in logged)


def test_a_curriculum_run_resumed_from_a_mid_checkpoint_is_bit_identical(lmtune, tmp_path, tree):
    path = write(tmp_path / "c.json", tree)
    first = lmtune("train", path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    losses = step_losses(run)
    final = run / "final"
    (tmp_path / "final-first").mkdir()
    (tmp_path / "final-first" / "model.safetensors").write_bytes(
        (final / "model.safetensors").read_bytes())
    again = lmtune("train", path, "--resume", run / "checkpoints" / "step-00000002")
    assert again.returncode == 0, again.stderr
    assert [r["step"] for r in records(run) if r.get("rerun")] == [3, 4, 5, 6]
    assert step_losses(run) == losses
    assert same_weights(final, tmp_path / "final-first")


def test_the_order_reuses_the_cache_and_cannot_change_on_resume(lmtune, tmp_path, tree):
    tree["data"]["order"] = "shuffle"
    tree["train"]["max_steps"] = 2
    shuffled = lmtune("train", write(tmp_path / "s.json", tree))
    assert shuffled.returncode == 0, shuffled.stderr
    tree["data"]["order"] = "curriculum"
    tree["train"]["max_steps"] = 4
    result = lmtune("train", write(tmp_path / "c.json", tree), "--resume")
    assert result.returncode == 2
    assert 'data.order: "shuffle" -> "curriculum"' in result.stderr
    tree["run"]["output_dir"] = str(tmp_path / "run2")
    fresh = lmtune("train", write(tmp_path / "c2.json", tree))
    assert fresh.returncode == 0, fresh.stderr
    assert "token cache: reusing" in fresh.stderr


def test_sequential_order_differs_from_the_shuffle_and_repeats_itself(lmtune, tmp_path, tree):
    tree["data"]["order"] = "sequential"
    assert lmtune("train", write(tmp_path / "a.json", tree)).returncode == 0
    sequential = step_losses(tmp_path / "run")
    tree["run"]["output_dir"] = str(tmp_path / "run-seed")
    tree["run"]["seed"] = 6
    assert lmtune("train", write(tmp_path / "b.json", tree)).returncode == 0
    tree["data"]["order"] = "shuffle"
    tree["run"]["output_dir"] = str(tmp_path / "run-shuffle")
    assert lmtune("train", write(tmp_path / "c.json", tree)).returncode == 0
    assert step_losses(tmp_path / "run-shuffle") != sequential
    # The seed changes no data order in sequential (the model and dropout are the same here).
    assert step_losses(tmp_path / "run-seed") == sequential


def score_files(cache):
    return sorted(cache.rglob("train.loss-*.f64"))


def hf_window_losses(cache_dir, model_dir, seq_len):
    """Per window of the cache's train split, the mean cross-entropy per target token that
    transformers' GPT-2 gives it."""
    import numpy as np
    from transformers import GPT2LMHeadModel

    tokens = np.fromfile(cache_dir / "train.tokens", dtype="<u4").astype(np.int64)
    mask = np.fromfile(cache_dir / "train.mask", dtype=np.uint8)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    losses = []
    with torch.no_grad():
        for w in range((len(tokens) - 1) // seq_len):
            window = torch.from_numpy(tokens[w * seq_len:(w + 1) * seq_len + 1])
            keep = torch.from_numpy(mask[w * seq_len + 1:(w + 1) * seq_len + 1]).bool()
            logits = model(window[None, :-1]).logits[0]
            nll = torch.nn.functional.cross_entropy(logits, window[1:], reduction="none")
            losses.append(float(nll[keep].mean()) if keep.any() else 0.0)
    return losses


def test_loss_scores_are_computed_once_in_prepare_and_a_new_model_invalidates_them(
        lmtune, tmp_path, tree, model, machine_cache):
    import numpy as np

    tree["data"]["curriculum_score"] = "loss"
    tree["train"]["max_steps"] = 2
    path = write(tmp_path / "c.json", tree)
    first = lmtune("prepare", path)
    assert first.returncode == 0, first.stderr
    assert "curriculum: scoring" in first.stderr
    (scores,) = score_files(machine_cache)
    report = json.loads(first.stdout.strip().splitlines()[-1])
    losses = np.fromfile(scores, dtype="<f8")
    assert len(losses) == report["train_windows"]
    # The starting model's losses, as transformers computes them.
    expected = hf_window_losses(scores.parent, model, 32)
    assert np.allclose(losses, expected, rtol=1e-5, atol=1e-4)
    assert losses.std() > 0

    again = lmtune("prepare", path)
    assert again.returncode == 0, again.stderr
    assert "curriculum: scoring" not in again.stderr
    assert "reusing the starting model's losses" in again.stderr
    assert score_files(machine_cache) == [scores]

    trained = lmtune("train", path)
    assert trained.returncode == 0, trained.stderr
    assert "reusing the starting model's losses" in trained.stderr
    assert "ranked by the starting loss" in trained.stderr

    other = make_tiny_model(tmp_path / "other-model", seed=1)
    tree["model"]["path"] = str(other)
    changed = lmtune("prepare", write(tmp_path / "other.json", tree))
    assert changed.returncode == 0, changed.stderr
    assert "curriculum: scoring" in changed.stderr
    assert len(score_files(machine_cache)) == 2
    assert np.fromfile(scores, dtype="<f8").tolist() == losses.tolist()
