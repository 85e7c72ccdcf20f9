#!/usr/bin/env python3
"""Splits a `perf record -g` profile of a tunnel process by the system call each sample
was taken in and by what the kernel was doing there: copies, the softirq that delivers the
process's own segments into the receiving socket (loopback), the softirq that an ACK sent
by a read runs (the sender's ACK processing, and its next segments when the ACK opens its
window), the backlog of segments that arrived while the socket was held, other kernel
work, user space.

usage: scripts/bench/perf-contexts.py PERF_DATA [PERF_DATA ...]
Used by scripts/cpu-split.sh (SPLIT_PERF=1); needs `perf script`.
"""
import collections
import subprocess
import sys

SOFTIRQ = ("net_rx_action", "handle_softirqs")
COPIES = (
    "_copy_to_iter",
    "_copy_from_iter",
    "copy_user_generic",
    "rep_movs_alternative",
    "skb_copy_datagram_iter",
)


def samples(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for block in out.split("\n\n"):
        lines = [l for l in block.splitlines() if l.strip()]
        frames = []
        for l in lines[1:]:
            parts = l.split(None, 1)
            frames.append(parts[1].split("+")[0] if len(parts) > 1 else "?")
        if frames:
            yield frames


def syscall(frames):
    """The system call, from the outermost (libc) frame; `user` when none."""
    last = frames[-1].lower()
    for key, name in (
        ("writev", "writev"),
        ("recv", "recvfrom"),
        ("sendto", "sendto"),
        ("send", "sendto"),
        ("epoll", "epoll_wait"),
        ("read", "read"),
        ("write", "write"),
    ):
        if key in last:
            return name
    return "other syscall" if "do_syscall_64" in frames else "user"


def category(frames):
    call = syscall(frames)
    soft = next((i for i, f in enumerate(frames) if f in SOFTIRQ), None)
    if soft is not None:
        deeper = set(frames[:soft])
        if call == "recvfrom":
            if deeper & {"tcp_write_xmit", "tcp_data_snd_check"}:
                return call, "softirq: the ACK, then the sender's next segments"
            return call, "softirq: the ACK processed for the sender"
        if call in ("writev", "sendto", "write"):
            return call, "softirq: own segments delivered into the receiving socket"
        return call, "softirq (other)"
    if "__release_sock" in frames:
        return call, "backlog at release_sock"
    if any(f in COPIES for f in frames[:4]):
        return call, "copies"
    if call == "user":
        return call, "user space"
    return call, "other kernel"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        counts = collections.Counter(category(f) for f in samples(path))
        n = sum(counts.values())
        print(f"{path}: {n} samples")
        for (call, what), v in counts.most_common():
            if v / n >= 0.01:
                print(f"  {100 * v / n:5.1f}%  {call:12s} {what}")


if __name__ == "__main__":
    main()
