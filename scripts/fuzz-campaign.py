#!/usr/bin/env python3
"""A fuzz campaign outside CI: every cargo-fuzz target for a budget of CPU time, then the
corpus it found minimized into fuzz/corpus/<target>.

    scripts/fuzz-campaign.py [--cpu-minutes 31] [--parallel 2] [--nice 19] [targets...]

Each target runs as one libFuzzer process (one core) from a scratch copy of its committed
corpus and regressions; the script reads the process's CPU time from /proc and stops it
once the budget is spent, so a campaign on a shared machine counts the work done, not the
wall time. Up to --parallel targets run at once. Afterwards each target's scratch corpus is
merged (-merge=1) with the committed one into a fresh directory, which replaces
fuzz/corpus/<target>. A crash stops that target, leaves its input in fuzz/artifacts/ and
makes the script exit non-zero; the corpus of a target that crashed is not replaced.

Prints per target: CPU minutes, executions, coverage (cov: and ft: of libFuzzer's last
status line) and corpus files before and after the merge. Logs stay in --work.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its reaped children, or None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state; utime, stime, cutime, cstime are fields 14-17 of stat.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / TICK


def tree_cpu(pid):
    """CPU seconds of pid and its live descendants (cargo fuzz run starts the fuzzer binary)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        c = cpu_seconds(p)
        if c is not None:
            total += c
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return total


def last_stats(log):
    """(execs, cov, ft) from the last libFuzzer status line of a log."""
    execs = cov = ft = None
    with open(log, errors="replace") as f:
        for line in f:
            m = re.match(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)", line)
            if m:
                execs, cov, ft = (int(g) for g in m.groups())
            m = re.match(r"stat::number_of_executed_units:\s*(\d+)", line)
            if m:
                execs = int(m.group(1))
    return execs, cov, ft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-minutes", type=float, default=31.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--nice", type=int, default=19)
    ap.add_argument("--work", default="/tmp/culvert-fuzz-campaign")
    ap.add_argument("--no-merge", action="store_true")
    ap.add_argument("targets", nargs="*")
    args = ap.parse_args()

    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    os.chdir(ROOT)
    targets = args.targets or subprocess.run(
        ["cargo", "fuzz", "list"], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    subprocess.run(["cargo", "fuzz", "build"], env=env, check=True)
    os.makedirs(args.work, exist_ok=True)

    budget = args.cpu_minutes * 60
    queue = list(targets)
    running = {}  # target -> (Popen, log path)
    results = {}
    last_used = {}  # target -> CPU seconds at the last look (a reaped process reads as 0)
    while queue or running:
        while queue and len(running) < args.parallel:
            t = queue.pop(0)
            corpus = os.path.join(args.work, "corpus", t)
            os.makedirs(corpus, exist_ok=True)
            for seeds in (f"fuzz/corpus/{t}", f"fuzz/regressions/{t}"):
                if os.path.isdir(seeds):
                    shutil.copytree(seeds, corpus, dirs_exist_ok=True)
            log = os.path.join(args.work, f"{t}.log")
            cmd = ["nice", "-n", str(args.nice), "cargo", "fuzz", "run", t, corpus, "--",
                   "-timeout=60", "-print_final_stats=1", "-max_total_time=86400"]
            p = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
            running[t] = (p, log)
            print(f"started {t} (pid {p.pid}), log {log}", flush=True)
        time.sleep(5)
        for t, (p, log) in list(running.items()):
            used = max(tree_cpu(p.pid), last_used.get(t, 0.0))
            last_used[t] = used
            if p.poll() is not None:
                results[t] = (used, p.returncode, log)
                del running[t]
                print(f"{t} ended by itself (exit {p.returncode}) after {used/60:.1f} CPU min",
                      flush=True)
            elif used >= budget:
                # SIGINT: libFuzzer prints its final stats and exits.
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                results[t] = (used, 0, log)
                del running[t]
                print(f"{t}: budget spent, {used/60:.1f} CPU min", flush=True)

    failed = []
    rows = []
    for t in targets:
        used, rc, log = results[t]
        execs, cov, ft = last_stats(log)
        crashed = rc != 0 or "==ERROR" in open(log, errors="replace").read() or any(
            l.startswith("Test unit written") for l in open(log, errors="replace"))
        before = len(os.listdir(f"fuzz/corpus/{t}")) if os.path.isdir(f"fuzz/corpus/{t}") else 0
        after = before
        if crashed:
            failed.append(t)
        elif not args.no_merge:
            merged = os.path.join(args.work, "merged", t)
            shutil.rmtree(merged, ignore_errors=True)
            os.makedirs(merged)
            subprocess.run(["cargo", "fuzz", "run", t, merged, f"fuzz/corpus/{t}",
                            os.path.join(args.work, "corpus", t), "--", "-merge=1",
                            "-timeout=60"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(f"fuzz/corpus/{t}")
            shutil.copytree(merged, f"fuzz/corpus/{t}")
            after = len(os.listdir(f"fuzz/corpus/{t}"))
        rows.append((t, used / 60, execs, cov, ft, before, after, "CRASH" if crashed else "ok"))

    print(f"\n{'target':<16} {'CPU min':>8} {'execs':>12} {'cov':>6} {'ft':>7} "
          f"{'corpus':>13}  result")
    for t, mins, execs, cov, ft, before, after, res in rows:
        print(f"{t:<16} {mins:>8.1f} {execs or 0:>12} {cov or 0:>6} {ft or 0:>7} "
              f"{before:>5} -> {after:<5}  {res}")
    if failed:
        print(f"crashes in: {' '.join(failed)} (inputs under fuzz/artifacts/, logs in "
              f"{args.work})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
