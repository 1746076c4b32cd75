"""`lmtune train` and `lmtune eval` on a GPU (label `cuda`): bf16 with gradient checkpointing and
dropout resumed after kill -9; fp16 with the loss scaler, the GPU-trained model checked on the
CPU by lmtune and by transformers; the fp16 loss scale backing off, growing and resuming exactly;
LoRA over an nf4 base trained on the GPU and evaluated on both; a run too large for the GPU
stopped with one line; precision auto choosing by the GPU. Runs on the bundled default model and quickstart data (the out-of-memory
test makes a wider model with the same tokenizer)."""
import json
import shutil
import signal
import subprocess

import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

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


def test_the_fp16_loss_scale_backs_off_grows_and_resumes_exactly_after_kill(tmp_path):
    # A scale far too large makes the first steps' fp16 gradients overflow: those steps are
    # skipped and the scale drops by 8x each; three clean steps in a row double it again.
    scaler = dict(precision="fp16", grad_accum_steps=1, max_steps=16, loss_scale_init=2.0**30,
                  loss_scale_backoff=0.125, loss_scale_growth_interval=3)
    reference = run("train", config(tmp_path, "reference", **scaler))
    assert reference.returncode == 0, reference.stderr
    assert "skipped for inf/NaN gradients" in reference.stderr
    scales = {r["step"]: r["loss_scale"] for r in records(tmp_path / "reference")
              if "loss_scale" in r}
    ordered = [scales[step] for step in sorted(scales)]
    assert ordered[0] < 2.0**30  # backed off at once
    lowest = ordered.index(min(ordered))
    assert max(ordered[lowest:]) > ordered[lowest], ordered  # and grew again after it

    path = config(tmp_path, "run", **scaler)
    process = signal_when(["train", path], "step 10/16", signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = run("train", path, "--resume")
    assert finished.returncode == 0, finished.stderr
    resumed = {r["step"]: r["loss_scale"] for r in records(tmp_path / "run") if "loss_scale" in r}
    assert resumed == scales  # the scaler's scale and growth count came back from the checkpoint
    difference = max_weight_difference(tmp_path / "run", tmp_path / "reference")
    print(f"largest weight difference, fp16 resumed vs uninterrupted: {difference:.3g}")
    assert difference < 1e-5


def test_precision_auto_picks_bf16_or_fp16_by_the_gpu_and_records_it(tmp_path):
    path = config(tmp_path, "auto", max_steps=4, grad_accum_steps=1)
    tree = json.loads(path.read_text())
    del tree["train"]["precision"]  # auto is the default
    path.write_text(json.dumps(tree))
    result = run("train", path)
    assert result.returncode == 0, result.stderr
    major, minor = torch.cuda.get_device_capability(0)
    expected = "bf16" if major >= 8 else "fp16"
    line = (f"train.precision: auto: {expected} on {torch.cuda.get_device_name(0)} "
            f"(compute capability {major}.{minor})")
    log = (tmp_path / "auto" / "train.log").read_text()
    assert line in log, log
    assert f"precision {expected}" in result.stderr
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["train"]["precision"] \
        == expected
    logged = [r for r in records(tmp_path / "auto") if "loss" in r]
    assert len(logged) == 4 and all(("loss_scale" in r) == (expected == "fp16") for r in logged)


def test_qlora_on_the_gpu_writes_an_adapter_that_evaluates_the_same_on_the_cpu(tmp_path):
    path = config(tmp_path, "qlora", max_steps=12, grad_accum_steps=1, lr=1e-2)
    tree = json.loads(path.read_text())
    tree["model"]["quantize"] = "nf4"
    tree["model"]["double_quant"] = True
    tree["lora"] = {"r": 8, "alpha": 16, "target_modules": ["all-linear"]}
    path.write_text(json.dumps(tree))
    result = run("train", path)
    assert result.returncode == 0, result.stderr
    logged = [r for r in records(tmp_path / "qlora") if "loss" in r]
    assert logged[-1]["loss"] < logged[0]["loss"]
    final = tmp_path / "qlora" / "final"
    assert (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()

    # The adapter over the same nf4 base evaluates to the same loss on the CPU and on the GPU
    # (fp32 both): the GPU's dequantized weights and adapters are the CPU's.
    losses = {}
    for device in ("cpu", "cuda"):
        evaluated = run("eval", path, "--model", final, "--set", f"run.device={device}",
                        "--set", "train.precision=fp32")
        assert evaluated.returncode == 0, evaluated.stderr
        losses[device] = json.loads(evaluated.stdout)["loss"]
    assert abs(losses["cpu"] - losses["cuda"]) < 1e-4, losses


def test_a_run_too_large_for_the_gpu_fails_with_one_line_of_advice(tmp_path):
    # 100M parameters at seq 1024 with 512-window micro-batches: terabytes of activations.
    model = GPT2LMHeadModel(GPT2Config(n_layer=8, n_head=16, n_embd=1024, n_positions=1024,
                                       vocab_size=495, bos_token_id=494, eos_token_id=494))
    model.save_pretrained(tmp_path / "model")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(ASSETS / "default-model" / name, tmp_path / "model" / name)
    text = (ASSETS / "quickstart" / "train.jsonl").read_text()
    (tmp_path / "train.jsonl").write_text(text * 8)
    path = config(tmp_path, "oom", micro_batch_size=512, grad_accum_steps=1, max_steps=2)
    tree = json.loads(path.read_text())
    tree["model"] = {"path": str(tmp_path / "model")}
    tree["data"].update(train=str(tmp_path / "train.jsonl"), seq_len=1024, dedupe=False)
    tree["checkpoint"] = {"every_steps": 1}
    path.write_text(json.dumps(tree))
    result = run("train", path)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert "step 1: out of memory on cuda" in errors[0]
    assert "micro-batch 512 x 1024 tokens" in errors[0]
    assert "lmtune plan predicts" in errors[0] and "would fit:" in errors[0]
    assert "Traceback" not in result.stderr and "terminate called" not in result.stderr
    assert not list((tmp_path / "oom").glob("checkpoints/step-*"))
