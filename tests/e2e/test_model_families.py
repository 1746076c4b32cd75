"""The Llama family (llama, mistral, qwen2, qwen3) through the real binaries, against transformers:
logits and greedy continuations of random tiny models of every layout, fine-tuning to a `final/`
that transformers loads, exact resume after SIGKILL, and one clear line for broken inputs."""
import json
import os
import shutil
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

from conftest import LMTUNE, step_losses, SHARED_DIR, shakespeare, signal_when

PROBE = os.environ.get("GPT2_PROBE", str(LMTUNE).replace("lmtune", "tests/gpt2_probe"))
SHAPE = dict(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             bos_token_id=50256, eos_token_id=50256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


def variant(name):
    """(model class, config) of one layout lmtune must read."""
    if name == "llama-gqa-llama3-untied":
        return LlamaForCausalLM, LlamaConfig(**SHAPE, rope_parameters=LLAMA3_ROPE,
                                             tie_word_embeddings=False)
    if name in ("llama-tied-biases-linear-4x", "llama-bf16-sharded"):
        return LlamaForCausalLM, LlamaConfig(
            **SHAPE, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    if name == "mistral":
        return MistralForCausalLM, MistralConfig(**SHAPE, sliding_window=4096,
                                                 tie_word_embeddings=False)
    if name == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(**SHAPE, tie_word_embeddings=True)
    if name == "qwen3":
        return Qwen3ForCausalLM, Qwen3Config(**SHAPE, head_dim=16, tie_word_embeddings=False)
    raise ValueError(name)


VARIANTS = ["llama-gqa-llama3-untied", "llama-tied-biases-linear-4x", "llama-bf16-sharded",
            "mistral", "qwen2", "qwen3"]


def make_model(directory, name, seed=0, **overrides):
    """A random tiny model of `name`'s layout saved by transformers, with GPT-2's tokenizer files;
    returns the directory and the model as transformers holds it (fp32)."""
    model_class, config = variant(name)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():  # biases and norms start at 0 and 1: make them matter
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") or "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    if name == "llama-bf16-sharded":
        model.to(torch.bfloat16).save_pretrained(directory, max_shard_size="200KB")
        model = model_class.from_pretrained(directory, dtype=torch.float32).eval()
    else:
        model.save_pretrained(directory)
    if name.endswith("-4x"):
        # transformers 4.x wrote rope_theta and rope_scaling at the top level and torch_dtype.
        config_file = directory / "config.json"
        tree = json.loads(config_file.read_text())
        rope = tree.pop("rope_parameters")
        tree["rope_theta"] = rope.pop("rope_theta")
        tree["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
        tree["torch_dtype"] = tree.pop("dtype", "float32")
        config_file.write_text(json.dumps(tree))
    for file_name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED_DIR / "data" / "gpt2-tokenizer" / file_name, directory / file_name)
    return directory, model


def probe(*args):
    result = subprocess.run([PROBE, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def lmtune_logits(tmp_path, model_dir, ids):
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    probe("logits", model_dir, tmp_path / "ids.json", tmp_path / "logits.safetensors")
    return load_file(tmp_path / "logits.safetensors")["logits"]


IDS = [[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 50256, 40],
       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_and_greedy_continuations_match_transformers(tmp_path, name):
    model_dir, model = make_model(tmp_path / "model", name)
    with torch.no_grad():
        expected = model(torch.tensor(IDS)).logits
    ours = lmtune_logits(tmp_path, model_dir, IDS)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)

    prompts = [row[:5] for row in IDS]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    continuations = json.loads(probe("greedy", model_dir, tmp_path / "prompts.json", 12))
    for prompt, continuation in zip(prompts, continuations):
        ids = torch.tensor([prompt])
        with torch.no_grad():  # one token at a time, no cache: the plainest reference
            for _ in range(12):
                ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert continuation == ids[0, len(prompt):].tolist()


def test_resaved_sharded_model_loads_in_transformers_with_the_same_weights(tmp_path):
    model_dir, model = make_model(tmp_path / "model", "qwen3")
    probe("resave", model_dir, tmp_path / "out", 100_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def train_config(tmp_path, model_dir, **train):
    settings = {"max_steps": 8, "micro_batch_size": 2, "grad_accum_steps": 2, "precision": "fp32",
                "lr": 3e-3, "schedule": "cosine", "warmup_steps": 2}
    settings.update(train)
    return {"run": {"output_dir": str(tmp_path / "run"), "threads": 1, "seed": 5},
            "model": {"path": str(model_dir), "gradient_checkpointing": True},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32},
            "train": settings, "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 2, "keep_last": 2}, "logging": {"every_steps": 1}}


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def test_a_fine_tuned_llama_loads_in_transformers_with_the_same_logits(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    model_dir, _ = make_model(tmp_path / "model", "llama-gqa-llama3-untied")
    config = write(tmp_path / "c.json", train_config(tmp_path, model_dir, precision="bf16"))
    result = subprocess.run([LMTUNE, "train", config], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    losses = [json.loads(l)["loss"] for l in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses[-1] < losses[0]
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "llama"
    loaded, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        expected = loaded.eval()(torch.tensor(IDS)).logits
    torch.testing.assert_close(lmtune_logits(tmp_path, final, IDS), expected, rtol=1e-4,
                               atol=1e-5)


def test_a_llama_run_killed_with_sigkill_resumes_bit_exactly(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    # Attention dropout on: resume must restore the random generator exactly.
    model_dir, _ = make_model(tmp_path / "model", "qwen3", attention_dropout=0.1)
    reference = train_config(tmp_path, model_dir)
    reference["run"]["output_dir"] = str(tmp_path / "reference")
    done = subprocess.run([LMTUNE, "train", write(tmp_path / "r.json", reference)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = write(tmp_path / "c.json", train_config(tmp_path, model_dir))
    process = signal_when(["train", path], "step 5/8", signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = subprocess.run([LMTUNE, "train", path, "--resume"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "resuming from" in finished.stderr

    assert step_losses(tmp_path / "run") == step_losses(tmp_path / "reference")
    ours = load_file(tmp_path / "run" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("damage,expected", [
    ("model_type", "config.json: model_type 'bert' is not supported (gpt2, llama, mistral, qwen2, "
                   "qwen3)"),
    ("rope_type", "config.json: rope_parameters.rope_type: 'yarn' is not supported"),
    ("missing_tensor", "model.safetensors: missing tensor 'model.norm.weight'"),
    ("wrong_shape", "tensor 'model.norm.weight' has shape [31], expected [32]"),
    ("missing_shard", "missing: a shard model.safetensors.index.json lists"),
])
def test_broken_models_get_one_line_and_exit_3(tmp_path, damage, expected):
    from safetensors.torch import save_file
    name = "llama-bf16-sharded" if damage == "missing_shard" else "llama-gqa-llama3-untied"
    model_dir, _ = make_model(tmp_path / "model", name)
    config_file = model_dir / "config.json"
    tree = json.loads(config_file.read_text())
    if damage == "model_type":
        tree["model_type"] = "bert"
    if damage == "rope_type":
        tree["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    config_file.write_text(json.dumps(tree))
    if damage in ("missing_tensor", "wrong_shape"):
        tensors = load_file(model_dir / "model.safetensors")
        if damage == "missing_tensor":
            del tensors["model.norm.weight"]
        else:
            tensors["model.norm.weight"] = torch.ones(31)
        save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    if damage == "missing_shard":
        next(model_dir.glob("model-00002-of-*.safetensors")).unlink()
    result = subprocess.run([LMTUNE, "generate", "--model", model_dir, "--prompt", "Hello"],
                            capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmtune error: "), result.stderr
    assert expected in lines[0]


def test_freezing_and_the_chunked_loss_work_for_llama_models(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    model_dir, _ = make_model(tmp_path / "model", "qwen2")
    tree = train_config(tmp_path, model_dir, max_steps=4, freeze_layers=1, freeze_embeddings=True,
                        chunked_loss="on", loss_chunk_tokens=16)
    result = subprocess.run([LMTUNE, "train", write(tmp_path / "c.json", tree)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "frozen: embeddings (embed_tokens; lm_head is tied to it" in result.stderr
    assert "blocks 0-0 (layers.0 to layers.0)" in result.stderr
    assert "chunked loss: 16 tokens per chunk" in result.stderr
    before = load_file(model_dir / "model.safetensors")
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    frozen = [k for k in before if k.startswith("model.layers.0.") or "embed_tokens" in k]
    trained = [k for k in before if k.startswith("model.layers.1.") and k.endswith("weight")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not any(torch.equal(before[k], after[k]) for k in trained if "norm" not in k)


def test_generation_stops_at_every_end_of_sequence_id_generation_config_lists(tmp_path):
    from transformers import GPT2TokenizerFast
    model_dir, _ = make_model(tmp_path / "model", "llama-gqa-llama3-untied")
    prompt = [464, 2068, 7586]
    (tmp_path / "prompt.json").write_text(json.dumps([prompt]))
    greedy = json.loads(probe("greedy", model_dir, tmp_path / "prompt.json", 6))[0]
    text = GPT2TokenizerFast.from_pretrained(model_dir).decode(prompt)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": text}) + "\n")

    def completion():
        result = subprocess.run([LMTUNE, "generate", "--model", model_dir, "--prompts-file",
                                 tmp_path / "prompts.jsonl", "--temperature", "0",
                                 "--max-new-tokens", "6"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["completion"]

    decode = GPT2TokenizerFast.from_pretrained(model_dir).decode
    assert completion() == decode(greedy)
    # A second end-of-sequence id (as Llama 3 lists <|eot_id|> besides <|end_of_text|>) that the
    # model produces third: generation stops there, and the stop token is not printed.
    stops = [50256, greedy[2]]
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}))
    first_stop = next(i for i, token in enumerate(greedy) if token in stops)
    assert first_stop <= 2 and completion() == decode(greedy[:first_stop])


def test_a_sliding_window_shorter_than_seq_len_is_refused_naming_the_key(tmp_path):
    model_dir, _ = make_model(tmp_path / "model", "mistral", sliding_window=16)
    (tmp_path / "train.txt").write_text("Some text.\n")
    tree = {"model": {"path": str(model_dir)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32}}
    result = subprocess.run([LMTUNE, "config", write(tmp_path / "c.json", tree)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert ("data.seq_len: must not exceed the model's sliding_window (16), got 32"
            in result.stderr)
    tree["data"]["seq_len"] = 0  # the default: the window
    result = subprocess.run([LMTUNE, "config", write(tmp_path / "c.json", tree)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["seq_len"] == 16
