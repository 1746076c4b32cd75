"""Shared fixtures of the end-to-end tests: the real `lmtune` binary and a runner for it."""
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

LMTUNE = os.environ.get("LMTUNE_BIN", str(Path(__file__).parents[2] / "build" / "lmtune"))
SOURCE_DIR = Path(os.environ.get("LMTUNE_SOURCE_DIR", Path(__file__).parents[2]))
SHARED_DIR = Path(os.environ.get("LMTUNE_SHARED_DIR", SOURCE_DIR.parent / "shared"))

# lmtune keeps token caches in a per-machine directory; tests never share the user's, and each
# test gets its own (machine_cache below) so that what one caches another does not reuse.
os.environ["LMTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmtune-test-cache-")


def pytest_configure(config):
    # tests/CMakeLists.txt reads these marks (a whole file's `pytestmark = pytest.mark.slow`, or a
    # test's `@pytest.mark.slow` line) into the CTest label `slow`.
    config.addinivalue_line(
        "markers", "slow: long training loops, run by scripts/test.sh only with LMTUNE_SLOW_TESTS=1")


def run_lmtune(*args, cwd=None, timeout=600, env=None):
    """Runs lmtune with the arguments and `env` added to the environment; returns the completed
    process (text mode)."""
    return subprocess.run([LMTUNE, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def signal_when(args, text, sig):
    """Starts lmtune with `args` and sends it `sig` as soon as a stderr line contains `text`;
    returns the running process (stdout and stderr pipes still open) for the caller to wait on."""
    process = subprocess.Popen([LMTUNE, *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if text in line:
            process.send_signal(sig)
            break
    return process


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    """The machine cache directory (LMTUNE_CACHE_DIR) of this test's lmtune runs."""
    monkeypatch.setenv("LMTUNE_CACHE_DIR", str(tmp_path / "machine-cache"))
    return tmp_path / "machine-cache"


@pytest.fixture
def lmtune():
    return run_lmtune


def make_tiny_model(directory, seed=0, dropout=0.0, **shape):
    """A random GPT-2 in HF layout, made and saved by transformers, with GPT-2's real tokenizer."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = dict(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=50257,
                  resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    config.update(shape)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**config)).save_pretrained(directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED_DIR / "data" / "gpt2-tokenizer" / name, Path(directory) / name)
    return Path(directory)


def step_losses(run):
    """{step: loss} of a run directory's metrics.jsonl training records."""
    import json

    return {json.loads(line)["step"]: json.loads(line)["loss"]
            for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line}


def train_briefly(lmtune, tmp_path, model, max_steps):
    """Trains the model a config's `model` section names on tmp_path's train.txt for a few fp32
    steps, evaluating on its valid.txt before and after; returns the summary line as a dict (the
    run is tmp_path/run)."""
    import json

    tree = {"run": {"output_dir": str(tmp_path / "run"), "threads": 2, "seed": 7},
            "model": model,
            "data": {"train": str(tmp_path / "train.txt"),
                     "validation": str(tmp_path / "valid.txt"), "seq_len": 32},
            "train": {"max_steps": max_steps, "micro_batch_size": 8, "precision": "fp32",
                      "lr": 3e-3, "schedule": "constant", "warmup_steps": 0},
            "eval": {"every_steps": max_steps}, "logging": {"every_steps": 10}}
    (tmp_path / "c.json").write_text(json.dumps(tree))
    result = lmtune("train", tmp_path / "c.json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def shakespeare(chars):
    """The first `chars` characters of tinyshakespeare, cut at a blank line."""
    text = (SHARED_DIR / "data" / "tinyshakespeare.txt").read_text()[:chars]
    return text[:text.rfind("\n\n")] + "\n"
