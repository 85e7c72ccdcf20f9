#!/usr/bin/env bash
# Does zero-copy relaying (splice through a pipe) pay on this machine's loopback? One relay
# hop between iperf3's client and server, three variants in alternating rounds: no relay,
# a relay that copies (recv into a buffer, send it) and one that splices (socket -> pipe ->
# socket, no user-space copy). Prints Gbit/s, whole-machine CPU-s/GB (/proc/stat) and the
# relay's own CPU-s/GB per transfer, then medians.
#
#   scripts/splice-probe.sh                      # 1 stream, 3 rounds of 2 GiB
#   PROBE_STREAMS=8 PROBE_ROUNDS=5 scripts/splice-probe.sh
#   SPLICE_PIPE=65536 scripts/splice-probe.sh    # pipe size (default 1 MiB)
#
# Why: copies are about a third of a Culvert sending side's samples over ws
# (BENCHMARKS.md, "who pays for a bulk transfer"), and splice was the lever left for them.
# The relay is scripts/bench/splice-relay.py (Python: its per-call overhead is the same for
# both relay variants and small beside a 256 KiB copy). Everything on 127.0.0.1 ports from
# benchtool's freeblock; every process stopped by its PID; each transfer PROBE_BYTES
# (iperf3 -n), bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${PROBE_ROUNDS:-3}
STREAMS=${PROBE_STREAMS:-1}
BYTES=${PROBE_BYTES:-2G}
TOOL=(python3 "$ROOT/scripts/bench/benchtool.py")
command -v iperf3 >/dev/null || { echo "splice-probe: iperf3 missing (apt-get install iperf3)" >&2; exit 2; }
source "$ROOT/scripts/lib/procs.sh"
procs_init splice-probe
D=$WORK
HZ=$(getconf CLK_TCK)
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# one VARIANT: one transfer through a fresh relay (or none); prints "VARIANT gbit machine relay"
one() {
  local v=$1 base srv port relay=0 m0 m1 rpid=""
  base=$("${TOOL[@]}" freeblock 2)
  srv=$base port=$srv
  iperf3 -s -B 127.0.0.1 -p "$srv" -1 >/dev/null 2>&1 &
  PIDS+=($!)
  local spid=$!
  if [[ $v != direct ]]; then
    port=$((base + 1))
    python3 "$ROOT/scripts/bench/splice-relay.py" "$v" "$port" "$srv" $((STREAMS + 1)) >"$D/relay.out" &
    rpid=$!
    PIDS+=($rpid)
  fi
  "${TOOL[@]}" wait-listen --timeout 10 "$srv" "$port"
  m0=$(machine)
  timeout 120 iperf3 -c 127.0.0.1 -p "$port" -P "$STREAMS" -n "$BYTES" -J >"$D/iperf.json"
  m1=$(machine)
  [[ -n $rpid ]] && { wait "$rpid" || true; relay=$(cat "$D/relay.out"); }
  wait "$spid" 2>/dev/null || true
  python3 - "$D/iperf.json" "$v" "$m0" "$m1" "$relay" "$HZ" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["end"]["sum_received"]
v, m0, m1, relay, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
gb = d["bytes"] / 1e9
print(f"{v} {d['bits_per_second'] / 1e9:.2f} {(m1 - m0) / hz / gb:.3f} {relay / gb:.3f}")
PY
}

echo "variant Gbit/s machine-CPU-s/GB relay-CPU-s/GB"
for ((r = 1; r <= ROUNDS; r++)); do
  for v in direct copy splice; do one "$v" | tee -a "$D/all"; done
done
python3 - "$D/all" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, *vals = line.split()
    rows.setdefault(v, []).append([float(x) for x in vals])
print("\nmedians | Gbit/s | machine CPU-s/GB | relay CPU-s/GB")
print("|---|---:|---:|---:|")
for v, rs in rows.items():
    print(f"| {v} | " + " | ".join(f"{statistics.median(c):.3f}" for c in zip(*rs)) + " |")
PY
