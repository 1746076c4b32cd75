#!/usr/bin/env python3
"""Generates the bundled default's inputs: an English pretraining corpus, a small byte-level BPE
tokenizer in GPT-2's file format, and the quickstart task (word-by-word English -> Spanish glosses).

Everything is derived from fixed seeds, so running it again gives byte-identical files.
Usage: default_assets.py OUT_DIR   (writes OUT_DIR/corpus.txt, OUT_DIR/tokenizer/, OUT_DIR/quickstart/)
"""
import collections
import json
import random
import re
import sys
from pathlib import Path

# The task's lexicon. The pretraining corpus is English only, so the base model has never seen
# the Spanish side: it cannot do the task before fine-tuning.
DETERMINERS = {"the": "el", "a": "un"}
ADJECTIVES = {"red": "rojo", "blue": "azul", "green": "verde", "big": "grande", "small": "pequeno",
              "old": "viejo", "new": "nuevo", "happy": "feliz", "sad": "triste", "fast": "rapido"}
NOUNS = {"cat": "gato", "dog": "perro", "bird": "pajaro", "house": "casa", "tree": "arbol",
         "car": "coche", "book": "libro", "boy": "nino", "girl": "nina", "horse": "caballo",
         "fish": "pez", "man": "hombre"}
VERBS = {"sees": "ve", "eats": "come", "finds": "encuentra", "wants": "quiere", "follows": "sigue",
         "helps": "ayuda", "hears": "oye", "has": "tiene", "loves": "ama", "likes": "gusta"}

# Extra English for the corpus, so the base model knows more than the task's words.
MORE_NOUNS = ["river", "city", "garden", "window", "door", "road", "friend", "teacher", "child",
              "apple", "stone", "ship", "king", "queen", "farmer", "mountain", "song", "letter"]
MORE_VERBS = ["watches", "carries", "paints", "builds", "opens", "remembers", "visits", "calls"]
PLACES = ["in the garden", "near the river", "at the house", "on the road", "by the window",
          "under the tree", "in the city", "on the mountain"]
TIMES = ["every morning", "at night", "in the spring", "after the rain", "before dinner", "today"]
CONNECTIVES = ["and then", "but", "because", "so", "while"]

TOKENIZER_VOCAB = 1024  # 256 bytes + 767 merges + <|endoftext|>
GPT2_PATTERN = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def clause(rng):
    nouns = list(NOUNS) + MORE_NOUNS
    verbs = list(VERBS) + MORE_VERBS
    parts = [rng.choice(list(DETERMINERS)), rng.choice(list(ADJECTIVES)), rng.choice(nouns),
             rng.choice(verbs), rng.choice(list(DETERMINERS)), rng.choice(list(ADJECTIVES)),
             rng.choice(nouns)]
    if rng.random() < 0.5:
        parts = parts[:2] + parts[2:3] + parts[3:4] + parts[4:5] + parts[6:]  # drop one adjective
    if rng.random() < 0.4:
        parts.append(rng.choice(PLACES))
    if rng.random() < 0.3:
        parts.append(rng.choice(TIMES))
    return " ".join(parts)


def sentence(rng):
    text = clause(rng)
    if rng.random() < 0.35:
        text += " " + rng.choice(CONNECTIVES) + " " + clause(rng)
    return text[0].upper() + text[1:] + "."


def corpus(rng, paragraphs):
    return "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(2, 6))) for _ in range(paragraphs))


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable characters (what vocab.json is spelled in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def train_bpe(text, merges_wanted):
    """Byte-level BPE merges learned from `text`: repeatedly merge the most frequent adjacent pair."""
    byte_char = bytes_to_unicode()
    words = collections.Counter(GPT2_PATTERN.findall(text))
    pieces = {w: [byte_char[b] for b in w.encode()] for w in words}
    merges = []
    for _ in range(merges_wanted):
        pairs = collections.Counter()
        for word, count in words.items():
            symbols = pieces[word]
            for a, b in zip(symbols, symbols[1:]):
                pairs[a, b] += count
        if not pairs:
            break
        # Ties broken by the pair itself, so the result does not depend on dict order.
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        for word in words:
            symbols, merged, i = pieces[word], [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged
    return merges


def write_tokenizer(directory, merges):
    directory.mkdir(parents=True, exist_ok=True)
    byte_char = bytes_to_unicode()
    vocab = {byte_char[b]: i for i, b in enumerate(sorted(byte_char))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False, "model_max_length": 128}, indent=2) + "\n")


def task_example(rng):
    words = [rng.choice(list(DETERMINERS)), rng.choice(list(ADJECTIVES)), rng.choice(list(NOUNS)),
             rng.choice(list(VERBS)), rng.choice(list(DETERMINERS)), rng.choice(list(ADJECTIVES)),
             rng.choice(list(NOUNS))]
    lexicon = {**DETERMINERS, **ADJECTIVES, **NOUNS, **VERBS}
    english = " ".join(words)
    spanish = " ".join(lexicon[w] for w in words)
    return {"prompt": f"English: {english}\nSpanish:", "completion": f" {spanish}"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_task(directory, rng, train, validation, heldout):
    directory.mkdir(parents=True, exist_ok=True)
    seen, splits = set(), {"train": [], "validation": [], "heldout": []}
    wanted = {"train": train, "validation": validation, "heldout": heldout}
    for name in ("heldout", "validation", "train"):  # held-out sentences never occur in training
        while len(splits[name]) < wanted[name]:
            example = task_example(rng)
            if example["prompt"] not in seen:
                seen.add(example["prompt"])
                splits[name].append(example)
    for name, rows in splits.items():
        write_jsonl(directory / f"{name}.jsonl", rows)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    text = corpus(random.Random(1234), paragraphs=12000)
    (out / "corpus.txt").write_text(text + "\n")
    merges = train_bpe(text, TOKENIZER_VOCAB - 257)
    write_tokenizer(out / "tokenizer", merges)
    write_task(out / "quickstart", random.Random(4321), train=4000, validation=200, heldout=100)


if __name__ == "__main__":
    main()
