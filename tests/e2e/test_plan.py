"""`lmtune plan` through the real binary: its table and JSON line, the prediction against the peak
`lmtune train` measures on small models whose weights dominate (full fine-tuning with and without
gradient checkpointing, LoRA, QLoRA), and train.micro_batch_size: auto."""
import json
import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from conftest import SHARED_DIR, shakespeare

# Within this share of the measured peak (the bound); docs/memory.md has the larger
# shapes of scripts/plan-vs-measured.sh.
TOLERANCE = 0.15


def save(model, directory):
    model.save_pretrained(directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED_DIR / "data" / "gpt2-tokenizer" / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 45 M GPT-2 (6 x 512) and a 45 M Llama (6 x 512, GQA, tied): the weights, their gradients
    and AdamW state outweigh an idle lmtune, and a step takes seconds on two cores."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gpt2 = save(GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=8, n_embd=512, n_positions=256)),
                root / "gpt2")
    llama = save(LlamaForCausalLM(LlamaConfig(
        vocab_size=50257, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True)), root / "llama")
    (root / "train.txt").write_text(shakespeare(200_000))
    return {"gpt2": gpt2, "llama": llama, "train": root / "train.txt"}


def write_config(tmp_path, models, family="gpt2", **train):
    settings = {"max_steps": 1, "micro_batch_size": 4, "precision": "fp32",
                "schedule": "constant"}
    settings.update(train)
    tree = {"run": {"output_dir": str(tmp_path / "run"), "threads": 2, "seed": 1,
                    "device": "cpu"},
            "model": {"path": str(models[family])},
            "data": {"train": str(models["train"]), "seq_len": 128,
                     "cache_dir": str(tmp_path / "cache")},
            "train": settings, "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 0}, "logging": {"every_steps": 1}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tree))
    return path


def last_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plan_prints_the_parts_the_fit_and_one_json_line(lmtune, tmp_path, models):
    result = lmtune("plan", write_config(tmp_path, models, chunked_loss="off",
                                         loss_chunk_tokens=128))
    plan = last_json(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpt2 model, ")
    table = "\n".join(lines)
    for label in ("runtime", "weights (fp32", "gradients (fp32", "AdamW state", "activations",
                  "logits and loss", "predicted peak", "available on the CPU"):
        assert label in table, label
    assert set(plan) >= {"parts", "total_mb", "fits", "available_mb", "levers", "peak"}
    assert abs(sum(plan["parts"].values()) - plan["total_mb"]) < 1
    assert plan["parts"]["weights"] > plan["parts"]["runtime"] / 4
    assert isinstance(plan["fits"], bool) and plan["fits"]
    levers = {lever["what"].split(",")[0]: lever for lever in plan["levers"]}
    assert {"gradient checkpointing", "chunked loss", "LoRA adapters over the frozen base",
            "all of the above"} <= set(levers)
    assert all(lever["total_mb"] < plan["total_mb"] for lever in plan["levers"])
    assert "--set model.gradient_checkpointing=true" in levers["gradient checkpointing"]["set"]
    assert not (tmp_path / "run").exists()  # planning writes nothing


def test_a_plan_that_does_not_fit_says_so_and_names_levers(lmtune, tmp_path, models):
    result = lmtune("plan", write_config(tmp_path, models, micro_batch_size=40_000))
    plan = last_json(result)
    assert not plan["fits"]
    assert "does not fit" in result.stdout
    assert any(lever["fits"] for lever in plan["levers"])


SHAPES = {
    "full": ("gpt2", []),
    "full-checkpointing": ("gpt2", ["model.gradient_checkpointing=true"]),
    "lora": ("llama", ["lora.enabled=true"]),
    "qlora-nf4": ("llama", ["lora.enabled=true", "model.quantize=nf4"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_predicted_peak_is_within_15_percent_of_the_measured_one(lmtune, tmp_path, models,
                                                                      shape):
    family, sets = SHAPES[shape]
    config = write_config(tmp_path, models, family)
    flags = [arg for setting in sets for arg in ("--set", setting)]
    predicted = last_json(lmtune("plan", config, *flags))["total_mb"]
    measured = last_json(lmtune("train", config, *flags))["peak_memory_mb"]
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


@pytest.mark.slow
def test_auto_micro_batch_keeps_the_steps_sequences_and_logs_its_choice(lmtune, tmp_path, models):
    config = write_config(tmp_path, models, micro_batch_size="auto", grad_accum_steps=2)
    plan = last_json(lmtune("plan", config))
    assert plan["micro_batch_size"] * plan["grad_accum_steps"] == 16
    summary = last_json(lmtune("train", config))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "train.micro_batch_size: auto: " in log
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert resolved["micro_batch_size"] == plan["micro_batch_size"]
    assert resolved["micro_batch_size"] * resolved["grad_accum_steps"] == 16
    assert summary["steps"] == 1
    shown = json.loads(lmtune("config", config).stdout)["train"]["micro_batch_size"]
    assert shown == "auto"


@pytest.mark.slow
def test_the_plan_counts_a_distillation_teacher(lmtune, tmp_path, models):
    config = write_config(tmp_path, models, "gpt2")
    teacher = ["--set", f"distill.teacher={models['llama']}"]
    alone = last_json(lmtune("plan", config))
    plan = last_json(lmtune("plan", config, *teacher))
    llama_parameters = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(models["llama"])
                           .parameters())
    # The teacher's fp32 weights at least, on top of what the student alone needs.
    assert plan["parts"]["teacher"] >= 4 * llama_parameters / 2**20
    assert plan["total_mb"] >= alone["total_mb"] + 4 * llama_parameters / 2**20 - 1
    measured = last_json(lmtune("train", config, *teacher))["peak_memory_mb"]
    assert abs(plan["total_mb"] - measured) <= TOLERANCE * measured, (plan["total_mb"], measured)
