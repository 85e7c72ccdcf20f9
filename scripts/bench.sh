#!/usr/bin/env bash
# Loopback benchmark of whole binaries: no tunnel, Culvert over ws:// and wss://, and its
# peers measured the same way in one run: rathole over its plain TCP and its TLS
# transports, wstunnel (reverse tunnel) over ws:// and wss://, and bore (plain TCP).
#
# Measures, per TCP configuration (direct, culvert-ws, culvert-wss, rathole-tcp,
# rathole-tls, wstunnel-ws, wstunnel-wss, bore):
#   - iperf3 TCP throughput, 1 stream and 8 streams (-P 8), both directions (-R);
#   - CPU seconds per GB moved, for the tunnel's server and agent/client processes
#     separately (utime+stime from /proc/PID/stat around each iperf3 run, divided by
#     the bytes iperf3 reports as received);
#   - 64-byte request/response round trips per second over one connection, p50/p99;
#   - the same with 8 connections at once, each doing sequential round trips (aggregate
#     round trips/s, p50/p99 over all of them);
#   - new connections per second (connect, 1 byte, echo, close): with several workers at
#     once, and with one worker (each connection waits for the last: the latency of a
#     connection's setup and first exchange through the tunnel);
#   - pgbench -S (select-only, 8 clients, -j 2) against a PostgreSQL the script starts
#     itself (as the postgres user when run as root), exposed through each tunnel: tps;
#   - RSS of server and agent: idle, holding 1,000 idle tunneled connections, and
#     peak (VmHWM, reset just before) during the bulk iperf3 runs.
# Every iperf3 run, round-trip test, new-connections test and pgbench run is repeated
# BENCH_REPEAT times (3 by default) and the table shows the medians. The repeats are
# rounds (BENCH_INTERLEAVE=1, the default): each round measures every TCP column once, on
# fresh processes, in order in odd rounds and in reverse order in even ones, so a drift of
# the machine's speed over the run (a neighbour's load, its CPU's clock) weighs on every
# column alike rather than on whichever columns ran while it lasted, and no column always
# follows the same neighbour.
# Each tunnel is started twice on fresh ports: once for the connection tests (RSS idle
# and with idle connections, round trips, new connections, pgbench) and once for the
# bulk runs, so neither phase's retained memory shows in the other's RSS figures.
# bore serves one local port per `bore local` process: it runs three (iperf3, echo,
# PostgreSQL); its agent/client CPU and RSS figures are the sums over the three. bore's
# control port is fixed at 7835 (bore has no flag for it): the bore column needs
# 127.0.0.1:7835 free.
# UDP columns (direct-udp, culvert-ws-udp, culvert-wss-udp, rathole-udp over rathole's
# TCP transport, rathole-tls-udp over its TLS transport) measure, through one tunnel
# start each:
#   - iperf3 UDP (-u, 1,200-byte datagrams) at fixed offered rates (200 Mbit/s and
#     1 Gbit/s), both directions (-R): received throughput, loss and jitter, all taken
#     from the receiving side; iperf3 needs its TCP control connection too, so the
#     tunnel exposes a TCP and a UDP service on the same public port number;
#   - CPU seconds per GB received for the tunnel processes during the fastest rate;
#   - 64-byte UDP round trips per second from one flow (sequential, each waits for its
#     echo up to a timeout; a timeout counts as a lost round trip), p50/p99;
#   - peak RSS of the tunnel processes over the UDP runs.
# Prints one markdown table for TCP and one for UDP (both also written to
# target/bench/latest.md). The TCP table has, per metric, culvert-ws ÷ best peer and
# culvert-wss ÷ best peer (the best of rathole-tcp, rathole-tls, wstunnel-ws,
# wstunnel-wss and bore in this run: highest for higher-is-better rows, lowest for
# lower-is-better ones; the cell names it), culvert-wss ÷ wstunnel-wss, and Culvert ÷
# rathole; the UDP table Culvert ÷ rathole.
#
# Syscall mode (BENCH_SYSCALLS=1, or =only to skip the columns above): for Culvert (ws)
# and wstunnel (ws) by default, one tunnel start each, iperf3 -n 2G client→service and
# service→client, then a fixed count of 64-byte round trips over one connection; each
# load twice, for the tunnel's server and agent/client processes: first bare, voluntary
# and involuntary context switches summed over all threads (/proc/PID/task/*/status)
# and CPU time; then system calls by name (perf stat -a counting the syscalls:sys_enter_*
# tracepoints, filtered to the process's threads, enabled and disabled through perf's
# control FIFO exactly around the load). Printed as tables per GB and per round trip.
# BENCH_SYSCALLS_PROFILE=1 adds a `perf record -g` of one more client→service transfer
# and the top 20 symbols of each process.
#
# Installs what it needs when missing: iperf3 (Debian package), rathole (pinned
# version, built by cargo into target/bench/), wstunnel (pinned source tarball from
# ../shared/peers/ next to the repository, built with its own lock file and release
# profile into target/bench/wstunnel-VERSION/, about 10 minutes on 2 cores), bore
# (crates.io package bore-cli, pinned, cargo install --locked into target/bench/),
# Culvert (cargo build --profile profiling --locked: release with line tables). PostgreSQL 15 (initdb, postgres, pgbench)
# must be installed already (scripts/test.sh installs it); without it the pgbench rows
# are left out with a note. perf (for the syscall mode) is used as found.
# Everything runs on 127.0.0.1 only; every process started here is recorded by PID
# and stopped by PID on exit; the PostgreSQL cluster lives in a /tmp directory removed
# on exit.
#
# Usage: scripts/bench.sh
# Environment (all optional):
#   BENCH_ONLY=direct,culvert-ws,culvert-wss,rathole-tcp,rathole-tls,wstunnel-ws,wstunnel-wss,bore,direct-udp,culvert-ws-udp,culvert-wss-udp,rathole-udp,rathole-tls-udp
#                            columns to run (default: all); `tcp` and `udp` stand for
#                            all TCP or all UDP columns, e.g. BENCH_ONLY=udp
#   BENCH_SECONDS=5          length of each iperf3 run, and time cap of each load loop
#   BENCH_INTERLEAVE=1       0: each TCP column's BENCH_REPEAT runs back to back, column
#                            after column (the method before fa4841c), instead of rounds
#   BENCH_REPEAT=3           runs per cell of the iperf3 TCP, round-trip, new-connection
#                            and pgbench tests; the table shows their medians (each
#                            figure separately: throughput and each CPU-s/GB, rate, p50, p99)
#   BENCH_RR_COUNT=20000     round trips at most in the 1-connection request/response test
#   BENCH_RR_CONNS=8         connections of the concurrent request/response test
#   BENCH_RR_CONC_COUNT      round trips at most (all connections together) in the
#                            concurrent test (default 4 × BENCH_RR_COUNT)
#   BENCH_CPS_COUNT=10000    connections at most in the new-connections test
#   BENCH_CPS_WORKERS=8      concurrent workers in the new-connections test
#   BENCH_CPS_ONE=1          0: no one-worker new-connections row
#   BENCH_IDLE_CONNS=1000    idle tunneled connections held for the RSS test
#   BENCH_PGBENCH=1          0: no PostgreSQL, no pgbench rows
#   BENCH_PGBENCH_CLIENTS=8  pgbench -c;  BENCH_PGBENCH_JOBS=2: pgbench -j
#   BENCH_PGBENCH_SECONDS    pgbench -T of each run (default BENCH_SECONDS)
#   BENCH_PGBENCH_SCALE=10   pgbench -i -s, once, directly (not through a tunnel)
#   BENCH_UDP_RATES=200M,1G  offered iperf3 UDP rates (-b); CPU-s/GB is shown for the last
#   BENCH_UDP_LEN=1200       UDP datagram payload bytes (iperf3 -l)
#   BENCH_UDP_SECONDS        length of each iperf3 UDP run (default BENCH_SECONDS)
#   BENCH_UDP_WINDOW=2M      iperf3 -w: buffers of iperf3's own sockets, so that its default
#                            208 KiB receive buffer is not what drops datagrams (empty:
#                            iperf3's default)
#   BENCH_UDP_RR_COUNT=20000 UDP round trips at most (time cap BENCH_SECONDS)
#   BENCH_UDP_RR_TIMEOUT_MS=500  wait for each UDP echo; a timeout counts as lost
#   BENCH_SYSCALLS=0         1: add the syscall mode after the columns; only: run just it
#   BENCH_SYSCALLS_COLUMNS=culvert-ws,wstunnel-ws
#                            tunnels measured in the syscall mode (any TCP column but direct)
#   BENCH_SYSCALLS_BYTES=2G  iperf3 -n of each syscall-mode transfer
#   BENCH_SYSCALLS_RR_COUNT=20000  round trips of the syscall mode (plus 50 warm-up ones,
#                            counted in the denominator since they are inside the window)
#   BENCH_SYSCALLS_TOP=10    system calls shown by name (the most frequent)
#   BENCH_SYSCALLS_PROFILE=0 1: also a perf record -g profile, top 20 symbols per process
#   BENCH_KEEP_AWAKE=0       1: one `nice -n 19` busy loop per CPU while measuring, so that
#                            no vCPU halts between messages (on this VM a halted vCPU's
#                            wake-up made direct round trips 4-5x slower; see BENCHMARKS.md).
#                            Not neutral: the loops take CPU from bulk transfers too
#   BENCH_MAX_SECONDS=2400   limit for the measuring phase (builds not included);
#                            what does not fit is reported as skipped
#   BENCH_BUILD_TIMEOUT=1800 limit for each build/install step
#   BENCH_NO_BUILD=1         use target/profiling/culvert as it is (no cargo build)
#   BENCH_BUILD_ONLY=1       build and install what the chosen columns need, then stop
#                            (so that the builds of the peers can go on while other work does);
#                            exits 1 when one of them could not be built
#   BENCH_TUNNEL_LOG=warn    RUST_LOG given to the tunnel processes (wstunnel: --log-lvl)
#   CULVERT_BIN=path         Culvert binary (default target/profiling/culvert)
#   BENCH_CULVERT_SERVER_ARGS, BENCH_CULVERT_AGENT_ARGS
#                            extra flags for `culvert server` / `culvert agent` (e.g. "--pool 2")
#   RATHOLE_BIN=path         rathole binary (default: the pinned one, installed on demand)
#   WSTUNNEL_BIN=path        wstunnel binary (default: the pinned one, built on demand)
#   WSTUNNEL_TARBALL=path    its source (default ../shared/peers/wstunnel-10.6.2-14168c5.tar.gz
#                            relative to the repository root)
#   BORE_BIN=path            bore binary (default: the pinned one, installed on demand)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TCP_COLUMNS="direct,culvert-ws,culvert-wss,rathole-tcp,rathole-tls,wstunnel-ws,wstunnel-wss,bore"
# the peers Culvert's TCP columns are compared with (the best of them, per metric)
PEER_COLUMNS="rathole-tcp,rathole-tls,wstunnel-ws,wstunnel-wss,bore"
UDP_COLUMNS="direct-udp,culvert-ws-udp,culvert-wss-udp,rathole-udp,rathole-tls-udp"
ALL_COLUMNS="$TCP_COLUMNS,$UDP_COLUMNS"
# settings given in the environment, repeated in the report's "Run:" line
RUN_VARS=""
for v in BENCH_ONLY BENCH_REPEAT BENCH_UDP_RATES BENCH_UDP_LEN BENCH_UDP_SECONDS BENCH_UDP_WINDOW \
  BENCH_UDP_RR_COUNT BENCH_UDP_RR_TIMEOUT_MS BENCH_RR_COUNT BENCH_RR_CONNS BENCH_RR_CONC_COUNT \
  BENCH_CPS_COUNT BENCH_CPS_WORKERS BENCH_CPS_ONE BENCH_IDLE_CONNS BENCH_PGBENCH BENCH_PGBENCH_CLIENTS \
  BENCH_PGBENCH_JOBS BENCH_PGBENCH_SECONDS BENCH_PGBENCH_SCALE BENCH_SYSCALLS BENCH_SYSCALLS_COLUMNS \
  BENCH_SYSCALLS_BYTES BENCH_SYSCALLS_RR_COUNT BENCH_SYSCALLS_PROFILE BENCH_KEEP_AWAKE BENCH_INTERLEAVE; do
  [[ -z ${!v+x} ]] || RUN_VARS+="$v=${!v} "
done
BENCH_ONLY=${BENCH_ONLY:-$ALL_COLUMNS}
BENCH_ONLY=$(printf ',%s,' "$BENCH_ONLY" | sed -e "s/,tcp,/,$TCP_COLUMNS,/; s/,udp,/,$UDP_COLUMNS,/; s/^,//; s/,$//")
BENCH_SECONDS=${BENCH_SECONDS:-5}
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_INTERLEAVE=${BENCH_INTERLEAVE:-1}
BENCH_RR_COUNT=${BENCH_RR_COUNT:-20000}
BENCH_RR_CONNS=${BENCH_RR_CONNS:-8}
BENCH_RR_CONC_COUNT=${BENCH_RR_CONC_COUNT:-}
BENCH_PGBENCH=${BENCH_PGBENCH:-1}
BENCH_PGBENCH_CLIENTS=${BENCH_PGBENCH_CLIENTS:-8}
BENCH_PGBENCH_JOBS=${BENCH_PGBENCH_JOBS:-2}
BENCH_PGBENCH_SECONDS=${BENCH_PGBENCH_SECONDS:-$BENCH_SECONDS}
BENCH_PGBENCH_SCALE=${BENCH_PGBENCH_SCALE:-10}
BENCH_SYSCALLS=${BENCH_SYSCALLS:-0}
BENCH_SYSCALLS_COLUMNS=${BENCH_SYSCALLS_COLUMNS:-culvert-ws,wstunnel-ws}
BENCH_SYSCALLS_BYTES=${BENCH_SYSCALLS_BYTES:-2G}
BENCH_SYSCALLS_RR_COUNT=${BENCH_SYSCALLS_RR_COUNT:-20000}
BENCH_SYSCALLS_TOP=${BENCH_SYSCALLS_TOP:-10}
BENCH_SYSCALLS_PROFILE=${BENCH_SYSCALLS_PROFILE:-0}
BENCH_CPS_COUNT=${BENCH_CPS_COUNT:-10000}
BENCH_CPS_WORKERS=${BENCH_CPS_WORKERS:-8}
BENCH_CPS_ONE=${BENCH_CPS_ONE:-1}
BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-2400}
BENCH_KEEP_AWAKE=${BENCH_KEEP_AWAKE:-0}
BENCH_BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-1800}
BENCH_NO_BUILD=${BENCH_NO_BUILD:-0}
BENCH_TUNNEL_LOG=${BENCH_TUNNEL_LOG:-warn}
BENCH_UDP_RATES=${BENCH_UDP_RATES:-200M,1G}
BENCH_UDP_LEN=${BENCH_UDP_LEN:-1200}
BENCH_UDP_SECONDS=${BENCH_UDP_SECONDS:-$BENCH_SECONDS}
BENCH_UDP_WINDOW=${BENCH_UDP_WINDOW-2M}
BENCH_UDP_RR_COUNT=${BENCH_UDP_RR_COUNT:-20000}
BENCH_UDP_RR_TIMEOUT_MS=${BENCH_UDP_RR_TIMEOUT_MS:-500}
read -r -a CULVERT_SERVER_EXTRA <<<"${BENCH_CULVERT_SERVER_ARGS:-}"
read -r -a CULVERT_AGENT_EXTRA <<<"${BENCH_CULVERT_AGENT_ARGS:-}"

# rathole is pinned. Its published lock file holds time 0.3.29, which no longer compiles
# on current Rust (type inference change in 1.80); the build therefore uses that lock
# file with only `time` moved to TIME_PIN. Only the `tls` feature (native-tls/OpenSSL)
# gives rathole its TLS transport; noise, websocket and hot-reload are left out.
RATHOLE_VERSION=0.5.0
RATHOLE_TIME_PIN=0.3.36
RATHOLE_FEATURES=server,client,tls
RATHOLE_ROOT=$ROOT/target/bench/rathole-$RATHOLE_VERSION
RATHOLE_BIN=${RATHOLE_BIN:-$RATHOLE_ROOT/bin/rathole}
# wstunnel is on no registry reachable here: a pinned source tarball (wstunnel 10.6.2 plus
# five commits, git 14168c5) sits in ../shared/peers/ next to the repository. It is built
# with its own lock file and its own release profile (fat LTO, one codegen unit,
# symbols stripped), into target/bench/wstunnel-VERSION/ (src/, build/, bin/).
WSTUNNEL_NAME=wstunnel-10.6.2-14168c5
WSTUNNEL_TARBALL=${WSTUNNEL_TARBALL:-$ROOT/../shared/peers/$WSTUNNEL_NAME.tar.gz}
WSTUNNEL_ROOT=$ROOT/target/bench/$WSTUNNEL_NAME
WSTUNNEL_BIN_SET=${WSTUNNEL_BIN:-}
WSTUNNEL_BIN=${WSTUNNEL_BIN:-$WSTUNNEL_ROOT/bin/wstunnel}
# bore: crates.io package bore-cli, pinned, installed with its published lock file.
BORE_VERSION=0.6.0
BORE_ROOT=$ROOT/target/bench/bore-$BORE_VERSION
BORE_BIN_SET=${BORE_BIN:-}
BORE_BIN=${BORE_BIN:-$BORE_ROOT/bin/bore}
BORE_CONTROL_PORT=7835 # fixed in bore (no flag to change it)
CULVERT_BIN=${CULVERT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/profiling/culvert}

OUT=$ROOT/target/bench
RUN=$OUT/run   # configs, certificates, logs and raw results of the latest run
TOOL=(python3 "$ROOT/scripts/bench/benchtool.py")

for v in BENCH_SECONDS BENCH_REPEAT BENCH_RR_COUNT BENCH_RR_CONNS BENCH_CPS_COUNT \
  BENCH_CPS_WORKERS BENCH_IDLE_CONNS BENCH_PGBENCH_CLIENTS BENCH_PGBENCH_JOBS BENCH_PGBENCH_SECONDS \
  BENCH_PGBENCH_SCALE BENCH_SYSCALLS_RR_COUNT BENCH_SYSCALLS_TOP BENCH_MAX_SECONDS BENCH_BUILD_TIMEOUT \
  BENCH_UDP_LEN BENCH_UDP_SECONDS BENCH_UDP_RR_COUNT BENCH_UDP_RR_TIMEOUT_MS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number" >&2; exit 2; }
done
[[ -n $BENCH_RR_CONC_COUNT ]] || BENCH_RR_CONC_COUNT=$((4 * BENCH_RR_COUNT))
[[ $BENCH_RR_CONC_COUNT =~ ^[0-9]+$ ]] || { echo "bench: BENCH_RR_CONC_COUNT must be a whole number" >&2; exit 2; }
[[ $BENCH_CPS_ONE == [01] ]] || { echo "bench: BENCH_CPS_ONE must be 0 or 1" >&2; exit 2; }
((BENCH_REPEAT >= 1)) || { echo "bench: BENCH_REPEAT must be at least 1" >&2; exit 2; }
((BENCH_RR_CONNS >= 1)) || { echo "bench: BENCH_RR_CONNS must be at least 1" >&2; exit 2; }
for v in BENCH_PGBENCH BENCH_SYSCALLS_PROFILE BENCH_INTERLEAVE; do
  [[ ${!v} == 0 || ${!v} == 1 ]] || { echo "bench: $v is 0 or 1" >&2; exit 2; }
done
[[ $BENCH_SYSCALLS == 0 || $BENCH_SYSCALLS == 1 || $BENCH_SYSCALLS == only ]] ||
  { echo "bench: BENCH_SYSCALLS is 0, 1 or only" >&2; exit 2; }
[[ $BENCH_SYSCALLS_BYTES =~ ^[0-9]+[KMG]?$ ]] ||
  { echo "bench: BENCH_SYSCALLS_BYTES looks like 2G or 500M, not '$BENCH_SYSCALLS_BYTES'" >&2; exit 2; }
SYS_COLS=()
if [[ $BENCH_SYSCALLS != 0 ]]; then
  IFS=',' read -r -a SYS_COLS <<<"$BENCH_SYSCALLS_COLUMNS"
  for c in "${SYS_COLS[@]}"; do
    [[ $c != direct && ",$TCP_COLUMNS," == *",$c,"* ]] ||
      { echo "bench: BENCH_SYSCALLS_COLUMNS takes tunnel TCP columns, not '$c'" >&2; exit 2; }
  done
fi
# BENCH_SYSCALLS=only: none of the table columns run
[[ $BENCH_SYSCALLS != only ]] || BENCH_ONLY=""
IFS=',' read -r -a UDP_RATES <<<"$BENCH_UDP_RATES"
for r in "${UDP_RATES[@]}"; do
  [[ $r =~ ^[0-9]+[KMG]?$ ]] || { echo "bench: BENCH_UDP_RATES entries look like 200M or 1G, not '$r'" >&2; exit 2; }
done
[[ -z $BENCH_UDP_WINDOW || $BENCH_UDP_WINDOW =~ ^[0-9]+[KM]?$ ]] ||
  { echo "bench: BENCH_UDP_WINDOW looks like 2M, not '$BENCH_UDP_WINDOW'" >&2; exit 2; }
COLS=()
[[ -z $BENCH_ONLY ]] || IFS=',' read -r -a COLS <<<"$BENCH_ONLY"
for c in "${COLS[@]}"; do
  [[ ",$ALL_COLUMNS," == *",$c,"* ]] || { echo "bench: unknown column '$c' in BENCH_ONLY (known: $ALL_COLUMNS)" >&2; exit 2; }
done
wants() { [[ ",$BENCH_ONLY," == *",$1,"* ]]; }
wants_any() { # wants_any COL,COL,... : is any of them selected?
  local c cs
  IFS=',' read -r -a cs <<<"$1"
  for c in "${cs[@]}"; do wants "$c" && return 0; done
  return 1
}
needs_any() { # needs_any COL,COL,... : does a selected column or the syscall mode use any of them?
  local c
  wants_any "$1" && return 0
  for c in "${SYS_COLS[@]}"; do [[ ",$1," != *",$c,"* ]] || return 0; done
  return 1
}
is_udp_col() { [[ $1 == *-udp ]]; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
last_line() { grep -v '^\s*$' "$1" 2>/dev/null | tail -n1 | cut -c1-160 || true; }

# ------------------------------------------------------------------ processes
# Every process started in the background is recorded here and stopped by PID.
PIDS=()
LAST_PID=
start_bg() { # start_bg LOGFILE CMD... ; sets LAST_PID
  local logf=$1
  shift
  "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
# A recorded PID is signalled only while it is still a child of this script (so a PID
# reused by the system after our process ended is never touched).
is_mine() { [[ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" == "$$" ]]; }
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  if is_mine "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
PG_PID=
PG_WORK=
cleanup() {
  local p
  trap - EXIT INT TERM
  # PostgreSQL first, with a fast shutdown (SIGINT): SIGTERM would wait for its clients.
  if [[ -n $PG_PID ]] && is_mine "$PG_PID"; then pg_stop "$PG_PID"; fi
  local mine=()
  for p in "${PIDS[@]}"; do
    if is_mine "$p"; then
      mine+=("$p")
      kill -TERM "$p" 2>/dev/null || true
    fi
  done
  ((${#mine[@]})) && sleep 0.3
  for p in "${mine[@]}"; do
    is_mine "$p" && kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
  [[ $PG_WORK != /tmp/culvert-bench-pg.* ]] || rm -rf "$PG_WORK"
}
trap cleanup EXIT
trap 'log "stopped by a signal or by the time limit"; exit 130' INT TERM
alive() { kill -0 "$1" 2>/dev/null; }

# ------------------------------------------------------------------ /proc readings
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a process, in clock ticks
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return 0; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
status_kb() { # status_kb PID FIELD  -> value in kB
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}
# The agent/client side may be several processes (bore: one per exposed port); these sum
# over AGT_PIDS.
agt_ticks() {
  local t=0 p
  for p in "${AGT_PIDS[@]}"; do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}
agt_kb() { # agt_kb FIELD
  local t=0 p v
  for p in "${AGT_PIDS[@]}"; do
    v=$(status_kb "$p" "$1" 2>/dev/null || true)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
reset_hwm() { # VmHWM back to the current RSS ("5" in clear_refs), for server and agent(s)
  local p
  for p in "$SRV_PID" "${AGT_PIDS[@]}"; do echo 5 >"/proc/$p/clear_refs" || return 1; done 2>/dev/null
}
ctxsw() { # ctxsw PID... -> "VOLUNTARY INVOLUNTARY THREADS", summed over every thread
  local p
  for p in "$@"; do cat "/proc/$p/task/"*/status 2>/dev/null || true; done |
    awk '$1 == "voluntary_ctxt_switches:" { v += $2 } $1 == "nonvoluntary_ctxt_switches:" { n += $2 }
      $1 == "Pid:" { t++ } END { print v + 0, n + 0, t + 0 }'
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ------------------------------------------------------------------ results
RES=$RUN/results.tsv
METRICS=$RUN/metrics.tsv
UMETRICS=$RUN/udp-metrics.tsv
NOTES=()
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }
note() { NOTES+=("$*"); log "note: $*"; }

rm -rf "$RUN"
mkdir -p "$RUN/logs"
: >"$RES"

VARIANTS=(p1 p1r p8 p8r)
declare -A VLABEL=([p1]="1 stream, client→service" [p1r]="1 stream, service→client (-R)"
  [p8]="8 streams, client→service" [p8r]="8 streams, service→client (-R)")
declare -A VARGS=([p1]="" [p1r]="-R" [p8]="-P 8" [p8r]="-P 8 -R")
{
  printf 'status\tstatus\t-\n'
  for v in "${VARIANTS[@]}"; do printf 'gbps_%s\tthroughput Gbit/s, %s\tup\n' "$v" "${VLABEL[$v]}"; done
  for v in "${VARIANTS[@]}"; do printf 'cpus_%s\tserver CPU-s/GB, %s\tdown\n' "$v" "${VLABEL[$v]}"; done
  for v in "${VARIANTS[@]}"; do printf 'cpua_%s\tagent/client CPU-s/GB, %s\tdown\n' "$v" "${VLABEL[$v]}"; done
  printf 'rr_rps\t64-byte round trips/s, 1 connection\tup\n'
  printf 'rr_p50\tround trip p50 µs\tdown\n'
  printf 'rr_p99\tround trip p99 µs\tdown\n'
  printf 'rrc_rps\t64-byte round trips/s, %s connections at once\tup\n' "$BENCH_RR_CONNS"
  printf 'rrc_p50\tround trip p50 µs, %s connections\tdown\n' "$BENCH_RR_CONNS"
  printf 'rrc_p99\tround trip p99 µs, %s connections\tdown\n' "$BENCH_RR_CONNS"
  printf 'cps\tnew connections/s, %s workers\tup\n' "$BENCH_CPS_WORKERS"
  [[ $BENCH_CPS_ONE == 0 ]] || printf 'cps1\tnew connections/s, 1 worker\tup\n'
  if [[ $BENCH_PGBENCH == 1 ]]; then
    printf 'pgb_tps\tpgbench -S tps, %s clients\tup\n' "$BENCH_PGBENCH_CLIENTS"
    printf 'pgb_lat\tpgbench -S latency average ms\tdown\n'
  fi
  printf 'rss_idle_s\tserver RSS MB, idle\tdown\n'
  printf 'rss_idle_a\tagent/client RSS MB, idle\tdown\n'
  printf 'rss_conn_s\tserver RSS MB, %s idle tunneled conns\tdown\n' "$BENCH_IDLE_CONNS"
  printf 'rss_conn_a\tagent/client RSS MB, %s idle tunneled conns\tdown\n' "$BENCH_IDLE_CONNS"
  printf 'rss_peak_s\tserver peak RSS MB, bulk runs\tdown\n'
  printf 'rss_peak_a\tagent/client peak RSS MB, bulk runs\tdown\n'
} >"$METRICS"

# UDP runs: one per offered rate and direction; key u<RATE> (client→service) and
# u<RATE>r (service→client, iperf3 -R).
UVARIANTS=()
declare -A ULABEL=() UARGS=() UMBPS=() ULOSS=()
for r in "${UDP_RATES[@]}"; do
  UVARIANTS+=("u$r" "u${r}r")
  ULABEL[u$r]="$r offered, client→service"
  ULABEL[u${r}r]="$r offered, service→client (-R)"
  UARGS[u$r]="-b $r"
  UARGS[u${r}r]="-b $r -R"
done
UFAST=${UDP_RATES[-1]}
{
  printf 'status\tstatus\t-\n'
  printf 'ubest\tbest received Mbit/s at ≤ 1 %% loss (over the offered rates), client→service\tup\n'
  printf 'ubestr\tbest received Mbit/s at ≤ 1 %% loss (over the offered rates), service→client (-R)\tup\n'
  for v in "${UVARIANTS[@]}"; do
    printf 'mbps_%s\treceived Mbit/s, %s\tup\n' "$v" "${ULABEL[$v]}"
    printf 'loss_%s\tloss %%, %s\tdown\n' "$v" "${ULABEL[$v]}"
    printf 'jit_%s\tjitter ms, %s\tdown\n' "$v" "${ULABEL[$v]}"
  done
  for v in "u$UFAST" "u${UFAST}r"; do printf 'cpus_%s\tserver CPU-s/GB, %s\tdown\n' "$v" "${ULABEL[$v]}"; done
  for v in "u$UFAST" "u${UFAST}r"; do printf 'cpua_%s\tagent/client CPU-s/GB, %s\tdown\n' "$v" "${ULABEL[$v]}"; done
  printf 'urr_rps\t64-byte UDP round trips/s, 1 flow\tup\n'
  printf 'urr_p50\tUDP round trip p50 µs\tdown\n'
  printf 'urr_p99\tUDP round trip p99 µs\tdown\n'
  printf 'urr_loss\tUDP round trips lost %% (no echo in %s ms)\tdown\n' "$BENCH_UDP_RR_TIMEOUT_MS"
  printf 'urss_peak_s\tserver peak RSS MB, UDP runs\tdown\n'
  printf 'urss_peak_a\tagent/client peak RSS MB, UDP runs\tdown\n'
} >"$UMETRICS"

# ------------------------------------------------------------------ installs and builds
command -v python3 >/dev/null || { echo "bench: python3 is required" >&2; exit 1; }
apt_install() {
  log "installing $* (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  timeout "$BENCH_BUILD_TIMEOUT" apt-get update -qq
  timeout "$BENCH_BUILD_TIMEOUT" apt-get install -y -qq "$@" >/dev/null
}
command -v iperf3 >/dev/null || apt_install iperf3
if needs_any rathole-tls,rathole-tls-udp && ! command -v openssl >/dev/null; then apt_install openssl; fi

RATHOLE_NA=
install_rathole() {
  local blog=$RUN/logs/rathole-install.log src crate
  log "installing rathole $RATHOLE_VERSION into ${RATHOLE_ROOT#"$ROOT"/} (takes a few minutes once)"
  src=$(mktemp -d)
  # Fetch the published package through cargo, unpack it, and build it against its own
  # lock file with only `time` moved forward (see RATHOLE_TIME_PIN above).
  if timeout "$BENCH_BUILD_TIMEOUT" cargo info "rathole@$RATHOLE_VERSION" >"$blog" 2>&1; then
    crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "rathole-$RATHOLE_VERSION.crate" 2>/dev/null | head -n1 || true)
  fi
  if [[ -n ${crate:-} ]] && tar -xzf "$crate" -C "$src" &&
    (cd "$src/rathole-$RATHOLE_VERSION" &&
      timeout "$BENCH_BUILD_TIMEOUT" cargo update -p time --precise "$RATHOLE_TIME_PIN" &&
      timeout "$BENCH_BUILD_TIMEOUT" cargo install --path . --locked --no-default-features \
        --features "$RATHOLE_FEATURES" --root "$RATHOLE_ROOT") >>"$blog" 2>&1; then
    rm -rf "$src"
    return 0
  fi
  rm -rf "$src"
  log "pinned-lock build of rathole failed (see $blog); trying a fresh dependency resolution"
  timeout "$BENCH_BUILD_TIMEOUT" cargo install rathole --version "$RATHOLE_VERSION" --no-default-features \
    --features "$RATHOLE_FEATURES" --root "$RATHOLE_ROOT" >>"$blog" 2>&1
}
if needs_any rathole-tcp,rathole-tls,rathole-udp,rathole-tls-udp; then
  if [[ ! -x $RATHOLE_BIN ]]; then
    # rathole's tls feature links OpenSSL through native-tls: it needs its headers.
    if ! pkg-config --exists openssl 2>/dev/null; then apt_install pkg-config libssl-dev || true; fi
    install_rathole || true
  fi
  if [[ ! -x $RATHOLE_BIN ]]; then
    RATHOLE_NA="rathole install failed (target/bench/run/logs/rathole-install.log)"
  fi
fi

# peer_cargo TARGET_DIR CARGO-ARGS...: cargo for a peer's build, without this
# environment's release-profile overrides (CARGO_PROFILE_*) or RUSTFLAGS, so that the peer
# builds with its own profile; TARGET_DIR empty: cargo's own choice.
peer_cargo() {
  local tdir=$1 envs=(-u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS) v
  shift
  for v in $(compgen -e | grep '^CARGO_PROFILE_' || true); do envs+=(-u "$v"); done
  if [[ -n $tdir ]]; then envs+=("CARGO_TARGET_DIR=$tdir"); else envs=(-u CARGO_TARGET_DIR "${envs[@]}"); fi
  timeout "$BENCH_BUILD_TIMEOUT" env "${envs[@]}" cargo "$@"
}

WSTUNNEL_NA=
install_wstunnel() {
  local blog=$RUN/logs/wstunnel-build.log src=$WSTUNNEL_ROOT/src/$WSTUNNEL_NAME
  : >"$blog"
  if [[ ! -r $WSTUNNEL_TARBALL ]]; then
    echo "wstunnel source not found: $WSTUNNEL_TARBALL" >>"$blog"
    return 1
  fi
  log "building $WSTUNNEL_NAME into ${WSTUNNEL_ROOT#"$ROOT"/} (about 10 minutes on 2 cores, once)"
  mkdir -p "$WSTUNNEL_ROOT/src" "$WSTUNNEL_ROOT/bin"
  if [[ ! -f $src/Cargo.lock ]]; then
    tar -xzf "$WSTUNNEL_TARBALL" -C "$WSTUNNEL_ROOT/src" >>"$blog" 2>&1 || return 1
  fi
  # Its own lock file and release profile (and its .cargo/config.toml rustflags).
  (cd "$src" && peer_cargo "$WSTUNNEL_ROOT/build" build --release --locked) >>"$blog" 2>&1 || return 1
  install -m 755 "$WSTUNNEL_ROOT/build/release/wstunnel" "$WSTUNNEL_BIN"
}
if needs_any wstunnel-ws,wstunnel-wss; then
  if [[ ! -x $WSTUNNEL_BIN && $WSTUNNEL_BIN == "$WSTUNNEL_ROOT/bin/wstunnel" ]]; then install_wstunnel || true; fi
  if [[ ! -x $WSTUNNEL_BIN ]]; then
    WSTUNNEL_NA="wstunnel build failed ($(last_line "$RUN/logs/wstunnel-build.log" | cut -c1-60); target/bench/run/logs/wstunnel-build.log)"
  fi
fi

BORE_NA=
if needs_any bore; then
  if [[ ! -x $BORE_BIN && $BORE_BIN == "$BORE_ROOT/bin/bore" ]]; then
    log "installing bore-cli $BORE_VERSION into ${BORE_ROOT#"$ROOT"/} (a minute or two, once)"
    peer_cargo "" install --locked bore-cli --version "$BORE_VERSION" --root "$BORE_ROOT" \
      >"$RUN/logs/bore-install.log" 2>&1 || true
  fi
  if [[ ! -x $BORE_BIN ]]; then
    BORE_NA="bore install failed (target/bench/run/logs/bore-install.log)"
  fi
fi

CULVERT_NA=
if needs_any culvert-ws,culvert-wss,culvert-ws-udp,culvert-wss-udp; then
  if [[ $BENCH_NO_BUILD != 1 ]]; then
    log "building Culvert (cargo build --profile profiling --locked -p culvert)"
    if ! timeout "$BENCH_BUILD_TIMEOUT" cargo build --profile profiling --locked -p culvert >"$RUN/logs/culvert-build.log" 2>&1; then
      CULVERT_NA="build failed: $(grep -m1 -E '^error' "$RUN/logs/culvert-build.log" | cut -c1-120 || true)"
    fi
  fi
  if [[ -z $CULVERT_NA && ! -x $CULVERT_BIN ]]; then
    CULVERT_NA="binary missing (${CULVERT_BIN#"$ROOT"/})"
  fi
fi

if [[ ${BENCH_BUILD_ONLY:-0} == 1 ]]; then
  # Each *_NA is set only when a chosen column needs that tool and it could not be had.
  log "built: ${RATHOLE_NA:-rathole ok} / ${WSTUNNEL_NA:-wstunnel ok} / ${BORE_NA:-bore ok} / ${CULVERT_NA:-culvert ok}"
  [[ -z $RATHOLE_NA$WSTUNNEL_NA$BORE_NA$CULVERT_NA ]] && exit 0
  exit 1
fi

# ------------------------------------------------------------------ measuring phase
T_START=$(date +%s)
DEADLINE=$((T_START + BENCH_MAX_SECONDS))
# Watchdog: ends the script at the deadline (plus a margin for the step under way),
# whatever happens; the EXIT trap then stops every process by PID.
(
  trap 'kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null; exit 0' TERM
  sleep $((BENCH_MAX_SECONDS + 60)) &
  sp=$!
  wait "$sp"
  kill -TERM $$ 2>/dev/null
) &
PIDS+=("$!")
if [[ $BENCH_KEEP_AWAKE == 1 ]]; then
  # shellcheck source=scripts/lib/awake.sh
  source "$ROOT/scripts/lib/awake.sh"
  keep_awake $((BENCH_MAX_SECONDS + 60))
fi
time_left() { echo $((DEADLINE - $(date +%s))); }
have_time() { (($(time_left) > $1)); }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < BENCH_IDLE_CONNS * 2 + 256)); then
  note "open-file limit $(ulimit -n) is low for $BENCH_IDLE_CONNS idle connections"
fi

# Ports (free for both TCP and UDP): BASE is the TCP echo backend, BASE+1 the UDP echo
# backend, BASE+2 PostgreSQL, and column i uses BASE+4+12i .. BASE+15+12i (the columns of
# the table first, then those of the syscall mode).
col_ports() { echo $((BASE + 4 + $1 * 12)); }
N_ALL=$(tr ',' '\n' <<<"$ALL_COLUMNS" | wc -l)
BASE=$("${TOOL[@]}" freeblock $((4 + (N_ALL + ${#SYS_COLS[@]}) * 12)))
ECHO_PORT=$BASE
UECHO_PORT=$((BASE + 1))
start_bg "$RUN/logs/echo-backend.log" "${TOOL[@]}" echo-server "$ECHO_PORT" --max-seconds $((BENCH_MAX_SECONDS + 120))
"${TOOL[@]}" wait-listen --timeout 10 "$ECHO_PORT"
if wants_any "$UDP_COLUMNS"; then
  start_bg "$RUN/logs/udp-echo-backend.log" "${TOOL[@]}" udp-echo-server "$UECHO_PORT" --max-seconds $((BENCH_MAX_SECONDS + 120))
  "${TOOL[@]}" wait-listen --udp --timeout 10 "$UECHO_PORT"
fi
log "ports from $BASE; echo backends on $ECHO_PORT (TCP) and $UECHO_PORT (UDP)"

# PostgreSQL for the pgbench rows: a throwaway cluster in /tmp (the postgres user must
# reach it when we are root), fsync off, initialised once with pgbench -i, directly.
PG_PORT=
start_pg() {
  local plog=$RUN/logs/postgres-setup.log
  # shellcheck source=scripts/lib/pg.sh
  source "$ROOT/scripts/lib/pg.sh"
  if ! pg_tools 2>"$plog"; then
    note "pgbench rows left out: $(last_line "$plog")"
    return 1
  fi
  PG_WORK=$(mktemp -d /tmp/culvert-bench-pg.XXXXXX)
  chmod 755 "$PG_WORK"
  if ! pg_init_cluster "$PG_WORK/pg" >"$plog" 2>&1; then
    note "pgbench rows left out: initdb failed: $(last_line "$plog")"
    return 1
  fi
  pg_server_cmd "$PG_WORK/pg" $((BASE + 2)) 100
  start_bg "$RUN/logs/postgres.log" "${PG_SERVER_CMD[@]}"
  PG_PID=$LAST_PID
  if ! pg_wait_ready $((BASE + 2)) 30 || ! alive "$PG_PID"; then
    note "pgbench rows left out: PostgreSQL did not start: $(last_line "$RUN/logs/postgres.log")"
    return 1
  fi
  log "PostgreSQL on $((BASE + 2)); pgbench -i -s $BENCH_PGBENCH_SCALE"
  if ! timeout 600 "$PGBENCH" -h 127.0.0.1 -p $((BASE + 2)) -U postgres -i -s "$BENCH_PGBENCH_SCALE" -q postgres \
    >>"$plog" 2>&1; then
    note "pgbench rows left out: pgbench -i failed: $(last_line "$plog")"
    return 1
  fi
  PG_PORT=$((BASE + 2))
}
stop_pg() { # fast shutdown (SIGINT), by PID
  [[ -n $PG_PID ]] || return 0
  ! is_mine "$PG_PID" || pg_stop "$PG_PID"
  stop_pid "$PG_PID"
  PG_PID=''
}
if [[ $BENCH_PGBENCH == 1 ]] && wants_any "$TCP_COLUMNS"; then
  start_pg || stop_pg
fi

IPERF_PID=
stop_iperf() {
  [[ -z $IPERF_PID ]] || stop_pid "$IPERF_PID"
  IPERF_PID=''
}
start_iperf() { # start_iperf PORT TAG
  start_bg "$RUN/logs/iperf3-server-$2.log" iperf3 -s -B 127.0.0.1 -p "$1"
  IPERF_PID=$LAST_PID
  "${TOOL[@]}" wait-listen --timeout 10 "$1"
}

SRV_PID=
AGT_PID=
AGT_PIDS=()
SRV_LOG=
AGT_LOG=
SETUP_ERR=
PHASE=

# Each setup function starts the tunnel for column $1 with ports from $2 (iperf backend
# $IB, control port, public ports $PI and $PE) and sets SRV_PID/AGT_PID, or SETUP_ERR.
setup_rathole() {
  local col=$1 o=$2 kind=tcp dir=$RUN/$1/$PHASE token
  local ctrl=$((o + 1))
  [[ $col != rathole-tls* ]] || kind=tls
  mkdir -p "$dir"
  token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  local srv_tls="" cli_tls=""
  if [[ $kind == tls ]]; then
    # rathole's TLS transport: the server takes a PKCS#12 identity, the client a trusted
    # root and the hostname to check. A small CA signs a certificate for localhost.
    if ! (
      cd "$dir"
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=culvert-bench-ca" \
        -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
      openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.pem
      openssl pkcs12 -export -out identity.pfx -inkey server.key -in server.pem -certfile ca.pem \
        -passout pass:bench
    ) >"$RUN/logs/$col-$PHASE-certs.log" 2>&1; then
      SETUP_ERR="certificate generation failed"
      return
    fi
    srv_tls=$(printf '[server.transport.tls]\npkcs12 = "%s"\npkcs12_password = "bench"\n' "$dir/identity.pfx")
    cli_tls=$(printf '[client.transport.tls]\ntrusted_root = "%s"\nhostname = "localhost"\n' "$dir/ca.pem")
  fi
  # Services: TCP columns expose iperf3 and the TCP echo; UDP columns expose iperf3's
  # TCP control port and its UDP data port on the same public port number, and the UDP
  # echo (rathole: `type = "udp"` on both the server's and the client's service).
  local srv_svc cli_svc
  srv_svc=$(printf '[server.services.iperf]\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' "$token" "$PI")
  cli_svc=$(printf '[client.services.iperf]\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' "$token" "$IB")
  if is_udp_col "$col"; then
    srv_svc+=$(printf '\n\n[server.services.iperfudp]\ntype = "udp"\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' "$token" "$PI")
    srv_svc+=$(printf '\n\n[server.services.echo]\ntype = "udp"\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' "$token" "$PE")
    cli_svc+=$(printf '\n\n[client.services.iperfudp]\ntype = "udp"\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' "$token" "$IB")
    cli_svc+=$(printf '\n\n[client.services.echo]\ntype = "udp"\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' "$token" "$UECHO_PORT")
  else
    srv_svc+=$(printf '\n\n[server.services.echo]\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' "$token" "$PE")
    cli_svc+=$(printf '\n\n[client.services.echo]\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' "$token" "$ECHO_PORT")
    if [[ -n $PG_PORT ]]; then
      srv_svc+=$(printf '\n\n[server.services.pg]\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' "$token" "$PP")
      cli_svc+=$(printf '\n\n[client.services.pg]\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' "$token" "$PG_PORT")
    fi
  fi
  cat >"$dir/server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctrl"

[server.transport]
type = "$kind"

$srv_tls

$srv_svc
EOF
  cat >"$dir/client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctrl"

[client.transport]
type = "$kind"

$cli_tls

$cli_svc
EOF
  SRV_LOG=$RUN/logs/$col-$PHASE-server.log AGT_LOG=$RUN/logs/$col-$PHASE-client.log
  RUST_LOG=$BENCH_TUNNEL_LOG start_bg "$SRV_LOG" "$RATHOLE_BIN" --server "$dir/server.toml"
  SRV_PID=$LAST_PID
  if ! "${TOOL[@]}" wait-listen --timeout 10 "$ctrl" 2>/dev/null || ! alive "$SRV_PID"; then
    SETUP_ERR="server did not start: $(last_line "$SRV_LOG")"
    return
  fi
  RUST_LOG=$BENCH_TUNNEL_LOG start_bg "$AGT_LOG" "$RATHOLE_BIN" --client "$dir/client.toml"
  AGT_PID=$LAST_PID
}

setup_culvert() {
  local col=$1 o=$2 dir=$RUN/$1/$PHASE scheme mode
  local ctrl=$((o + 1))
  mkdir -p "$dir"
  case $col in
  culvert-ws | culvert-ws-udp) scheme=ws mode=--insecure-plain ;;
  *) scheme=wss mode=--self-signed ;;
  esac
  rm -f "$dir/tokens.toml" # a fresh token per start (rounds start each column again)
  if ! timeout 20 "$CULVERT_BIN" token new --name bench --tokens "$dir/tokens.toml" \
    >"$dir/agent.token" 2>"$RUN/logs/$col-$PHASE-token.log" || [[ ! -s $dir/agent.token ]]; then
    SETUP_ERR="token new failed: $(last_line "$RUN/logs/$col-$PHASE-token.log")"
    return
  fi
  SRV_LOG=$RUN/logs/$col-$PHASE-server.log AGT_LOG=$RUN/logs/$col-$PHASE-agent.log
  # The fingerprint of --self-signed is an info-level log line of the binary's run module.
  RUST_LOG="$BENCH_TUNNEL_LOG,culvert::run=info" start_bg "$SRV_LOG" "$CULVERT_BIN" server \
    --listen "127.0.0.1:$ctrl" --tokens "$dir/tokens.toml" --port-range "$((o + 2))-$((o + 5))" \
    --udp-port-range "$((o + 2))-$((o + 5))" --public-bind 127.0.0.1 $mode "${CULVERT_SERVER_EXTRA[@]}"
  SRV_PID=$LAST_PID
  if ! "${TOOL[@]}" wait-listen --timeout 15 "$ctrl" 2>/dev/null || ! alive "$SRV_PID"; then
    SETUP_ERR="server did not start: $(last_line "$SRV_LOG")"
    return
  fi
  local verify=()
  if [[ $scheme == wss ]]; then
    local fp
    fp=$("${TOOL[@]}" fingerprint --wait 5 "$SRV_LOG" 2>/dev/null || true)
    if [[ -n $fp ]]; then
      verify=(--fingerprint "$fp")
    else
      verify=(--insecure-skip-verify)
      note "$col: no fingerprint found in the server's stderr; the agent ran with --insecure-skip-verify"
    fi
  fi
  # UDP columns: iperf3's TCP control port and its UDP data port share the public port
  # number (the TCP and UDP pools are separate); the UDP echo is the round-trip target.
  local expose=(--expose "iperf=tcp://127.0.0.1:$IB@$PI")
  if is_udp_col "$col"; then
    expose+=(--expose "iperfudp=udp://127.0.0.1:$IB@$PI" --expose "echo=udp://127.0.0.1:$UECHO_PORT@$PE")
  else
    expose+=(--expose "echo=tcp://127.0.0.1:$ECHO_PORT@$PE")
    [[ -z $PG_PORT ]] || expose+=(--expose "pg=tcp://127.0.0.1:$PG_PORT@$PP")
  fi
  RUST_LOG=$BENCH_TUNNEL_LOG start_bg "$AGT_LOG" "$CULVERT_BIN" agent \
    --server "$scheme://127.0.0.1:$ctrl" --token-file "$dir/agent.token" \
    "${expose[@]}" "${verify[@]}" "${CULVERT_AGENT_EXTRA[@]}"
  AGT_PID=$LAST_PID
}

# wstunnel: a reverse tunnel per exposed port (-R on the client); the server listens on a
# public port once the client has asked for it. wss: the server's built-in self-signed
# certificate; the client does not verify certificates unless told to.
setup_wstunnel() {
  local col=$1 o=$2 scheme=ws
  local ctrl=$((o + 1))
  [[ $col != wstunnel-wss ]] || scheme=wss
  SRV_LOG=$RUN/logs/$col-$PHASE-server.log AGT_LOG=$RUN/logs/$col-$PHASE-client.log
  start_bg "$SRV_LOG" "$WSTUNNEL_BIN" --no-color --log-lvl "$BENCH_TUNNEL_LOG" server "$scheme://127.0.0.1:$ctrl"
  SRV_PID=$LAST_PID
  if ! "${TOOL[@]}" wait-listen --timeout 15 "$ctrl" 2>/dev/null || ! alive "$SRV_PID"; then
    SETUP_ERR="server did not start: $(last_line "$SRV_LOG")"
    return
  fi
  local rev=(-R "tcp://127.0.0.1:$PI:127.0.0.1:$IB" -R "tcp://127.0.0.1:$PE:127.0.0.1:$ECHO_PORT")
  [[ -z $PG_PORT ]] || rev+=(-R "tcp://127.0.0.1:$PP:127.0.0.1:$PG_PORT")
  start_bg "$AGT_LOG" "$WSTUNNEL_BIN" --no-color --log-lvl "$BENCH_TUNNEL_LOG" client "${rev[@]}" \
    "$scheme://127.0.0.1:$ctrl"
  AGT_PID=$LAST_PID
}

# bore: `bore server` (control port fixed at 7835, bound to 127.0.0.1 with --bind-addr,
# public ports limited to this column's range) and one `bore local` per exposed port.
setup_bore() {
  local col=$1 o=$2 svc name lport pport
  if ! "${TOOL[@]}" port-free "$BORE_CONTROL_PORT"; then
    SETUP_ERR="bore's fixed control port $BORE_CONTROL_PORT is in use on 127.0.0.1"
    return
  fi
  SRV_LOG=$RUN/logs/$col-$PHASE-server.log
  RUST_LOG=$BENCH_TUNNEL_LOG start_bg "$SRV_LOG" "$BORE_BIN" server --bind-addr 127.0.0.1 \
    --min-port $((o + 2)) --max-port $((o + 5))
  SRV_PID=$LAST_PID
  if ! "${TOOL[@]}" wait-listen --timeout 15 "$BORE_CONTROL_PORT" 2>/dev/null || ! alive "$SRV_PID"; then
    SETUP_ERR="server did not start: $(last_line "$SRV_LOG")"
    return
  fi
  local svcs=("iperf:$IB:$PI" "echo:$ECHO_PORT:$PE")
  [[ -z $PG_PORT ]] || svcs+=("pg:$PG_PORT:$PP")
  for svc in "${svcs[@]}"; do
    IFS=: read -r name lport pport <<<"$svc"
    RUST_LOG=$BENCH_TUNNEL_LOG start_bg "$RUN/logs/$col-$PHASE-local-$name.log" "$BORE_BIN" local "$lport" \
      --local-host 127.0.0.1 --to 127.0.0.1 --port "$pport"
    AGT_PIDS+=("$LAST_PID")
  done
  AGT_PID=${AGT_PIDS[0]} AGT_LOG=$RUN/logs/$col-$PHASE-local-iperf.log
}

iperf_once() { # iperf_once COL VARIANT PORT N: one run; sets ONCE_GBPS, ONCE_CPUS, ONCE_CPUA
  local col=$1 v=$2 port=$3 json=$RUN/$1/iperf-$2-$4.json
  local s0=0 a0=0 s1=0 a1=0 out bytes
  if [[ -n $SRV_PID ]]; then s0=$(cpu_ticks "$SRV_PID") a0=$(agt_ticks); fi
  # shellcheck disable=SC2086
  if ! timeout $((BENCH_SECONDS + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$BENCH_SECONDS" -J \
    --connect-timeout 5000 ${VARGS[$v]} >"$json" 2>"$RUN/logs/$col-iperf-$v.err" ||
    ! out=$("${TOOL[@]}" iperf-parse "$json" 2>>"$RUN/logs/$col-iperf-$v.err"); then
    note "$col: iperf3 ${VARGS[$v]:-(1 stream)} failed: $(last_line "$RUN/logs/$col-iperf-$v.err")"
    # a failed test can leave iperf3's one-test-at-a-time server stuck: start it afresh
    stop_iperf
    start_iperf "$IB" "$col-$v" || true
    return 1
  fi
  if [[ -n $SRV_PID ]]; then s1=$(cpu_ticks "$SRV_PID") a1=$(agt_ticks); fi
  read -r ONCE_GBPS bytes <<<"$out"
  if ! tunnel_alive; then
    note "$col: a tunnel process exited during iperf3 ${VARGS[$v]:-(1 stream)}"
    return 1
  fi
  ONCE_CPUS="—" ONCE_CPUA="—"
  if [[ -n $SRV_PID ]]; then
    ONCE_CPUS=$(awk -v t=$((s1 - s0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN { printf "%.3f", (t / hz) / (b / 1e9) }')
    ONCE_CPUA=$(awk -v t=$((a1 - a0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN { printf "%.3f", (t / hz) / (b / 1e9) }')
  fi
}

median() { # median of the numbers on stdin ("—" when there are none)
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print "—"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# put_med COL KEY VALUE: records one run's VALUE of KEY and puts the median of every run
# of COL so far (rounds add one each); put_max: the highest instead.
put_med() {
  echo "$3" >>"$RUN/$1/$2.vals"
  put "$1" "$2" "$(grep -v '^fail$' "$RUN/$1/$2.vals" | median)"
}
put_max() {
  echo "$3" >>"$RUN/$1/$2.vals"
  put "$1" "$2" "$(sort -g "$RUN/$1/$2.vals" | tail -n1)"
}

iperf_run() { # iperf_run COL VARIANT PORT: REPS runs; the medians of all runs so far go in the table
  local col=$1 v=$2 port=$3 i gbps=() vals=$RUN/$1/iperf-$2.tsv
  for ((i = 1; i <= REPS; i++)); do
    if ! iperf_once "$col" "$v" "$port" $((ROUND + i - 1)); then
      put "$col" "gbps_$v" "fail"
      return
    fi
    gbps+=("$ONCE_GBPS")
    printf '%s\t%s\t%s\n' "$ONCE_GBPS" "$ONCE_CPUS" "$ONCE_CPUA" >>"$vals"
    ((i == REPS)) || sleep 0.5
  done
  put "$col" "gbps_$v" "$(cut -f1 "$vals" | median)"
  put "$col" "cpus_$v" "$(cut -f2 "$vals" | grep -v '—' | median)"
  put "$col" "cpua_$v" "$(cut -f3 "$vals" | grep -v '—' | median)"
  log "$col ${VARGS[$v]:-1 stream}: ${gbps[*]} Gbit/s"
}

# repeat_json COL NAME KEYS TIMEOUT FUNC ARGS...: runs `FUNC ARGS... OUTFILE` REPS times
# (each bounded by TIMEOUT seconds), each writing one JSON object to $RUN/COL/NAME-N.json;
# sets REP_OUT to the medians of the comma-separated KEYS (space separated) over every
# run of COL so far (this round's and the earlier rounds'), or REP_ERR and fails when a
# run fails or the tunnel died.
repeat_json() {
  local col=$1 name=$2 keys=$3 tmo=$4 i f files=()
  shift 4
  REP_OUT='' REP_ERR=''
  : >"$RUN/logs/$col-$name.err"
  for ((i = 1; i <= REPS; i++)); do
    f=$RUN/$col/$name-$((ROUND + i - 1)).json
    if ! ONCE_TIMEOUT=$tmo "$@" "$f" 2>>"$RUN/logs/$col-$name.err"; then
      REP_ERR="run $i: $(last_line "$RUN/logs/$col-$name.err")"
      return 1
    fi
    if ! tunnel_alive; then
      REP_ERR="a tunnel process exited during run $i"
      return 1
    fi
    ((i == REPS)) || sleep 0.3
  done
  files=("$RUN/$col/$name"-*.json)
  REP_OUT=$("${TOOL[@]}" json-median "$keys" "${files[@]}")
}
rr_once() { # rr_once PORT CONNS COUNT OUT
  timeout "$ONCE_TIMEOUT" "${TOOL[@]}" rr "$1" --conns "$2" --count "$3" --seconds "$BENCH_SECONDS" >"$4"
}
cps_once() { # cps_once PORT WORKERS OUT
  timeout "$ONCE_TIMEOUT" "${TOOL[@]}" cps "$1" --count "$BENCH_CPS_COUNT" --seconds "$BENCH_SECONDS" \
    --workers "$2" >"$3"
}
pgb_once() { # pgb_once PORT OUT: pgbench -S, its text output kept beside the JSON
  local txt=${2%.json}.txt
  # -n: no vacuum (select-only); the tables were initialised once, directly.
  if ! PGCONNECT_TIMEOUT=5 timeout "$ONCE_TIMEOUT" "$PGBENCH" -h 127.0.0.1 -p "$1" -U postgres -S -n \
    -c "$BENCH_PGBENCH_CLIENTS" -j "$BENCH_PGBENCH_JOBS" -T "$BENCH_PGBENCH_SECONDS" postgres >"$txt" 2>&1; then
    last_line "$txt" >&2
    return 1
  fi
  "${TOOL[@]}" pgbench-parse "$txt" >"$2"
}

tunnel_alive() {
  local p
  [[ -n $SRV_PID ]] || return 0
  alive "$SRV_PID" || return 1
  for p in "${AGT_PIDS[@]}"; do alive "$p" || return 1; done
}
agents_alive() {
  local p
  for p in "${AGT_PIDS[@]}"; do alive "$p" || return 1; done
}

# start_tunnel COL OFFSET: starts the tunnel for COL on fresh ports from OFFSET (control
# port OFFSET+1, public ports OFFSET+2..OFFSET+5) and waits until every public port
# listens and an echo (a datagram for UDP columns) goes through it; sets PI/PE/PP (public
# iperf3/echo/PostgreSQL ports), SRV_PID, AGT_PID and AGT_PIDS (all agent/client
# processes), or SETUP_ERR.
start_tunnel() {
  local col=$1 o=$2
  SRV_PID='' AGT_PID='' SRV_LOG='' AGT_LOG='' SETUP_ERR=''
  AGT_PIDS=()
  PI=$((o + 2)) PE=$((o + 3)) PP=$((o + 4))
  case $col in
  direct) PI=$IB PE=$ECHO_PORT PP=$PG_PORT ;;
  direct-udp) PI=$IB PE=$UECHO_PORT ;;
  culvert-*) setup_culvert "$col" "$o" ;;
  rathole-*) setup_rathole "$col" "$o" ;;
  wstunnel-*) setup_wstunnel "$col" "$o" ;;
  bore) setup_bore "$col" "$o" ;;
  esac
  if [[ -n $AGT_PID && ${#AGT_PIDS[@]} -eq 0 ]]; then AGT_PIDS=("$AGT_PID"); fi
  if [[ -z $SETUP_ERR && -n $SRV_PID ]]; then
    local ready=0 ports=("$PI" "$PE")
    if is_udp_col "$col"; then
      # TCP control port listening, both UDP ports bound, and a datagram echoed back.
      "${TOOL[@]}" wait-listen --timeout 20 "$PI" 2>/dev/null &&
        "${TOOL[@]}" wait-listen --udp --timeout 20 "$PI" "$PE" 2>/dev/null &&
        "${TOOL[@]}" wait-udp-echo --timeout 15 "$PE" 2>/dev/null && ready=1
    else
      # Every public port listening, and a byte echoed back through the echo port (the
      # PostgreSQL port is checked with a query before pgbench).
      [[ -z $PG_PORT ]] || ports+=("$PP")
      "${TOOL[@]}" wait-listen --timeout 20 "${ports[@]}" 2>/dev/null &&
        "${TOOL[@]}" wait-echo --timeout 15 "$PE" 2>/dev/null && ready=1
    fi
    if ((!ready)); then
      if ! alive "$SRV_PID"; then
        SETUP_ERR="server exited: $(last_line "$SRV_LOG")"
      elif ! agents_alive; then
        SETUP_ERR="agent exited: $(last_line "$AGT_LOG")"
      else
        SETUP_ERR="tunnel not ready in time (logs in target/bench/run/logs/$col-$PHASE-*)"
      fi
    fi
  fi
  [[ -z $SETUP_ERR ]]
}
stop_tunnel() {
  local p
  for p in "${AGT_PIDS[@]}"; do stop_pid "$p"; done
  [[ -z $SRV_PID ]] || stop_pid "$SRV_PID"
  AGT_PID='' SRV_PID=''
  AGT_PIDS=()
}
na_column() { # na_column COL REASON: the column is left out of the later rounds too
  local short=${2//|//}
  NA_COLS[$1]=1
  ((${#short} <= 90)) || short="${short:0:87}..."
  put "$1" status "n/a: $short"
  note "$1: n/a — ${2//|//}"
}

# run_column COL INDEX. The tunnel runs twice, on fresh processes: once for the
# connection-shaped tests (idle RSS, idle connections, round trips, new connections),
# once for the bulk iperf3 runs, so that neither phase's retained memory shows in the
# other's RSS figures.
run_column() {
  local col=$1 o v a b c d r
  o=$(col_ports "$2")
  IB=$o
  log "== $col"
  SETUP_ERR=''
  case $col in
  culvert-*) SETUP_ERR=$CULVERT_NA ;;
  rathole-*) SETUP_ERR=$RATHOLE_NA ;;
  wstunnel-*) SETUP_ERR=$WSTUNNEL_NA ;;
  bore) SETUP_ERR=$BORE_NA ;;
  esac
  if [[ -z $SETUP_ERR ]] && ! have_time 30; then SETUP_ERR="skipped: time limit (BENCH_MAX_SECONDS)"; fi
  if [[ -n $SETUP_ERR ]]; then
    na_column "$col" "$SETUP_ERR"
    return
  fi
  if ! start_iperf "$IB" "$col"; then
    na_column "$col" "iperf3 server did not start: $(last_line "$RUN/logs/iperf3-server-$col.log")"
    stop_iperf
    return
  fi

  # ---------------- phase 1: connections
  PHASE=conn
  if ! start_tunnel "$col" "$o"; then
    na_column "$col" "$SETUP_ERR"
    stop_tunnel
    stop_iperf
    return
  fi
  put "$col" status "ok"

  # --- RSS idle, then with BENCH_IDLE_CONNS idle tunneled connections
  if [[ -n $SRV_PID ]]; then
    sleep 1
    tunnel_alive || note "$col: a tunnel process exited right after start"
    put_med "$col" rss_idle_s "$(mb "$(status_kb "$SRV_PID" VmRSS)")"
    put_med "$col" rss_idle_a "$(mb "$(agt_kb VmRSS)")"
    local hold_log=$RUN/logs/$col-hold.log hold_pid ready=""
    start_bg "$hold_log" "${TOOL[@]}" hold "$PE" "$BENCH_IDLE_CONNS" --open-seconds 40 --max-seconds 90
    hold_pid=$LAST_PID
    for _ in $(seq 1 450); do
      ready=$(grep -m1 '^READY' "$hold_log" 2>/dev/null || true)
      [[ -n $ready ]] && break
      alive "$hold_pid" || break
      sleep 0.1
    done
    if [[ $ready =~ ^READY\ ([0-9]+) ]]; then
      sleep 1
      local held=${BASH_REMATCH[1]}
      put_med "$col" rss_conn_s "$(mb "$(status_kb "$SRV_PID" VmRSS)")"
      put_med "$col" rss_conn_a "$(mb "$(agt_kb VmRSS)")"
      if ((held < BENCH_IDLE_CONNS)); then
        note "$col: only $held of $BENCH_IDLE_CONNS idle connections were established (${ready#READY * })"
      fi
    else
      put "$col" rss_conn_s "fail"
      put "$col" rss_conn_a "fail"
      note "$col: idle-connection holder failed: $(last_line "$hold_log")"
    fi
    stop_pid "$hold_pid"
    sleep 1
  else
    for v in rss_idle_s rss_idle_a rss_conn_s rss_conn_a rss_peak_s rss_peak_a; do put "$col" "$v" "—"; done
  fi

  # --- 64-byte request/response: one connection, then BENCH_RR_CONNS at once
  mkdir -p "$RUN/$col"
  if have_time $(((BENCH_SECONDS + 5) * REPS)) && tunnel_alive; then
    if repeat_json "$col" rr "rps,p50_us,p99_us" $((BENCH_SECONDS + 20)) \
      rr_once "$PE" 1 "$BENCH_RR_COUNT"; then
      read -r a b c <<<"$REP_OUT"
      put "$col" rr_rps "$a"
      put "$col" rr_p50 "$b"
      put "$col" rr_p99 "$c"
      log "$col round trips: $a/s p50 ${b}µs p99 ${c}µs"
    else
      put "$col" rr_rps "fail"
      note "$col: round-trip test failed: $REP_ERR"
    fi
  fi
  if have_time $(((BENCH_SECONDS + 5) * REPS)) && tunnel_alive; then
    if repeat_json "$col" rrc "rps,p50_us,p99_us" $((BENCH_SECONDS + 30)) \
      rr_once "$PE" "$BENCH_RR_CONNS" "$BENCH_RR_CONC_COUNT"; then
      read -r a b c <<<"$REP_OUT"
      put "$col" rrc_rps "$a"
      put "$col" rrc_p50 "$b"
      put "$col" rrc_p99 "$c"
      log "$col round trips, $BENCH_RR_CONNS connections: $a/s p50 ${b}µs p99 ${c}µs"
    else
      put "$col" rrc_rps "fail"
      note "$col: round-trip test with $BENCH_RR_CONNS connections failed: $REP_ERR"
    fi
  fi

  # --- new connections per second: several workers at once, then one alone
  local run name workers label runs=("cps $BENCH_CPS_WORKERS workers")
  [[ $BENCH_CPS_ONE == 0 ]] || runs+=("cps1 1 worker")
  for run in "${runs[@]}"; do
    read -r name workers label <<<"$run"
    label="$workers $label"
    have_time $(((BENCH_SECONDS + 5) * REPS)) && tunnel_alive || continue
    if repeat_json "$col" "$name" "cps,ok,errors" $((BENCH_SECONDS + 30)) cps_once "$PE" "$workers"; then
      read -r a b c <<<"$REP_OUT"
      put "$col" "$name" "$a"
      log "$col new connections, $label: $a/s (medians: $b ok, $c errors)"
      local errs last
      errs=$("${TOOL[@]}" json-median errors "$RUN/$col"/"$name"-*.json)
      last=$(grep -ho '"last_error": "[^"]*"' "$RUN/$col"/"$name"-*.json 2>/dev/null | tail -n1 | cut -d'"' -f4 || true)
      [[ ${errs%.*} == 0 ]] || note "$col: new connections ($label) failed in the runs (median $errs errors; last: $last)"
    else
      put "$col" "$name" "fail"
      note "$col: new-connections test ($label) failed: $REP_ERR"
    fi
    sleep 1
  done

  # --- pgbench -S through the tunnel
  if [[ -n $PG_PORT ]] && have_time $(((BENCH_PGBENCH_SECONDS + 10) * REPS)) && tunnel_alive; then
    if ! pg_wait_ready "$PP" 15; then
      put "$col" pgb_tps "fail"
      note "$col: PostgreSQL not reachable through the tunnel (port $PP) in 15 s"
    elif repeat_json "$col" pgbench "tps,lat_ms,failed" $((BENCH_PGBENCH_SECONDS + 30)) pgb_once "$PP"; then
      read -r a b c <<<"$REP_OUT"
      put "$col" pgb_tps "$a"
      put "$col" pgb_lat "$b"
      log "$col pgbench -S: $a tps, ${b} ms average latency"
      [[ ${c%.*} == 0 ]] || note "$col: pgbench reported failed transactions (median $c)"
    else
      put "$col" pgb_tps "fail"
      note "$col: pgbench failed: $REP_ERR"
    fi
  fi

  # ---------------- phase 2: bulk (iperf3), with CPU per GB and peak RSS
  stop_tunnel
  PHASE=bulk
  if ! have_time $((BENCH_SECONDS + 20)); then
    note "$col: iperf3 runs skipped: time limit"
    stop_iperf
    return
  fi
  if ! start_tunnel "$col" $((o + 6)); then
    note "$col: tunnel did not start again for the bulk runs: $SETUP_ERR"
    stop_tunnel
    stop_iperf
    return
  fi
  if [[ -n $SRV_PID ]]; then
    sleep 1
    # "5" resets VmHWM to the current RSS, so the peak below is the peak of the bulk runs.
    if ! reset_hwm; then
      note "$col: could not reset VmHWM; peak RSS covers the whole process life"
    fi
  fi
  for v in "${VARIANTS[@]}"; do
    if ! have_time $(((BENCH_SECONDS + 10) * REPS)); then
      note "$col: iperf3 ${VARGS[$v]:-(1 stream)} skipped: time limit"
      continue
    fi
    if ! tunnel_alive; then
      note "$col: tunnel process exited before iperf3 ${VARGS[$v]:-(1 stream)}"
      break
    fi
    iperf_run "$col" "$v" "$PI"
    sleep 0.5
  done
  if [[ -n $SRV_PID ]] && tunnel_alive; then
    put_max "$col" rss_peak_s "$(mb "$(status_kb "$SRV_PID" VmHWM)")"
    put_max "$col" rss_peak_a "$(mb "$(agt_kb VmHWM)")"
  fi
  if [[ -n $SRV_PID ]] && ! tunnel_alive; then
    note "$col: a tunnel process exited during the bulk runs (logs in target/bench/run/logs/$col-bulk-*)"
  fi
  stop_tunnel
  stop_iperf
}

# iperf_udp_run COL VARIANT PORT: one iperf3 UDP run at a fixed offered rate; received
# throughput, loss and jitter from the receiving side; CPU-s/GB of the tunnel processes
# over the bytes received.
iperf_udp_run() {
  local col=$1 v=$2 port=$3 json=$RUN/$1/iperf-$2.json
  local s0=0 a0=0 s1=0 a1=0 out mbps loss jit bytes win=()
  [[ -z $BENCH_UDP_WINDOW ]] || win=(-w "$BENCH_UDP_WINDOW")
  if [[ -n $SRV_PID ]]; then s0=$(cpu_ticks "$SRV_PID") a0=$(agt_ticks); fi
  # shellcheck disable=SC2086
  if ! timeout $((BENCH_UDP_SECONDS + 20)) iperf3 -c 127.0.0.1 -p "$port" -u -l "$BENCH_UDP_LEN" \
    -t "$BENCH_UDP_SECONDS" -J --connect-timeout 5000 --get-server-output "${win[@]}" ${UARGS[$v]} \
    >"$json" 2>"$RUN/logs/$col-iperf-$v.err" ||
    ! out=$("${TOOL[@]}" iperf-udp-parse "$json" 2>>"$RUN/logs/$col-iperf-$v.err"); then
    put "$col" "mbps_$v" "fail"
    note "$col: iperf3 -u ${UARGS[$v]} failed: $(last_line "$RUN/logs/$col-iperf-$v.err")"
    stop_iperf
    start_iperf "$IB" "$col-$v" || true
    return
  fi
  if [[ -n $SRV_PID ]]; then s1=$(cpu_ticks "$SRV_PID") a1=$(agt_ticks); fi
  read -r mbps loss jit bytes <<<"$out"
  if ! tunnel_alive; then
    put "$col" "mbps_$v" "fail"
    note "$col: a tunnel process exited during iperf3 -u ${UARGS[$v]}"
    return
  fi
  put "$col" "mbps_$v" "$mbps"
  put "$col" "loss_$v" "$loss"
  UMBPS[$v]=$mbps ULOSS[$v]=$loss
  put "$col" "jit_$v" "$jit"
  if [[ -n $SRV_PID ]] && ((bytes > 0)); then
    put "$col" "cpus_$v" "$(awk -v t=$((s1 - s0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN { printf "%.3f", (t / hz) / (b / 1e9) }')"
    put "$col" "cpua_$v" "$(awk -v t=$((a1 - a0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN { printf "%.3f", (t / hz) / (b / 1e9) }')"
  else
    put "$col" "cpus_$v" "—"
    put "$col" "cpua_$v" "—"
  fi
  log "$col -u ${UARGS[$v]}: $mbps Mbit/s received, loss $loss %, jitter $jit ms"
}

# run_udp_column COL INDEX: one tunnel start; UDP round trips first, then the iperf3
# UDP runs (with CPU per GB and peak RSS).
run_udp_column() {
  local col=$1 o v a b c d e f r
  o=$(col_ports "$2")
  IB=$o
  log "== $col"
  SETUP_ERR=''
  case $col in
  culvert-*) SETUP_ERR=$CULVERT_NA ;;
  rathole-*) SETUP_ERR=$RATHOLE_NA ;;
  wstunnel-*) SETUP_ERR=$WSTUNNEL_NA ;;
  bore) SETUP_ERR=$BORE_NA ;;
  esac
  if [[ -z $SETUP_ERR ]] && ! have_time 30; then SETUP_ERR="skipped: time limit (BENCH_MAX_SECONDS)"; fi
  if [[ -n $SETUP_ERR ]]; then
    na_column "$col" "$SETUP_ERR"
    return
  fi
  if ! start_iperf "$IB" "$col"; then
    na_column "$col" "iperf3 server did not start: $(last_line "$RUN/logs/iperf3-server-$col.log")"
    stop_iperf
    return
  fi
  PHASE=udp
  if ! start_tunnel "$col" "$o"; then
    na_column "$col" "$SETUP_ERR"
    stop_tunnel
    stop_iperf
    return
  fi
  put "$col" status "ok"
  if [[ -n $SRV_PID ]]; then
    sleep 1
    if ! reset_hwm; then
      note "$col: could not reset VmHWM; peak RSS covers the whole process life"
    fi
  fi

  # --- 64-byte UDP round trips, one flow
  if have_time 20 && tunnel_alive; then
    local rr=$RUN/$col/udp-rr.json
    if timeout $((BENCH_SECONDS + 40)) "${TOOL[@]}" udp-rr "$PE" --count "$BENCH_UDP_RR_COUNT" \
      --seconds "$BENCH_SECONDS" --timeout-ms "$BENCH_UDP_RR_TIMEOUT_MS" \
      >"$rr" 2>"$RUN/logs/$col-udp-rr.err" &&
      r=$("${TOOL[@]}" json-get "$rr" rps p50_us p99_us loss_percent lost stopped_early); then
      read -r a b c d e f <<<"$r"
      put "$col" urr_rps "$a"
      put "$col" urr_p50 "$b"
      put "$col" urr_p99 "$c"
      put "$col" urr_loss "$d"
      log "$col UDP round trips: $a/s p50 ${b}µs p99 ${c}µs, $e lost"
      [[ $f != True ]] || note "$col: UDP round trips stopped after 50 timeouts in a row"
    else
      put "$col" urr_rps "fail"
      note "$col: UDP round-trip test failed: $(last_line "$RUN/logs/$col-udp-rr.err")"
    fi
  fi

  # --- iperf3 UDP at fixed offered rates, both directions
  UMBPS=() ULOSS=()
  for v in "${UVARIANTS[@]}"; do
    if ! have_time $((BENCH_UDP_SECONDS + 10)); then
      note "$col: iperf3 -u ${UARGS[$v]} skipped: time limit"
      continue
    fi
    if ! tunnel_alive; then
      note "$col: tunnel process exited before iperf3 -u ${UARGS[$v]}"
      break
    fi
    iperf_udp_run "$col" "$v" "$PI"
    sleep 0.5
  done
  # The issue's target compares received throughput at ≤ 1 % loss: the best such run.
  local dir best
  for dir in "" r; do
    best=""
    for r in "${UDP_RATES[@]}"; do
      v=u$r$dir
      [[ -n ${ULOSS[$v]:-} ]] || continue
      if awk -v l="${ULOSS[$v]}" -v m="${UMBPS[$v]}" -v b="${best:-0}" 'BEGIN { exit !(l <= 1 && m > b) }'; then
        best=${UMBPS[$v]}
      fi
    done
    put "$col" "ubest$dir" "${best:-none}"
  done
  if [[ -n $SRV_PID ]] && tunnel_alive; then
    put "$col" urss_peak_s "$(mb "$(status_kb "$SRV_PID" VmHWM)")"
    put "$col" urss_peak_a "$(mb "$(agt_kb VmHWM)")"
  elif [[ -n $SRV_PID ]]; then
    note "$col: a tunnel process exited during the UDP runs (logs in target/bench/run/logs/$col-udp-*)"
  else
    put "$col" urss_peak_s "—"
    put "$col" urss_peak_a "—"
  fi
  stop_tunnel
  stop_iperf
}

# ------------------------------------------------------------------ syscall mode
# For each of SYS_COLS, one tunnel start: iperf3 -n BYTES up, the same down (-R), then
# BENCH_SYSCALLS_RR_COUNT round trips. Each load runs twice. First bare: context switches
# over all threads and CPU time of the server and of the agent/client process(es). Then
# under `perf stat -a -e 'syscalls:sys_enter_*' --filter 'common_pid == TID || ...'` (one
# perf per side, the filter listing that side's threads): system calls by name, counted
# (not sampled: nothing is lost, and nothing stops the process per call as strace does).
# Counting system-wide with a thread filter, not per task (-p): per-task events are
# switched in and out with the task, hundreds of them here, which cost the tunnel about
# four times its CPU per round trip in a trial; system-wide the events stay put. perf
# starts with its events disabled and is enabled and disabled through its control FIFO,
# with an acknowledgement, exactly around the load.
SYS_REC=$RUN/sys.tsv
SYS_PERF=0
declare -A PERF_PID=() PERF_CTL=() PERF_ACK=()
sysrec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SYS_REC"; }
perf_attach() { # perf_attach TAG OUT stat|record PERF-ARGS...
  local tag=$1 out=$2 kind=$3 ctl ack fd
  shift 3
  ctl=$RUN/sys/$tag.ctl ack=$RUN/sys/$tag.ack
  rm -f "$ctl" "$ack"
  mkfifo "$ctl" "$ack"
  start_bg "$RUN/logs/perf-$tag.log" perf "$kind" -D -1 --control "fifo:$ctl,$ack" -o "$out" "$@"
  PERF_PID[$tag]=$LAST_PID
  exec {fd}<>"$ctl"
  PERF_CTL[$tag]=$fd
  exec {fd}<>"$ack"
  PERF_ACK[$tag]=$fd
}
perf_ctl() { # perf_ctl TAG enable|disable: sends the command, waits ≤ 30 s for perf's ack
  local a=""
  alive "${PERF_PID[$1]}" || return 1
  echo "$2" >&"${PERF_CTL[$1]}" || return 1
  read -r -t 30 -u "${PERF_ACK[$1]}" a || return 1
  [[ $a == ack* ]]
}
perf_detach() { # SIGINT makes perf write its results; bounded wait, then stop_pid
  local tag=$1 pid=${PERF_PID[$1]} c=${PERF_CTL[$1]} k=${PERF_ACK[$1]}
  if is_mine "$pid"; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  stop_pid "$pid"
  exec {c}>&- {k}>&-
  rm -f "$RUN/sys/$tag.ctl" "$RUN/sys/$tag.ack"
}
tid_filter() { # tid_filter PID...: "common_pid == TID || ..." over every thread of the PIDs
  local p t f=""
  for p in "$@"; do
    for t in "/proc/$p/task/"*; do f+="${f:+ || }common_pid == ${t##*/}"; done
  done
  echo "$f"
}
SYS_DENOM=
sys_iperf() { # sys_iperf COL LOAD [-R]: iperf3 -n BYTES; SYS_DENOM = bytes received
  local json=$RUN/sys/$1-$2.json out gbps
  # shellcheck disable=SC2086
  timeout 600 iperf3 -c 127.0.0.1 -p "$PI" -n "$BENCH_SYSCALLS_BYTES" -J --connect-timeout 5000 ${3:-} \
    >"$json" 2>>"$RUN/logs/$1-sys-iperf.err" || return 1
  out=$("${TOOL[@]}" iperf-parse "$json" 2>>"$RUN/logs/$1-sys-iperf.err") || return 1
  read -r gbps SYS_DENOM <<<"$out"
  log "$1 $2: $gbps Gbit/s"
}
sys_rr() { # sys_rr COL: round trips over one connection; SYS_DENOM = all of them (warm-up too)
  local json=$RUN/sys/$1-rr.json r a b
  timeout 600 "${TOOL[@]}" rr "$PE" --count "$BENCH_SYSCALLS_RR_COUNT" --seconds 500 >"$json" \
    2>>"$RUN/logs/$1-sys-rr.err" || return 1
  r=$("${TOOL[@]}" json-get "$json" count warmup) || return 1
  read -r a b <<<"$r"
  SYS_DENOM=$((a + b))
}
# sys_window COL LOAD CMD...: CMD twice, bare (context switches, CPU) then under perf stat
# (syscalls by name); records to SYS_REC
sys_window() {
  local col=$1 load=$2 perf_on=0 s0 a0 s1 a1 cs0 ca0 cs1 ca1 role v0 i0 t0 v1 i1 t1 tk unit=bytes
  shift 2
  [[ $load != rr ]] || unit=rts
  SYS_DENOM=
  cs0=$(ctxsw "$SRV_PID") ca0=$(ctxsw "${AGT_PIDS[@]}") s0=$(cpu_ticks "$SRV_PID") a0=$(agt_ticks)
  if ! "$@" || [[ -z $SYS_DENOM ]] || ! tunnel_alive; then
    note "$col: syscall-mode load '$load' failed (target/bench/run/logs/$col-sys-*.err)"
    return 1
  fi
  s1=$(cpu_ticks "$SRV_PID") a1=$(agt_ticks) cs1=$(ctxsw "$SRV_PID") ca1=$(ctxsw "${AGT_PIDS[@]}")
  sysrec "$col" "$load" - "$unit" "$SYS_DENOM"
  for role in srv agt; do
    if [[ $role == srv ]]; then
      read -r v0 i0 t0 <<<"$cs0"
      read -r v1 i1 t1 <<<"$cs1"
      tk=$((s1 - s0))
    else
      read -r v0 i0 t0 <<<"$ca0"
      read -r v1 i1 t1 <<<"$ca1"
      tk=$((a1 - a0))
    fi
    sysrec "$col" "$load" "$role" cpu_s "$(awk -v t="$tk" -v hz="$CLK_TCK" 'BEGIN { printf "%.4f", t / hz }')"
    sysrec "$col" "$load" "$role" vcsw $((v1 - v0))
    sysrec "$col" "$load" "$role" ivcsw $((i1 - i0))
    ((t0 == t1)) || note "$col $load: the $role side had $t0 threads before and $t1 after; context switches of threads that came or went are not all counted"
  done
  ((SYS_PERF)) || return 0
  sleep 0.5
  local fs fa ts ta
  fs=$(tid_filter "$SRV_PID") fa=$(tid_filter "${AGT_PIDS[@]}")
  perf_attach "$col-$load-srv" "$RUN/sys/$col-$load-srv.perf" stat -a -x, -e 'syscalls:sys_enter_*' --filter "$fs"
  perf_attach "$col-$load-agt" "$RUN/sys/$col-$load-agt.perf" stat -a -x, -e 'syscalls:sys_enter_*' --filter "$fa"
  if perf_ctl "$col-$load-srv" enable && perf_ctl "$col-$load-agt" enable; then
    perf_on=1
  else
    note "$col $load: perf stat did not start (target/bench/run/logs/perf-$col-$load-*.log); no syscall counts"
  fi
  SYS_DENOM=
  if ((perf_on)); then
    "$@" || perf_on=0
    perf_ctl "$col-$load-srv" disable || perf_on=0
    perf_ctl "$col-$load-agt" disable || perf_on=0
  fi
  ts=$(ctxsw "$SRV_PID") ta=$(ctxsw "${AGT_PIDS[@]}")
  perf_detach "$col-$load-srv"
  perf_detach "$col-$load-agt"
  if ((perf_on)) && [[ -n $SYS_DENOM ]] && tunnel_alive; then
    sysrec "$col" "$load" - "${unit}_perf" "$SYS_DENOM"
    sysrec "$col" "$load" srv perf "$RUN/sys/$col-$load-srv.perf"
    sysrec "$col" "$load" agt perf "$RUN/sys/$col-$load-agt.perf"
    # the filters list the threads there were when perf started
    [[ ${ts##* } == "${cs1##* }" && ${ta##* } == "${ca1##* }" ]] ||
      note "$col $load: threads came or went during the perf run; the syscalls of new threads are not counted"
  else
    note "$col: syscall counting for '$load' failed (target/bench/run/logs/perf-$col-$load-*.log)"
  fi
}
# sys_profile COL: perf record -g of one more client→service transfer; top 20 symbols
sys_profile() {
  local col=$1 agts role f
  agts=$(IFS=,; echo "${AGT_PIDS[*]}")
  perf_attach "$col-prof-srv" "$RUN/sys/$col-srv.perf.data" record -g -F 999 -q -p "$SRV_PID"
  perf_attach "$col-prof-agt" "$RUN/sys/$col-agt.perf.data" record -g -F 999 -q -p "$agts"
  if perf_ctl "$col-prof-srv" enable && perf_ctl "$col-prof-agt" enable; then
    sys_iperf "$col" prof "" || note "$col: the profiled transfer failed"
    perf_ctl "$col-prof-srv" disable || true
    perf_ctl "$col-prof-agt" disable || true
  else
    note "$col: perf record did not start (target/bench/run/logs/perf-$col-prof-*.log)"
  fi
  perf_detach "$col-prof-srv"
  perf_detach "$col-prof-agt"
  for role in srv agt; do
    f=$RUN/sys/$col-$role.perf.data
    [[ -s $f ]] || continue
    # the sample count, then the top 20 lines (without perf's empty IPC columns)
    timeout 300 perf report -i "$f" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.5 \
      2>/dev/null | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' |
      awk '/^# Samples:/ { sub(/^# /, ""); print; next } /^ +[0-9.]+%/ && n++ < 20' >"$RUN/sys/$col-$role.top" || true
  done
}
run_syscalls() { # run_syscalls COL INDEX
  local col=$1 o
  o=$(col_ports "$2")
  IB=$o
  PHASE=sys
  log "== syscalls: $col"
  SETUP_ERR=''
  case $col in
  culvert-*) SETUP_ERR=$CULVERT_NA ;;
  rathole-*) SETUP_ERR=$RATHOLE_NA ;;
  wstunnel-*) SETUP_ERR=$WSTUNNEL_NA ;;
  bore) SETUP_ERR=$BORE_NA ;;
  esac
  if [[ -z $SETUP_ERR ]] && ! have_time 120; then SETUP_ERR="skipped: time limit (BENCH_MAX_SECONDS)"; fi
  if [[ -n $SETUP_ERR ]]; then
    note "syscalls, $col: n/a — $SETUP_ERR"
    return
  fi
  mkdir -p "$RUN/sys" "$RUN/$col"
  if ! start_iperf "$IB" "$col-sys"; then
    note "syscalls, $col: iperf3 server did not start"
    stop_iperf
    return
  fi
  if ! start_tunnel "$col" "$o"; then
    note "syscalls, $col: tunnel did not start: $SETUP_ERR"
    stop_tunnel
    stop_iperf
    return
  fi
  sleep 1 # let the tunnel's start-up work settle before counting
  local load
  for load in up down rr; do
    if ! have_time 90 || ! tunnel_alive; then
      note "syscalls, $col: '$load' skipped (time limit or a tunnel process exited)"
      continue
    fi
    case $load in
    up) sys_window "$col" up sys_iperf "$col" up "" || true ;;
    down) sys_window "$col" down sys_iperf "$col" down -R || true ;;
    rr) sys_window "$col" rr sys_rr "$col" || true ;;
    esac
    sleep 0.5
  done
  if [[ $BENCH_SYSCALLS_PROFILE == 1 ]] && ((SYS_PERF)) && have_time 90 && tunnel_alive; then
    sys_profile "$col"
  fi
  stop_tunnel
  stop_iperf
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
IFS=',' read -r -a ALL_COLS <<<"$ALL_COLUMNS"
declare -A NA_COLS=()
# TCP columns: BENCH_REPEAT rounds of one run per cell (BENCH_INTERLEAVE=1), or one round
# of BENCH_REPEAT runs per cell; each run's files are numbered ROUND + i - 1.
if [[ $BENCH_INTERLEAVE == 1 ]]; then ROUNDS=$BENCH_REPEAT REPS=1; else ROUNDS=1 REPS=$BENCH_REPEAT; fi
# Even rounds visit the columns in reverse order (ABBA): a column that always came right
# after `direct`, or early in every round, would meet the same neighbour and the same part
# of each round's drift every time.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  ((ROUNDS == 1)) || log "=== round $ROUND of $ROUNDS"
  ORDER=("${!ALL_COLS[@]}")
  if ((ROUND % 2 == 0)); then
    for ((rev = ${#ALL_COLS[@]} - 1, at = 0; rev >= 0; rev--, at++)); do ORDER[at]=$rev; done
  fi
  for idx in "${ORDER[@]}"; do
    col=${ALL_COLS[$idx]}
    if is_udp_col "$col"; then
      :
    elif ! wants "$col"; then
      ((ROUND > 1)) || put "$col" status "not run (BENCH_ONLY)"
    elif [[ -z ${NA_COLS[$col]:-} ]]; then
      mkdir -p "$RUN/$col"
      run_column "$col" "$idx"
    fi
  done
done
# UDP columns once, after the TCP rounds (each cell its own BENCH_REPEAT runs).
ROUND=1 REPS=$BENCH_REPEAT
idx=0
for col in "${ALL_COLS[@]}"; do
  if is_udp_col "$col"; then
    if wants "$col"; then
      mkdir -p "$RUN/$col"
      run_udp_column "$col" "$idx"
    else
      put "$col" status "not run (BENCH_ONLY)"
    fi
  fi
  idx=$((idx + 1))
done
stop_pg
if ((${#SYS_COLS[@]})); then
  : >"$SYS_REC"
  if command -v perf >/dev/null &&
    perf stat -a -e 'syscalls:sys_enter_getpid' --filter 'common_pid == 1' -- true >/dev/null 2>&1; then
    SYS_PERF=1
  else
    note "perf cannot count syscall tracepoints here (perf missing, perf_event_paranoid or tracefs): context switches and CPU only"
  fi
  for col in "${SYS_COLS[@]}"; do
    run_syscalls "$col" "$idx"
    idx=$((idx + 1))
  done
fi

# ------------------------------------------------------------------ report
culvert_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
[[ -z $(git status --porcelain -- crates 2>/dev/null) ]] || culvert_rev="$culvert_rev+dirty"
if [[ $BENCH_NO_BUILD == 1 && -x $CULVERT_BIN ]]; then
  culvert_rev="$culvert_rev (binary not rebuilt, built $(date -u -r "$CULVERT_BIN" +%Y-%m-%dT%H:%MZ))"
fi
REPORT=$OUT/latest.md
{
  echo "## Loopback benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  peers="rathole $RATHOLE_VERSION (features $RATHOLE_FEATURES)"
  ! needs_any wstunnel-ws,wstunnel-wss || peers+=", wstunnel ${WSTUNNEL_NAME#wstunnel-} (its own release profile)"
  ! needs_any bore || peers+=", bore $BORE_VERSION"
  [[ -z ${WSTUNNEL_BIN_SET:-} ]] || peers+=" (WSTUNNEL_BIN=$WSTUNNEL_BIN)"
  [[ -z ${BORE_BIN_SET:-} ]] || peers+=" (BORE_BIN=$BORE_BIN)"
  echo "Machine: $(nproc) cores, $(uname -sr); iperf3 $(iperf3 --version 2>/dev/null | head -n1 | awk '{print $2}');" \
    "$peers; Culvert at $culvert_rev;" \
    "load average before measuring: $LOADAVG (other work on the machine skews throughput more than CPU-s/GB)."
  [[ $BENCH_KEEP_AWAKE != 1 ]] || echo "vCPUs kept awake: $(nproc) nice-19 busy loops ran beside the measurements (BENCH_KEEP_AWAKE=1; they count in the load average, not in any process's CPU-s/GB)."
  if wants_any "$TCP_COLUMNS"; then
    repeat=" (one run per cell)"
    ((BENCH_REPEAT == 1)) || repeat=" (each cell the median of $BENCH_REPEAT runs, each figure taken separately)"
    ((BENCH_REPEAT == 1 || BENCH_INTERLEAVE != 1)) || repeat=" (each cell the median of $BENCH_REPEAT runs, each figure taken separately; the runs are $BENCH_REPEAT rounds, each measuring every column once, in turn, on fresh processes)"
    pgb=""
    [[ -z $PG_PORT ]] || pgb=" pgbench -S -c $BENCH_PGBENCH_CLIENTS -j $BENCH_PGBENCH_JOBS -T $BENCH_PGBENCH_SECONDS against PostgreSQL $("$PSQL" --version 2>/dev/null | awk '{print $3}') (scale $BENCH_PGBENCH_SCALE, fsync off), through each tunnel; tps without the initial connection time."
    echo "Each iperf3 run ${BENCH_SECONDS} s$repeat; CPU-s/GB = (utime+stime delta of the process) ÷ GB received by iperf3;" \
      "round trips: ≤ $BENCH_RR_COUNT sequential 64-byte echoes or ${BENCH_SECONDS} s over one connection, and ≤ $BENCH_RR_CONC_COUNT" \
      "over $BENCH_RR_CONNS connections at once (each sequential) or ${BENCH_SECONDS} s; new connections:" \
      "≤ $BENCH_CPS_COUNT or ${BENCH_SECONDS} s, by $BENCH_CPS_WORKERS workers at once$([[ $BENCH_CPS_ONE == 0 ]] || echo ' and by one');$pgb Peak RSS is the VmHWM of the tunnel processes over the bulk runs, on a fresh start (the connection tests run on another); with rounds, the highest of the rounds' peaks." \
      "bore runs one \`bore local\` per exposed port (three): its agent/client CPU and RSS are their sums." \
      "\"÷ best peer\": Culvert ÷ the best of $PEER_COLUMNS in this run for that row (highest where higher is better, lowest where lower is better), named in the cell;" \
      "other ratios Culvert ÷ that peer. Above 1 is better for rows marked higher-is-better, below 1 for lower-is-better."
    echo
    "${TOOL[@]}" table "$METRICS" "$RES" --columns "$TCP_COLUMNS" --best culvert-ws,culvert-wss \
      --peers "$PEER_COLUMNS" --ratios "culvert-wss/wstunnel-wss,culvert-ws/rathole-tcp,culvert-wss/rathole-tls"
  fi
  if wants_any "$UDP_COLUMNS"; then
    wants_any "$TCP_COLUMNS" && { echo; echo "### UDP"; }
    echo
    echo "iperf3 UDP: each run ${BENCH_UDP_SECONDS} s at a fixed offered rate (-b), ${BENCH_UDP_LEN}-byte datagrams (-l)," \
      "iperf3 socket buffers ${BENCH_UDP_WINDOW:-left at the iperf3 default} (-w); received throughput, loss and jitter are the receiving side's" \
      "(iperf3's sum_received); the tunnel carries iperf3's TCP control connection and its UDP data on the same public port number." \
      "CPU-s/GB = (utime+stime delta of the process) ÷ GB received, during the $UFAST runs." \
      "UDP round trips: ≤ $BENCH_UDP_RR_COUNT sequential 64-byte datagrams from one flow or ${BENCH_SECONDS} s," \
      "each waiting ≤ $BENCH_UDP_RR_TIMEOUT_MS ms for its echo (a timeout is a lost round trip, not in p50/p99)." \
      "Peak RSS is the VmHWM over the round trips and the iperf3 UDP runs." \
      "Ratios are Culvert ÷ rathole (culvert-ws-udp ÷ rathole-udp over rathole's TCP transport, culvert-wss-udp ÷ rathole-tls-udp)."
    echo
    "${TOOL[@]}" table "$UMETRICS" "$RES" --columns "$UDP_COLUMNS" \
      --ratios "culvert-ws-udp/rathole-udp,culvert-wss-udp/rathole-tls-udp"
  fi
  if ((${#SYS_COLS[@]})); then
    echo
    echo "### System calls and context switches (BENCH_SYSCALLS)"
    echo
    echo "One tunnel start per column; iperf3 -n $BENCH_SYSCALLS_BYTES client→service, the same service→client (-R), then" \
      "$BENCH_SYSCALLS_RR_COUNT sequential 64-byte round trips over one connection (+50 warm-up ones, inside the window and counted)." \
      "Each load runs twice. Bare: voluntary and involuntary context switches summed over all threads of each process" \
      "(/proc/PID/task/*/status) and CPU time (utime+stime). Then again for system calls by name, counted by" \
      "\`perf stat -a -e 'syscalls:sys_enter_*' --filter 'common_pid == TID || …'\` (that process's threads), enabled and disabled" \
      "through perf's control FIFO around the load (counting, not sampling; nothing stops the process per call as under strace)." \
      "Per GB: ÷ bytes iperf3 received in that run; per round trip: ÷ round trips. The ratio column compares the server+agent totals."
    echo
    "${TOOL[@]}" sys-table "$SYS_REC" --top "$BENCH_SYSCALLS_TOP" \
      --labels "up=iperf3 -n $BENCH_SYSCALLS_BYTES, client→service;down=iperf3 -n $BENCH_SYSCALLS_BYTES -R, service→client;rr=64-byte round trips, 1 connection"
    for col in "${SYS_COLS[@]}"; do
      for role in srv agt; do
        f=$RUN/sys/$col-$role.top
        [[ -s $f ]] || continue
        echo
        echo "Profile, $col $([[ $role == srv ]] && echo server || echo agent/client), one more iperf3 -n $BENCH_SYSCALLS_BYTES client→service (perf record -g -F 999, top 20 by self time):"
        echo
        echo '```'
        cat "$f"
        echo '```'
      done
    done
  fi
  if ((${#NOTES[@]})); then
    echo
    echo "Notes:"
    for n in "${NOTES[@]}"; do echo "- $n"; done
  fi
  echo
  extra=""
  [[ -z ${BENCH_CULVERT_SERVER_ARGS:-} ]] || extra+=" BENCH_CULVERT_SERVER_ARGS='$BENCH_CULVERT_SERVER_ARGS'"
  [[ -z ${BENCH_CULVERT_AGENT_ARGS:-} ]] || extra+=" BENCH_CULVERT_AGENT_ARGS='$BENCH_CULVERT_AGENT_ARGS'"
  echo "Run: \`${RUN_VARS}BENCH_SECONDS=$BENCH_SECONDS$extra scripts/bench.sh\`; took $(($(date +%s) - T_START)) s of measuring."
} >"$REPORT"
cat "$REPORT"
log "written to ${REPORT#"$ROOT"/}; raw results and logs in ${RUN#"$ROOT"/}/"
