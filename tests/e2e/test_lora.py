"""LoRA through the real binaries, against PEFT: lmtune's adapters load in PEFT with the logits of
lmtune's merged model, PEFT's adapters load in lmtune with PEFT's logits and gradients, a LoRA
checkpoint holds only the adapter and resumes bit-exactly after SIGKILL, and bad adapters or
settings get one clear line."""
import json
import os
import shutil
import signal
import subprocess

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import LMTUNE, step_losses, make_tiny_model, shakespeare, signal_when
from test_model_families import IDS, lmtune_logits, make_model, probe


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def lora_config(tmp_path, model_dir, lora=None, **train):
    settings = {"max_steps": 6, "micro_batch_size": 2, "grad_accum_steps": 2, "precision": "fp32",
                "lr": 1e-2, "schedule": "constant", "weight_decay": 0.1}
    settings.update(train)
    return {"run": {"output_dir": str(tmp_path / "run"), "threads": 1, "seed": 3},
            "model": {"path": str(model_dir)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32},
            "train": settings, "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 2, "keep_last": 2}, "logging": {"every_steps": 1},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, **(lora or {})}}


def train(tmp_path, config, *extra):
    path = write(tmp_path / "c.json", config)
    result = subprocess.run([LMTUNE, "train", path, *map(str, extra)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return result


def peft_logits(base_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model, model(torch.tensor(IDS)).logits


def peft_name(name):
    """lmtune's h.0.attn.c_attn.lora_A -> PEFT's ...h.0.attn.c_attn.lora_A.default.weight."""
    return name + ".default.weight"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_peft_loads_lmtunes_adapter_with_the_logits_of_lmtunes_merged_model(tmp_path, family):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    if family == "gpt2":
        base = make_tiny_model(tmp_path / "base")
        lora = {"target_modules": ["c_attn", "c_fc"], "modules_to_save": ["ln_f"],
                "save_merged": True}
    else:
        base, _ = make_model(tmp_path / "base", "llama-gqa-llama3-untied")
        lora = {"target_modules": "all-linear", "use_rslora": True, "save_merged": True}
    result = train(tmp_path, lora_config(tmp_path, base, lora))
    assert "the base is frozen" in result.stderr
    final = tmp_path / "run" / "final"
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base)
    assert adapter_config["fan_in_fan_out"] == (family == "gpt2")
    stored = load_file(final / "adapter_model.safetensors")

    model, logits = peft_logits(base, final)
    # No missing keys: every adapter tensor PEFT made for the config is in the file, and the
    # file holds nothing PEFT did not expect.
    expected = {k.replace(".default", "") for k, _ in model.named_parameters()
                if "lora_" in k or "modules_to_save" in k}
    expected = {k.replace(".modules_to_save", "") for k in expected}
    assert set(stored) == expected
    assert any(v.abs().sum() > 0 for k, v in stored.items() if "lora_B" in k), "B never trained"

    theirs = model.merge_and_unload()(torch.tensor(IDS)).logits.detach()
    merged = lmtune_logits(tmp_path, final / "merged", IDS)
    torch.testing.assert_close(merged, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs, logits, rtol=1e-4, atol=1e-5)
    loaded, info = AutoModelForCausalLM.from_pretrained(final / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def make_peft_adapter(base_dir, out_dir, **config):
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(7)
    # init_lora_weights=False draws B at random too, so the adapter changes the outputs.
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM",
                                            **config))
    model.save_pretrained(out_dir)
    return model.eval()


@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_a_peft_adapter_gives_peft_logits_and_gradients_in_lmtune(tmp_path, family):
    if family == "gpt2":
        base = make_tiny_model(tmp_path / "base")
        config = dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"])
    else:
        base, _ = make_model(tmp_path / "base", "qwen3")
        config = dict(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"],
                      modules_to_save=["lm_head"])
    model = make_peft_adapter(base, tmp_path / "adapter", **config)
    ids = torch.tensor(IDS)
    logits = model(ids).logits
    # transformers' loss with labels: the mean next-token cross-entropy, as lmtune's.
    model(ids, labels=ids).loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}

    (tmp_path / "ids.json").write_text(json.dumps(IDS))
    probe("lora-grads", base, tmp_path / "adapter", tmp_path / "ids.json", tmp_path / "g.st")
    ours = load_file(tmp_path / "g.st")
    torch.testing.assert_close(ours["logits"], logits.detach(), rtol=1e-4, atol=1e-5)
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    assert len(ours_grads) == len(grads)
    prefix = "base_model.model." + ("transformer." if family == "gpt2" else "model.")
    for name, grad in ours_grads.items():
        if "lora_" in name:
            key = prefix + peft_name(name)
        else:  # a module trained in full: PEFT trains its modules_to_save copy
            key = "base_model.model." + name.replace(".weight", ".modules_to_save.default.weight")
        torch.testing.assert_close(grad, grads[key], rtol=1e-4, atol=1e-6, msg=name)

    merged = tmp_path / "merged"
    done = subprocess.run([LMTUNE, "merge", "--base", base, "--adapter", tmp_path / "adapter",
                           "--out", merged], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(lmtune_logits(tmp_path, merged, IDS), logits.detach(), rtol=1e-4,
                               atol=1e-5)


def test_train_continues_a_peft_adapter_and_eval_and_generate_take_it(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    base = make_tiny_model(tmp_path / "base")
    make_peft_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["c_attn"])
    config = lora_config(tmp_path, base)
    config["data"]["validation_split"] = 0.1
    config["eval"]["every_steps"] = 100
    result = train(tmp_path, config, "--adapter", tmp_path / "adapter")
    assert "continuing the adapter" in result.stderr
    summary = json.loads(result.stdout)
    # The PEFT adapter's random B moves the model far from the base: the first evaluation of the
    # continued run is the adapter's, not the base's.
    base_eval = subprocess.run([LMTUNE, "eval", tmp_path / "c.json", "--set", "lora.enabled=false",
                                "--set", "lora.adapter="], capture_output=True, text=True)
    assert base_eval.returncode == 0, base_eval.stderr
    assert summary["eval_before"]["loss"] != pytest.approx(json.loads(base_eval.stdout)["loss"])
    final = tmp_path / "run" / "final"
    evaluated = subprocess.run([LMTUNE, "eval", tmp_path / "c.json", "--model", final],
                               capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] == pytest.approx(summary["eval_after"]["loss"],
                                                                 rel=1e-5)

    def generate(*model):
        done = subprocess.run([LMTUNE, "generate", *model, "--prompt", "ROMEO:",
                               "--max-new-tokens", "8", "--threads", "1"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # final/ names its base: the same adapter given with --adapter gives the same text.
    assert generate("--model", final) == generate("--model", base, "--adapter", final)


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "int8", "nf4-double"])
def test_a_lora_checkpoint_holds_only_the_adapter_and_resumes_bit_exactly(tmp_path, quantize):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    base = make_tiny_model(tmp_path / "base", dropout=0.1)
    lora = {"target_modules": ["c_attn", "c_proj"], "dropout": 0.1}

    def lora_config_quantized(*args, **kwargs):
        config = lora_config(*args, **kwargs)
        config["model"]["quantize"] = quantize.split("-")[0]
        config["model"]["double_quant"] = quantize.endswith("-double")
        return config

    reference = lora_config_quantized(tmp_path, base, lora, max_steps=8)
    reference["run"]["output_dir"] = str(tmp_path / "reference")
    result = train(tmp_path, reference)
    if quantize != "none":
        assert "model.quantize: " + quantize.split("-")[0] in result.stderr
    losses_logged = [json.loads(l)["loss"] for l in (tmp_path / "reference" / "metrics.jsonl")
                     .read_text().splitlines() if '"loss"' in l]
    assert losses_logged[-1] < losses_logged[0]

    checkpoint = tmp_path / "reference" / "checkpoints" / "step-00000008"
    assert not (checkpoint / "model.safetensors").exists()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    moments = load_file(checkpoint / "optimizer.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    # Optimizer state for the adapters only: the frozen base has none.
    assert moments and all(".lora_A." in k or ".lora_B." in k for k in moments)
    assert len(moments) == 3 * len(adapter)

    path = write(tmp_path / "c.json", lora_config_quantized(tmp_path, base, lora, max_steps=8))
    process = signal_when(["train", path], "step 5/8", signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = subprocess.run([LMTUNE, "train", path, "--resume"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr

    assert step_losses(tmp_path / "run") == step_losses(tmp_path / "reference")
    ours = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "reference" / "final" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resuming_against_a_different_base_is_refused_in_one_line(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    base = make_tiny_model(tmp_path / "base")
    path = write(tmp_path / "c.json", lora_config(tmp_path, base, max_steps=4))
    process = signal_when(["train", path], "saved checkpoint", signal.SIGKILL)
    process.wait()
    shutil.rmtree(base)
    make_tiny_model(base, seed=1)  # the same architecture, other weights, in the same place
    result = subprocess.run([LMTUNE, "train", path, "--resume"], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "is not the base model the adapter" in lines[-1] and str(base) in lines[-1]


@pytest.mark.parametrize("case,code,expected", [
    ("target_matches_nothing", 2, "lora.target_modules: 'q_proj' matches no linear layer of this "
                                  "gpt2 model; its layers are c_attn, c_fc, c_proj"),
    ("save_matches_nothing", 2, "lora.modules_to_save: 'lm_head' matches no module"),
    ("quantized_without_lora", 2, "model.quantize: nf4 needs lora"),
    ("double_quant_without_nf4", 2, "model.double_quant: applies to model.quantize: nf4 only"),
    ("adapter_of_other_architecture", 3, "this gpt2 model has no linear layer "
                                         "'model.layers.0.self_attn.q_proj'"),
    ("adapter_of_other_shape", 3, "has shape [4, 48], the model needs [4, 32]"),
    ("corrupt_adapter", 3, "adapter_model.safetensors"),
    ("dora_adapter", 3, "use_dora is true (DoRA)"),
])
def test_bad_adapters_and_settings_get_one_line_and_the_right_exit_code(tmp_path, case, code,
                                                                         expected):
    (tmp_path / "train.txt").write_text(shakespeare(10_000))
    base = make_tiny_model(tmp_path / "base")
    config = lora_config(tmp_path, base)
    adapter = tmp_path / "adapter"
    if case == "target_matches_nothing":
        config["lora"]["target_modules"] = ["q_proj"]
    elif case == "save_matches_nothing":
        config["lora"]["modules_to_save"] = ["lm_head"]
    elif case == "quantized_without_lora":
        del config["lora"]
        config["model"]["quantize"] = "nf4"
    elif case == "double_quant_without_nf4":
        config["model"]["quantize"] = "int8"
        config["model"]["double_quant"] = True
    elif case == "adapter_of_other_architecture":
        llama, _ = make_model(tmp_path / "llama", "qwen2")
        make_peft_adapter(llama, adapter, r=4, target_modules=["q_proj"])
    elif case == "adapter_of_other_shape":
        wider = make_tiny_model(tmp_path / "wider", n_embd=48)
        make_peft_adapter(wider, adapter, r=4, target_modules=["c_attn"])
    elif case == "corrupt_adapter":
        make_peft_adapter(base, adapter, r=4, target_modules=["c_attn"])
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif case == "dora_adapter":
        make_peft_adapter(base, adapter, r=4, target_modules=["c_attn"], use_dora=True)
    if adapter.exists():
        config["lora"]["adapter"] = str(adapter)
    path = write(tmp_path / "c.json", config)
    result = subprocess.run([LMTUNE, "train", path], capture_output=True, text=True)
    assert result.returncode == code, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("lmtune error")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
