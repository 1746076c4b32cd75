"""`lmtune export --gguf` through the real binary, read back with the gguf package's GGUFReader:
GPT-2 and each Llama-family type (tied and untied heads, biases, linear and llama3 rope scaling,
byte-level BPE tokenizers of each pre-tokenizer family and a SentencePiece one) in every --dtype.
Every metadata key is checked against the source config and tokenizer (the token lists rebuilt
from transformers and sentencepiece as llama.cpp's convert_hf_to_gguf.py builds them, the special
tokens and merges by the gguf package's own SpecialVocab), every tensor's name, shape, type and
values against the source safetensors (q/k rows through a permutation written here, BF16 and Q8_0
bytes against gguf's reference quantizers), an adapter export against the export of `lmtune
merge`'s output, and bad input gets one line and its exit code, leaving no file behind."""
import json
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import LMTUNE, SHARED_DIR, make_tiny_model

Q = gguf.GGMLQuantizationType
T = gguf.TokenType
V = gguf.GGUFValueType

DTYPES = ["f32", "f16", "bf16", "q8_0"]
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}  # llama.cpp's llama_ftype
WEIGHT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
TEXT = (SHARED_DIR / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:40_000]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


# ---------------------------------------------------------------------------------------------
# Tiny models with small tokenizers of each family

def train_bpe(pre_tokenizer, specials, normalizer=None, ignore_merges=False):
    """A byte-level BPE of about 300 tokens trained on Shakespeare behind `pre_tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


def save_tokenizer_json(tokenizer, directory, **config):
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return tokenizer.get_vocab_size()


def llama3_tokenizer(directory):
    """Llama 3's pipeline and BOS template; added tokens, one looking special, one not."""
    from tokenizers import AddedToken, Regex, pre_tokenizers, processors

    tokenizer = train_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        ["<|begin_of_text|>", "<|end_of_text|>"], ignore_merges=True)
    tokenizer.add_tokens([AddedToken("<|reserved_0|>", normalized=False),
                          AddedToken("hello world", normalized=False)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 0)])
    return save_tokenizer_json(tokenizer, directory, bos_token="<|begin_of_text|>",
                               eos_token="<|end_of_text|>", add_bos_token=True,
                               chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")


def qwen2_tokenizer(directory):
    from tokenizers import Regex, normalizers, pre_tokenizers

    tokenizer = train_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer=normalizers.NFC())
    return save_tokenizer_json(tokenizer, directory, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", chat_template="{{ messages }}")


def smollm_tokenizer(directory):
    from tokenizers import pre_tokenizers

    tokenizer = train_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return save_tokenizer_json(tokenizer, directory, bos_token="<|im_start|>",
                               eos_token="<|im_end|>", unk_token="<|endoftext|>")


def prefix_space_tokenizer(directory):
    """GPT-2's pre-tokenizer with a prefix space, which no llama.cpp pre-tokenizer adds."""
    from tokenizers import pre_tokenizers

    tokenizer = train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=True), ["<|endoftext|>"])
    return save_tokenizer_json(tokenizer, directory, eos_token="<|endoftext|>")


def sentencepiece_tokenizer(directory):
    """A SentencePiece model with byte fallback, and tokenizer_config.json's added tokens past it:
    one that looks special, one with a ▁ (user-defined)."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines()), vocab_size=400,
                                   byte_fallback=True, model_prefix=str(directory / "tokenizer"),
                                   minloglevel=2)
    pieces = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).vocab_size()
    added = {"0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
             "2": {"content": "</s>", "special": True},
             str(pieces): {"content": "<|im_start|>", "special": False},
             str(pieces + 1): {"content": "\u2581hello", "special": False}}
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added}))
    return pieces + 2


def gpt2_files_tokenizer(directory):
    """vocab.json + merges.txt, as GPT-2's own files."""
    from tokenizers import pre_tokenizers

    tokenizer = train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    tokenizer.model.save(str(directory))
    return tokenizer.get_vocab_size()


# name -> (model_type, tokenizer maker, tokenizer.ggml.pre, config settings)
FAMILY = {
    "llama": ("llama", llama3_tokenizer, "llama-bpe", dict(
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})),
    "llama-spm": ("llama", sentencepiece_tokenizer, "default", dict(
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, attention_bias=True,
        mlp_bias=True, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                        "factor": 2.0})),
    "mistral": ("mistral", smollm_tokenizer, "smollm", dict(
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, sliding_window=32)),
    "qwen2": ("qwen2", qwen2_tokenizer, "qwen2", dict(tie_word_embeddings=True, eos_token_id=2)),
    "qwen3": ("qwen3", prefix_space_tokenizer, "default", dict(
        tie_word_embeddings=False, head_dim=16, eos_token_id=0)),
}
MODELS = ["gpt2", *FAMILY]


def make_family_model(directory, name, seed=0, **overrides):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM),
               "mistral": (MistralConfig, MistralForCausalLM),
               "qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    model_type, make_tokenizer, _, settings = FAMILY[name]
    directory.mkdir(parents=True)
    vocab = make_tokenizer(directory) + 3  # ids past the tokenizer's: "[PAD<id>]" tokens
    config_class, model_class = classes[model_type]
    torch.manual_seed(seed)
    model = model_class(config_class(vocab_size=vocab, **SHAPE, **{**settings, **overrides}))
    with torch.no_grad():  # biases and norms start at 0 and 1: make them tell rows apart
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") or "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory)
    return directory


def make_gpt2(directory):
    """n_embd 48: rows of 48 values are no whole Q8_0 blocks, so those weights fall back to F16."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True)
    vocab = gpt2_files_tokenizer(directory)
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=48, n_positions=64, vocab_size=vocab,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------------------------
# Running the exporter

def export_args(model_dir, out, dtype, *extra):
    return [LMTUNE, "export", "--gguf", out, "--model", model_dir, "--dtype", dtype,
            "--threads", "1", *extra]


def export_all(model_dir, outputs, *extra):
    """Exports `model_dir` once per (dtype, path) of `outputs`, all at once; returns the stderr
    of each."""
    processes = [subprocess.Popen(list(map(str, export_args(model_dir, out, dtype, *extra))),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for dtype, out in outputs]
    errors = []
    for process, (_, out) in zip(processes, outputs):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        line = json.loads(stdout)
        assert line["out"] == str(out) and line["bytes"] == out.stat().st_size, line
        assert line["tensors"] == len(gguf.GGUFReader(out).tensors)
        errors.append(stderr)
    return errors


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{model: (model_dir, {dtype: (GGUFReader, stderr)})} for every model and --dtype."""
    root = tmp_path_factory.mktemp("gguf")
    found = {}
    for name in MODELS:
        model_dir = (make_gpt2(root / name) if name == "gpt2"
                     else make_family_model(root / name, name))
        outputs = [(dtype, root / f"{name}-{dtype}.gguf") for dtype in DTYPES]
        stderr = export_all(model_dir, outputs)
        found[name] = (model_dir, {dtype: (gguf.GGUFReader(out), err)
                                   for (dtype, out), err in zip(outputs, stderr)})
    return found


def run_export(model_dir, out, dtype="f16", *extra):
    return subprocess.run(list(map(str, export_args(model_dir, out, dtype, *extra))),
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# What the file must hold, worked out here from the source files

def fields_of(reader):
    """{key: (value, [value types])} of the metadata, without the reader's own GGUF.* entries."""
    return {key: (field.contents(), list(field.types)) for key, field in reader.fields.items()
            if not key.startswith("GGUF.")}


def typed(value):
    """(value, [GGUF value types]) as the converter's GGUFWriter stores a Python value."""
    if isinstance(value, bool):
        return value, [V.BOOL]
    if isinstance(value, int):
        return value, [V.UINT32]
    if isinstance(value, float):
        return float(np.float32(value)), [V.FLOAT32]
    if isinstance(value, str):
        return value, [V.STRING]
    raise TypeError(value)


def hparams(model_type, config):
    """The architecture's keys, from config.json."""
    if model_type == "gpt2":
        return "gpt2", {"context_length": config["n_positions"],
                        "embedding_length": config["n_embd"],
                        "block_count": config["n_layer"],
                        "feed_forward_length": config.get("n_inner") or 4 * config["n_embd"],
                        "attention.head_count": config["n_head"],
                        "attention.layer_norm_epsilon": config["layer_norm_epsilon"],
                        "vocab_size": config["vocab_size"]}
    arch = "llama" if model_type in ("llama", "mistral") else model_type
    rope = config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0)}
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    keys = {"context_length": config["max_position_embeddings"],
            "embedding_length": config["hidden_size"], "block_count": config["num_hidden_layers"],
            "feed_forward_length": config["intermediate_size"],
            "attention.head_count": config["num_attention_heads"],
            "attention.head_count_kv": config["num_key_value_heads"],
            "attention.key_length": head_dim, "attention.value_length": head_dim,
            "attention.layer_norm_rms_epsilon": config["rms_norm_eps"],
            "rope.freq_base": float(rope["rope_theta"]), "rope.dimension_count": head_dim,
            "vocab_size": config["vocab_size"]}
    if rope.get("rope_type") == "linear":
        keys.update({"rope.scaling.type": "linear", "rope.scaling.factor": rope["factor"]})
    return arch, keys


def looks_special(text):
    """The converter's does_token_look_special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def bpe_vocabulary(model_dir, vocab_size):
    """tokens, types as the converter's get_vocab_base lists them from transformers' tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added, decoder = tokenizer.get_added_vocab(), tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        elif reverse[i] in added and (decoder[i].special or looks_special(reverse[i])):
            tokens.append(reverse[i])
            types.append(T.CONTROL)
        elif reverse[i] in added:
            tokens.append(reverse[i].replace("\u2581", " "))
            types.append(T.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(T.NORMAL)
    return tokens, types


def sentencepiece_vocabulary(model_dir, vocab_size):
    """tokens, scores, types as the converter's _create_vocab_sentencepiece lists them."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores, types = [-10000.0] * vocab_size, [T.UNUSED] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        tokens[i], scores[i] = sp.id_to_piece(i), sp.get_score(i)
        types[i] = (T.UNKNOWN if sp.is_unknown(i) else T.CONTROL if sp.is_control(i)
                    else T.UNUSED if sp.is_unused(i) else T.BYTE if sp.is_byte(i) else T.NORMAL)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    for i, entry in config.get("added_tokens_decoder", {}).items():
        i, text = int(i), entry["content"]
        if i >= vocab_size:
            continue
        control = entry.get("special") or looks_special(text)
        tokens[i] = text if control else text.replace("\u2581", " ")
        scores[i], types[i] = -1000.0, T.CONTROL if control else T.USER_DEFINED
    return tokens, scores, types


SPECIAL_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                   "sep": "seperator_token_id", "pad": "padding_token_id",
                   "mask": "mask_token_id", "eot": "eot_token_id"}


def tokenizer_keys(model_dir, model_type, vocab_size, pre):
    """tokenizer.* keys: the lists rebuilt here, merges and special tokens by gguf's
    SpecialVocab."""
    spm_model = model_type != "gpt2" and (model_dir / "tokenizer.model").exists()
    keys = {"tokenizer.ggml.model": "llama" if spm_model else "gpt2", "tokenizer.ggml.pre": pre}
    if spm_model:
        tokens, scores, types = sentencepiece_vocabulary(model_dir, vocab_size)
        keys["tokenizer.ggml.scores"] = ([float(np.float32(s)) for s in scores],
                                         [V.ARRAY, V.FLOAT32])
    else:
        tokens, types = bpe_vocabulary(model_dir, vocab_size)
    keys["tokenizer.ggml.tokens"] = (tokens, [V.ARRAY, V.STRING])
    keys["tokenizer.ggml.token_type"] = ([int(t) for t in types], [V.ARRAY, V.INT32])
    special = gguf.SpecialVocab(model_dir, load_merges=not spm_model,
                                n_vocab=vocab_size if spm_model else None)
    if special.merges:
        keys["tokenizer.ggml.merges"] = (special.merges, [V.ARRAY, V.STRING])
    for kind, token_id in special.special_token_ids.items():
        if kind in SPECIAL_ID_KEYS:
            keys["tokenizer.ggml." + SPECIAL_ID_KEYS[kind]] = token_id
    for kind, add in special.add_special_token.items():
        if kind in ("bos", "eos", "sep"):
            keys[f"tokenizer.ggml.add_{kind}_token"] = add
    if isinstance(special.chat_template, str):
        keys["tokenizer.chat_template"] = special.chat_template
    return keys


def expected_metadata(model_dir, dtype, pre, name=None):
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config["model_type"]
    arch, arch_keys = hparams(model_type, config)
    keys = {"general.architecture": arch, "general.type": "model",
            "general.name": name or model_dir.name, "general.file_type": FILE_TYPES[dtype],
            "general.quantization_version": 2,
            **{f"{arch}.{key}": value for key, value in arch_keys.items()},
            **tokenizer_keys(model_dir, model_type, config["vocab_size"], pre)}
    return {key: value if isinstance(value, tuple) else typed(value) for key, value in keys.items()}


GPT2_NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm",
              "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
              "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
LLAMA_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm",
               "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name):
    """llama.cpp's name of an HF tensor, from the tables above."""
    parts = hf_name.split(".")
    if parts[0] == "lm_head":
        return "output." + parts[-1]
    module = parts[1:-1]  # without "transformer." / "model." and ".weight"
    names = GPT2_NAMES if parts[0] == "transformer" else LLAMA_NAMES
    if module[0] in ("h", "layers"):
        return f"blk.{module[1]}.{names['.'.join(module[2:])]}.{parts[-1]}"
    return f"{names['.'.join(module)]}.{parts[-1]}"


def rope_row_order(rows, heads):
    """The row order llama.cpp's llama architecture wants for q and k: per head, the two halves
    HF rotates together (i, i + D/2) become neighbours (2i, 2i + 1)."""
    head_dim = rows // heads
    order = np.empty(rows, dtype=np.int64)
    for h in range(heads):
        for i in range(head_dim // 2):
            order[h * head_dim + 2 * i] = h * head_dim + i
            order[h * head_dim + 2 * i + 1] = h * head_dim + head_dim // 2 + i
    return order


def llama3_rope_factors(model_dir):
    """transformers' own llama3 scaling: the default inverse frequencies over the scaled ones."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(model_dir)
    head_dim = config.head_dim
    default = 1.0 / config.rope_parameters["rope_theta"] ** (
        torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (default / scaled.double()).float().numpy()


def expected_tensors(model_dir):
    """{llama.cpp name: fp32 values in llama.cpp's layout} of the model in `model_dir`."""
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config["model_type"]
    state = load_file(model_dir / "model.safetensors")
    tensors = {}
    for hf_name, value in state.items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        name, value = gguf_name(hf_name), value.float().numpy()
        if model_type == "gpt2" and name.endswith(("attn_qkv.weight", "attn_output.weight",
                                                   "ffn_up.weight", "ffn_down.weight")):
            value = value.T  # HF's Conv1D stores (in, out)
        if model_type in ("llama", "mistral") and (".attn_q." in name or ".attn_k." in name):
            heads = config["num_attention_heads" if ".attn_q." in name
                           else "num_key_value_heads"]
            value = value[rope_row_order(value.shape[0], heads)]
        tensors[name] = np.ascontiguousarray(value)
    if (config.get("rope_parameters") or {}).get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_factors(model_dir)
    return tensors


def expected_type(name, shape, dtype):
    """The converter's choice: norms, biases, 1-D tensors and position embeddings stay F32; a
    row of no whole Q8_0 blocks falls back to F16."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") \
            or name == "position_embd.weight":
        return Q.F32
    if dtype == "q8_0" and shape[-1] % 32:
        return Q.F16
    return WEIGHT_TYPES[dtype]


def assert_values(tensor, expected):
    kind = tensor.tensor_type
    if tensor.name == "rope_freqs.weight":  # computed in float64 here, in float32 by transformers
        np.testing.assert_allclose(tensor.data, expected, rtol=1e-6)
    elif kind == Q.F32:
        np.testing.assert_array_equal(tensor.data, expected)
    elif kind == Q.F16:
        np.testing.assert_array_equal(tensor.data, expected.astype(np.float16))
    else:  # BF16 and Q8_0: the bytes of gguf's reference quantizer, and values within a step
        np.testing.assert_array_equal(tensor.data, gguf.quants.quantize(expected, kind))
        values = gguf.quants.dequantize(tensor.data, kind)
        if kind == Q.BF16:
            np.testing.assert_allclose(values, expected, rtol=2 ** -8, atol=0)
        else:
            # x = q d rounded to the nearest q, then d stored as F16: |q d16 - x| <= d / 2 +
            # 127 |d16 - d|.
            d = np.abs(expected).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            bound = d / 2 + 127 * np.abs(d.astype(np.float16).astype(np.float32) - d)
            error = np.abs(values - expected).reshape(-1, 32)
            assert np.all(error <= bound * (1 + 1e-5) + 1e-12), tensor.name


def assert_tensors(reader, model_dir, dtype):
    expected = expected_tensors(model_dir)
    assert len(reader.tensors) == len(expected)
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    for tensor in reader.tensors:
        values = expected[tensor.name]
        assert list(tensor.shape) == list(reversed(values.shape)), tensor.name  # innermost first
        assert tensor.tensor_type == expected_type(tensor.name, values.shape, dtype), tensor.name
        assert_values(tensor, values)


def assert_metadata(reader, expected):
    found = fields_of(reader)
    assert sorted(found) == sorted(expected)
    for key, (value, types) in expected.items():
        assert found[key][1] == types, key
        if types == [V.ARRAY, V.FLOAT32]:
            np.testing.assert_array_equal(np.float32(found[key][0]), np.float32(value), key)
        else:
            assert found[key][0] == value, key


# ---------------------------------------------------------------------------------------------
# Tests

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_key_and_tensor_matches_the_source_model(exports, name, dtype):
    model_dir, files = exports[name]
    reader, _ = files[dtype]
    pre = "gpt-2" if name == "gpt2" else FAMILY[name][2]
    assert_metadata(reader, expected_metadata(model_dir, dtype, pre))
    assert_tensors(reader, model_dir, dtype)


def test_fallbacks_and_settings_llama_cpp_does_not_read_are_warned(exports):
    # Q8_0 rows of 48 values fall back to F16, as the converter does, each with a warning.
    _, files = exports["gpt2"]
    assert "blk.0.attn_qkv.weight: rows of 48 values are not whole Q8_0 blocks" in files["q8_0"][1]
    assert "not whole" not in files["f16"][1]
    # A pre-tokenizer llama.cpp has no name for becomes "default", with a warning.
    assert "writing tokenizer.ggml.pre 'default'" in exports["qwen3"][1]["f16"][1]
    # Mistral's window is not written (llama.cpp's llama attends to the whole context).
    assert "sliding_window 32 is not written" in exports["mistral"][1]["f16"][1]
    # The tied heads are stored once (token_embd), the untied ones as output.
    for name, tied in [("qwen2", True), ("llama-spm", True), ("llama", False), ("qwen3", False)]:
        names = {t.name for t in exports[name][1]["f32"][0].tensors}
        assert ("output.weight" in names) != tied, name


def test_gpt2s_own_tokenizer_is_exported_whole(tmp_path):
    model_dir = make_tiny_model(tmp_path / "gpt2")
    result = run_export(model_dir, tmp_path / "gpt2.gguf", "f16")
    assert result.returncode == 0, result.stderr
    fields = fields_of(gguf.GGUFReader(tmp_path / "gpt2.gguf"))
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (model_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert fields["tokenizer.ggml.pre"][0] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"][0] == sorted(vocab, key=vocab.get)
    assert fields["tokenizer.ggml.token_type"][0] == [T.NORMAL] * 50256 + [T.CONTROL]
    assert fields["tokenizer.ggml.merges"][0] == [line for line in merges if line]
    assert fields["tokenizer.ggml.eos_token_id"][0] == 50256


def write_peft_adapter(base_dir, adapter_dir, targets, r=4, alpha=8):
    """A LoRA adapter in PEFT's files (adapter_config.json, adapter_model.safetensors) with random
    A and B, and the weights it makes when merged: {HF name: W + alpha / r * B A}."""
    state = load_file(base_dir / "model.safetensors")
    generator = torch.Generator().manual_seed(3)
    tensors, merged = {}, {}
    for name, weight in state.items():
        if not any(f".{t}.weight" in name for t in targets):
            continue
        out_features, in_features = weight.shape
        a = torch.randn(r, in_features, generator=generator) * 0.2
        b = torch.randn(out_features, r, generator=generator) * 0.2
        module = "base_model.model." + name[:-len(".weight")]
        tensors[module + ".lora_A.weight"], tensors[module + ".lora_B.weight"] = a, b
        merged[name] = weight + alpha / r * (b @ a)
    adapter_dir.mkdir()
    save_file(tensors, adapter_dir / "adapter_model.safetensors")
    (adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets,
         "base_model_name_or_path": str(base_dir), "bias": "none", "task_type": "CAUSAL_LM"}))
    return merged


def test_an_adapter_export_equals_the_export_of_the_merged_model(exports, tmp_path):
    base_dir = exports["llama"][0]
    merged = write_peft_adapter(base_dir, tmp_path / "adapter", ["q_proj", "k_proj", "down_proj"])
    done = subprocess.run([LMTUNE, "merge", "--base", base_dir, "--adapter", tmp_path / "adapter",
                           "--out", tmp_path / "merged"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    outputs = {kind: [(dtype, tmp_path / f"{kind}-{dtype}.gguf") for dtype in ("f32", "q8_0")]
               for kind in ("adapter", "merged")}
    export_all(base_dir, outputs["adapter"], "--adapter", tmp_path / "adapter")
    export_all(tmp_path / "merged", outputs["merged"])
    for (dtype, with_adapter), (_, of_merged) in zip(outputs["adapter"], outputs["merged"]):
        ours, theirs = gguf.GGUFReader(with_adapter), gguf.GGUFReader(of_merged)
        assert fields_of(ours)["general.name"][0] == "adapter"
        mine = {k: v for k, v in fields_of(ours).items() if k != "general.name"}
        assert mine == {k: v for k, v in fields_of(theirs).items() if k != "general.name"}
        assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
        for a, b in zip(ours.tensors, theirs.tensors):
            assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name
    # The merge did happen: q rows are base + scale * B A, permuted for llama.cpp's rotation.
    q = next(t for t in gguf.GGUFReader(outputs["adapter"][0][1]).tensors
             if t.name == "blk.1.attn_q.weight")
    expected = merged["model.layers.1.self_attn.q_proj.weight"].numpy()
    expected = expected[rope_row_order(expected.shape[0], SHAPE["num_attention_heads"])]
    np.testing.assert_allclose(q.data, expected, rtol=1e-5, atol=1e-6)
    base_q = next(t for t in exports["llama"][1]["f32"][0].tensors if t.name == q.name)
    assert not np.allclose(base_q.data, q.data)


def error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmtune error: "), result.stderr
    return lines[0]


def test_bad_input_gets_one_line_and_its_exit_code_and_no_file(exports, tmp_path):
    source = exports["qwen2"][0]
    config = json.loads((source / "config.json").read_text())
    cases = [  # (--dtype, how the model directory is broken, exit code, words of the message)
        ("q4_0", lambda d: None, 2, ["--dtype 'q4_0'", "f32, f16, bf16, q8_0"]),
        ("f16", shutil.rmtree, 3, ["model"]),
        ("f16", lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00"), 3,
         ["model.safetensors"]),
        ("f16", lambda d: (d / "config.json").write_text(
            json.dumps({**config, "model_type": "bert"})), 3, ["config.json", "model_type 'bert'"]),
        ("f16", lambda d: (d / "config.json").write_text("{"), 3, ["config.json"]),
        ("f16", lambda d: (d / "tokenizer.json").unlink(), 3, ["no tokenizer files"]),
    ]
    runs = []
    for i, (dtype, break_model, code, words) in enumerate(cases):
        model_dir = Path(shutil.copytree(source, tmp_path / f"model{i}"))
        break_model(model_dir)
        out = tmp_path / f"out{i}.gguf"
        runs.append((subprocess.Popen(list(map(str, export_args(model_dir, out, dtype))),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                     out, code, words))
    for process, out, code, words in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == code, stderr
        line = error_line(subprocess.CompletedProcess([], code, "", stderr))
        assert all(word in line for word in words), line
        assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_an_existing_output_is_never_overwritten(exports, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_text("keep me")
    result = run_export(exports["qwen2"][0], out)
    assert result.returncode == 2
    assert f"--gguf {out}: exists" in error_line(result)
    assert out.read_text() == "keep me"


def test_biases_llama_cpps_qwen3_has_no_tensors_for_are_refused(tmp_path):
    model_dir = make_family_model(tmp_path / "qwen3-biased", "qwen3", attention_bias=True)
    result = run_export(model_dir, tmp_path / "out.gguf")
    assert result.returncode == 3
    line = error_line(result)
    assert "config.json" in line and "attention_bias" in line and "qwen3" in line
    assert not list(tmp_path.glob("out.gguf*"))  # neither the file nor its temporary file
