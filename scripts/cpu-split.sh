#!/usr/bin/env bash
# Who pays for a bulk transfer on loopback: CPU-s per GB of the tunnel's server, of its agent
# (client), of both together, of iperf3's server and of the whole machine (/proc/stat), for
# Culvert and wstunnel in alternating rounds.
#
#   scripts/cpu-split.sh                    # 8 streams client→service, ws, 3 rounds
#   SPLIT_STREAMS=1 SPLIT_REVERSE=1 scripts/cpu-split.sh   # 1 stream service→client
#   SPLIT_SCHEME=wss scripts/cpu-split.sh   # over TLS (Culvert --self-signed, wstunnel's own)
#   SPLIT_PERF=1 scripts/cpu-split.sh       # also perf record -g of each sending side, then
#                                           # scripts/bench/perf-contexts.py of each profile
#   SPLIT_PERF=1 SPLIT_PERF_SIDE=receiving scripts/cpu-split.sh   # profiles the tunnel
#                                           # process that receives from the other instead
#   SPLIT_PERF=1 SPLIT_PERF_CALLGRAPH=dwarf,16384 SPLIT_PERF_HZ=499 scripts/cpu-split.sh
#                                           # user-space call chains too (libc's memmove
#                                           # has no frame pointers), at a lower rate
#   SPLIT_PERF=1 SPLIT_KEEP=DIR scripts/cpu-split.sh   # keeps each profile as
#                                           # DIR/ROUND-VARIANT_INDEX-NAME.perf (perf report -i)
#   SPLIT_SS=1 scripts/cpu-split.sh         # also the kernel's state of the sockets the
#                                           # sending side reads (receive buffer, rcv_rtt,
#                                           # ACKs it sent per GB: scripts/bench/ss-input.py)
#   SPLIT_VARIANTS="culvert culvert:/path/to/other-culvert wstunnel" scripts/cpu-split.sh
#                                           # a before/after of two builds in one sitting
#
# Why: on loopback, the kernel delivers a segment into the receiving socket in the softirq of
# whoever sent it (or, if the receiver holds its socket at that moment, in the receiver's
# release of it), and a receiver's ACK runs the sender's ACK processing the same way. So how
# the work of one transfer splits between the two tunnel processes (and iperf3) depends on
# which of them is in a system call when segments arrive; the per-side CPU-s/GB of
# scripts/bench.sh moves with that split. The sum, and the whole machine, do not.
#
# Needs iperf3 and the peers scripts/bench.sh builds (target/bench/); Culvert is
# target/profiling/culvert unless CULVERT_BIN says otherwise. Everything on 127.0.0.1 ports
# from benchtool's freeblock; every process stopped by its PID; each transfer is
# SPLIT_BYTES (iperf3 -n), bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${SPLIT_ROUNDS:-3}
VARIANTS=${SPLIT_VARIANTS:-culvert wstunnel}
STREAMS=${SPLIT_STREAMS:-8}
SCHEME=${SPLIT_SCHEME:-ws}
BYTES=${SPLIT_BYTES:-2G}
R=()
[[ ${SPLIT_REVERSE:-0} == 1 ]] && R=(-R)
# shellcheck source=scripts/lib/peer-tunnel.sh
source "$ROOT/scripts/lib/peer-tunnel.sh"
peer_bins cpu-split
command -v iperf3 >/dev/null || { echo "cpu-split: iperf3 missing (apt-get install iperf3)" >&2; exit 2; }
GB=$(python3 -c "import sys; s=sys.argv[1]; u={'K':2**10,'M':2**20,'G':2**30}; print((int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))/1e9)" "$BYTES")
HZ=$(getconf CLK_TCK)
D=$(mktemp -d /tmp/cpu-split.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT


ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# one VARIANT TAG (VARIANT: culvert, culvert:BIN or wstunnel; TAG names its files): starts the
# tunnel, one transfer, prints one
# line; stops what it started
one() {
  local variant=$1 tag=$2 which base iperf ctrl pub srv agt isrv
  use_variant "$variant"
  which=$WHICH
  base=$("${TOOL[@]}" freeblock 4)
  iperf=$base ctrl=$((base + 1)) pub=$((base + 2))
  local started=${#PIDS[@]}
  iperf3 -s -B 127.0.0.1 -p "$iperf" >/dev/null 2>&1 &
  isrv=$!
  PIDS+=("$isrv")
  start_peer_tunnel "$which" "$SCHEME" "$D" "$ctrl" "$pub" "$iperf"
  srv=$SRV_PID agt=$AGT_PID
  # warm the path (streams, buffers), untimed
  timeout 30 iperf3 -c 127.0.0.1 -p "$pub" -t 1 -P "$STREAMS" "${R[@]}" >/dev/null
  local s0 a0 i0 m0 s1 a1 i1 m1 pp="" sender=$srv
  [[ ${#R[@]} -eq 0 ]] || sender=$agt
  local side=${SPLIT_PERF_SIDE:-sending} profiled=$sender
  case $side in
    sending) ;;
    receiving) if [[ $sender == "$srv" ]]; then profiled=$agt; else profiled=$srv; fi ;;
    *) echo "cpu-split: SPLIT_PERF_SIDE must be sending or receiving, not $side" >&2; exit 2 ;;
  esac
  if [[ ${SPLIT_PERF:-0} == 1 ]]; then
    perf record ${SPLIT_PERF_CALLGRAPH:+--call-graph $SPLIT_PERF_CALLGRAPH} -g -e cpu-clock -F "${SPLIT_PERF_HZ:-2000}" -p "$profiled" -o "$D/$tag.perf" >/dev/null 2>&1 &
    pp=$!
    sleep 0.3
  fi
  local sp="" input="( sport = :$pub )"
  [[ ${#R[@]} -eq 0 ]] || input="( dport = :$iperf )"
  if [[ ${SPLIT_SS:-0} == 1 ]]; then
    rm -f "$D/$tag.ss"
    python3 "$ROOT/scripts/bench/ss-input.py" sample "$D/$tag.ss" "$input" 130 &
    sp=$!
    PIDS+=("$sp")
  fi
  s0=$(ticks "$srv") a0=$(ticks "$agt") i0=$(ticks "$isrv") m0=$(machine)
  timeout 120 iperf3 -c 127.0.0.1 -p "$pub" -n "$BYTES" -P "$STREAMS" "${R[@]}" -J >"$D/iperf.json"
  s1=$(ticks "$srv") a1=$(ticks "$agt") i1=$(ticks "$isrv") m1=$(machine)
  if [[ -n $sp ]]; then
    kill "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
  fi
  if [[ -n $pp ]]; then
    kill -INT "$pp"
    wait "$pp" 2>/dev/null || true
  fi
  python3 - "$variant" "$D/iperf.json" "$GB" "$HZ" $((s1 - s0)) $((a1 - a0)) $((i1 - i0)) $((m1 - m0)) <<'PY' | tee -a "$D/rows"
import json, sys
which, path, gb, hz = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
s, a, i, m = (int(x) / hz / gb for x in sys.argv[5:9])
gbit = json.load(open(path))["end"]["sum_received"]["bits_per_second"] / 1e9
print(f"| {which} | {gbit:.2f} | {s:.3f} | {a:.3f} | {s + a:.3f} | {i:.3f} | {m:.3f} |")
PY
  if [[ -n $sp ]]; then
    python3 "$ROOT/scripts/bench/ss-input.py" summary "$D/$tag.ss"
  fi
  if [[ -n $pp ]]; then
    echo "perf of the $which $side side:"
    python3 "$ROOT/scripts/bench/perf-contexts.py" "$D/$tag.perf"
    if [[ -n ${SPLIT_KEEP:-} ]]; then
      mkdir -p "$SPLIT_KEEP"
      cp "$D/$tag.perf" "$SPLIT_KEEP/$tag.perf"
      echo "kept: $SPLIT_KEEP/$tag.perf"
    fi
  fi
  local p
  for p in "${PIDS[@]:$started}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:$started}")
}

echo "$SCHEME, $STREAMS stream(s), ${R[*]:-client→service} ${BYTES}B per transfer, $ROUNDS alternating rounds; CPU-s per GB:"
echo
header="| tunnel | Gbit/s | server | agent/client | server + agent | iperf3 server | whole machine |"
echo "$header"
echo "|---|---:|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  index=0
  for v in $VARIANTS; do
    index=$((index + 1))
    one "$v" "$round-$index-${v%%:*}"
  done
done
echo
echo "medians:"
echo
echo "$header"
echo "|---|---:|---:|---:|---:|---:|---:|"
"${TOOL[@]}" row-medians --ints 0 --decimals 3 "$D/rows"
