#!/usr/bin/env python3
"""Exact-match score of generated completions against a prompt/completion .jsonl file.

Usage: score_task.py EXPECTED.jsonl GENERATED.jsonl   (GENERATED from `lmtune generate --prompts-file`)
Prints one JSON line: {"exact_match": fraction, "correct": n, "total": n}.
"""
import json
import sys


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    expected = {row["prompt"]: row["completion"].strip() for row in read_jsonl(sys.argv[1])}
    generated = read_jsonl(sys.argv[2])
    correct = sum(expected.get(row["prompt"]) == row["completion"].strip() for row in generated)
    print(json.dumps({"exact_match": correct / max(len(expected), 1), "correct": correct,
                      "total": len(expected)}))


if __name__ == "__main__":
    main()
