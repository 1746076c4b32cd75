"""`lmtune tokenizer train` end to end: for each pre-tokenizer, the tokenizer it writes must load in
the `tokenizers` package and in transformers and give lmtune's ids on varied text; its merges are
compared with the package's own BpeTrainer on the same documents; a model trains from scratch with
it; bad input gets one line and the documented exit code."""
import json
import random
import time
import unicodedata

import pytest

from conftest import SHARED_DIR, train_briefly
from test_tokenizer_json import lmtune_ids, random_text, texts_for

SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"
PRE_TOKENIZERS = ["gpt2", "llama3", "qwen2", "smollm"]
SPECIALS = ["<|endoftext|>", "<|pad|>"]
VOCAB_SIZE = 1500


def corpus_documents(seed=3):
    """Shakespeare's paragraphs and mixed-script documents (emoji, digit and white-space runs),
    none holding a special token: the package's trainer would count one as text."""
    rng = random.Random(seed)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000]
    documents = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    documents += [random_text(rng, rng.randint(200, 3000)).replace("\n\n", "\n")
                  for _ in range(60)]
    # .jsonl keeps every document exactly as written (a .txt would cut them at blank lines).
    return [d for d in documents if d.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    documents = corpus_documents()
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    return path, documents


def train_tokenizer(lmtune, files, out, pre_tokenizer, vocab_size=VOCAB_SIZE, specials=SPECIALS):
    args = ["tokenizer", "train", "--vocab-size", vocab_size, "--out", out,
            "--pre-tokenizer", pre_tokenizer, "--files", *files]
    for token in specials:
        args += ["--special-token", token]
    result = lmtune(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=PRE_TOKENIZERS)
def trained(request, corpus, tmp_path_factory):
    from conftest import run_lmtune

    out = tmp_path_factory.mktemp(request.param) / "tok"
    summary = train_tokenizer(run_lmtune, [corpus[0]], out, request.param)
    return request.param, out, summary


def package_trained(documents, tokenizer_json, vocab_size, min_frequency=2):
    """The `tokenizers` package's BpeTrainer on the same documents, behind the same normalizer and
    pre-tokenizer, given every byte as its alphabet; returns (tokenizer, seconds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    ours = Tokenizer.from_file(str(tokenizer_json))
    theirs = Tokenizer(models.BPE())
    theirs.normalizer = ours.normalizer
    theirs.pre_tokenizer = ours.pre_tokenizer
    theirs.decoder = ours.decoder
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    start = time.perf_counter()
    theirs.train_from_iterator(documents, trainer)
    return theirs, time.perf_counter() - start


def model_of(tokenizer):
    tree = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in tree["merges"]]
    return tree["vocab"], merges


def test_the_summary_counts_what_was_trained(trained, corpus):
    _, out, summary = trained
    assert summary["vocab_size"] == VOCAB_SIZE
    assert summary["merges"] == VOCAB_SIZE - len(SPECIALS) - 256
    assert summary["documents"] == len(corpus[1])
    assert summary["bytes"] == sum(len(d.encode("utf-8")) for d in corpus[1])
    assert {p.name for p in out.iterdir()} == {"tokenizer.json", "vocab.json", "merges.txt",
                                               "tokenizer_config.json"}


def test_tokenizers_and_transformers_encode_as_lmtune(lmtune, trained, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    name, out, _ = trained
    package = Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(out))
    assert auto.eos_token == SPECIALS[0] and auto.eos_token_id == 0
    texts = texts_for(SPECIALS, seed=11) + [SHAKESPEARE.read_text(encoding="utf-8")[-20_000:]]
    got = lmtune_ids(lmtune, out, texts, tmp_path)
    for text, ids in zip(texts, got):
        assert ids == package.encode(text, add_special_tokens=False).ids, repr(text[:200])
        assert ids == auto(text, add_special_tokens=False)["input_ids"], repr(text[:200])
        # Decoding gives back the text the tokenizer saw: Qwen2's in NFC.
        seen = unicodedata.normalize("NFC", text) if name == "qwen2" else text
        assert auto.decode(ids) == seen, repr(text[:200])


@pytest.mark.slow
def test_merges_match_the_tokenizers_bpe_trainer(trained, corpus):
    """Same rule, same ids: the package's trainer learns the same vocabulary and merges, in the
    same order, on these documents (docs/tokenizers.md tells when the two can part)."""
    name, out, _ = trained
    theirs, _ = package_trained(corpus[1], out / "tokenizer.json", VOCAB_SIZE)
    their_vocab, their_merges = model_of(theirs)
    ours = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    our_merges = [tuple(m.split(" ")) for m in ours["merges"]]
    assert len(our_merges) == len(their_merges)
    same_prefix = next((i for i, (a, b) in enumerate(zip(our_merges, their_merges)) if a != b),
                       len(our_merges))
    assert same_prefix == len(our_merges), f"{name}: merges part at rank {same_prefix}"
    assert ours["vocab"] == their_vocab


@pytest.mark.parametrize("trained", ["gpt2"], indirect=True)  # GPT-2's files imply its pattern
def test_gpt2_files_encode_as_the_tokenizer_json(lmtune, trained, tmp_path):
    """vocab.json + merges.txt hold the same vocabulary; with the gpt2 pre-tokenizer they encode
    as GPT-2's own files do, so transformers' GPT2Tokenizer gives the same ids."""
    from transformers import GPT2Tokenizer

    name, out, _ = trained
    assert name == "gpt2"
    gpt2_dir = tmp_path / "gpt2-files"
    gpt2_dir.mkdir()
    for file in ("vocab.json", "merges.txt"):
        (gpt2_dir / file).write_bytes((out / file).read_bytes())
    slow = GPT2Tokenizer(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt"))
    texts = texts_for(SPECIALS[:1], seed=5, count=10)
    from_json = lmtune_ids(lmtune, out, texts, tmp_path)
    from_files = lmtune_ids(lmtune, gpt2_dir, texts, tmp_path)
    assert from_files == from_json
    for text, ids in zip(texts, from_files):
        assert ids == slow.encode(text), repr(text[:200])


def test_a_txt_file_trains_the_same_tokenizer_as_its_paragraphs(lmtune, corpus, tmp_path):
    documents = [d for d in corpus[1] if "\n\n" not in d and d == d.strip("\n")][:300]
    (tmp_path / "train.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    train_tokenizer(lmtune, [tmp_path / "train.txt"], tmp_path / "a", "gpt2", vocab_size=600)
    train_tokenizer(lmtune, [tmp_path / "train.jsonl"], tmp_path / "b", "gpt2", vocab_size=600)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == \
        (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_a_model_trains_from_scratch_with_the_new_tokenizer(lmtune, corpus, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = SHAKESPEARE.read_text(encoding="utf-8")
    (tmp_path / "train.txt").write_text(text[:60_000], encoding="utf-8")
    (tmp_path / "valid.txt").write_text(text[60_000:66_000], encoding="utf-8")
    tokenizer_dir = tmp_path / "tok"
    train_tokenizer(lmtune, [tmp_path / "train.txt"], tokenizer_dir, "gpt2", vocab_size=800)
    from_scratch = {"init": "random", "tokenizer": str(tokenizer_dir), "n_layer": 1, "n_head": 2,
                    "n_embd": 32, "n_positions": 64}
    summary = train_briefly(lmtune, tmp_path, from_scratch, max_steps=30)
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"]
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert model.config.vocab_size >= 800
    auto = AutoTokenizer.from_pretrained(str(final))
    sample = "ROMEO: What light through yonder window breaks?"
    ids = lmtune_ids(lmtune, final, [sample], tmp_path)[0]
    assert ids == auto(sample)["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([ids])).logits).all()


@pytest.mark.parametrize("args,code,message", [
    (["--files", "/nonexistent/corpus.txt"], 3, "/nonexistent/corpus.txt: no such file"),
    (["--vocab-size", "100"], 2, "vocabulary size 100 is out of range"),
    (["--pre-tokenizer", "bert"], 2, "--pre-tokenizer: bert not in {gpt2,llama3,qwen2,smollm}"),
    (["--out", "{tmp}/corpus.txt/tok"], 2, "cannot create the directory"),
    (["--out", "{tmp}"], 2, "exists and is not an empty directory"),
    (["--files", "{tmp}/empty.txt"], 3, "no text to train a tokenizer on"),
])
def test_bad_input_gets_one_line_and_its_exit_code(lmtune, tmp_path, args, code, message):
    (tmp_path / "corpus.txt").write_text("some text to train on\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    options = {"--files": str(tmp_path / "corpus.txt"), "--vocab-size": "300",
               "--out": str(tmp_path / "new")}
    for flag, value in zip(args[::2], args[1::2]):
        options[flag] = value.replace("{tmp}", str(tmp_path))
    result = lmtune("tokenizer", "train", *[x for item in options.items() for x in item])
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
