#!/usr/bin/env python3
"""The kernel's view of the sockets a tunnel's sending side reads during a bulk transfer.

Why: on loopback, the ACKs a reader's `recvfrom` sends (window updates) run the sender's ACK
processing, and often its next transmissions, in the reader's system call. How many such
ACKs a tunnel's sending side sends per GB, and how large the kernel let that socket's
receive buffer grow (its autotuning follows `rcv_rtt`, which on loopback latches to the
smallest sample it ever saw), explain much of the per-side CPU-s/GB of scripts/bench.sh.

    ss-input.py sample OUT FILTER [SECONDS] [INTERVAL]
        appends `ss -tmni state established FILTER` snapshots to OUT every INTERVAL
        seconds (default 0.25) for at most SECONDS (default 120), until killed
    ss-input.py summary OUT
        one line: per data socket (more than 64 MiB received) the receive buffer at the
        last snapshot, rcv_rtt, rcv_space, and the segments it sent (ACKs: the reader sends
        no data) per GB received between the first and last snapshot

Only reads `ss`; starts nothing that outlives it.
"""

import re
import subprocess
import sys
import time

HEAD = re.compile(r"^(\d+)\s+(\d+)\s+(\S+)\s+(\S+)")
FIELD = {
    "rb": re.compile(r"skmem:\(r\d+,rb(\d+)"),
    "rcv_rtt": re.compile(r"\brcv_rtt:([\d.]+)"),
    "rcv_space": re.compile(r"\brcv_space:(\d+)"),
    "received": re.compile(r"\bbytes_received:(\d+)"),
    "segs_out": re.compile(r"\bsegs_out:(\d+)"),
}
DATA_BYTES = 64 << 20


def sample(out, flt, seconds=120.0, interval=0.25):
    end = time.monotonic() + seconds
    with open(out, "a") as f:
        while time.monotonic() < end:
            r = subprocess.run(
                ["ss", "-tmni", "state", "established", flt],
                capture_output=True,
                text=True,
                timeout=10,
            )
            f.write("== snapshot\n" + r.stdout)
            f.flush()
            time.sleep(interval)


def parse(path):
    """Snapshots, each {(local, peer): fields}."""
    snaps, cur, key = [], None, None
    for line in open(path):
        if line.startswith("== snapshot"):
            cur = {}
            snaps.append(cur)
            key = None
            continue
        if cur is None:
            continue
        m = HEAD.match(line)
        if m:
            key = (m.group(3), m.group(4))
            continue
        if key is None:
            continue
        fields = {}
        for name, rx in FIELD.items():
            v = rx.search(line)
            if v:
                fields[name] = float(v.group(1))
        if "received" in fields:
            cur[key] = fields
        key = None
    return snaps


def summary(path):
    snaps = parse(path)
    first, last = {}, {}
    for snap in snaps:
        for key, f in snap.items():
            first.setdefault(key, f)
            last[key] = f
    parts = []
    for key, end in last.items():
        start = first[key]
        got = end["received"] - start["received"]
        if end["received"] < DATA_BYTES or got <= 0:
            continue
        acks = end.get("segs_out", 0) - start.get("segs_out", 0)
        parts.append(
            f"rb {end.get('rb', 0) / 2**20:.1f} MiB, rcv_rtt {end.get('rcv_rtt', 0):.3f} ms, "
            f"rcv_space {end.get('rcv_space', 0) / 2**10:.0f} KiB, "
            f"{acks / (got / 1e9):.0f} ACKs/GB"
        )
    if not parts:
        print("  input sockets: no data socket seen (transfer shorter than one snapshot?)")
        return
    for p in parts:
        print(f"  input socket: {p}")


def main(argv):
    if len(argv) >= 3 and argv[0] == "sample":
        secs = float(argv[3]) if len(argv) > 3 else 120.0
        every = float(argv[4]) if len(argv) > 4 else 0.25
        sample(argv[1], argv[2], secs, every)
    elif len(argv) == 2 and argv[0] == "summary":
        summary(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
