#!/usr/bin/env bash
# Round trips over several connections at once, Culvert against wstunnel: the rate, p50, the
# CPU µs per round trip of the tunnel's server and agent, of the load client and of the echo
# backend, and how much of the machine stayed idle, in alternating rounds on fresh tunnels.
#
#   scripts/rr-idle.sh                                  # ws, 8 connections, 3 rounds of 4 s
#   RRI_ROUNDS=5 RRI_CONNS=16 scripts/rr-idle.sh
#   RRI_VARIANTS="culvert culvert:/path/to/other-culvert wstunnel" scripts/rr-idle.sh
#   RRI_VARIANTS="culvert wstunnel bore" scripts/rr-idle.sh   # bore: the plain TCP relay
#   RRI_CONNS=1 RRI_IDLE=4 scripts/rr-idle.sh  # one busy connection, 4 more open and idle
#   RRI_SYSCALLS=1 scripts/rr-idle.sh        # also each tunnel process's system calls per
#                                            # round trip (perf stat tracepoints)
#
# Why: Culvert's eight-connection round trips trail wstunnel-ws's by 10-20 % while its CPU per
# round trip is no higher (BENCHMARKS.md, 2026-12-05 from 03:14Z); what differs is how long
# the two vCPUs sit idle with eight requests in flight. A variant `culvert:BIN` runs another
# binary (a wrapper script may add flags or environment).
#
# Needs the wstunnel that scripts/bench.sh builds (and, for a bore variant, the bore it
# installs); Culvert is target/profiling/culvert unless
# CULVERT_BIN says otherwise. Everything on 127.0.0.1 ports from benchtool's freeblock; every
# process stopped by its PID; every load bounded by a count and a time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${RRI_ROUNDS:-3}
SCHEME=${RRI_SCHEME:-ws}
SECS=${RRI_SECONDS:-4}
CONNS=${RRI_CONNS:-8}
COUNT=${RRI_COUNT:-80000}
IDLE=${RRI_IDLE:-0}
VARIANTS=${RRI_VARIANTS:-culvert wstunnel}
# shellcheck source=scripts/lib/peer-tunnel.sh
source "$ROOT/scripts/lib/peer-tunnel.sh"
peer_bins rr-idle
# shellcheck source=scripts/lib/procs.sh
source "$ROOT/scripts/lib/procs.sh"
procs_init rr-idle
HZ=$(getconf CLK_TCK)
SYSCALLS=${RRI_SYSCALLS:-0}
if [[ $SYSCALLS == 1 ]]; then
  command -v perf >/dev/null || { echo "rr-idle: RRI_SYSCALLS=1 needs perf" >&2; exit 2; }
fi
# The calls a relay makes per message, named one by one: `syscalls:sys_enter_*` attached to a
# process slowed its round trips fourfold.
EVENTS=syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_writev
EVENTS+=,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg
EVENTS+=,syscalls:sys_enter_read,syscalls:sys_enter_readv,syscalls:sys_enter_epoll_wait
EVENTS+=,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex
BASE=$("${TOOL[@]}" freeblock 4)
ECHO=$BASE CTRL=$((BASE + 1)) PUB=$((BASE + 2))
"${TOOL[@]}" echo-server "$ECHO" --max-seconds $((ROUNDS * 120 + 60)) >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
"${TOOL[@]}" wait-listen --timeout 15 "$ECHO"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# busy and idle ticks of the whole machine
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }

one() {
  local variant=$1 which started=${#PIDS[@]} s0 a0 m0 s1 a1 m1 out
  use_variant "$variant"
  which=$WHICH
  start_peer_tunnel "$which" "$SCHEME" "$WORK" "$CTRL" "$PUB" "$ECHO"
  "${TOOL[@]}" wait-echo --timeout 15 "$PUB" >/dev/null
  hold_idle "$PUB" "$IDLE" "$WORK/hold.log"
  # warm: connections, caches
  timeout 30 "${TOOL[@]}" rr "$PUB" --conns "$CONNS" --count 2000 --seconds 1 >/dev/null
  local pss="" psa=""
  if [[ $SYSCALLS == 1 ]]; then
    perf stat -x, -e "$EVENTS" -p "$SRV_PID" -o "$WORK/syscalls.server" 2>/dev/null &
    pss=$!
    perf stat -x, -e "$EVENTS" -p "$AGT_PID" -o "$WORK/syscalls.agent" 2>/dev/null &
    psa=$!
    PIDS+=("$pss" "$psa")
    sleep 0.3
  fi
  s0=$(ticks "$SRV_PID") a0=$(ticks "$AGT_PID") e0=$(ticks "$ECHO_PID") m0=$(machine)
  # the load client's own CPU: its rusage, as a child of this wrapper
  out=$(timeout $((SECS + 30)) python3 -c 'import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True).stdout.strip()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(out, "\t", ru.ru_utime + ru.ru_stime)' "${TOOL[@]}" rr "$PUB" --conns "$CONNS" --count "$COUNT" --seconds "$SECS")
  if [[ -n $pss ]]; then
    kill -INT "$pss" "$psa" 2>/dev/null || true
    wait "$pss" "$psa" 2>/dev/null || true
  fi
  m1=$(machine) s1=$(ticks "$SRV_PID") a1=$(ticks "$AGT_PID") e1=$(ticks "$ECHO_PID")
  python3 - "$variant" "$HZ" "$out" $((s1 - s0)) $((a1 - a0)) $((e1 - e0)) $m0 $m1 <<'PY'
import json, sys
variant, hz = sys.argv[1], float(sys.argv[2])
text, client_s = sys.argv[3].rsplit("\t", 1)
out = json.loads(text)
s, a, e, b0, i0, b1, i1 = map(float, sys.argv[4:11])
us = lambda t: t / hz / out["count"] * 1e6
busy, idle = b1 - b0, i1 - i0
client = float(client_s) / out["count"] * 1e6
print(f"| {variant} | {out['rps']:.0f} | {out['p50_us']:.0f} | {us(s):.1f} | {us(a):.1f} | {us(s + a):.1f} | {client:.1f} | {us(e):.1f} | {idle / (busy + idle) * 100:.1f} |")
PY
  if [[ -n $pss ]]; then
    local count
    count=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1].rsplit("\t", 1)[0])["count"])' "$out")
    "${TOOL[@]}" sys-per "$WORK/syscalls.server" --per "$count" --label server >&2
    "${TOOL[@]}" sys-per "$WORK/syscalls.agent" --per "$count" --label agent/client >&2
  fi
  local p
  for p in "${PIDS[@]:$started}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:$started}")
  sleep 1
}

echo "$SCHEME, $CONNS connections each doing sequential 64-byte round trips ($IDLE more open and idle), $SECS s, $ROUNDS alternating rounds:"
echo
header="| tunnel | round trips/s | p50 µs | server CPU µs/rt | agent/client CPU µs/rt | server + agent | load client | echo | machine idle % |"
echo "$header"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for _ in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    one "$v" | tee -a "$WORK/rows"
  done
done
echo
echo "medians:"
echo
echo "$header"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
"${TOOL[@]}" row-medians --ints 2 "$WORK/rows"
