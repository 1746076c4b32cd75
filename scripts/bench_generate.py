#!/usr/bin/env python3
"""Times greedy generation of the same prompts by `lmtune generate --prompts-file` in batches,
by lmtune one prompt at a time (--batch-size 1) and by transformers' batched `generate` (left
padding with an attention mask, greedy, the same model, prompts, max_new_tokens, batch size and
thread count), alternating, and prints one JSON line per run, then a summary line: the median and
range of prompts/s and new tokens/s of each, and the ratios of the medians.

The model is a random GPT-2 (or Llama with --arch llama) made by transformers and saved in fp32
with GPT-2's tokenizer files (../shared/data/gpt2-tokenizer); the prompts are --prompts pieces of
../shared/data/tinyshakespeare.txt of 3 to 60 words (about 4 to 80 tokens). lmtune's time is the
one it logs ("N new tokens in S s": reading the prompts, tokenizing, generating and decoding,
without loading the model); transformers' is the same span (tokenizing, generate, decoding)
after one untimed warm-up batch. Every run's completions are checked against transformers'.

Usage: bench_generate.py [--arch gpt2|llama --n-layer 6 --n-head 6 --n-embd 384 --vocab 50257
                          --prompts 64 --max-new-tokens 32 --batch-size 8 --threads 2
                          --repeats 3 --lmtune build/lmtune --skip-single]
"""
import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast,
                          LlamaConfig, LlamaForCausalLM)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORDS_PER_PROMPT = (3, 8, 15, 30, 60)


def make_model(directory, a):
    torch.manual_seed(0)
    if a.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=a.n_layer, num_attention_heads=a.n_head,
            num_key_value_heads=a.n_head, hidden_size=a.n_embd, intermediate_size=4 * a.n_embd,
            vocab_size=a.vocab, max_position_embeddings=1024, tie_word_embeddings=False,
            bos_token_id=50256, eos_token_id=50256))
    else:
        model = GPT2LMHeadModel(GPT2Config(
            n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, vocab_size=a.vocab,
            n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.save_pretrained(directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED / "gpt2-tokenizer" / name, directory / name)


def make_prompts(count):
    words = (SHARED / "tinyshakespeare.txt").read_text().split()
    prompts, start = [], 0
    for i in range(count):
        n = WORDS_PER_PROMPT[i % len(WORDS_PER_PROMPT)]
        prompts.append(" ".join(words[start:start + n]))
        start += n
    return prompts


def run_lmtune(a, model_dir, prompts_file, batch_size):
    result = subprocess.run(
        [a.lmtune, "generate", "--model", model_dir, "--prompts-file", prompts_file,
         "--batch-size", str(batch_size), "--temperature", "0", "--max-new-tokens",
         str(a.max_new_tokens), "--threads", str(a.threads), "--device", "cpu"],
        capture_output=True, text=True, check=True)
    timing = re.search(r"(\d+) new tokens in ([\d.]+) s", result.stderr)
    completions = [json.loads(line)["completion"] for line in result.stdout.splitlines()]
    return int(timing[1]), float(timing[2]), completions


def run_transformers(a, model, tokenizer, prompts):
    """(new tokens, seconds, completions) of transformers' batched greedy generate."""
    eos = tokenizer.eos_token_id
    tokens, completions = 0, []
    start = time.perf_counter()
    for first in range(0, len(prompts), a.batch_size):
        batch = tokenizer(prompts[first:first + a.batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=False, max_new_tokens=a.max_new_tokens,
                                 pad_token_id=eos)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            produced = row[:row.index(eos) + 1] if eos in row else row
            tokens += len(produced)
            completions.append(tokenizer.decode(produced[:-1] if eos in row else produced))
    return tokens, time.perf_counter() - start, completions


def summary(runs):
    out = {}
    for key in ("prompts_per_sec", "tokens_per_sec"):
        values = [r[key] for r in runs]
        out[key] = {"median": round(statistics.median(values), 2),
                    "min": round(min(values), 2), "max": round(max(values), 2)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("n-layer", 6), ("n-head", 6), ("n-embd", 384), ("vocab", 50257),
                          ("prompts", 64), ("max-new-tokens", 32), ("batch-size", 8),
                          ("threads", 2), ("repeats", 3)):
        parser.add_argument("--" + name, type=int, default=default)
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--lmtune", default=str(ROOT / "build" / "lmtune"))
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out lmtune one prompt at a time (the slowest runs)")
    a = parser.parse_args()

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        model_dir, prompts_file = Path(tmp) / "model", Path(tmp) / "prompts.jsonl"
        make_model(model_dir, a)
        prompts = make_prompts(a.prompts)
        prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = GPT2TokenizerFast.from_pretrained(model_dir, padding_side="left")
        tokenizer.pad_token = tokenizer.eos_token
        lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        run_transformers(a, model, tokenizer, prompts[:a.batch_size])  # warm-up

        runs = {"lmtune": [], "lmtune_one_at_a_time": [], "transformers": []}
        for repeat in range(a.repeats):
            tools = ["transformers", "lmtune"] + ([] if a.skip_single else
                                                  ["lmtune_one_at_a_time"])
            for tool in tools:
                if tool == "transformers":
                    tokens, seconds, completions = run_transformers(a, model, tokenizer, prompts)
                    reference = completions
                else:
                    batch_size = 1 if tool == "lmtune_one_at_a_time" else a.batch_size
                    tokens, seconds, completions = run_lmtune(a, model_dir, prompts_file,
                                                              batch_size)
                record = {"tool": tool, "repeat": repeat, "prompts": len(prompts),
                          "new_tokens": tokens, "seconds": round(seconds, 3),
                          "prompts_per_sec": round(len(prompts) / seconds, 2),
                          "tokens_per_sec": round(tokens / seconds, 1),
                          "completions_equal_transformers":
                              sum(x == y for x, y in zip(completions, reference))}
                runs[tool].append(record)
                print(json.dumps(record), flush=True)

        medians = {tool: summary(r) for tool, r in runs.items() if r}
        ratio = lambda x, y: round(medians[x]["tokens_per_sec"]["median"] /  # noqa: E731
                                   medians[y]["tokens_per_sec"]["median"], 2)
        result = {"arch": a.arch, "shape": [a.n_layer, a.n_head, a.n_embd, a.vocab],
                  "prompts": a.prompts, "prompt_tokens": [min(lengths), max(lengths)],
                  "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
                  "threads": a.threads, "repeats": a.repeats, **medians,
                  "lmtune_over_transformers": ratio("lmtune", "transformers")}
        if runs["lmtune_one_at_a_time"]:
            result["batched_over_one_at_a_time"] = ratio("lmtune", "lmtune_one_at_a_time")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
