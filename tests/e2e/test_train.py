"""`lmtune train` and `lmtune eval` end to end on tiny models, checked against transformers."""
import json
import math

import pytest
import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from conftest import make_tiny_model, shakespeare


def write_config(path, tree):
    path.write_text(json.dumps(tree))
    return path


def base_config(tmp_path, model, **train):
    settings = {"max_steps": 20, "micro_batch_size": 8, "grad_accum_steps": 1, "precision": "fp32",
                "lr": 3e-3, "schedule": "constant", "warmup_steps": 0}
    settings.update(train)
    return {"run": {"output_dir": str(tmp_path / "run"), "threads": 2, "seed": 7},
            "model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "valid.txt"),
                     "seq_len": 32},
            "train": settings,
            "eval": {"every_steps": 10},
            "logging": {"every_steps": 5}}


def train(lmtune, tmp_path, tree, name="c.json"):
    result = lmtune("train", write_config(tmp_path / name, tree))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def data(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(60_000))
    (tmp_path / "valid.txt").write_text(shakespeare(70_000)[60_000:] or shakespeare(5_000))
    return tmp_path


def test_loss_falls_and_the_run_directory_is_complete(lmtune, tmp_path, data):
    model = make_tiny_model(tmp_path / "model")
    summary = train(lmtune, tmp_path, base_config(tmp_path, model, max_steps=30))
    assert summary["steps"] == 30
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"] - 1.0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20, 25, 30]
    assert set(steps[0]) == {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_sec", "elapsed_s"}
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert "step 30/30" in (run / "train.log").read_text()
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["max_steps"] == 30 and resolved["train"]["beta2"] == 0.95
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert (run / "final" / name).exists(), name


def test_final_model_loads_and_generates_in_transformers_and_lmtune(lmtune, tmp_path, data):
    model = make_tiny_model(tmp_path / "model")
    train(lmtune, tmp_path, base_config(tmp_path, model, max_steps=10))
    final = tmp_path / "run" / "final"
    hf, info = GPT2LMHeadModel.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = GPT2TokenizerFast.from_pretrained(final)
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=50256)
    assert out.shape[1] > ids.shape[1]
    result = lmtune("generate", "--model", final, "--prompt", "ROMEO:", "--max-new-tokens", "8",
                    "--temperature", "0")
    assert result.returncode == 0, result.stderr
    # Greedy continuations agree between lmtune and transformers on the model lmtune wrote.
    expected = tokenizer.decode(out[0, ids.shape[1]:])
    assert result.stdout[:-1] == expected.split("<|endoftext|>")[0]  # print() adds one newline


def independent_mean_loss(model_dir, documents, seq_len):
    """Mean next-token loss computed with transformers over lmtune's packing rule (docs/data.md):
    a stream that starts with end-of-text and ends each document with one, cut into windows of
    seq_len + 1 tokens that overlap by one."""
    tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    tokens = [tokenizer.eos_token_id]
    for doc in documents:
        tokens += tokenizer(doc).input_ids + [tokenizer.eos_token_id]
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, seq_len):
        window = tokens[start:start + seq_len + 1]
        if len(window) < 2:
            break
        ids = torch.tensor([window])
        with torch.no_grad():
            logits = model(ids[:, :-1]).logits
        losses = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="none")
        total += losses.sum().item()
        count += losses.numel()
    return total / count, count


def test_perplexity_is_exp_of_the_independent_mean_token_loss(lmtune, tmp_path, data):
    model = make_tiny_model(tmp_path / "model", seed=3)
    documents = [d for d in (tmp_path / "valid.txt").read_text().split("\n\n") if d.strip()]
    tree = base_config(tmp_path, model)
    result = lmtune("eval", write_config(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    loss, count = independent_mean_loss(model, [d.strip("\n") for d in documents], seq_len=32)
    assert measured["tokens"] == count
    assert abs(measured["loss"] - loss) < 1e-4
    assert math.isclose(measured["perplexity"], math.exp(measured["loss"]), rel_tol=1e-9)


def test_prompt_tokens_carry_no_loss(lmtune, tmp_path):
    model = make_tiny_model(tmp_path / "model")
    def pairs(numbers):
        return [{"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f" {2 * i}"} for i in numbers]

    rows = pairs(range(40, 80))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs(range(40))))
    (tmp_path / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tree = base_config(tmp_path, model)
    tree["data"] = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "valid.jsonl"),
                    "seq_len": 32}
    tokenizer = GPT2TokenizerFast.from_pretrained(model)
    completion_tokens = sum(len(tokenizer(r["completion"]).input_ids) + 1 for r in rows)  # + end-of-text
    result = lmtune("eval", write_config(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == completion_tokens
    tree["data"]["loss_on_prompt"] = True
    with_prompt = lmtune("eval", write_config(tmp_path / "c2.json", tree))
    assert with_prompt.returncode == 0, with_prompt.stderr
    assert json.loads(with_prompt.stdout)["tokens"] > completion_tokens


def test_random_init_trains_from_scratch(lmtune, tmp_path, data):
    tokenizer_dir = make_tiny_model(tmp_path / "tok")
    tree = base_config(tmp_path, tokenizer_dir, max_steps=10)
    tree["model"] = {"init": "random", "tokenizer": str(tokenizer_dir), "n_layer": 1, "n_head": 2,
                     "n_embd": 16, "n_positions": 64}
    summary = train(lmtune, tmp_path, tree)
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"]
    saved = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert (saved["n_layer"], saved["n_embd"], saved["n_positions"]) == (1, 16, 64)


@pytest.mark.parametrize("change,message,code", [
    ({"data": {"train": "/nonexistent/train.txt"}}, "/nonexistent/train.txt", 3),
    ({"model": {"path": "/nonexistent/model"}}, "/nonexistent/model", 3),
    ({"train": {"micro_batch_size": 100000}}, "fewer than one micro-batch", 3),
    ({"data": {"seq_len": 512}}, "data.seq_len: must not exceed the model's n_positions (128)", 2),
])
def test_bad_inputs_fail_before_training(lmtune, tmp_path, data, change, message, code):
    model = make_tiny_model(tmp_path / "model")
    tree = base_config(tmp_path, model)
    for section, values in change.items():
        tree[section].update(values)
    result = lmtune("train", write_config(tmp_path / "c.json", tree))
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_an_existing_run_is_not_overwritten(lmtune, tmp_path, data):
    model = make_tiny_model(tmp_path / "model")
    tree = base_config(tmp_path, model, max_steps=2)
    train(lmtune, tmp_path, tree)
    again = lmtune("train", write_config(tmp_path / "c.json", tree))
    assert again.returncode == 2
    assert "already holds a run" in again.stderr
