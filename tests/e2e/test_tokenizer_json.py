"""`lmtune tokenize` on tokenizer.json files that the `tokenizers` package builds or trains, one
for each family in use (GPT-2 with Digits as SmolLM, Llama 3 and Qwen2 with a Split pattern,
SentencePiece-style BPE with byte fallback in its older and newer forms): the ids must be the
package's on varied text, and what lmtune cannot read must be refused with one line, exit 3."""
import json
import random

import pytest

from conftest import SHARED_DIR

GPT2_DIR = SHARED_DIR / "data" / "gpt2-tokenizer"
SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"

# The patterns of Llama 3's and Qwen2's tokenizer.json.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Ranges assigned long before the Unicode versions of PCRE2 and of the package's regex engine,
# so both classify them alike.
SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZàéîõüçñßÆøÅ",
    "cyrillic": [chr(c) for c in range(0x0410, 0x0450)],
    "greek": [chr(c) for c in range(0x03B1, 0x03CA)],
    "arabic": [chr(c) for c in range(0x0621, 0x064B)],
    "devanagari": [chr(c) for c in range(0x0905, 0x093A)] + ["\u094d", "\u093e"],
    "cjk": [chr(c) for c in range(0x4E00, 0x4F00)] + [chr(c) for c in range(0x3041, 0x3097)],
    "hangul": [chr(c) for c in range(0xAC00, 0xAC80)],
}
EMOJI = ["🤖", "🚀", "👍🏽", "🇺🇸", "👩‍💻", "❤️", "😀", "🎉", "☕"]
DIGITS = "0123456789²½Ⅻ①٣"
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "  \n\n  ", "\u00a0", "\u3000",
          "\x0b", "\x0c", "\u200b", "\u2028"]
PUNCTUATION = list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "«", "»", "¿", "'", "’"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't"]
# Characters NFC composes or leaves: e + combining acute, the Angstrom sign, Hangul jamo, a ligature.
UNNORMALIZED = ["e\u0301", "\u212b", "\u1100\u1161", "\ufb01", "A\u030a", "\u00c5"]


def random_text(rng, length, specials=()):
    """Mixed-script text: words of several scripts, emoji, digit runs, white-space runs,
    punctuation, contractions, characters NFC changes and now and then a special token."""
    parts = []
    while sum(map(len, parts)) < length:
        kind = rng.random()
        if kind < 0.4:
            alphabet = SCRIPTS[rng.choice(list(SCRIPTS))]
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
        elif kind < 0.5:
            parts.append("".join(rng.choice(DIGITS[:10] if rng.random() < 0.7 else DIGITS)
                                 for _ in range(rng.randint(1, 8))))
        elif kind < 0.58:
            parts.append("".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))))
        elif kind < 0.68:
            parts.append("".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 4))))
        elif kind < 0.74:
            parts.append(rng.choice(CONTRACTIONS))
        elif kind < 0.78:
            parts.append(rng.choice(UNNORMALIZED))
        elif kind < 0.8 and specials:
            parts.append(rng.choice(specials))
        else:
            parts.append(rng.choice(SPACES))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def fixed_texts(specials):
    """Hand-picked edge cases: starts and ends, runs, and special tokens among them."""
    first, last = specials[0], specials[-1]
    return [
        "Hello world", " Hello world", "  two leading spaces", "trailing  ", "\n\nleading newlines",
        "tabs\tand\t\ttabs", "line one\nline two\r\nline three\n\n\n", "   \n\t \n",
        "1234567890 12 345 6789 0.5 3,141,592", "In 2024, 1/3 of 999999 cats", "٣٤٥ ²³ ½ Ⅻ",
        "naïve café — ÅSTRÖM", "Привет, мир! Γειά σου κόσμε", "日本語のテキスト、中文文本。",
        "한국어 텍스트 नमस्ते दुनिया مرحبا بالعالم", "emoji 🤖🚀 👩‍💻 🇺🇸 ❤️ end",
        "don't I'LL we've she's THEY'RE", "e\u0301 vs \u00e9, \u212b vs \u00c5, \u1100\u1161",
        f"{first}start", f"end{last}", f"a {first} b{last}c", f"{first}{last}{first}",
        f"  {first}  spaced  {last}  ", f"line\n{first}\nnext", "x" * 300 + " " + "7" * 40,
        " " * 50 + "word" + "\n" * 10,
    ]


def texts_for(specials, seed, count=40):
    rng = random.Random(seed)
    return fixed_texts(specials) + [random_text(rng, rng.randint(1, 1500), specials)
                                    for _ in range(count)]


def lmtune_ids(lmtune, tokenizer_dir, texts, tmp_path):
    """The ids lmtune prints for each text, fed through files."""
    args = ["tokenize", "--tokenizer", tokenizer_dir]
    for i, text in enumerate(texts):
        path = tmp_path / f"text{i}.txt"
        path.write_bytes(text.encode("utf-8"))
        args += ["--file", path]
    result = lmtune(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(texts)
    return [json.loads(line) for line in lines]


def assert_same_ids(lmtune, tokenizer, tokenizer_dir, texts, tmp_path):
    got = lmtune_ids(lmtune, tokenizer_dir, texts, tmp_path)
    for text, ids in zip(texts, got):
        expected = tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == expected, repr(text[:200])
        # The package decodes them back to the text (lmtune's decoding is held to the package in
        # the unit tests).


def save(tokenizer, directory):
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def byte_level_spelling(text):
    """GPT-2's byte alphabet spelling of `text`, as vocabularies write tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(0x100 + extra)
            extra += 1
    return "".join(alphabet[b] for b in text.encode("utf-8"))


def gpt2_model(extra_words=(), ignore_merges=False):
    """GPT-2's vocabulary and merges as a `tokenizers` BPE model, with whole words added to the
    vocabulary (never reachable by merges) when `extra_words` are given."""
    from tokenizers import models

    vocab = json.loads((GPT2_DIR / "vocab.json").read_text(encoding="utf-8"))
    for word in extra_words:
        vocab.setdefault(byte_level_spelling(word), len(vocab))
    lines = (GPT2_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    return models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges)


CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def smollm_style(tmp_path_factory):
    """GPT-2-style byte-level BPE behind a Digits pre-tokenizer, trained as SmolLM's is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=CHAT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(1)
    corpus = [SHAKESPEARE.read_text(encoding="utf-8")[:300_000]] + \
             [random_text(rng, 2000) for _ in range(50)]
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer, save(tokenizer, tmp_path_factory.mktemp("smollm"))


@pytest.fixture(scope="module")
def llama3_style(tmp_path_factory):
    """Llama 3's pipeline (Split pattern, ByteLevel without its own pattern, ignore_merges, a
    BOS template) over GPT-2's vocabulary, with whole words only ignore_merges can reach."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, Regex

    tokenizer = Tokenizer(gpt2_model(extra_words=[" unbelievably", " Shakespearean", "123"],
                                     ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    # Flags as tokenizer_config.json files set them: white space around a mask is its own.
    tokenizer.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True,
                                     normalized=False)])
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tokenizer, save(tokenizer, tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="module")
def qwen2_style(tmp_path_factory):
    """Qwen2's pipeline: NFC, its Split pattern (digits one by one), ByteLevel without its own
    pattern, chat tokens, a single-word added token."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, \
        processors, Regex

    tokenizer = Tokenizer(gpt2_model())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(CHAT_TOKENS[1:])
    tokenizer.add_tokens([AddedToken("cafe\u0301", normalized=True),  # matched once normalized
                          AddedToken("word", single_word=True, normalized=False)])
    return tokenizer, save(tokenizer, tmp_path_factory.mktemp("qwen2"))


SP_SPECIALS = ["<unk>", "<s>", "</s>"]


def sentencepiece_style_json(byte_fallback=True):
    """A SentencePiece-style BPE trained on Shakespeare with few characters, so that most scripts
    need byte fallback (or <unk>): the vocabulary starts <unk>, <s>, </s>, <0x00>..<0xFF> as
    Llama 2's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SP_SPECIALS, limit_alphabet=70)
    trained.train_from_iterator([SHAKESPEARE.read_text(encoding="utf-8")[:200_000]], trainer)
    model = json.loads(trained.to_str())["model"]
    vocab = {token: i for i, token in enumerate(SP_SPECIALS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    model.update(vocab=vocab, unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=True)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SP_SPECIALS)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
            "model": model}


REPLACE_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
BOS_TEMPLATE = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<s>", "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}


def legacy_sentencepiece(tree):
    """Llama 2's form: ▁ put in by the normalizer, no pre-tokenizer."""
    tree = dict(tree, pre_tokenizer=None, decoder=REPLACE_DECODER, post_processor=BOS_TEMPLATE)
    tree["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    return tree


def metaspace_sentencepiece(tree, scheme, split):
    """The newer form: a Metaspace pre-tokenizer and decoder."""
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}
    return dict(tree, normalizer=None, pre_tokenizer=metaspace, post_processor=BOS_TEMPLATE,
                decoder={"type": "Sequence", "decoders": [
                    {"type": "ByteFallback"}, {"type": "Fuse"}, metaspace]})


def write_tree(tree, directory):
    from tokenizers import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tree, ensure_ascii=False), encoding="utf-8")
    return Tokenizer.from_file(str(directory / "tokenizer.json")), directory


@pytest.fixture(scope="module")
def sentencepiece_tree():
    return sentencepiece_style_json()


def test_smollm_style_digits_and_byte_level_match_tokenizers(lmtune, smollm_style, tmp_path):
    tokenizer, directory = smollm_style
    assert_same_ids(lmtune, tokenizer, directory, texts_for(CHAT_TOKENS, seed=1), tmp_path)


def test_llama3_style_split_pattern_and_ignore_merges_match_tokenizers(lmtune, llama3_style,
                                                                       tmp_path):
    tokenizer, directory = llama3_style
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<mask>", " <mask> ", "<|end_of_text|>"]
    texts = texts_for(specials, seed=2) + [
        "He was unbelievably Shakespearean in 123 ways: 1234 123123",
        "a<mask>b  <mask>\n\n<mask>\tc"]
    assert_same_ids(lmtune, tokenizer, directory, texts, tmp_path)
    # ignore_merges matters: the added whole words are single tokens.
    assert len(tokenizer.encode(" unbelievably", add_special_tokens=False).ids) == 1


def test_qwen2_style_nfc_and_added_token_flags_match_tokenizers(lmtune, qwen2_style, tmp_path):
    tokenizer, directory = qwen2_style
    specials = CHAT_TOKENS[1:] + ["cafe\u0301", "café", " word ", "word"]
    texts = texts_for(specials, seed=3) + [
        "a word, words, sword, word_, (word) 1word", "café cafe\u0301 CAFÉ",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]
    assert_same_ids(lmtune, tokenizer, directory, texts, tmp_path)


def test_legacy_sentencepiece_style_matches_tokenizers(lmtune, sentencepiece_tree, tmp_path):
    tokenizer, directory = write_tree(legacy_sentencepiece(sentencepiece_tree), tmp_path / "tok")
    texts = texts_for(SP_SPECIALS, seed=4)
    assert_same_ids(lmtune, tokenizer, directory, texts, tmp_path)
    # Most scripts are outside the vocabulary: byte fallback is exercised.
    assert "<0xE6>" in tokenizer.encode("日本", add_special_tokens=False).tokens


@pytest.mark.parametrize("scheme, split", [("always", True), ("first", False), ("never", True),
                                           ("first", True)])
def test_metaspace_sentencepiece_style_matches_tokenizers(lmtune, sentencepiece_tree, tmp_path,
                                                          scheme, split):
    tree = metaspace_sentencepiece(sentencepiece_tree, scheme, split)
    tokenizer, directory = write_tree(tree, tmp_path / "tok")
    assert_same_ids(lmtune, tokenizer, directory, texts_for(SP_SPECIALS, seed=5, count=15), tmp_path)


def test_unknown_characters_fuse_into_one_unk_without_byte_fallback(lmtune, tmp_path):
    tree = legacy_sentencepiece(sentencepiece_style_json(byte_fallback=False))
    tokenizer, directory = write_tree(tree, tmp_path / "tok")
    texts = ["日本語 and Ελληνικά", "mixed 日x本 🤖🤖 z"] + texts_for(SP_SPECIALS, seed=6, count=10)
    assert_same_ids(lmtune, tokenizer, directory, texts, tmp_path)
    assert tokenizer.encode("日本語", add_special_tokens=False).tokens == ["▁", "<unk>"]


@pytest.mark.parametrize("behavior", ["removed", "isolated", "merged_with_previous",
                                      "merged_with_next", "contiguous"])
@pytest.mark.parametrize("invert", [False, True])
def test_split_behaviors_match_tokenizers(lmtune, tmp_path, behavior, invert):
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers

    tokenizer = Tokenizer(gpt2_model())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}+|[.,]"), behavior=behavior, invert=invert),
        pre_tokenizers.Split(" ", behavior="merged_with_next"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    directory = save(tokenizer, tmp_path / "tok")
    texts = ["ab12c3d45", "1.5, 2.25 and 300", "no digits here", "9", " 12 ,, 3 ."]
    assert_same_ids(lmtune, tokenizer, directory, texts + texts_for(["."], seed=7, count=5), tmp_path)


def unsupported_trees(base):
    """(tokenizer.json, text the error line must hold) for components lmtune refuses."""
    def with_(**parts):
        return dict(base, **parts)

    return [
        (with_(normalizer={"type": "Lowercase"}), 'normalizer: the normalizer "Lowercase" is not supported'),
        (with_(pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}]}),
         'pre_tokenizer.pretokenizers[0]: the pre-tokenizer "Whitespace" is not supported'),
        (with_(decoder={"type": "WordPiece", "prefix": "##", "cleanup": True}),
         'decoder: the decoder "WordPiece" is not supported'),
        (with_(post_processor={"type": "Unknown"}), 'post_processor: the post-processor "Unknown"'),
        (with_(model=dict(base["model"], type="Unigram")), 'model.type "Unigram" is not BPE'),
        (with_(model=dict(base["model"], dropout=0.1)), "model.dropout is set"),
        (with_(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel", "add_prefix_space": False}, {"type": "Digits"}]}),
         'pre_tokenizer.pretokenizers[1]: the pre-tokenizer "Digits" after ByteLevel is not supported'),
    ]


def malformed_trees(base):
    """(tokenizer.json, text the error line must hold) for broken components."""
    def with_(**parts):
        return dict(base, **parts)

    split = {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}
    return [
        (with_(pre_tokenizer=split), "pre_tokenizer.pattern.Regex: PCRE2 cannot compile"),
        (with_(pre_tokenizer=dict(split, pattern={"Regex": "a"}, behavior="Sideways")),
         "pre_tokenizer.behavior: expected Removed, Isolated"),
        (with_(normalizer={"type": "Replace", "pattern": {"Glob": "*"}, "content": ""}),
         "normalizer.pattern: expected {\"String\": TEXT} or {\"Regex\": PATTERN}"),
        (with_(normalizer={"type": "Sequence"}), "normalizer.normalizers: expected a list"),
        (with_(decoder={"type": "Strip", "content": " ", "start": -1, "stop": 0}),
         "decoder.start: expected a whole number"),
        (with_(pre_tokenizer=[1, 2]), 'pre_tokenizer: expected an object with a "type"'),
        (with_(post_processor=dict(BOS_TEMPLATE, special_tokens={})),
         'post_processor.single[0]: special token "<s>" is not in post_processor.special_tokens'),
        (with_(model=dict(base["model"], unk_token="<nope>")),
         'model.unk_token: "<nope>" is not in model.vocab'),
        (with_(added_tokens=[{"id": 1, "content": "<s>", "lstrip": "yes"}]),
         "added_tokens[0].lstrip: expected true or false"),
    ]


def test_unsupported_and_malformed_tokenizer_json_exit_3_naming_file_and_key(lmtune, tmp_path,
                                                                             sentencepiece_tree):
    base = legacy_sentencepiece(sentencepiece_tree)
    cases = unsupported_trees(base) + malformed_trees(base)
    for i, (tree, expected) in enumerate(cases):
        directory = tmp_path / f"case{i}"
        directory.mkdir()
        (directory / "tokenizer.json").write_text(json.dumps(tree), encoding="utf-8")
        result = lmtune("tokenize", "--tokenizer", directory, "--text", "hello")
        assert result.returncode == 3, (expected, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("lmtune error: ") and str(directory / "tokenizer.json") in lines[0]
        assert expected in lines[0], (expected, lines[0])


@pytest.mark.parametrize("family", ["llama3", "sentencepiece"])
def test_saved_tokenizer_json_loads_in_transformers_with_its_template(lmtune, llama3_style,
                                                                      sentencepiece_tree, tmp_path,
                                                                      family):
    from transformers import AutoTokenizer

    if family == "llama3":
        tokenizer, source = llama3_style
    else:
        tokenizer, source = write_tree(legacy_sentencepiece(sentencepiece_tree), tmp_path / "source")
    text = "Saved by lmtune: naïve 日本語 🤖 1234"
    result = lmtune("tokenize", "--tokenizer", source, "--save", tmp_path / "out", "--text", text)
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)
    assert ids == tokenizer.encode(text, add_special_tokens=False).ids
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert hf(text, add_special_tokens=False)["input_ids"] == ids
    # transformers frames a text with the template's BOS, as lmtune's framing() says it should.
    assert hf(text)["input_ids"] == tokenizer.encode(text).ids
    assert hf.decode(ids) == tokenizer.decode(ids, skip_special_tokens=False)
