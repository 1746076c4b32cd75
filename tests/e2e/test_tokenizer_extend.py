"""`lmtune tokenizer extend` end to end: domain tokens added to a GPT-2 (vocab.json + merges.txt,
tied embeddings) and to a Llama (tokenizer.json, untied head); the result loads in transformers
with the mean row under each new id, tokenizes as lmtune does, and trains."""
import json

import pytest
import torch

from conftest import make_tiny_model, shakespeare, train_briefly
from test_tokenizer_json import lmtune_ids

DOMAIN_TOKENS = ["kinase", " phosphorylation", "<ligand>", "the", " the", "kinase"]
NEW_TOKENS = ["kinase", " phosphorylation", "<ligand>"]  # "the" and " the" are GPT-2 tokens


def extend(lmtune, model, tokens_file, out):
    result = lmtune("tokenizer", "extend", "--model", model, "--tokens", tokens_file, "--out", out)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(DOMAIN_TOKENS) + "\n\n", encoding="utf-8")
    return path


def weights_of(directory):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(directory), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model


def assert_mean_rows(old, new, first_id, count):
    old, new = old.detach(), new.detach()
    assert torch.equal(new[:old.shape[0]], old)
    mean = old.float().mean(0)
    for row in range(first_id, first_id + count):
        torch.testing.assert_close(new[row].float(), mean)


def test_gpt2_gets_the_tokens_and_mean_rows(lmtune, tmp_path, tokens_file):
    from transformers import AutoTokenizer

    base = make_tiny_model(tmp_path / "base")
    summary = extend(lmtune, base, tokens_file, tmp_path / "out")
    assert summary["added"] == NEW_TOKENS
    assert summary["present"] == ["the", " the", "kinase"]
    assert (summary["first_id"], summary["old_vocab_size"], summary["new_vocab_size"]) == \
        (50257, 50257, 50260)
    old, new = weights_of(base), weights_of(tmp_path / "out")
    assert new.config.vocab_size == 50260
    assert_mean_rows(old.transformer.wte.weight, new.transformer.wte.weight, 50257, 3)
    assert new.lm_head.weight.data_ptr() == new.transformer.wte.weight.data_ptr()  # still tied
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    texts = ["the kinase phosphorylation of <ligand>", "kinases phosphorylationkinase<ligand>\n"]
    for text, ids in zip(texts, lmtune_ids(lmtune, tmp_path / "out", texts, tmp_path)):
        assert ids == auto(text)["input_ids"], text
        assert auto.decode(ids) == text
    assert lmtune_ids(lmtune, tmp_path / "out", ["kinase"], tmp_path)[0] == [50257]


def test_the_extended_model_trains(lmtune, tmp_path, tokens_file):
    base = make_tiny_model(tmp_path / "base")
    extend(lmtune, base, tokens_file, tmp_path / "out")
    def domain(i):  # documents differ, or deduplication would drop them
        return f"The kinase {i} drives the phosphorylation of <ligand> {i * 7 % 13}.\n\n"

    (tmp_path / "train.txt").write_text("".join(map(domain, range(300))) + shakespeare(20_000))
    (tmp_path / "valid.txt").write_text("".join(map(domain, range(300, 320))))
    summary = train_briefly(lmtune, tmp_path, {"path": str(tmp_path / "out")}, max_steps=20)
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"]
    final = weights_of(tmp_path / "run" / "final")
    assert final.config.vocab_size == 50260
    start = weights_of(tmp_path / "out").transformer.wte.weight
    trained = final.transformer.wte.weight
    for row in range(50257, 50260):  # every new token occurs in the data: its row learned
        assert not torch.equal(trained[row], start[row])


def test_an_untied_llama_with_tokenizer_json_grows_both_matrices(lmtune, tmp_path, tokens_file):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare(30_000))
    result = lmtune("tokenizer", "train", "--files", corpus, "--vocab-size", 400,
                    "--pre-tokenizer", "llama3", "--out", tmp_path / "tok")
    assert result.returncode == 0, result.stderr
    base = tmp_path / "base"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, tie_word_embeddings=False)
                     ).save_pretrained(base)
    for file in (tmp_path / "tok").iterdir():
        (base / file.name).write_bytes(file.read_bytes())
    summary = extend(lmtune, base, tokens_file, tmp_path / "out")
    assert summary["first_id"] == 400 and summary["new_vocab_size"] == 400 + len(summary["added"])
    count = len(summary["added"])
    old, new = weights_of(base), weights_of(tmp_path / "out")
    assert_mean_rows(old.model.embed_tokens.weight, new.model.embed_tokens.weight, 400, count)
    assert_mean_rows(old.lm_head.weight, new.lm_head.weight, 400, count)
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = "ROMEO: the kinase <ligand> 123 🙂"
    assert lmtune_ids(lmtune, tmp_path / "out", [text], tmp_path)[0] == \
        auto(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("model,tokens,out_exists,code,message", [
    ("base", None, False, 3, "cannot read the token list"),
    ("base", "\n \n", False, 3, "lists no tokens"),
    ("missing", "kinase\n", False, 3, "missing: not a directory"),
    ("base", "kinase\n", True, 2, "exists and is not an empty directory"),
])
def test_bad_input_gets_one_line_and_its_exit_code(lmtune, tmp_path, model, tokens, out_exists,
                                                   code, message):
    make_tiny_model(tmp_path / "base")
    tokens_path = tmp_path / "tokens.txt"
    if tokens is not None:
        tokens_path.write_text(tokens)
    if out_exists:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "x").write_text("x")
    result = lmtune("tokenizer", "extend", "--model", tmp_path / model, "--tokens", tokens_path,
                    "--out", tmp_path / "out")
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    # Inputs are read and checked before the output directory is made.
    assert out_exists or not (tmp_path / "out").exists()
