#!/usr/bin/env bash
# User-space instructions per 64-byte round trip of a tunnel's two processes, counted by
# valgrind's callgrind: one connection, sequential round trips through Culvert (or another
# build) and wstunnel-ws, each process's count divided by the round trips.
#
#   scripts/rr-instructions.sh                                   # culvert and wstunnel
#   RRC_VARIANTS="culvert:/path/to/old culvert" scripts/rr-instructions.sh   # before/after
#   RRC_VARIANTS="culvert wstunnel bore" scripts/rr-instructions.sh          # bore as well
#   RRC_IDLE=4 scripts/rr-instructions.sh                      # with 4 more tunneled
#                                                                # connections open and idle
#   RRC_TOP=25 scripts/rr-instructions.sh                        # also each process's top
#                                                                # functions (self cost)
#   RRC_KEEP=/some/dir scripts/rr-instructions.sh                # keep the callgrind files
#                       # (N-server.out, N-agent.out for the Nth variant: the measured round trips' dump) for callgrind_annotate
#                       # --tree=caller or kcachegrind: who calls what
#
# Why: on this VM the CPU time of a round trip moves by ±10 % between rounds with the host's
# load, so a change that saves a microsecond per message cannot be seen in round trips/s or
# CPU µs. Instruction counts are deterministic (two runs agree within 0.1 %). They count
# user space only (system calls, the kernel's network stack and the wake-ups are not in
# them), and a `rep stos`/`rep movs` counts once per iteration, so a large memset or memcpy
# weighs more than its cycles: read the per-function list before concluding.
#
# Needs valgrind and the peers scripts/bench.sh builds (target/bench/); Culvert is
# target/profiling/culvert unless CULVERT_BIN says otherwise. Everything on 127.0.0.1 ports
# from benchtool's freeblock; every process stopped by its PID; every load bounded by a count
# and a time. Under valgrind a process runs ~50× slower: RRC_COUNT round trips (default
# 2000) take about a minute per variant.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VARIANTS=${RRC_VARIANTS:-culvert wstunnel}
COUNT=${RRC_COUNT:-2000}
TOP=${RRC_TOP:-0}
IDLE=${RRC_IDLE:-0}
command -v valgrind >/dev/null || { echo "rr-instructions: valgrind missing (apt-get install valgrind)" >&2; exit 2; }
# shellcheck source=scripts/lib/peer-tunnel.sh
source "$ROOT/scripts/lib/peer-tunnel.sh"
peer_bins rr-instructions
# shellcheck source=scripts/lib/procs.sh
source "$ROOT/scripts/lib/procs.sh"
procs_init rr-instructions
D=$WORK
REAL_WSTUNNEL=$WSTUNNEL_BIN REAL_BORE=${BORE_BIN:-}

ECHO=$("${TOOL[@]}" freeblock 4)
"${TOOL[@]}" echo-server "$ECHO" --max-seconds 3600 >"$D/echo.log" 2>&1 &
PIDS+=("$!")
"${TOOL[@]}" wait-listen --timeout 15 "$ECHO"

# wrap BIN OUTDIR: a script that runs BIN under callgrind, uninstrumented (faster) until told
wrap() {
  local w=$2/wrap
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=%s/%%p.out %s "$@"\n' \
    "$2" "$1" >"$w"
  chmod +x "$w"
  echo "$w"
}

# one VARIANT: prints a row per process; stops what it started
one() {
  local variant=$1 out base ctrl pub n started p
  use_variant "$variant"
  out=$(mktemp -d "$D/run.XXXX")
  if [[ $WHICH == culvert ]]; then
    CULVERT_BIN=$(wrap "$CULVERT_BIN" "$out")
  elif [[ $WHICH == bore ]]; then
    BORE_BIN=$(wrap "$REAL_BORE" "$out")
  else
    WSTUNNEL_BIN=$(wrap "$REAL_WSTUNNEL" "$out")
  fi
  base=$("${TOOL[@]}" freeblock 4)
  ctrl=$base pub=$((base + 1))
  started=${#PIDS[@]}
  start_peer_tunnel "$WHICH" ws "$out" "$ctrl" "$pub" "$ECHO"
  "${TOOL[@]}" wait-echo --timeout 120 "$pub" >/dev/null
  hold_idle "$pub" "$IDLE" "$out/hold.log"
  # warm the path untimed, then count only the measured round trips
  timeout 300 "${TOOL[@]}" rr "$pub" --conns 1 --count 300 --seconds 120 >/dev/null
  for p in "$SRV_PID" "$AGT_PID"; do
    callgrind_control --instr=on "$p" >/dev/null 2>&1
    callgrind_control -z "$p" >/dev/null 2>&1
  done
  timeout 900 "${TOOL[@]}" rr "$pub" --conns 1 --count "$COUNT" --seconds 600 >"$out/rr.json"
  callgrind_control -d "$SRV_PID" >/dev/null 2>&1
  callgrind_control -d "$AGT_PID" >/dev/null 2>&1
  n=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["count"] + d["warmup"])' "$out/rr.json")
  python3 "$ROOT/scripts/bench/callgrind-self.py" --round-trips "$n" --top "$TOP" --label "$variant" \
    server "$out/$SRV_PID.out" agent "$out/$AGT_PID.out" | tee -a "$D/rows"
  if [[ -n ${RRC_KEEP:-} ]]; then
    mkdir -p "$RRC_KEEP"
    KEPT=$((${KEPT:-0} + 1))
    # the dump after the measured round trips (callgrind_control -d writes PID.out.N)
    cp "$(ls "$out/$SRV_PID".out.* | sort -t. -k3n | tail -n1)" "$RRC_KEEP/$KEPT-server.out"
    cp "$(ls "$out/$AGT_PID".out.* | sort -t. -k3n | tail -n1)" "$RRC_KEEP/$KEPT-agent.out"
  fi
  for p in "${PIDS[@]:$started}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:$started}")
  CULVERT_BIN=$CULVERT_DEFAULT WSTUNNEL_BIN=$REAL_WSTUNNEL BORE_BIN=$REAL_BORE
}

echo "ws, 1 connection ($IDLE more open and idle), $COUNT sequential 64-byte round trips; user-space instructions per round trip (callgrind Ir):"
echo
echo "| tunnel | server | agent/client | server + agent |"
echo "|---|---:|---:|---:|"
for v in $VARIANTS; do
  one "$v"
done
