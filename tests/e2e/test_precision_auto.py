"""train.precision: auto (the default): on the CPU the faster of fp32 and bf16 by a probe at
start-up, logged with its measurements and recorded in the run's config.json; a resumed run keeps
the precision of the run it continues; an explicit precision is honoured without a probe."""
import json
import re

import pytest

from conftest import make_tiny_model, shakespeare, step_losses

PROBE = re.compile(r"train\.precision: auto: (fp32|bf16) on this CPU: a (\d+)x(\d+)x(\d+) linear "
                   r"layer's forward and backward took ([\d.]+) ms in fp32 and ([\d.]+) ms in bf16")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("precision") / "model")


@pytest.fixture
def tree(tmp_path, model):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    return {"model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32},
            "run": {"output_dir": str(tmp_path / "run"), "threads": 1},
            "train": {"max_steps": 6, "micro_batch_size": 4, "lr": 1e-3, "schedule": "constant"},
            "eval": {"every_steps": 0}, "checkpoint": {"every_steps": 3},
            "logging": {"every_steps": 1, "tensorboard": False}}


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def test_auto_is_the_default_and_the_cpu_probe_decides(lmtune, tmp_path, tree):
    result = lmtune("train", write(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    found = PROBE.search(log)
    assert found, log
    chosen, tokens, width, out = found.group(1), *map(int, found.group(2, 3, 4))
    fp32_ms, bf16_ms = map(float, found.group(5, 6))
    # Shaped like the model's MLP on one micro-batch: 4 x 32 tokens, 32 wide, 4x up.
    assert (tokens, width, out) == (128, 32, 128)
    assert chosen == ("bf16" if fp32_ms > 1.1 * bf16_ms else "fp32")
    assert f"precision {chosen}" in result.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["precision"] == chosen


@pytest.mark.parametrize("explicit", ["fp32", "bf16"])
def test_a_resumed_auto_run_keeps_the_precision_it_was_started_with(lmtune, tmp_path, tree,
                                                                      explicit):
    # The uninterrupted run, in an explicit precision.
    tree["train"]["precision"] = explicit
    whole = lmtune("train", write(tmp_path / "whole.json", tree))
    assert whole.returncode == 0, whole.stderr
    assert "train.precision: auto" not in (tmp_path / "run" / "train.log").read_text()
    # The same run stopped after step 3, then resumed with precision: auto.
    tree["run"]["output_dir"] = str(tmp_path / "parts")
    tree["train"]["max_steps"] = 3
    first = lmtune("train", write(tmp_path / "first.json", tree))
    assert first.returncode == 0, first.stderr
    del tree["train"]["precision"]
    tree["train"]["max_steps"] = 6
    resumed = lmtune("train", write(tmp_path / "resumed.json", tree), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"train.precision: auto: {explicit}, as the run being resumed chose" in resumed.stderr
    assert step_losses(tmp_path / "parts") == step_losses(tmp_path / "run")


def test_plan_names_the_precision_auto_chose(lmtune, tmp_path, tree):
    result = lmtune("plan", write(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    assert re.search(r", auto: (fp32|bf16); micro-batch 4 x 32 tokens", result.stdout), result.stdout
