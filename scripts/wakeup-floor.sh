#!/usr/bin/env bash
# The floor of a 64-byte round trip through user-space processes on this machine: two
# processes ping-pong over one loopback TCP connection, each woken by epoll_wait and doing
# recv + send per message (scripts/bench/pingpong.c), with epoll_wait's timeout none (-1)
# and 7 s (as when a runtime keeps a heartbeat timer armed), in alternating rounds.
#
#   scripts/wakeup-floor.sh                  # 3 rounds of 100,000 round trips each
#   FLOOR_ROUNDS=5 FLOOR_COUNT=200000 scripts/wakeup-floor.sh
#
# Why: a tunnel's server and agent each wake twice per round trip, so four of these
# wake-ups are the least a user-space tunnel's round trip costs (BENCHMARKS.md, 2026-12-06
# from 02:02Z). Needs a C compiler (cc); everything on 127.0.0.1; bounded by the count.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${FLOOR_ROUNDS:-3}
COUNT=${FLOOR_COUNT:-100000}
command -v cc >/dev/null || { echo "wakeup-floor: no C compiler (apt-get install gcc)" >&2; exit 2; }
mkdir -p target/bench
cc -O2 -o target/bench/pingpong scripts/bench/pingpong.c
echo "two processes, 64-byte ping-pong over loopback TCP, $COUNT round trips per row:"
echo
echo "| epoll_wait timeout ms | round trips/s | CPU µs per round trip (both processes) |"
echo "|---:|---:|---:|"
for _ in $(seq "$ROUNDS"); do
  for t in -1 7000; do
    timeout 300 target/bench/pingpong "$t" "$COUNT"
  done
done
