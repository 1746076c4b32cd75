"""`lmtune prepare` through the real binary with GPT-2's tokenizer: the report, the token cache's
files and their loss masks, cache reuse, and the errors bad data gives (exit 3, file:line)."""
import json
import shutil
import struct
from pathlib import Path

import pytest

from conftest import SHARED_DIR

GPT2_TOKENIZER = SHARED_DIR / "data" / "gpt2-tokenizer"
EOS = 50256
ASCII_SPACE = " \t\n\v\f\r"


@pytest.fixture
def model_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_TOKENIZER / name, model / name)
    return model


def write_config(tmp_path, model_dir, train, **data):
    config = {"model": {"path": str(model_dir)},
              "data": {"train": str(train), "seq_len": 16, **data},
              "run": {"output_dir": str(tmp_path / "run"), "threads": 2}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def report_of(result):
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def read_split(cache_dir, split):
    """The split's token stream and loss mask, as lists."""
    raw = (cache_dir / f"{split}.tokens").read_bytes()
    tokens = list(struct.unpack(f"<{len(raw) // 4}I", raw))
    mask = list((cache_dir / f"{split}.mask").read_bytes())
    assert len(mask) == len(tokens)
    return tokens, mask


def test_tokens_are_gpt2s_joined_by_end_of_text(lmtune, tmp_path, model_dir):
    vectors = GPT2_TOKENIZER / "vectors.jsonl"
    config = write_config(tmp_path, model_dir, vectors, dedupe=False, drop_control_chars=False)
    report = report_of(lmtune("prepare", config))
    expected = [EOS]
    for line in vectors.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        if any(c not in ASCII_SPACE for c in case["text"]):  # blank documents are dropped
            expected += case["ids"] + [EOS]
    tokens, mask = read_split(Path(report["cache_dir"]), "train")
    assert tokens[:len(expected)] == expected
    assert set(tokens[len(expected):]) <= {EOS} and not any(mask[len(expected):])
    assert (len(tokens) - 1) % 16 == 0
    assert report["train_windows"] == (len(tokens) - 1) // 16
    assert report["train_tokens"] == len(expected) - 1
    assert report["from_cache"] is False and report["files"] == 1


def test_report_summary_and_cache_reuse(lmtune, tmp_path, model_dir, machine_cache):
    train = tmp_path / "train.txt"
    train.write_text("First paragraph, see https://example.com.\n\n<b>Second</b> one.\n\n"
                     "First paragraph, see https://example.com.\n\nx\n")
    config = write_config(tmp_path, model_dir, train, strip_urls=True, strip_html=True,
                          min_chars=3)
    result = lmtune("prepare", config)
    report = report_of(result)
    assert report["documents"] == 4
    assert report["urls_stripped"] == 2 and report["html_tags_stripped"] == 2
    assert report["dropped_duplicates"] == 1 and report["dropped_short"] == 1
    assert report["train_documents"] == 2 and report["mb_per_sec"] > 0
    assert report["cache_dir"].startswith(str(machine_cache / "tokens"))
    assert "MB/s" in result.stderr and "lmtune info: " in result.stderr

    again = report_of(lmtune("prepare", config))
    assert again["from_cache"] is True and again["cache_dir"] == report["cache_dir"]
    changed = report_of(lmtune("prepare", config, "--set", "data.seq_len=8"))
    assert changed["from_cache"] is False and changed["cache_dir"] != report["cache_dir"]


def test_prompt_tokens_carry_no_loss(lmtune, tmp_path, model_dir):
    train = tmp_path / "pairs.jsonl"
    train.write_text(json.dumps({"prompt": "Hello", "completion": " world"}) + "\n")
    report = report_of(lmtune("prepare", write_config(tmp_path, model_dir, train)))
    tokens, mask = read_split(Path(report["cache_dir"]), "train")
    assert tokens[:4] == [EOS, 15496, 995, EOS]  # "Hello", " world"
    assert mask[:4] == [0, 0, 1, 1]


def test_validation_split_and_cache_dir(lmtune, tmp_path, model_dir):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"document number {i}\n\n" for i in range(10)))
    config = write_config(tmp_path, model_dir, train, validation_split=0.2,
                          cache_dir=str(tmp_path / "tokens"))
    report = report_of(lmtune("prepare", config))
    assert (report["train_documents"], report["validation_documents"]) == (8, 2)
    assert report["cache_dir"].startswith(str(tmp_path / "tokens"))
    assert report["validation_windows"] >= 1


def test_bad_json_line_is_exit_3_naming_file_and_line(lmtune, tmp_path, model_dir):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "fine"}\n{"text": broken}\n')
    result = lmtune("prepare", write_config(tmp_path, model_dir, train))
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"lmtune error: {train}:2: invalid JSON: ")
    assert result.stdout == ""

    skipped = report_of(lmtune("prepare", write_config(tmp_path, model_dir, train,
                                                       skip_bad_lines=True)))
    assert skipped["bad_lines_skipped"] == 1 and skipped["train_documents"] == 1


def test_missing_and_empty_data_are_exit_3(lmtune, tmp_path, model_dir, machine_cache):
    missing = tmp_path / "missing.txt"
    result = lmtune("prepare", write_config(tmp_path, model_dir, missing))
    assert result.returncode == 3
    assert f"{missing}: no such file or directory (data.train)" in result.stderr

    short = tmp_path / "short.txt"
    short.write_text("a\n\nb\n")
    result = lmtune("prepare", write_config(tmp_path, model_dir, short, min_chars=5))
    assert result.returncode == 3
    assert (f"{short}: all 2 documents were dropped: 2 shorter than data.min_chars=5"
            in result.stderr)
    # No cache, complete or not: only the builders' lock file (test_run_lock.py) stays.
    left = [p.name for p in (machine_cache / "tokens").iterdir() if not p.name.endswith(".lock")]
    assert not left
