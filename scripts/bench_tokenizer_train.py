"""Helper of scripts/bench-tokenizer-train.sh: `lmtune tokenizer train` against the `tokenizers`
package's BpeTrainer on the same documents, vocabulary size and pre-tokenizer: training time,
agreement of the merges, and compression (bytes per token) of held-out text, with GPT-2's own
tokenizer as the base for comparison."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def documents_of(paths):
    """Each file cut at blank lines, as lmtune reads .txt training data."""
    documents = []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        documents += [d.strip("\n") for d in text.split("\n\n") if d.strip()]
    return documents


def package_training(tokenizer_json, documents_file, vocab_size, min_frequency, parallel):
    """Trains with the package in a child process (TOKENIZERS_PARALLELISM is read at start-up);
    returns (seconds, tokenizer.json text)."""
    code = f"""
import json, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
ours = Tokenizer.from_file({str(tokenizer_json)!r})
theirs = Tokenizer(models.BPE())
theirs.normalizer, theirs.pre_tokenizer, theirs.decoder = ours.normalizer, ours.pre_tokenizer, ours.decoder
docs = [json.loads(line)["text"] for line in open({str(documents_file)!r}, encoding="utf-8")]
specials = [t["content"] for t in json.loads(ours.to_str())["added_tokens"]]
trainer = trainers.BpeTrainer(vocab_size={vocab_size}, min_frequency={min_frequency},
    special_tokens=specials, show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
start = time.perf_counter()
theirs.train_from_iterator(docs, trainer)
print(json.dumps({{"seconds": time.perf_counter() - start, "tokenizer": theirs.to_str()}}))
"""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if parallel else "false"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout
    result = json.loads(out)
    return result["seconds"], json.loads(result["tokenizer"])


def merges_of(model):
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def lmtune_tokens(lmtune, tokenizer_dir, file):
    out = subprocess.run([lmtune, "tokenize", "--tokenizer", tokenizer_dir, "--file", file,
                          "--bench", "--repeats", "1"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)["tokens"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lmtune", type=Path, required=True)
    parser.add_argument("--files", type=Path, nargs="+", required=True)
    parser.add_argument("--vocab-size", type=int, nargs="+", default=[8000])
    parser.add_argument("--pre-tokenizer", default="gpt2")
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--held-out", type=float, default=0.1,
                        help="fraction of the documents (the last ones) kept out of training")
    parser.add_argument("--base-tokenizer", type=Path,
                        help="a tokenizer directory to compare compression with (GPT-2's)")
    args = parser.parse_args()

    from tokenizers import Tokenizer

    documents = documents_of(args.files)
    cut = int(len(documents) * (1 - args.held_out))
    train, held_out = documents[:cut], documents[cut:]
    work = Path(tempfile.mkdtemp(prefix="bench-tokenizer-train-"))
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in train),
                          encoding="utf-8")
    held_out_file = work / "held_out.txt"
    held_out_file.write_text("\n\n".join(held_out) + "\n", encoding="utf-8")
    held_out_text = held_out_file.read_text(encoding="utf-8")
    held_out_bytes = len(held_out_text.encode("utf-8"))
    train_bytes = sum(len(d.encode("utf-8")) for d in train)
    print(f"corpus: {', '.join(map(str, args.files))}: {len(train)} training documents "
          f"({train_bytes / 1e6:.2f} MB), {len(held_out)} held out ({held_out_bytes / 1e6:.2f} "
          f"MB); pre-tokenizer {args.pre_tokenizer}, min frequency {args.min_frequency}")
    base_bpt = None
    if args.base_tokenizer:
        base_bpt = held_out_bytes / lmtune_tokens(args.lmtune, args.base_tokenizer, held_out_file)
        print(f"base tokenizer {args.base_tokenizer}: {base_bpt:.3f} bytes per held-out token")
    for vocab_size in args.vocab_size:
        out = work / f"lmtune-{vocab_size}"
        start = time.perf_counter()
        summary = json.loads(subprocess.run(
            [args.lmtune, "tokenizer", "train", "--files", train_file, "--vocab-size",
             str(vocab_size), "--pre-tokenizer", args.pre_tokenizer, "--min-frequency",
             str(args.min_frequency), "--out", out],
            check=True, capture_output=True, text=True).stdout)
        wall = time.perf_counter() - start
        serial_s, theirs = package_training(out / "tokenizer.json", train_file, vocab_size,
                                            args.min_frequency, parallel=False)
        parallel_s, _ = package_training(out / "tokenizer.json", train_file, vocab_size,
                                         args.min_frequency, parallel=True)
        ours = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        our_merges, their_merges = merges_of(ours["model"]), merges_of(theirs["model"])
        prefix = next((i for i, (a, b) in enumerate(zip(our_merges, their_merges)) if a != b),
                      min(len(our_merges), len(their_merges)))
        shared = len(set(our_merges) & set(their_merges))
        package = Tokenizer.from_str(json.dumps(theirs))
        their_tokens = len(package.encode(held_out_text, add_special_tokens=False).ids)
        our_tokens = lmtune_tokens(args.lmtune, out, held_out_file)
        record = {
            "vocab_size": vocab_size, "merges": len(our_merges),
            "lmtune_train_s": round(summary["seconds"], 3), "lmtune_wall_s": round(wall, 3),
            "package_train_s_1_thread": round(serial_s, 3),
            "package_train_s_parallel": round(parallel_s, 3),
            "identical_merge_prefix": prefix, "shared_merges": shared,
            "package_merges": len(their_merges),
            "identical_vocab": ours["model"]["vocab"] == theirs["model"]["vocab"],
            "lmtune_bytes_per_token": round(held_out_bytes / our_tokens, 4),
            "package_bytes_per_token": round(held_out_bytes / their_tokens, 4),
        }
        if base_bpt:
            record["base_bytes_per_token"] = round(base_bpt, 4)
        print(json.dumps(record))


if __name__ == "__main__":
    main()
