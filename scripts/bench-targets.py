#!/usr/bin/env python3
"""The targets of the performance issue, over one or more runs of scripts/bench.sh.

Reads the TCP table of each run (target/bench/latest.md, or a copy of it: any markdown
file whose table starts with a `| metric |` header, first table of each metric wins) and
prints two markdown tables. The first: per target its goal, the figure of each run (Culvert ÷ the
best peer of that run, Culvert wss ÷ wstunnel wss, or the absolute peak RSS), the median
over the runs and whether the median meets the goal. The goals are the issue's.
The second: CPU-s/GB of server and agent together (the issue's own measure, "CPU is
server + agent together"), Culvert ÷ the peer with the lowest sum, per direction and
stream count. On loopback each side's share of the kernel's work depends on which process
happens to be in a system call when a segment is delivered (BENCHMARKS.md, 2026-12-04
late evening), so the sum is the steadier figure of a tunnel's cost.

usage: scripts/bench-targets.py [--ws-only] NAME FILE [[--ws-only] NAME FILE ...]
  e.g. scripts/bench-targets.py 16:20Z run1.md 16:45Z run2.md 17:10Z run3.md
A run given after --ws-only is shown in every row but counted in the medians of the ws
rows only: a run of code that differs from the others on the wss path.
"""
import sys, re, statistics

# (label, metric row of bench.sh's table, column the figure is read from, goal)
ROWS = []
ws_ratio = [
    ("throughput Gbit/s, 1 stream, client→service", "≥ 1.1"),
    ("throughput Gbit/s, 1 stream, service→client (-R)", "≥ 1.1"),
    ("throughput Gbit/s, 8 streams, client→service", "≥ 1.1"),
    ("throughput Gbit/s, 8 streams, service→client (-R)", "≥ 1.1"),
    ("server CPU-s/GB, 1 stream, client→service", "≤ 0.9"),
    ("server CPU-s/GB, 1 stream, service→client (-R)", "≤ 0.9"),
    ("server CPU-s/GB, 8 streams, client→service", "≤ 0.9"),
    ("server CPU-s/GB, 8 streams, service→client (-R)", "≤ 0.9"),
    ("agent/client CPU-s/GB, 1 stream, client→service", "≤ 0.9"),
    ("agent/client CPU-s/GB, 1 stream, service→client (-R)", "≤ 0.9"),
    ("agent/client CPU-s/GB, 8 streams, client→service", "≤ 0.9"),
    ("agent/client CPU-s/GB, 8 streams, service→client (-R)", "≤ 0.9"),
    ("64-byte round trips/s, 1 connection", "≥ 1.1"),
    ("round trip p50 µs", "≤ 1"),
    ("round trip p99 µs", "≤ 1.2"),
    ("64-byte round trips/s, 8 connections at once", "≥ 1.1"),
    ("round trip p50 µs, 8 connections", "≤ 1"),
    ("round trip p99 µs, 8 connections", "≤ 1.2"),
    ("new connections/s, 8 workers", "≥ 1.2"),
    ("new connections/s, 1 worker", "≥ 1.2"),
    ("pgbench -S tps, 8 clients", "≥ 1.1"),
]
for m, g in ws_ratio:
    ROWS.append(("ws: " + m, m, "culvert-ws ÷ best peer", g))
for m, g in ws_ratio[:12]:
    ROWS.append(("wss ÷ wstunnel wss: " + m, m, "culvert-wss ÷ wstunnel-wss", g))
for m in ["server RSS MB, 1000 idle tunneled conns", "agent/client RSS MB, 1000 idle tunneled conns"]:
    ROWS.append(("ws: " + m, m, "culvert-ws ÷ best peer", "≤ 0.5"))
for sch in ["ws", "wss"]:
    for m in ["server peak RSS MB, bulk runs", "agent/client peak RSS MB, bulk runs"]:
        ROWS.append((f"{sch}, MB: {m}", m, f"culvert-{sch}", "≤ 32 MB"))


def parse(path):
    t = {}
    header = None
    for line in open(path, encoding="utf-8"):
        if not line.startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "metric":
            header = cells
            continue
        if header is None or set(cells[0]) <= set("-: "):
            continue
        name = re.sub(r" \((higher|lower) is better\)$", "", cells[0])
        if name in t:
            continue
        t[name] = dict(zip(header, cells))
    return t


def num(cell):
    m = re.match(r"([0-9][0-9,]*\.?[0-9]*)", cell or "")
    return float(m.group(1).replace(",", "")) if m else None


def met(goal, v):
    op, lim = goal.split()[0], float(goal.split()[1])
    return v >= lim if op == "≥" else v <= lim


args = sys.argv[1:]
runs = []  # (name, table, counted in the wss medians)
while args:
    ws_only = args[0] == "--ws-only"
    if ws_only:
        args = args[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    runs.append((args[0], parse(args[1]), not ws_only))
    args = args[2:]
print("| target (Culvert ÷ best peer unless said) | goal | " + " | ".join(n for n, _, _ in runs) + " | median | met |")
print("|---|---|" + "---:|" * len(runs) + "---:|---|")
for label, metric, col, goal in ROWS:
    vals = [num(t.get(metric, {}).get(col)) for _, t, _ in runs]
    wss = label.startswith("wss")
    ok = [v for v, (_, _, all_rows) in zip(vals, runs) if v is not None and (all_rows or not wss)]
    med = statistics.median(ok) if ok else None
    absolute = goal.endswith("MB")
    fmt = (lambda v: f"{v:.1f}") if absolute else (lambda v: f"{v:.2f}×")
    cells = [fmt(v) if v is not None else "—" for v in vals]
    mcell = f"**{fmt(med)}**" if med is not None else "—"
    mm = ("yes" if met(goal.replace(" MB", ""), med) else "no") if med is not None else "—"
    print(f"| {label} | {goal} | " + " | ".join(cells) + f" | {mcell} | {mm} |")


PEERS = ["rathole-tcp", "rathole-tls", "wstunnel-ws", "wstunnel-wss", "bore"]
CELLS = [
    "1 stream, client→service",
    "1 stream, service→client (-R)",
    "8 streams, client→service",
    "8 streams, service→client (-R)",
]


def together(t, col, cell):
    a = num(t.get(f"server CPU-s/GB, {cell}", {}).get(col))
    b = num(t.get(f"agent/client CPU-s/GB, {cell}", {}).get(col))
    return a + b if a is not None and b is not None else None


print()
print("| CPU-s/GB, server + agent together | goal | " + " | ".join(n for n, _, _ in runs) + " | median | met |")
print("|---|---|" + "---:|" * len(runs) + "---:|---|")
for sch in ["ws", "wss"]:
    for cell in CELLS:
        vals, names = [], []
        for _, t, _ in runs:
            c = together(t, f"culvert-{sch}", cell)
            sums = [(together(t, p, cell), p) for p in (PEERS if sch == "ws" else ["wstunnel-wss"])]
            best = min(((v, p) for v, p in sums if v), default=(None, None))
            if c is None or best[0] is None:
                vals.append(None)
                names.append("—")
                continue
            vals.append(c / best[0])
            names.append(f"{c / best[0]:.2f}× ({c:.2f} ÷ {best[0]:.2f} {best[1]})")
        ok = [v for v, (_, _, all_rows) in zip(vals, runs) if v is not None and (all_rows or sch == "ws")]
        med = statistics.median(ok) if ok else None
        label = f"{sch}: {cell}" if sch == "ws" else f"wss ÷ wstunnel wss: {cell}"
        mcell = f"**{med:.2f}×**" if med is not None else "—"
        mm = ("yes" if med <= 0.9 else "no") if med is not None else "—"
        print(f"| {label} | ≤ 0.9 | " + " | ".join(names) + f" | {mcell} | {mm} |")
