"""`lmtune tokenize` through the real binary: parity with tiktoken, transformers and sentencepiece,
saved files that transformers loads, and the errors and exit codes of broken tokenizers."""
import json
import random
import shutil

import pytest

from conftest import SHARED_DIR

GPT2_DIR = SHARED_DIR / "data" / "gpt2-tokenizer"
SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken's own GPT-2 encoding (its pattern and specials), built from the shared files
    because nothing can be downloaded."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # the pattern of tiktoken's "gpt2"

    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(GPT2_DIR / "merges.txt"),
                                            encoder_json_file=str(GPT2_DIR / "vocab.json"))
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def tokenize(lmtune, tokenizer_dir, inputs, flag="--file"):
    """The ids lmtune prints for each input, one JSON array per line."""
    args = ["tokenize", "--tokenizer", tokenizer_dir]
    for item in inputs:
        args += [flag, item]
    result = lmtune(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(inputs)
    return [json.loads(line) for line in lines]


def write_texts(directory, texts):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = directory / f"text{i}.txt"
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


# Ranges assigned long before the Unicode versions of PCRE2 and of tiktoken's regex engine, so both
# classify them alike.
SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZàéîõüçñßÆøÅ",
    "cyrillic": [chr(c) for c in range(0x0410, 0x0450)],
    "greek": [chr(c) for c in range(0x03B1, 0x03CA)],
    "arabic": [chr(c) for c in range(0x0621, 0x064B)],
    "hebrew": [chr(c) for c in range(0x05D0, 0x05EB)],
    "devanagari": [chr(c) for c in range(0x0905, 0x093A)] + ["\u094d", "\u093e"],
    "cjk": [chr(c) for c in range(0x4E00, 0x4F00)] + [chr(c) for c in range(0x3041, 0x3097)],
    "hangul": [chr(c) for c in range(0xAC00, 0xAC80)],
}
EMOJI = ["🤖", "🚀", "👍🏽", "🇺🇸", "👩‍💻", "❤️", "😀", "🎉", "☕"]
DIGITS = "0123456789²½Ⅻ①٣"
SPACES = [" ", "  ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c",
          "\x85", "\u200b", " \n ", "   \t"]
PUNCTUATION = list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "–", "«", "»", "„", "“", "”",
                                                           "¿", "¡", "\u0301", "'"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’s", "n't"]


def random_text(rng, length):
    """Mixed-script text: words of several scripts, emoji, numbers, white-space runs, punctuation,
    contractions and an occasional <|endoftext|>."""
    parts = []
    while sum(map(len, parts)) < length:
        kind = rng.random()
        if kind < 0.45:
            alphabet = SCRIPTS[rng.choice(list(SCRIPTS))]
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
        elif kind < 0.55:
            parts.append("".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 7))))
        elif kind < 0.65:
            parts.append("".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))))
        elif kind < 0.75:
            parts.append("".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 4))))
        elif kind < 0.82:
            parts.append(rng.choice(CONTRACTIONS))
        elif kind < 0.83:
            parts.append(EOT)
        else:
            parts.append(rng.choice(SPACES))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def test_all_of_shakespeare_matches_tiktoken(lmtune, tiktoken_gpt2):
    [ids] = tokenize(lmtune, GPT2_DIR, [SHAKESPEARE])
    assert ids == tiktoken_gpt2.encode_ordinary(SHAKESPEARE.read_text(encoding="utf-8"))


def test_random_mixed_script_text_matches_tiktoken(lmtune, tiktoken_gpt2, tmp_path):
    rng = random.Random(20240611)
    texts = [random_text(rng, rng.randint(1, 3000)) for _ in range(60)]
    paths = write_texts(tmp_path, texts)
    for text, ids in zip(texts, tokenize(lmtune, GPT2_DIR, paths)):
        assert ids == tiktoken_gpt2.encode(text, allowed_special="all"), repr(text[:200])
    # --text takes the same path as --file.
    assert tokenize(lmtune, GPT2_DIR, texts[:3], flag="--text") == \
        [tiktoken_gpt2.encode(t, allowed_special="all") for t in texts[:3]]


@pytest.fixture(scope="module")
def hf_tokenizer_json_dir(tmp_path_factory):
    """The directory transformers writes for GPT-2's tokenizer: tokenizer.json (merges as pairs)
    and tokenizer_config.json."""
    from transformers import GPT2TokenizerFast

    source = tmp_path_factory.mktemp("gpt2-files")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_DIR / name, source / name)
    saved = tmp_path_factory.mktemp("hf-saved")
    GPT2TokenizerFast.from_pretrained(str(source)).save_pretrained(str(saved))
    assert (saved / "tokenizer.json").exists()
    return saved


def test_transformers_tokenizer_json_gives_identical_ids(lmtune, tiktoken_gpt2, hf_tokenizer_json_dir,
                                                         tmp_path):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(hf_tokenizer_json_dir))
    rng = random.Random(5)
    texts = [SHAKESPEARE.read_text(encoding="utf-8")[:100_000], random_text(rng, 4000),
             f"Hello world{EOT}and again {EOT} after"]
    got = tokenize(lmtune, hf_tokenizer_json_dir, write_texts(tmp_path, texts))
    for text, ids in zip(texts, got):
        assert ids == hf(text)["input_ids"]
        assert ids == tiktoken_gpt2.encode(text, allowed_special="all")


@pytest.mark.parametrize("in_tokenizer_json, in_config", [(True, True), (True, False), (False, True)])
def test_string_merges_and_add_prefix_space_follow_transformers(lmtune, hf_tokenizer_json_dir,
                                                                tmp_path, in_tokenizer_json,
                                                                in_config):
    from transformers import AutoTokenizer

    tree = json.loads((hf_tokenizer_json_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tree["model"]["merges"] = [" ".join(pair) for pair in tree["model"]["merges"]]
    tree["pre_tokenizer"]["add_prefix_space"] = in_tokenizer_json
    (tmp_path / "tokenizer.json").write_text(json.dumps(tree), encoding="utf-8")
    config = json.loads((hf_tokenizer_json_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["add_prefix_space"] = in_config  # transformers lets this one win
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["Hello world", " leading space", f"one{EOT}two", "naïve 日本語"]
    assert tokenize(lmtune, tmp_path, texts, flag="--text") == [hf(t)["input_ids"] for t in texts]


@pytest.mark.parametrize("source", ["gpt2-files", "tokenizer-json"])
def test_saved_files_load_in_transformers(lmtune, hf_tokenizer_json_dir, tmp_path, source):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    tokenizer_dir = GPT2_DIR if source == "gpt2-files" else hf_tokenizer_json_dir
    text = f"Saved by lmtune {EOT} and loaded by transformers: naïve 日本語 🤖"
    result = lmtune("tokenize", "--tokenizer", tokenizer_dir, "--save", tmp_path / "out", "--text", text)
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)
    expected_files = {"vocab.json", "merges.txt"} if source == "gpt2-files" else {"tokenizer.json"}
    assert expected_files | {"tokenizer_config.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    for loader in (GPT2TokenizerFast, AutoTokenizer):
        hf = loader.from_pretrained(str(tmp_path / "out"))
        assert hf(text)["input_ids"] == ids
        assert hf.eos_token_id == 50256
        assert hf.decode(ids) == text


def test_sentencepiece_matches_python_package(lmtune, tmp_path):
    import sentencepiece as spm  # a test dependency (scripts/requirements.txt): missing, it fails
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    (tmp_path / "sp").mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp" / "tokenizer"),
                                   vocab_size=500, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp" / "tokenizer.model"))
    texts = ["First Citizen:\nBefore we proceed any further, hear me speak.",
             "ROMEO: naïve café, 1234 — unseen ✓ characters", "   spaced   out   "]
    assert tokenize(lmtune, tmp_path / "sp", texts, flag="--text") == [sp.encode(t) for t in texts]


def copy_gpt2(directory, vocab=None, merges=None):
    directory.mkdir()
    (directory / "vocab.json").write_bytes(vocab if vocab is not None else (GPT2_DIR / "vocab.json").read_bytes())
    (directory / "merges.txt").write_bytes(merges if merges is not None else (GPT2_DIR / "merges.txt").read_bytes())
    return directory


def broken_tokenizers(tmp_path):
    """(directory, text the error line must hold) for each way a tokenizer can be broken."""
    merges = (GPT2_DIR / "merges.txt").read_bytes()
    tree = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "tokenizer.json").write_text(tree[:30])
    return [
        (tmp_path / "absent", "absent: not a directory"),
        (copy_gpt2(tmp_path / "garbled", vocab=b'{"!": 0, "\\"": 1,'), "vocab.json: not valid JSON"),
        (copy_gpt2(tmp_path / "malformed", merges=b"\n".join(merges.split(b"\n")[:20]) + b"\nnot-a-pair\n"),
         "merges.txt: line 21: expected two tokens"),
        (copy_gpt2(tmp_path / "unknown", merges=b"#version: 0.2\n\xc4\xa0 t\nqqq zzz\n"),
         "merges.txt: line 3: token 'qqq' is not in vocab.json"),
        (tmp_path / "truncated", "tokenizer.json: not valid JSON"),
    ]


def test_broken_tokenizers_exit_3_naming_the_file(lmtune, tmp_path):
    for directory, expected in broken_tokenizers(tmp_path):
        result = lmtune("tokenize", "--tokenizer", directory, "--text", "hello")
        assert result.returncode == 3, (directory, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("lmtune error: ") and expected in result.stderr, result.stderr


def test_usage_and_input_errors(lmtune, tmp_path):
    missing = lmtune("tokenize", "--tokenizer", GPT2_DIR, "--file", tmp_path / "nope.txt")
    assert missing.returncode == 3 and "nope.txt: cannot read the input file" in missing.stderr
    for args, message in [
            (["--tokenizer", GPT2_DIR], "tokenize: give --text, --file or --save"),
            (["--tokenizer", GPT2_DIR, "--text", "a", "--file", SHAKESPEARE], "--text excludes --file"),
            (["--text", "a"], "--tokenizer is required")]:
        result = lmtune("tokenize", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert f"lmtune error: {message}" in result.stderr, result.stderr


def test_bench_reports_one_json_line(lmtune):
    result = lmtune("tokenize", "--tokenizer", GPT2_DIR, "--text", " ".join(["Hello world"] * 100), "--bench",
                    "--repeats", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes"] == 1199 and report["tokens"] == 200
    assert report["seconds"] > 0 and report["mb_per_sec"] > 0
