#!/usr/bin/env bash
# Interleaved A/B of two Culvert variants over ws:// on loopback: the same transfers
# through variant A, then B, then A, … so that the machine's load drifts over both alike.
# A variant is a binary plus extra server and agent arguments:
#
#   AB_A_BIN=/tmp/culvert-old AB_B_BIN=target/profiling/culvert scripts/ab.sh
#   AB_A_AGENT_ARGS=--ws-mask scripts/ab.sh          # same binary, agent flag on / off
#   AB_SCHEME=wss scripts/ab.sh                      # over TLS (--self-signed server)
#   AB_STREAMS=8 AB_B_AGENT_ARGS="--pool 8" scripts/ab.sh   # eight parallel streams
#
#   AB_BULK=0 AB_RR_CONNS=8 AB_PGBENCH=1 scripts/ab.sh   # latency only: round trips, pgbench
#   AB_BULK=0 AB_CPS=8 scripts/ab.sh   # and new connections/s with 8 workers (as bench.sh)
#   AB_KEEP_AWAKE=1 scripts/ab.sh   # a nice-19 busy loop per CPU: no vCPU halts between messages
#
# Per round and variant: iperf3 -n AB_BYTES client→service and service→client (one stream;
# AB_BULK=0 leaves them out), then AB_RR 64-byte round trips over one connection, then (with
# AB_RR_CONNS=N) AB_RR round trips over N connections at once, then (with AB_CPS=W) new
# connections (connect, 1 byte, echo, close; W workers, at most 10,000 or 4 s), then (with AB_PGBENCH=1)
# `pgbench -S -c 8 -j 2 -T AB_PGBENCH_SECONDS` against a PostgreSQL the script starts once and
# exposes through each tunnel. Printed per variant: the median of AB_ROUNDS rounds of Gbit/s,
# CPU-s/GB and minor page faults per GB of server and agent (from /proc/PID/stat), round
# trips/s with p50/p99 µs, tps, and each process's peak RSS (VmHWM).
# Everything runs on free 127.0.0.1 ports below the ephemeral range (benchtool's freeblock),
# every process is stopped by PID, every load is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${AB_ROUNDS:-3}
SCHEME=${AB_SCHEME:-ws}
STREAMS=${AB_STREAMS:-1}  # iperf3 -P: parallel streams per transfer
BYTES=${AB_BYTES:-2G}
RR=${AB_RR:-5000}
BULK=${AB_BULK:-1}
RR_CONNS=${AB_RR_CONNS:-0}
PGB=${AB_PGBENCH:-0}
CPS=${AB_CPS:-0}
PGB_SECONDS=${AB_PGBENCH_SECONDS:-5}
KEEP_AWAKE=${AB_KEEP_AWAKE:-0}
A_BIN=${AB_A_BIN:-${CARGO_TARGET_DIR:-target}/profiling/culvert}
B_BIN=${AB_B_BIN:-${CARGO_TARGET_DIR:-target}/profiling/culvert}
read -r -a A_SRV <<<"${AB_A_SERVER_ARGS:-}"
read -r -a B_SRV <<<"${AB_B_SERVER_ARGS:-}"
read -r -a A_AGT <<<"${AB_A_AGENT_ARGS:-}"
read -r -a B_AGT <<<"${AB_B_AGENT_ARGS:-}"
# Environment of each variant's processes ("NAME=VALUE …"), for settings read from it.
read -r -a A_ENV <<<"${AB_A_ENV:-}"
read -r -a B_ENV <<<"${AB_B_ENV:-}"
TOOL=(python3 scripts/bench/benchtool.py)
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/culvert-ab.XXXXXX)
PIDS=()

PG_PID=
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -z $PG_PID ]] || pg_stop "$PG_PID"
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v iperf3 >/dev/null || { echo "ab.sh needs iperf3 (scripts/bench.sh installs it)" >&2; exit 1; }
[[ -x $A_BIN && -x $B_BIN ]] || { echo "ab.sh: $A_BIN or $B_BIN missing (cargo build --profile profiling -p culvert)" >&2; exit 1; }

if [[ $KEEP_AWAKE == 1 ]]; then
  # shellcheck source=scripts/lib/awake.sh
  source scripts/lib/awake.sh
  keep_awake 7200
fi
BASE=$("${TOOL[@]}" freeblock 8)
CTRL=$BASE IPERF=$((BASE + 1)) PUB=$((BASE + 2)) ECHO=$((BASE + 3)) EPUB=$((BASE + 4))
PG=$((BASE + 5)) PGPUB=$((BASE + 6))
PG_EXPOSE=()
if [[ $PGB == 1 ]]; then
  # shellcheck source=scripts/lib/pg.sh
  source scripts/lib/pg.sh
  pg_tools || exit 1
  pg_start_pgbench "$WORK" "$PG" || exit 1
  PG_EXPOSE=(--expose "pg=tcp://127.0.0.1:$PG@$PGPUB")
fi

iperf3 -s -p "$IPERF" >"$WORK/iperf.log" 2>&1 &
PIDS+=($!)
"${TOOL[@]}" echo-server --max-seconds 3600 "$ECHO" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
"${TOOL[@]}" wait-listen --timeout 15 "$IPERF" "$ECHO"

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
uticks() { awk '{ print $14 }' "/proc/$1/stat"; }
faults() { awk '{ print $10 }' "/proc/$1/stat"; }  # minor page faults
hwm() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }  # peak RSS, MB

# run VARIANT(A|B) ROUND: one start of server and agent, the loads, then both stopped.
run() {
  local v=$1 bin srv agt envs dir=$WORK/$1-$2
  if [[ $v == A ]]; then
    bin=$A_BIN srv=("${A_SRV[@]}") agt=("${A_AGT[@]}") envs=("${A_ENV[@]}")
  else
    bin=$B_BIN srv=("${B_SRV[@]}") agt=("${B_AGT[@]}") envs=("${B_ENV[@]}")
  fi
  mkdir -p "$dir"
  timeout 20 "$bin" token new --name ab --tokens "$dir/tokens.toml" >"$dir/token" 2>/dev/null
  local mode=(--insecure-plain) verify=()
  if [[ $SCHEME == wss ]]; then mode=(--self-signed) verify=(--insecure-skip-verify); fi
  env RUST_LOG=warn "${envs[@]}" "$bin" server --listen "127.0.0.1:$CTRL" --tokens "$dir/tokens.toml" \
    --port-range "$PUB-$PGPUB" --public-bind 127.0.0.1 "${mode[@]}" "${srv[@]}" >"$dir/server.log" 2>&1 &
  local sp=$!
  PIDS+=("$sp")
  "${TOOL[@]}" wait-listen --timeout 15 "$CTRL"
  env RUST_LOG=warn "${envs[@]}" "$bin" agent --server "$SCHEME://127.0.0.1:$CTRL" --token-file "$dir/token" "${verify[@]}" \
    --expose "iperf=tcp://127.0.0.1:$IPERF@$PUB" --expose "echo=tcp://127.0.0.1:$ECHO@$EPUB" "${PG_EXPOSE[@]}" "${agt[@]}" >"$dir/agent.log" 2>&1 &
  local ap=$!
  PIDS+=("$ap")
  "${TOOL[@]}" wait-listen --timeout 15 "$PUB"
  "${TOOL[@]}" wait-listen --timeout 15 "$EPUB"
  sleep 1
  local dirns=(up down)
  [[ $BULK == 1 ]] || dirns=()
  for dirn in "${dirns[@]}"; do
    local flag=() s0 a0 s1 a1 su0 au0 su1 au1 sf0 af0 sf1 af1 out gbps bytes
    [[ $dirn == down ]] && flag=(-R)
    s0=$(ticks "$sp") a0=$(ticks "$ap") su0=$(uticks "$sp") au0=$(uticks "$ap") sf0=$(faults "$sp") af0=$(faults "$ap")
    timeout 120 iperf3 -c 127.0.0.1 -p "$PUB" -n "$BYTES" -P "$STREAMS" -J "${flag[@]}" >"$dir/$dirn.json"
    s1=$(ticks "$sp") a1=$(ticks "$ap") su1=$(uticks "$sp") au1=$(uticks "$ap") sf1=$(faults "$sp") af1=$(faults "$ap")
    out=$("${TOOL[@]}" iperf-parse "$dir/$dirn.json")
    read -r gbps bytes <<<"$out"
    awk -v v="$v" -v d="$dirn" -v g="$gbps" -v s=$((s1 - s0)) -v a=$((a1 - a0)) -v su=$((su1 - su0)) -v au=$((au1 - au0)) -v sf=$((sf1 - sf0)) -v af=$((af1 - af0)) -v hz="$CLK_TCK" -v b="$bytes" \
      'BEGIN { gb = b / 1e9; printf "%s %s gbps %s srv %.3f agt %.3f srv_user %.3f agt_user %.3f srv_flt %d agt_flt %d\n", v, d, g, (s / hz) / gb, (a / hz) / gb, (su / hz) / gb, (au / hz) / gb, sf / gb, af / gb }' >>"$WORK/results"
  done
  local rr_fields='import json, sys; d = json.load(sys.stdin); print(round(d["rps"]), "p50", round(d["p50_us"], 1), "p99", round(d["p99_us"], 1))'
  echo "$v rr $("${TOOL[@]}" rr "$EPUB" --count "$RR" --seconds 20 | python3 -c "$rr_fields")" >>"$WORK/results"
  if ((RR_CONNS > 1)); then
    echo "$v rr$RR_CONNS $("${TOOL[@]}" rr "$EPUB" --conns "$RR_CONNS" --count "$RR" --seconds 20 | python3 -c "$rr_fields")" >>"$WORK/results"
  fi
  if ((CPS > 0)); then
    echo "$v cps $("${TOOL[@]}" cps "$EPUB" --count 10000 --seconds 4 --workers "$CPS" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(round(d["cps"]), "errors", d["errors"])')" >>"$WORK/results"
  fi
  if [[ $PGB == 1 ]]; then
    pg_wait_ready "$PGPUB" 15
    PGCONNECT_TIMEOUT=5 timeout $((PGB_SECONDS + 30)) "$PGBENCH" -h 127.0.0.1 -p "$PGPUB" -U postgres -S -n \
      -c 8 -j 2 -T "$PGB_SECONDS" postgres >"$dir/pgbench.txt" 2>&1
    echo "$v pgbench $("${TOOL[@]}" pgbench-parse "$dir/pgbench.txt" | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["tps"]))')" >>"$WORK/results"
  fi
  # Peak resident memory of each process over the whole round (VmHWM, MB).
  echo "$v hwm $(hwm "$sp") $(hwm "$ap")" >>"$WORK/results"
  kill "$ap" "$sp"
  wait "$ap" "$sp" 2>/dev/null || true
}

for r in $(seq 1 "$ROUNDS"); do
  run A "$r"
  run B "$r"
  echo "round $r done" >&2
done

med() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "—" }'; }
# Medians per variant: Gbit/s, CPU-s/GB (all, then user time only) and minor faults per GB
# of server and agent, round trips, tps, peak RSS.
col() { awk -v v="$1" -v d="$2" -v f="$3" '$1 == v && $2 == d { print $f }' "$WORK/results" | med; }
printf '%-4s %-5s %-8s %-8s %-8s %-9s %-9s %-9s %-9s\n' var dir gbit/s srv_cpu agt_cpu srv_user agt_user srv_flt/GB agt_flt/GB
for v in A B; do
  for d in up down; do
    printf '%-4s %-5s %-8s %-8s %-8s %-9s %-9s %-9s %-9s\n' "$v" "$d" "$(col $v $d 4)" "$(col $v $d 6)" "$(col $v $d 8)" "$(col $v $d 10)" "$(col $v $d 12)" "$(col $v $d 14)" "$(col $v $d 16)"
  done
  printf '%-4s rr/s  %s  p50 %s  p99 %s\n' "$v" "$(col $v rr 3)" "$(col $v rr 5)" "$(col $v rr 7)"
  if ((RR_CONNS > 1)); then
    printf '%-4s rr/s, %s connections  %s  p50 %s  p99 %s\n' "$v" "$RR_CONNS" "$(col $v "rr$RR_CONNS" 3)" "$(col $v "rr$RR_CONNS" 5)" "$(col $v "rr$RR_CONNS" 7)"
  fi
  ((CPS == 0)) || printf '%-4s new connections/s, %s workers  %s\n' "$v" "$CPS" "$(col $v cps 3)"
  [[ $PGB != 1 ]] || printf '%-4s pgbench -S tps  %s\n' "$v" "$(col $v pgbench 3)"
  printf '%-4s peak RSS MB  server %s  agent %s\n' "$v" "$(col $v hwm 3)" "$(col $v hwm 4)"
done
echo "raw:" && cat "$WORK/results"
