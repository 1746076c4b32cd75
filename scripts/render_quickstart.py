#!/usr/bin/env python3
"""Writes README.md's quickstart figures from the record scripts/quickstart.sh --record keeps.

The figures between the markers below are never typed by hand: `scripts/quickstart.sh --record`
measures a run, copies its record to docs/quickstart-measured.json and runs this script, and
tests/e2e/test_docs.py checks that README.md holds exactly what this script renders.

Usage: render_quickstart.py [--check] [--record FILE] [--readme FILE]
  --check   change nothing; exit 1 (saying so) when README.md differs from the rendering
Only the standard library, so any python3 runs it.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "quickstart-measured.json"
README = ROOT / "README.md"
BEGIN = "<!-- quickstart-figures:begin (scripts/render_quickstart.py writes this block) -->"
END = "<!-- quickstart-figures:end -->"


def percent(correct, total):
    return f"{100 * correct / max(total, 1):.0f}%"


def duration(seconds):
    """165 -> "165 s"; 180 -> "about 3 minutes" (a script's time is only worth the minute)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"about {seconds / 60:.0f} minutes"


def render(record):
    """The Markdown between the markers (without them) for one record."""
    r = record
    article = "an" if r["machine"][:1] in "AEIOUaeiou8" else "a"
    text = (
        f"Measured by `scripts/quickstart.sh` on {article} {r['machine']} ({r['device']}, "
        f"{r['threads']} threads), {r['date']}, lmtune {r['lmtune_revision']}: "
        f"`lmtune train` took {r['train_seconds']:.0f} s for {r['steps']} steps, the whole script "
        f"{duration(r['script_seconds'])} once built; validation loss "
        f"{r['eval_loss_before']:.3g} -> {r['eval_loss_after']:.3g}; exact match on the "
        f"{r['heldout_total']} held-out prompts "
        f"{percent(r['heldout_correct_before'], r['heldout_total'])} -> "
        f"{percent(r['heldout_correct_after'], r['heldout_total'])} "
        f"({r['heldout_correct_before']} -> {r['heldout_correct_after']})."
    )
    if r.get("note"):
        text += f" {r['note']}"
    text += " `scripts/quickstart.sh --record` measures again and rewrites this paragraph."
    return wrap(text, 100)


def wrap(text, width):
    """Greedy word wrap that never breaks inside a `code span`."""
    units = []  # words, with a code span's words kept together
    for word in text.split(" "):
        if units and units[-1].count("`") % 2 == 1:
            units[-1] += " " + word
        else:
            units.append(word)
    lines, line = [], ""
    for word in units:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


def replace_block(readme, block):
    """README text with the block between the markers replaced; ValueError when they are missing."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no '{BEGIN}' ... '{END}' block")
    return readme[:start] + BEGIN + "\n" + block + "\n" + readme[end:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--record", type=Path, default=RECORD)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    readme = args.readme.read_text(encoding="utf-8")
    rendered = replace_block(readme, render(json.loads(args.record.read_text(encoding="utf-8"))))
    if args.check:
        if rendered != readme:
            print(f"render_quickstart: {args.readme} differs from {args.record}; run "
                  "scripts/render_quickstart.py", file=sys.stderr)
            return 1
        return 0
    if rendered != readme:
        args.readme.write_text(rendered, encoding="utf-8")
        print(f"render_quickstart: wrote the quickstart figures into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
