"""Batched generation (`lmtune generate --prompts-file --batch-size N`, generate_batch through
gpt2_probe) on tiny random GPT-2 and Llama models: left-padded batches give exactly the tokens of
one prompt at a time and of transformers' own left-padded batched greedy generate, a row that
stops early leaves the others as they were, and `--prompt` streams its continuation."""
import functools
import json
import os
import shutil
import subprocess

import pytest
import torch
from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

from conftest import LMTUNE, SHARED_DIR, make_tiny_model, shakespeare

PROBE = os.environ.get("GPT2_PROBE", str(LMTUNE).replace("lmtune", "tests/gpt2_probe"))
NEW_TOKENS = 10


def make_llama(directory):
    """A random tiny Llama (grouped-query attention, llama3 rotary scaling, untied head) saved by
    transformers, with GPT-2's tokenizer files."""
    config = LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=50256, eos_token_id=50256,
                         tie_word_embeddings=False,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                          "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED_DIR / "data" / "gpt2-tokenizer" / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"gpt2": make_tiny_model(root / "gpt2"), "llama": make_llama(root / "llama")}


@pytest.fixture(scope="module")
def tokenizer(models):
    return GPT2TokenizerFast.from_pretrained(models["gpt2"])


@pytest.fixture(scope="module")
def prompt_texts():
    """Prompts of very different lengths: one token to about a hundred."""
    lines = [line for line in shakespeare(4000).splitlines() if line.strip()]
    return ["Hi", " ".join(lines[:18]), "First Citizen:", lines[5], " ".join(lines[20:24]), "O"]


@pytest.fixture(scope="module")
def prompt_ids(tokenizer, prompt_texts):
    ids = [tokenizer(text)["input_ids"] for text in prompt_texts]
    assert min(map(len, ids)) == 1 and max(map(len, ids)) > 90
    return ids


@pytest.fixture(scope="module")
def probe_greedy(models, prompt_ids, tmp_path_factory):
    """probe_greedy(arch, batch_size): gpt2_probe's greedy continuations of the prompts, one
    prompt at a time through generate() (batch_size None) or in batches (generate_batch)."""
    prompts_file = tmp_path_factory.mktemp("probe") / "prompts.json"
    prompts_file.write_text(json.dumps(prompt_ids))

    @functools.lru_cache(maxsize=None)
    def run(arch, batch_size=None):
        extra = [] if batch_size is None else [str(batch_size)]
        result = subprocess.run([PROBE, "greedy", models[arch], prompts_file, str(NEW_TOKENS),
                                 *extra], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return run


def transformers_greedy(model_dir, prompts, batch_size):
    """transformers' batched greedy generate, prompts left-padded with an attention mask."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model.generation_config.eos_token_id = None  # as the probe: no stop ids
    out = []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first:first + batch_size]
        longest = max(map(len, batch))
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=NEW_TOKENS, pad_token_id=0)
        out += generated[:, longest:].tolist()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batches_of_any_size_give_the_greedy_tokens_of_one_prompt_at_a_time(
        probe_greedy, prompt_ids, arch):
    alone = probe_greedy(arch)  # generate() of each prompt: a batch of one, never padded
    assert all(len(row) == NEW_TOKENS for row in alone)
    for batch_size in (3, len(prompt_ids) + 5):
        assert probe_greedy(arch, batch_size) == alone, batch_size


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_greedy_equals_transformers_left_padded_batched_generate(
        models, probe_greedy, prompt_ids, arch):
    ours = probe_greedy(arch, len(prompt_ids) + 5)
    assert ours == transformers_greedy(models[arch], prompt_ids, len(prompt_ids))


def generate(model_dir, *args):
    result = subprocess.run([LMTUNE, "generate", "--model", model_dir, "--max-new-tokens",
                             str(NEW_TOKENS), "--threads", "1", *map(str, args)],
                            capture_output=True)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode("utf-8")  # strict: valid UTF-8 or this raises


def completions(model_dir, prompts_file, *args):
    lines = generate(model_dir, "--prompts-file", prompts_file, *args).splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("sampling", [["--temperature", "0"],
                                      ["--temperature", "0.8", "--top-k", "50", "--seed", "7"]])
@pytest.mark.slow
def test_prompts_file_prints_each_batch_in_order_as_single_prompts_print(
        tmp_path, models, prompt_texts, sampling):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompt_texts))
    one_at_a_time = completions(models["gpt2"], prompts_file, "--batch-size", "1", *sampling)
    assert [row["prompt"] for row in one_at_a_time] == prompt_texts
    assert completions(models["gpt2"], prompts_file, "--batch-size", "4", *sampling) == \
        one_at_a_time
    assert completions(models["gpt2"], prompts_file, *sampling) == one_at_a_time  # default 8
    for row in one_at_a_time[:2]:  # --prompt streams the same text, then a newline
        assert generate(models["gpt2"], "--prompt", row["prompt"], *sampling) == \
            row["completion"] + "\n"


def test_a_row_that_stops_early_leaves_the_others_as_they_were(
        tmp_path, models, probe_greedy, tokenizer, prompt_texts):
    model_dir = tmp_path / "model"
    shutil.copytree(models["llama"], model_dir)
    free = probe_greedy("llama")
    # An early token of the longest prompt's continuation that two others never produce.
    stop = next(token for token in free[1][:5]
                if sum(token not in row for row in free) >= 2)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [50256, stop]}))
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompt_texts))
    expected = [tokenizer.decode(row[:row.index(stop)] if stop in row else row) for row in free]
    assert sum(stop not in row for row in free) >= 2 and stop in free[1]
    got = [row["completion"] for row in completions(model_dir, prompts_file, "--batch-size", "6",
                                                        "--temperature", "0")]
    assert got == expected


def test_prompt_streams_its_continuation_while_generating(tmp_path):
    model_dir = make_tiny_model(tmp_path / "model", n_positions=1024)
    process = subprocess.Popen([LMTUNE, "generate", "--model", model_dir, "--prompt", "Hello",
                                "--temperature", "0", "--max-new-tokens", "1020",
                                "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks = []  # what each read of the pipe got, as the pieces arrive
    while chunk := os.read(process.stdout.fileno(), 1 << 16):
        chunks.append(chunk)
    stderr = process.communicate()[1].decode()
    assert process.returncode == 0, stderr
    # The text came in many pieces while 1020 tokens were generated, not in one write at the end
    # (a reader that falls behind gets several pieces at once, never all of them).
    assert len(chunks) > 10, [len(chunk) for chunk in chunks]
    text = b"".join(chunks).decode("utf-8")
    assert text.endswith("\n") and len(text) > 1000
