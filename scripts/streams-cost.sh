#!/usr/bin/env bash
# What one bulk transfer through a ws server and agent on loopback costs each process:
# CPU ticks, context switches, minor page faults (/proc) and, for the server, system calls
# by name (perf stat on its threads), around `iperf3 -n BYTES -P STREAMS`. For comparing
# one stream with several (the multiplexed case) on the same build.
#
#   scripts/streams-cost.sh [BIN] [STREAMS] [up|down] [BYTES]   # defaults: profiling build, 8, up, 2G
#
# Everything on 127.0.0.1, every process stopped by PID, iperf3 bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/profiling/culvert}
P=${2:-8}
DIR=${3:-up}
BYTES=${4:-2G}
TOOL=(python3 scripts/bench/benchtool.py)
. scripts/lib/procs.sh
. scripts/lib/ws-tunnel.sh
procs_init culvert-streams-cost
W=$WORK
command -v iperf3 >/dev/null || { echo "needs iperf3 (scripts/bench.sh installs it)" >&2; exit 1; }
BASE=$("${TOOL[@]}" freeblock 4)
CTRL=$BASE IPERF=$((BASE + 1)) PUB=$((BASE + 2))
iperf3 -s -p "$IPERF" >/dev/null 2>&1 &
PIDS+=($!)
"${TOOL[@]}" wait-listen --timeout 15 "$IPERF"
start_ws_tunnel "$BIN" "$W" "$CTRL" "$PUB" --expose "iperf=tcp://127.0.0.1:$IPERF@$PUB"
sp=$SRV_PID ap=$AGT_PID
# minor faults and utime+stime ticks; voluntary and involuntary switches over all threads
stat_of() { awk '{ print $10, $14 + $15 }' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/^voluntary/ { v += $2 } /^nonvoluntary/ { n += $2 } END { print v, n }'; }
flag=()
[[ $DIR == down ]] && flag=(-R)
read -r sf0 st0 <<<"$(stat_of "$sp")"; read -r af0 at0 <<<"$(stat_of "$ap")"
read -r sv0 sn0 <<<"$(switches "$sp")"; read -r av0 an0 <<<"$(switches "$ap")"
perfpid=
if command -v perf >/dev/null; then
  perf stat -x, -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sendto \
    -p "$sp" -o "$W/perf.txt" &
  perfpid=$!
  sleep 0.3
fi
timeout 120 iperf3 -c 127.0.0.1 -p "$PUB" -P "$P" -n "$BYTES" "${flag[@]}" -J >"$W/out.json"
if [[ -n $perfpid ]]; then
  kill -INT "$perfpid"
  wait "$perfpid" 2>/dev/null || true
fi
read -r sf1 st1 <<<"$(stat_of "$sp")"; read -r af1 at1 <<<"$(stat_of "$ap")"
read -r sv1 sn1 <<<"$(switches "$sp")"; read -r av1 an1 <<<"$(switches "$ap")"
echo "streams $P $DIR, $BYTES through the tunnel ($("${TOOL[@]}" iperf-parse "$W/out.json" | cut -d' ' -f1) Gbit/s)"
echo "server: ticks $((st1 - st0)) minflt $((sf1 - sf0)) voluntary $((sv1 - sv0)) involuntary $((sn1 - sn0))"
echo "agent:  ticks $((at1 - at0)) minflt $((af1 - af0)) voluntary $((av1 - av0)) involuntary $((an1 - an0))"
if [[ -s $W/perf.txt ]]; then
  echo "server syscalls: $(grep syscalls "$W/perf.txt" | awk -F, '{ sub("syscalls:sys_enter_", "", $3); printf "%s %s  ", $3, $1 }')"
fi
