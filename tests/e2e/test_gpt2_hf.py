"""lmtune's GPT-2 against Hugging Face transformers: logits, loss, and models that load both ways."""
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

PROBE = os.environ["GPT2_PROBE"]

SHAPES = {
    "2x2x32": dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100),
    "3x4x64-relu-inner": dict(n_layer=3, n_head=4, n_embd=64, n_positions=128, vocab_size=1000,
                              n_inner=96, activation_function="relu", layer_norm_epsilon=1e-6),
    "1x1x8-gelu": dict(n_layer=1, n_head=1, n_embd=8, n_positions=16, vocab_size=50257,
                       activation_function="gelu"),
    "2x2x32-untied": dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100,
                          tie_word_embeddings=False),
}


def make_hf_model(directory, shape, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**shape))
    with torch.no_grad():  # HF initialises biases and LayerNorms to constants: perturb them all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.to(dtype).save_pretrained(directory)
    return directory


def hf_logits_and_loss(directory, ids):
    model = GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor(ids), labels=torch.tensor(ids))
    return out.logits, out.loss.item()


def lmtune_logits_and_loss(directory, ids, tmp_path):
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    out = tmp_path / "logits.safetensors"
    result = subprocess.run([PROBE, "logits", directory, tmp_path / "ids.json", out],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return load_file(out)["logits"], json.loads(result.stdout)["loss"]


def random_ids(shape, batch=2, length=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    length = length or shape["n_positions"] // 2
    return torch.randint(shape["vocab_size"], (batch, length), generator=g).tolist()


@pytest.mark.parametrize("name", SHAPES)
def test_fp32_logits_and_loss_match_transformers(tmp_path, name):
    shape = SHAPES[name]
    directory = make_hf_model(tmp_path / "hf", shape)
    ids = random_ids(shape)
    ref_logits, ref_loss = hf_logits_and_loss(directory, ids)
    logits, loss = lmtune_logits_and_loss(directory, ids, tmp_path)
    assert logits.shape == ref_logits.shape
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5), (logits - ref_logits).abs().max()
    assert abs(loss - ref_loss) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_weights_are_upcast(tmp_path, dtype):
    shape = SHAPES["2x2x32"]
    directory = make_hf_model(tmp_path / "hf", shape, dtype=dtype)
    stored = load_file(directory / "model.safetensors")
    assert all(t.dtype == dtype for t in stored.values())
    ids = random_ids(shape)
    ref_logits, ref_loss = hf_logits_and_loss(directory, ids)
    logits, loss = lmtune_logits_and_loss(directory, ids, tmp_path)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert abs(loss - ref_loss) < 1e-5


@pytest.mark.parametrize("name", ["2x2x32", "2x2x32-untied"])
def test_lmtune_saved_model_loads_in_transformers(tmp_path, name):
    shape = SHAPES[name]
    directory = make_hf_model(tmp_path / "hf", shape)
    resaved = tmp_path / "resaved"
    result = subprocess.run([PROBE, "resave", directory, resaved], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model, info = GPT2LMHeadModel.from_pretrained(resaved, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info.get("mismatched_keys")
    stored = load_file(resaved / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not shape.get("tie_word_embeddings", True))
    ids = random_ids(shape)
    ref_logits, _ = hf_logits_and_loss(directory, ids)
    with torch.no_grad():
        logits = model.eval()(torch.tensor(ids)).logits
    assert torch.equal(logits, ref_logits)


def test_bad_model_directory_exits_3(tmp_path):
    shape = SHAPES["2x2x32"]
    directory = make_hf_model(tmp_path / "hf", shape)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (tmp_path / "ids.json").write_text("[[1, 2]]")
    result = subprocess.run([PROBE, "logits", directory, tmp_path / "ids.json", tmp_path / "o"],
                            capture_output=True, text=True)
    assert result.returncode == 3
    assert "model.safetensors" in result.stderr and "truncated or corrupt" in result.stderr


def test_completions_that_split_characters_print_as_transformers_decodes_them(tmp_path):
    from transformers import GPT2TokenizerFast

    from conftest import LMTUNE, make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model")
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
    # Greedy decoding made to emit, at every step, GPT-2's token for the lone byte 0xE2 (the first
    # of the three bytes of '€' or '—'): the output head sees only the final norm's bias, which
    # points at that token's (enlarged) embedding.
    lone_byte = tokenizer.convert_tokens_to_ids("\u00e2")
    assert tokenizer.convert_ids_to_tokens(lone_byte) == "\u00e2"
    with torch.no_grad():
        direction = torch.randn(model.config.n_embd)
        direction *= 10 / direction.norm()
        model.transformer.wte.weight[lone_byte] = direction
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(direction)
    model.save_pretrained(model_dir)
    expected = tokenizer.decode([lone_byte] * 5)
    assert expected == "\ufffd" * 5  # transformers replaces each broken byte

    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ("Hello", "caf\u00e9 au lait")))
    common = ["--model", model_dir, "--temperature", "0", "--max-new-tokens", "5"]
    batch = subprocess.run([LMTUNE, "generate", *common, "--prompts-file",
                            tmp_path / "prompts.jsonl"], capture_output=True)
    assert batch.returncode == 0, batch.stderr.decode(errors="replace")
    lines = batch.stdout.decode("utf-8").splitlines()  # strict: valid UTF-8 or this raises
    assert [json.loads(line)["completion"] for line in lines] == [expected, expected]
    single = subprocess.run([LMTUNE, "generate", *common, "--prompt", "Hello"], capture_output=True)
    assert single.returncode == 0, single.stderr.decode(errors="replace")
    assert single.stdout.decode("utf-8").rstrip("\n") == expected
