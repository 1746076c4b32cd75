"""`lmtune train` and `lmtune eval` on a GPU (label `cuda`): bf16 with gradient checkpointing and
dropout resumed after kill -9, fp16 with the loss scaler, and the GPU-trained model checked on
the CPU by lmtune and by transformers. Runs on the bundled default model and quickstart data."""
import json
import signal
import subprocess

import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from conftest import LMTUNE, SOURCE_DIR, signal_when

ASSETS = SOURCE_DIR / "assets"


def config(tmp_path, name, **train):
    settings = {"max_steps": 16, "micro_batch_size": 16, "grad_accum_steps": 2,
                "precision": "bf16", "lr": 3e-3, "schedule": "cosine", "warmup_steps": 2,
                "min_lr": 1e-4}
    settings.update(train)
    tree = {"run": {"output_dir": str(tmp_path / name), "seed": 5, "device": "cuda"},
            "model": {"path": str(ASSETS / "default-model"), "gradient_checkpointing": True},
            "data": {"train": str(ASSETS / "quickstart" / "train.jsonl"),
                     "validation": str(ASSETS / "quickstart" / "validation.jsonl"),
                     "seq_len": 64, "cache_dir": str(tmp_path / "cache")},
            "train": settings,
            "eval": {"every_steps": 8, "max_batches": 4},
            "checkpoint": {"every_steps": 4, "keep_last": 2},
            "logging": {"every_steps": 1}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(tree))
    return path


def run(*args):
    return subprocess.run([LMTUNE, *map(str, args)], capture_output=True, text=True, timeout=600)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_weight_difference(a_dir, b_dir):
    a = load_file(a_dir / "final" / "model.safetensors")
    b = load_file(b_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_bf16_checkpointed_run_resumes_after_kill_to_the_same_weights(tmp_path):
    reference = run("train", config(tmp_path, "reference"))
    assert reference.returncode == 0, reference.stderr
    assert "device cuda" in reference.stderr

    path = config(tmp_path, "run")
    process = signal_when(["train", path], "step 10/16", signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = run("train", path, "--resume")
    assert finished.returncode == 0, finished.stderr
    assert "step-00000008" in finished.stderr

    # The same data order, dropout masks (the CUDA generator is in the checkpoint) and optimizer
    # state give the same run. GPU kernels may reduce in a different order from run to run, so
    # the comparison allows rounding; it is printed to say whether the result was bitwise.
    difference = max_weight_difference(tmp_path / "run", tmp_path / "reference")
    print(f"largest weight difference, resumed vs uninterrupted: {difference:.3g}")
    assert difference < 1e-5
    losses = {r["step"]: r["loss"] for r in records(tmp_path / "run") if "loss" in r}
    expected = {r["step"]: r["loss"] for r in records(tmp_path / "reference") if "loss" in r}
    assert losses.keys() == expected.keys()
    for step in expected:
        assert abs(losses[step] - expected[step]) < 1e-4 * max(1.0, expected[step]), step
    peaks = [r["peak_memory_mb"] for r in records(tmp_path / "run") if "peak_memory_mb" in r]
    assert peaks and all(0 < p < torch.cuda.get_device_properties(0).total_memory / 2**20
                         for p in peaks)


def test_fp16_trains_with_the_loss_scaler_and_the_model_works_on_the_cpu(tmp_path):
    result = run("train", config(tmp_path, "fp16", precision="fp16", max_steps=40,
                                 grad_accum_steps=1))
    assert result.returncode == 0, result.stderr
    logged = [r for r in records(tmp_path / "fp16") if "loss" in r]
    assert all("loss_scale" in r and r["loss_scale"] > 0 for r in logged)
    assert logged[-1]["loss"] < 0.5 * logged[0]["loss"]

    final = tmp_path / "fp16" / "final"
    # The GPU-trained model evaluates to the same loss on the CPU and on the GPU (fp32 both).
    losses = {}
    for device in ("cpu", "cuda"):
        evaluated = run("eval", config(tmp_path, f"eval-{device}", precision="fp32"),
                        "--model", final, "--set", f"run.device={device}")
        assert evaluated.returncode == 0, evaluated.stderr
        losses[device] = json.loads(evaluated.stdout)["loss"]
    assert abs(losses["cpu"] - losses["cuda"]) < 1e-4, losses

    # transformers loads it and gives finite logits identical in shape to the vocabulary.
    model = GPT2LMHeadModel.from_pretrained(final)
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert torch.isfinite(logits).all()
