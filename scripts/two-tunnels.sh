#!/usr/bin/env bash
# What a second thread per tunnel process could give, with no cost of sharing: the same
# load (two iperf3 clients of TT_STREAMS streams each, at once) through one Culvert tunnel
# (one server and one agent exposing both iperf3 servers) and through two tunnels (two
# servers, two agents, one iperf3 server each), in alternating rounds. Prints per round the
# throughput of both loads together (bytes over wall time), the whole machine's CPU-s per
# GB (/proc/stat) and its idle share.
#
#   scripts/two-tunnels.sh                        # 4 streams each, client→service, 3 rounds
#   TT_ROUNDS=5 TT_REVERSE=1 scripts/two-tunnels.sh   # service→client
#   CULVERT_BIN=/path/to/culvert TT_BYTES=2G scripts/two-tunnels.sh
#
# Why: each Culvert process runs on one thread by default (on two CPUs or fewer), and under
# eight bulk streams the machine idles while the busier process works (BENCHMARKS.md,
# 2026-12-06 from 17:58Z). Two tunnels are the ideal of a process split in two: nothing
# shared, each half on its own thread. Both columns run the same four iperf3 processes.
#
# Needs iperf3; Culvert is target/profiling/culvert unless CULVERT_BIN says otherwise.
# Everything on 127.0.0.1 ports from benchtool's freeblock; every process stopped by its PID;
# each transfer is TT_BYTES per client (iperf3 -n), bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${TT_ROUNDS:-3}
STREAMS=${TT_STREAMS:-4}
BYTES=${TT_BYTES:-1G}
R=()
[[ ${TT_REVERSE:-0} == 1 ]] && R=(-R)
BIN=${CULVERT_BIN:-$ROOT/target/profiling/culvert}
[[ -x $BIN ]] || { echo "two-tunnels: $BIN missing (cargo build --profile profiling -p culvert)" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "two-tunnels: iperf3 missing (apt-get install iperf3)" >&2; exit 2; }
TOOL=(python3 "$ROOT/scripts/bench/benchtool.py")
# shellcheck source=scripts/lib/procs.sh
source "$ROOT/scripts/lib/procs.sh"
procs_init two-tunnels

# busy and idle ticks of the whole machine
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }

# server CTRL PORTS TOKENS: a Culvert server on 127.0.0.1:CTRL handing out PORTS (A-B)
server() {
  RUST_LOG=warn "$BIN" server --listen "127.0.0.1:$1" --tokens "$3" --port-range "$2" \
    --public-bind 127.0.0.1 --insecure-plain 2>>"$WORK/server.log" &
  PIDS+=("$!")
  "${TOOL[@]}" wait-listen --timeout 15 "$1"
}

# agent CTRL TOKEN_FILE EXPOSE...: an agent of the server on CTRL
agent() {
  local ctrl=$1 token=$2 e
  shift 2
  local expose=()
  for e in "$@"; do expose+=(--expose "$e"); done
  RUST_LOG=warn "$BIN" agent --server "ws://127.0.0.1:$ctrl" --token-file "$token" "${expose[@]}" \
    2>>"$WORK/agent.log" &
  PIDS+=("$!")
}

# one MODE (one|two): starts the tunnel(s), runs both loads at once, prints a row, stops
# what it started
one() {
  local mode=$1 base
  base=$("${TOOL[@]}" freeblock 8)
  local i1=$base i2=$((base + 1)) c1=$((base + 2)) c2=$((base + 3)) p1=$((base + 4)) p2=$((base + 5))
  local started=${#PIDS[@]}
  iperf3 -s -B 127.0.0.1 -p "$i1" >/dev/null 2>&1 &
  PIDS+=("$!")
  iperf3 -s -B 127.0.0.1 -p "$i2" >/dev/null 2>&1 &
  PIDS+=("$!")
  rm -f "$WORK"/t1.toml "$WORK"/t2.toml
  "$BIN" token new --name one --tokens "$WORK/t1.toml" >"$WORK/a1.token" 2>/dev/null
  if [[ $mode == one ]]; then
    server "$c1" "$p1-$p2" "$WORK/t1.toml"
    agent "$c1" "$WORK/a1.token" "s1=tcp://127.0.0.1:$i1@$p1" "s2=tcp://127.0.0.1:$i2@$p2"
  else
    "$BIN" token new --name two --tokens "$WORK/t2.toml" >"$WORK/a2.token" 2>/dev/null
    server "$c1" "$p1-$p1" "$WORK/t1.toml"
    server "$c2" "$p2-$p2" "$WORK/t2.toml"
    agent "$c1" "$WORK/a1.token" "s1=tcp://127.0.0.1:$i1@$p1"
    agent "$c2" "$WORK/a2.token" "s2=tcp://127.0.0.1:$i2@$p2"
  fi
  "${TOOL[@]}" wait-listen --timeout 15 "$p1"
  "${TOOL[@]}" wait-listen --timeout 15 "$p2"
  # warm the paths, untimed
  timeout 30 iperf3 -c 127.0.0.1 -p "$p1" -t 1 -P "$STREAMS" "${R[@]}" >/dev/null
  timeout 30 iperf3 -c 127.0.0.1 -p "$p2" -t 1 -P "$STREAMS" "${R[@]}" >/dev/null
  local b0 i0 b1 i1_ t0 t1 j1 j2
  read -r b0 i0 < <(machine)
  t0=$(date +%s.%N)
  timeout 120 iperf3 -c 127.0.0.1 -p "$p1" -n "$BYTES" -P "$STREAMS" "${R[@]}" -J >"$WORK/j1.json" &
  j1=$!
  timeout 120 iperf3 -c 127.0.0.1 -p "$p2" -n "$BYTES" -P "$STREAMS" "${R[@]}" -J >"$WORK/j2.json" &
  j2=$!
  wait "$j1" "$j2"
  t1=$(date +%s.%N)
  read -r b1 i1_ < <(machine)
  python3 - "$WORK/j1.json" "$WORK/j2.json" "$t0" "$t1" "$((b1 - b0))" "$((i1_ - i0))" "$mode" \
    "$(getconf CLK_TCK)" <<'PY' | tee -a "$WORK/rows"
import json, sys
ends = [json.load(open(p))["end"]["sum_received"] for p in sys.argv[1:3]]
t0, t1, busy, idle, mode, hz = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], float(sys.argv[8])
gb = sum(e["bytes"] for e in ends) / 1e9
print(f"| {mode} | {gb * 8 / (t1 - t0):.2f} | {busy / hz / gb:.3f} | {100 * idle / (busy + idle):.1f} |")
PY
  procs_stop_from "$started"
}

echo "two loads of $STREAMS stream(s) each, ${R[*]:-client→service}, $BYTES each, $ROUNDS alternating rounds:"
echo
header="| tunnels | Gbit/s (both loads, wall time) | whole machine CPU-s/GB | machine idle % |"
echo "$header"
echo "|---|---:|---:|---:|"
for _ in $(seq 1 "$ROUNDS"); do
  one one
  one two
done
echo
echo "medians:"
echo
echo "$header"
echo "|---|---:|---:|---:|"
"${TOOL[@]}" row-medians --ints 0 --decimals 2 "$WORK/rows"
