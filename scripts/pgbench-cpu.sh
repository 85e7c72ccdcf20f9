#!/usr/bin/env bash
# Where a pgbench -S transaction's CPU goes, Culvert against wstunnel: CPU µs per transaction
# of the tunnel's server, its agent (wstunnel: client), both, PostgreSQL's backends, pgbench
# and the whole machine, and how much of the machine stayed idle, in alternating rounds.
#
#   scripts/pgbench-cpu.sh                          # ws, 8 clients, 3 rounds of 5 s
#   PGCPU_SCHEME=wss PGCPU_ROUNDS=5 scripts/pgbench-cpu.sh
#   PGCPU_VARIANTS="culvert:/path/to/other-culvert culvert wstunnel" scripts/pgbench-cpu.sh
#
# Why: Culvert's pgbench -S tps trails the best peer's by 5-10 % (BENCHMARKS.md), and the
# tunnel's own CPU is only part of what a transaction costs on two CPUs shared with
# PostgreSQL and pgbench.
#
# Needs PostgreSQL 15 and pgbench (scripts/test.sh installs them; initdb and postgres run as
# the postgres user when root), and the wstunnel that scripts/bench.sh builds; Culvert is
# target/profiling/culvert unless CULVERT_BIN says otherwise. Everything on 127.0.0.1 ports
# from benchtool's freeblock; every process stopped by its PID; every pgbench bounded by -T
# and a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${PGCPU_ROUNDS:-3}
SCHEME=${PGCPU_SCHEME:-ws}
SECS=${PGCPU_SECONDS:-5}
CLIENTS=${PGCPU_CLIENTS:-8}
JOBS=${PGCPU_JOBS:-2}
VARIANTS=${PGCPU_VARIANTS:-culvert wstunnel}
# shellcheck source=scripts/lib/peer-tunnel.sh
source "$ROOT/scripts/lib/peer-tunnel.sh"
peer_bins pgbench-cpu
# shellcheck source=scripts/lib/procs.sh
source "$ROOT/scripts/lib/procs.sh"
procs_init pgbench-cpu
# shellcheck source=scripts/lib/pg.sh
source "$ROOT/scripts/lib/pg.sh"
pg_tools
HZ=$(getconf CLK_TCK)
BASE=$("${TOOL[@]}" freeblock 4)
PG=$BASE CTRL=$((BASE + 1)) PUB=$((BASE + 2))
PG_PID=
stop_pg() { [[ -z $PG_PID ]] || pg_stop "$PG_PID"; procs_cleanup; }
trap stop_pg EXIT
pg_start_pgbench "$WORK" "$PG" || exit 1

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# CPU of the postmaster's children that have exited (the backends, once pgbench is done)
reaped() { awk '{print $16+$17}' "/proc/$PG_PID/stat"; }
children() { pgrep -c -P "$PG_PID" || true; }
# busy and idle ticks of the whole machine
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }

# pgbench SECONDS: runs it through the tunnel; prints "tps cpu_ticks" (its user + system)
pgbench_run() {
  PGCONNECT_TIMEOUT=5 timeout $(($1 + 30)) python3 - "$PGBENCH" "$PUB" "$CLIENTS" "$JOBS" "$1" "$HZ" <<'PY'
import re, resource, subprocess, sys
pgbench, port, clients, jobs, secs, hz = sys.argv[1:7]
out = subprocess.run([pgbench, "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-S", "-n",
                      "-c", clients, "-j", jobs, "-T", secs, "postgres"],
                     capture_output=True, text=True, check=True).stdout
tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{tps:.0f} {round((ru.ru_utime + ru.ru_stime) * int(hz))}")
PY
}

# one VARIANT (culvert, culvert:BIN or wstunnel): one measured pgbench run, one row
one() {
  local variant=$1 which started=${#PIDS[@]} idle_children s0 a0 p0 m0 s1 a1 p1 m1 out
  use_variant "$variant"
  which=$WHICH
  start_peer_tunnel "$which" "$SCHEME" "$WORK" "$CTRL" "$PUB" "$PG"
  idle_children=$(children)
  pgbench_run 1 >/dev/null   # warm: connections, caches
  s0=$(ticks "$SRV_PID") a0=$(ticks "$AGT_PID") p0=$(reaped) m0=$(machine)
  out=$(pgbench_run "$SECS")
  m1=$(machine) s1=$(ticks "$SRV_PID") a1=$(ticks "$AGT_PID")
  # the backends' CPU counts once the postmaster has reaped them (bounded wait)
  for _ in $(seq 1 50); do (($(children) <= idle_children)) && break; sleep 0.1; done
  p1=$(reaped)
  python3 - "$variant" "$HZ" $out $((s1 - s0)) $((a1 - a0)) $((p1 - p0)) $m0 $m1 <<'PY'
import sys
which, hz, tps, pgb, s, a, p, b0, i0, b1, i1 = sys.argv[1], *map(float, sys.argv[2:])
tx = tps * float(__import__("os").environ.get("PGCPU_SECONDS", "5"))
us = lambda t: t / hz / tx * 1e6
busy, idle = b1 - b0, i1 - i0
print(f"| {which} | {tps:.0f} | {us(s):.1f} | {us(a):.1f} | {us(s + a):.1f} | {us(p):.1f} | {us(pgb):.1f} | {us(busy):.1f} | {idle / (busy + idle) * 100:.1f} |")
PY
  local p
  for p in "${PIDS[@]:$started}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:$started}")
}

export PGCPU_SECONDS=$SECS
echo "$SCHEME, pgbench -S -c $CLIENTS -j $JOBS -T $SECS, $ROUNDS alternating rounds; CPU µs per transaction:"
echo
header="| tunnel | tps | server | agent/client | server + agent | PostgreSQL | pgbench | whole machine | machine idle % |"
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
"${TOOL[@]}" row-medians --ints 1 "$WORK/rows"
