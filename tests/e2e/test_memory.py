"""The memory levers through the real binary: checkpointing, chunked loss, freezing, precision."""
import json

import torch
from safetensors.torch import load_file

from conftest import make_tiny_model, shakespeare


def config(tmp_path, model, name="run", **train):
    settings = {"max_steps": 6, "micro_batch_size": 4, "precision": "fp32", "lr": 3e-3,
                "schedule": "constant"}
    settings.update(train)
    return {"run": {"output_dir": str(tmp_path / name), "threads": 2, "seed": 7, "device": "cpu"},
            "model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "valid.txt"),
                     "seq_len": 32, "cache_dir": str(tmp_path / "cache")},
            "train": settings,
            "eval": {"every_steps": 3, "max_batches": 2},
            "logging": {"every_steps": 3}}


def train(lmtune, tmp_path, tree, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(tree))
    result = lmtune("train", path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def setup_data(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    (tmp_path / "valid.txt").write_text(shakespeare(25_000)[20_000:])


def test_checkpointing_and_chunked_loss_give_the_plain_runs_weights(lmtune, tmp_path):
    setup_data(tmp_path)
    model = make_tiny_model(tmp_path / "model", dropout=0.1)  # dropout masks must be replayed
    train(lmtune, tmp_path, config(tmp_path, model, "plain", chunked_loss="off"), "plain")
    tree = config(tmp_path, model, "levers", chunked_loss="on", loss_chunk_tokens=24)
    tree["model"]["gradient_checkpointing"] = True
    summary = train(lmtune, tmp_path, tree, "levers")
    assert summary["peak_memory_mb"] > 0
    log = (tmp_path / "levers" / "train.log").read_text()
    assert "gradient checkpointing" in log and "chunked loss: 24 tokens" in log
    plain = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    levers = load_file(tmp_path / "levers" / "final" / "model.safetensors")
    for name, tensor in plain.items():
        torch.testing.assert_close(levers[name], tensor, rtol=0, atol=1e-4, msg=name)
    evals = [json.loads(line) for line in (tmp_path / "levers" / "metrics.jsonl").open()
             if "eval_loss" in line]
    assert evals and all(r["peak_memory_mb"] > 0 for r in evals)


def test_frozen_tensors_stay_bit_identical(lmtune, tmp_path):
    setup_data(tmp_path)
    model = make_tiny_model(tmp_path / "model")
    train(lmtune, tmp_path, config(tmp_path, model, freeze_embeddings=True, freeze_layers=1),
          "frozen")
    before = load_file(model / "model.safetensors")
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    for name, tensor in after.items():
        frozen = name.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0."))
        assert torch.equal(tensor, before[name]) == frozen, name
    log = (tmp_path / "run" / "train.log").read_text()
    assert "frozen: embeddings" in log and "lm_head" in log


def test_freezing_more_layers_than_the_model_has_is_a_config_error(lmtune, tmp_path):
    setup_data(tmp_path)
    model = make_tiny_model(tmp_path / "model")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(tmp_path, model, freeze_layers=3)))
    result = lmtune("train", path)
    assert result.returncode == 2
    assert "train.freeze_layers" in result.stderr


def test_fp16_on_the_cpu_is_refused_with_a_hint(lmtune, tmp_path):
    setup_data(tmp_path)
    model = make_tiny_model(tmp_path / "model")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(tmp_path, model, precision="fp16")))
    result = lmtune("train", path)
    assert result.returncode == 2
    assert "bf16" in result.stderr and "train.precision" in result.stderr
