#!/usr/bin/env python3
"""Instructions per round trip from callgrind dumps (scripts/rr-instructions.sh).

Usage: callgrind-self.py --round-trips N [--top K] --label L NAME DUMP [NAME DUMP ...]

Each DUMP is the `--callgrind-out-file` of one process; its newest part (`DUMP.N`, written
by `callgrind_control -d`) holds what was counted since the counters were zeroed. Prints one
Markdown row: the label, each process's instructions per round trip, and their sum; with
--top, then each process's K costliest functions by self cost, per round trip.
"""
import argparse
import collections
import glob
import os
import re
import sys


def newest_part(path):
    parts = glob.glob(path + ".*") or [path]
    return max(parts, key=os.path.getmtime)


def self_costs(path):
    """Self cost (Ir) per function of one callgrind dump, and the dump's total."""
    names, costs = {}, collections.Counter()
    total, current, after_calls = 0, None, False
    cost_line = re.compile(r"^(?:[+-]?\d+|\*) (\d+)$")
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
                continue
            m = re.match(r"^(c?)fn=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                if not m.group(1):
                    current, after_calls = names.get(m.group(2)), False
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            m = cost_line.match(line)
            if m and current is not None:
                if after_calls:
                    after_calls = False  # the inclusive cost of a call, not self cost
                else:
                    costs[current] += int(m.group(1))
    return total, costs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--round-trips", type=int, required=True)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--label", required=True)
    ap.add_argument("pairs", nargs="+")
    a = ap.parse_args()
    if len(a.pairs) % 2:
        sys.exit("callgrind-self: NAME DUMP pairs expected")
    rows, tops = [], []
    for name, dump in zip(a.pairs[::2], a.pairs[1::2]):
        total, costs = self_costs(newest_part(dump))
        rows.append(total / a.round_trips)
        tops.append((name, costs))
    cells = " | ".join(f"{r:,.0f}" for r in rows)
    print(f"| {a.label} | {cells} | {sum(rows):,.0f} |")
    for name, costs in tops if a.top else []:
        print(f"\n{a.label}, {name}: top functions, instructions per round trip (self)\n")
        for fn, c in costs.most_common(a.top):
            print(f"  {c / a.round_trips:8,.0f}  {fn[:150]}")
        print()


if __name__ == "__main__":
    main()
