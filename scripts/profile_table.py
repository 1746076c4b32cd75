#!/usr/bin/env python3
"""Ranks what took the time in a Chrome trace written by `lmtune bench --profile DIR`.

On a GPU trace: the device's kernels, copies and sets grouped by name, with their share of the
device's busy time, and how busy the device was over the profiled steps. On a CPU trace: the
operators grouped by name by self time (an operator's time less that of the operators it called),
so that nested operators are not counted twice.

Usage: scripts/profile_table.py DIR/trace.json [--top 25] [--width 70]
Prints a Markdown table.
"""
import argparse
import json
from collections import defaultdict

DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def load_events(path):
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def self_times(ops):
    """Each CPU operator's duration less its children's, per thread: [(name, self_us)]."""
    by_thread = defaultdict(list)
    for e in ops:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    result = []
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))  # parents before the children they hold
        stack = []  # [event, children's time]
        for e in events:
            while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                parent, children = stack.pop()
                result.append((parent["name"], parent["dur"] - children))
            if stack:
                stack[-1][1] += e["dur"]
            stack.append([e, 0.0])
        result += [(parent["name"], parent["dur"] - children) for parent, children in stack]
    return result


def table(rows, total_us, top, width, header):
    grouped = defaultdict(lambda: [0.0, 0])
    for name, us in rows:
        grouped[name][0] += us
        grouped[name][1] += 1
    ranked = sorted(grouped.items(), key=lambda item: -item[1][0])
    lines = [header, f"| # | {'name':<{width}} | ms | share | calls | mean µs |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for i, (name, (us, calls)) in enumerate(ranked[:top], 1):
        short = name if len(name) <= width else name[:width - 1] + "…"
        lines.append(f"| {i} | {short:<{width}} | {us / 1000:.2f} | {100 * us / total_us:.1f}% | "
                     f"{calls} | {us / calls:.1f} |")
    rest = sum(us for _, (us, _) in ranked[top:])
    if rest:
        lines.append(f"| | ({len(ranked) - top} more) | {rest / 1000:.2f} | "
                     f"{100 * rest / total_us:.1f}% | | |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--width", type=int, default=70)
    a = parser.parse_args()
    events = load_events(a.trace)
    device = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    if device:
        busy = sum(e["dur"] for e in device)
        span = max(e["ts"] + e["dur"] for e in device) - min(e["ts"] for e in device)
        header = (f"Device: {busy / 1000:.1f} ms busy in a {span / 1000:.1f} ms span "
                  f"({100 * busy / span:.0f}% busy), {len(device)} launches\n")
        print(table([(e["name"], e["dur"]) for e in device], busy, a.top, a.width, header))
        return
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    if not ops:
        raise SystemExit(f"{a.trace}: no CPU operators or device kernels in the trace")
    rows = self_times(ops)
    total = sum(us for _, us in rows)
    header = f"CPU operators by self time: {total / 1000:.1f} ms in {len(ops)} calls\n"
    print(table(rows, total, a.top, a.width, header))


if __name__ == "__main__":
    main()
