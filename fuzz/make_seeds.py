"""Writes the fuzzers' seed corpus: real files of each kind, small enough to mutate quickly.

usage: make_seeds.py OUT_DIR SOURCE_DIR SHARED_DIR
One folder per fuzz target (fuzz/targets.h) under OUT_DIR; each file is one input in the layout
that target's harness expects. Needs the virtual environment's safetensors, tokenizers and peft.
"""
import json
import pathlib
import struct
import sys

import torch
from safetensors.torch import save_file

out, source, shared = (pathlib.Path(a) for a in sys.argv[1:4])
out.mkdir(parents=True, exist_ok=True)
EOT = "<|endoftext|>"


def seed(target, name, data):
    path = out / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def head(path, limit):
    return pathlib.Path(path).read_bytes()[:limit]


shakespeare = head(shared / "data/tinyshakespeare.txt", 20000).decode("utf-8", "replace")

# safetensors: every dtype lmtune reads, an empty tensor, metadata.
tmp = out / "safetensors.tmp"
save_file({"wte.weight": torch.randn(4, 3), "ln.bias": torch.zeros(3, dtype=torch.float16),
           "scale": torch.ones((), dtype=torch.bfloat16), "empty": torch.zeros(0, 2)},
          str(tmp), metadata={"format": "pt"})
seed("safetensors", "small.safetensors", tmp.read_bytes())
tmp.unlink()

# configs: the project's own.
for config in sorted((source / "configs").glob("*.json")):
    seed("config_json", config.name, config.read_bytes())
for config in sorted((source / "configs").glob("*.yaml")):
    seed("config_yaml", config.name, config.read_bytes())

# tokenizer.json: a byte-level BPE (GPT-2, Llama 3, Qwen2) and a SentencePiece-style BPE with
# byte fallback (Llama 2), both trained here on a little Shakespeare.
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

byte_level = Tokenizer(models.BPE())
byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
byte_level.decoder = decoders.ByteLevel()
byte_level.train_from_iterator(
    [shakespeare], trainers.BpeTrainer(vocab_size=400, special_tokens=[EOT],
                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
seed("tokenizer_json", "byte_level.json", byte_level.to_str())

fallback = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
fallback.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                            normalizers.Replace(" ", "\u2581")])
fallback.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                      decoders.Fuse(), decoders.Strip(" ", 1, 0)])
byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
fallback.train_from_iterator(
    [shakespeare], trainers.BpeTrainer(vocab_size=450,
                                       special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens))
seed("tokenizer_json", "byte_fallback.json", fallback.to_str())

# vocab.json + merges.txt: the default model's (a GPT-2 tokenizer cut down to a few merges).
default_model = source / "assets/default-model"
seed("vocab_merges", "default_model",
     (default_model / "vocab.json").read_bytes() + b"\0" + (default_model / "merges.txt").read_bytes())

# trainer_state.json: a real checkpoint's when there is one here, and one written as lmtune does.
for state in sorted((source / "runs").glob("*/checkpoints/*/trainer_state.json"))[:1]:
    seed("trainer_state", "from_run.json", state.read_bytes())
seed("trainer_state", "written.json", json.dumps({
    "format_version": 1, "step": 12, "epoch": 0, "data_position": {"epoch": 0, "index": 24},
    "tokens_seen": 3072, "lr_schedule": {"lr": 0.0003, "step": 12}, "loss_scaler": None,
    "rng": {"cpu": torch.get_rng_state().numpy().tobytes().hex(), "cuda": []},
    "best_eval_loss": 3.5, "evals_without_improvement": 0, "eval_loss": None,
    "logging": {"interval_loss": 7.25, "last_log_step": 10}, "elapsed_s": 4.5,
    "config": {"train": {"lr": 0.0003}, "data": {"seq_len": 64}},
    "config_hash": "0123456789abcdef", "base": {"fingerprint": None}}, indent=2))

# adapter_config.json: PEFT's own, and lmtune's minimal form.
from peft import LoraConfig

peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                         modules_to_save=["lm_head"], task_type="CAUSAL_LM").to_dict()
seed("adapter_config", "peft.json", json.dumps(peft_config, default=str, indent=2))
seed("adapter_config", "lmtune.json", json.dumps({
    "peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "use_rslora": True,
    "target_modules": "all-linear", "base_model_name_or_path": "assets/default-model"}))

# token cache: meta.json, NUL, seq_len - 1, the four file sizes, the fill bytes (targets.cpp).
counters = ["files", "bytes", "documents", "bad_lines_skipped", "urls_stripped",
            "html_tags_stripped", "control_chars_dropped", "dropped_short", "dropped_duplicates",
            "train_documents", "validation_documents", "train_tokens", "validation_tokens",
            "train_windows", "validation_windows"]
report = {name: 1 for name in counters}
report.update(cache_dir="", from_cache=False, seconds=0.5, mb_per_sec=1.0)
meta = json.dumps({"key": {"fuzz": "token-cache"}, "report": report}, indent=2).encode()
seq_len = 4  # train: 2 windows (9 tokens), validation: 1 window (5 tokens)
fill = struct.pack("<5I", 50256, 11, 22, 33, 44) + bytes([1, 1, 0, 1, 1])
seed("token_cache", "two_windows", meta + b"\0" + bytes([seq_len - 1, 36, 9, 20, 5]) + fill)
seed("token_cache", "no_splits", meta + b"\0")

# data lines: the flags byte (1 .jsonl, 2 skip bad lines, 4 .txt as one document) and the file.
seed("data_lines", "shakespeare.txt", b"\0" + shakespeare[:3000].encode())
seed("data_lines", "whole_file.txt", b"\4" + shakespeare[:1000].encode())
seed("data_lines", "quickstart.jsonl", b"\1" + head(source / "assets/quickstart/validation.jsonl", 3000))
lines = [json.dumps({"text": "plain document"}), json.dumps({"prompt": "Q?", "completion": "A."}),
         "{not json", json.dumps({"other": 1}), "", json.dumps({"text": "caf\u00e9 \u65e5\u672c"})]
seed("data_lines", "mixed.jsonl", b"\3" + "\n".join(lines).encode() + b"\r\n")
