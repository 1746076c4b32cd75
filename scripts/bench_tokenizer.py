"""Helper of scripts/bench-tokenizer.sh: lmtune's and tiktoken's single-thread GPT-2 encoding rate
on the same text, best of the same number of repeats, with a check that both give the same ids."""
import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str


def tiktoken_gpt2(tokenizer_dir):
    """tiktoken's "gpt2" encoding, built from local files (get_encoding would download them)."""
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(tokenizer_dir / "merges.txt"),
                                            encoder_json_file=str(tokenizer_dir / "vocab.json"))
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def cpu_model():
    """The CPU's model name as lscpu shows it, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def best_seconds(encode, text, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ids = encode(text)
        best = min(best, time.perf_counter() - start)
    return best, ids


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lmtune", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    data = args.file.read_bytes()
    text = data.decode("utf-8")
    encoding = tiktoken_gpt2(args.tokenizer)
    ours = json.loads(subprocess.run(
        [args.lmtune, "tokenize", "--tokenizer", args.tokenizer, "--file", args.file, "--bench",
         "--repeats", str(args.repeats)], check=True, capture_output=True, text=True).stdout)
    ids = json.loads(subprocess.run(
        [args.lmtune, "tokenize", "--tokenizer", args.tokenizer, "--file", args.file],
        check=True, capture_output=True, text=True).stdout)
    results = {"lmtune": ours["mb_per_sec"]}
    for name in ("encode_ordinary", "encode"):
        seconds, reference = best_seconds(getattr(encoding, name), text, args.repeats)
        assert reference == ids, f"tiktoken {name} and lmtune disagree on {args.file}"
        results[f"tiktoken {name}"] = len(data) / 1e6 / seconds

    print(f"text: {args.file} ({len(data)} bytes, {len(ids)} tokens, identical ids); "
          f"best of {args.repeats}, 1 thread; {cpu_model()}, {os.cpu_count()} CPUs")
    for name, rate in results.items():
        print(f"{name:26s} {rate:8.2f} MB/s")
    fastest_tiktoken = max(rate for name, rate in results.items() if name != "lmtune")
    print(f"{'lmtune / best tiktoken':26s} {results['lmtune'] / fastest_tiktoken:8.2f}x")


if __name__ == "__main__":
    main()
