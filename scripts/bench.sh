#!/usr/bin/env bash
# Loopback benchmark of whole binaries: no tunnel, Culvert over ws:// and wss://, and
# rathole over its plain TCP and its TLS transports, measured the same way in one run.
#
# Measures, per configuration:
#   - iperf3 TCP throughput, 1 stream and 8 streams (-P 8), both directions (-R);
#   - CPU seconds per GB moved, for the tunnel's server and agent/client processes
#     separately (utime+stime from /proc/PID/stat around each iperf3 run, divided by
#     the bytes iperf3 reports as received);
#   - 64-byte request/response round trips per second over one connection, p50/p99;
#   - new connections per second (connect, 1 byte, echo, close; several workers);
#   - RSS of server and agent: idle, holding 1,000 idle tunneled connections, and
#     peak (VmHWM, reset just before) during the bulk iperf3 runs.
# Each tunnel is started twice on fresh ports: once for the connection tests (RSS idle
# and with idle connections, round trips, new connections) and once for the bulk runs,
# so neither phase's retained memory shows in the other's RSS figures.
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
# target/bench/latest.md) with Culvert ÷ rathole ratio columns.
#
# Installs what it needs when missing: iperf3 (Debian package), rathole (pinned
# version, built by cargo into target/bench/), Culvert (cargo build --release).
# Everything runs on 127.0.0.1 only; every process started here is recorded by PID
# and stopped by PID on exit.
#
# Usage: scripts/bench.sh
# Environment (all optional):
#   BENCH_ONLY=direct,culvert-ws,culvert-wss,rathole-tcp,rathole-tls,direct-udp,culvert-ws-udp,culvert-wss-udp,rathole-udp,rathole-tls-udp
#                            columns to run (default: all); `tcp` and `udp` stand for
#                            all TCP or all UDP columns, e.g. BENCH_ONLY=udp
#   BENCH_SECONDS=5          length of each iperf3 run, and time cap of each load loop
#   BENCH_REPEAT=1           iperf3 TCP runs per cell; the table shows their medians
#                            (throughput and each CPU-s/GB separately)
#   BENCH_RR_COUNT=20000     round trips at most in the request/response test
#   BENCH_CPS_COUNT=10000    connections at most in the new-connections test
#   BENCH_CPS_WORKERS=8      concurrent workers in the new-connections test
#   BENCH_IDLE_CONNS=1000    idle tunneled connections held for the RSS test
#   BENCH_UDP_RATES=200M,1G  offered iperf3 UDP rates (-b); CPU-s/GB is shown for the last
#   BENCH_UDP_LEN=1200       UDP datagram payload bytes (iperf3 -l)
#   BENCH_UDP_SECONDS        length of each iperf3 UDP run (default BENCH_SECONDS)
#   BENCH_UDP_WINDOW=2M      iperf3 -w: buffers of iperf3's own sockets, so that its default
#                            208 KiB receive buffer is not what drops datagrams (empty:
#                            iperf3's default)
#   BENCH_UDP_RR_COUNT=20000 UDP round trips at most (time cap BENCH_SECONDS)
#   BENCH_UDP_RR_TIMEOUT_MS=500  wait for each UDP echo; a timeout counts as lost
#   BENCH_MAX_SECONDS=600    limit for the measuring phase (builds not included);
#                            what does not fit is reported as skipped
#   BENCH_BUILD_TIMEOUT=1200 limit for each build/install step
#   BENCH_NO_BUILD=1         use target/release/culvert as it is (no cargo build)
#   BENCH_TUNNEL_LOG=warn    RUST_LOG given to the tunnel processes
#   CULVERT_BIN=path         Culvert binary (default target/release/culvert)
#   BENCH_CULVERT_SERVER_ARGS, BENCH_CULVERT_AGENT_ARGS
#                            extra flags for `culvert server` / `culvert agent` (e.g. "--pool 2")
#   RATHOLE_BIN=path         rathole binary (default: the pinned one, installed on demand)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TCP_COLUMNS="direct,culvert-ws,culvert-wss,rathole-tcp,rathole-tls"
UDP_COLUMNS="direct-udp,culvert-ws-udp,culvert-wss-udp,rathole-udp,rathole-tls-udp"
ALL_COLUMNS="$TCP_COLUMNS,$UDP_COLUMNS"
# settings given in the environment, repeated in the report's "Run:" line
RUN_VARS=""
for v in BENCH_ONLY BENCH_REPEAT BENCH_UDP_RATES BENCH_UDP_LEN BENCH_UDP_SECONDS BENCH_UDP_WINDOW \
  BENCH_UDP_RR_COUNT BENCH_UDP_RR_TIMEOUT_MS BENCH_RR_COUNT BENCH_CPS_COUNT BENCH_CPS_WORKERS \
  BENCH_IDLE_CONNS; do
  [[ -z ${!v+x} ]] || RUN_VARS+="$v=${!v} "
done
BENCH_ONLY=${BENCH_ONLY:-$ALL_COLUMNS}
BENCH_ONLY=$(printf ',%s,' "$BENCH_ONLY" | sed -e "s/,tcp,/,$TCP_COLUMNS,/; s/,udp,/,$UDP_COLUMNS,/; s/^,//; s/,$//")
BENCH_SECONDS=${BENCH_SECONDS:-5}
BENCH_REPEAT=${BENCH_REPEAT:-1}
BENCH_RR_COUNT=${BENCH_RR_COUNT:-20000}
BENCH_CPS_COUNT=${BENCH_CPS_COUNT:-10000}
BENCH_CPS_WORKERS=${BENCH_CPS_WORKERS:-8}
BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-600}
BENCH_BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-1200}
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
CULVERT_BIN=${CULVERT_BIN:-$ROOT/target/release/culvert}

OUT=$ROOT/target/bench
RUN=$OUT/run   # configs, certificates, logs and raw results of the latest run
TOOL=(python3 "$ROOT/scripts/bench/benchtool.py")

for v in BENCH_SECONDS BENCH_RR_COUNT BENCH_CPS_COUNT BENCH_CPS_WORKERS BENCH_IDLE_CONNS \
  BENCH_MAX_SECONDS BENCH_BUILD_TIMEOUT BENCH_UDP_LEN BENCH_UDP_SECONDS BENCH_UDP_RR_COUNT \
  BENCH_UDP_RR_TIMEOUT_MS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number" >&2; exit 2; }
done
IFS=',' read -r -a UDP_RATES <<<"$BENCH_UDP_RATES"
for r in "${UDP_RATES[@]}"; do
  [[ $r =~ ^[0-9]+[KMG]?$ ]] || { echo "bench: BENCH_UDP_RATES entries look like 200M or 1G, not '$r'" >&2; exit 2; }
done
[[ -z $BENCH_UDP_WINDOW || $BENCH_UDP_WINDOW =~ ^[0-9]+[KM]?$ ]] ||
  { echo "bench: BENCH_UDP_WINDOW looks like 2M, not '$BENCH_UDP_WINDOW'" >&2; exit 2; }
IFS=',' read -r -a COLS <<<"$BENCH_ONLY"
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
is_udp_col() { [[ $1 == *-udp ]]; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

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
cleanup() {
  local p
  trap - EXIT INT TERM
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
  printf 'cps\tnew connections/s, %s workers\tup\n' "$BENCH_CPS_WORKERS"
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
if wants_any rathole-tls,rathole-tls-udp && ! command -v openssl >/dev/null; then apt_install openssl; fi

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
if wants_any rathole-tcp,rathole-tls,rathole-udp,rathole-tls-udp; then
  if [[ ! -x $RATHOLE_BIN ]]; then
    # rathole's tls feature links OpenSSL through native-tls: it needs its headers.
    if ! pkg-config --exists openssl 2>/dev/null; then apt_install pkg-config libssl-dev || true; fi
    install_rathole || true
  fi
  if [[ ! -x $RATHOLE_BIN ]]; then
    RATHOLE_NA="rathole install failed (target/bench/run/logs/rathole-install.log)"
  fi
fi

CULVERT_NA=
if wants_any culvert-ws,culvert-wss,culvert-ws-udp,culvert-wss-udp; then
  if [[ $BENCH_NO_BUILD != 1 ]]; then
    log "building Culvert (cargo build --release -p culvert)"
    if ! timeout "$BENCH_BUILD_TIMEOUT" cargo build --release -p culvert >"$RUN/logs/culvert-build.log" 2>&1; then
      CULVERT_NA="build failed: $(grep -m1 -E '^error' "$RUN/logs/culvert-build.log" | cut -c1-120 || true)"
    fi
  fi
  if [[ -z $CULVERT_NA && ! -x $CULVERT_BIN ]]; then
    CULVERT_NA="binary missing (${CULVERT_BIN#"$ROOT"/})"
  fi
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
time_left() { echo $((DEADLINE - $(date +%s))); }
have_time() { (($(time_left) > $1)); }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < BENCH_IDLE_CONNS * 2 + 256)); then
  note "open-file limit $(ulimit -n) is low for $BENCH_IDLE_CONNS idle connections"
fi

# Ports (free for both TCP and UDP): BASE is the TCP echo backend, BASE+1 the UDP echo
# backend, and column i uses BASE+2+12i .. BASE+13+12i.
BASE=$("${TOOL[@]}" freeblock 128)
ECHO_PORT=$BASE
UECHO_PORT=$((BASE + 1))
start_bg "$RUN/logs/echo-backend.log" "${TOOL[@]}" echo-server "$ECHO_PORT" --max-seconds $((BENCH_MAX_SECONDS + 120))
"${TOOL[@]}" wait-listen --timeout 10 "$ECHO_PORT"
if wants_any "$UDP_COLUMNS"; then
  start_bg "$RUN/logs/udp-echo-backend.log" "${TOOL[@]}" udp-echo-server "$UECHO_PORT" --max-seconds $((BENCH_MAX_SECONDS + 120))
  "${TOOL[@]}" wait-listen --udp --timeout 10 "$UECHO_PORT"
fi
log "ports from $BASE; echo backends on $ECHO_PORT (TCP) and $UECHO_PORT (UDP)"

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
SRV_LOG=
AGT_LOG=
SETUP_ERR=
PHASE=
last_line() { grep -v '^\s*$' "$1" 2>/dev/null | tail -n1 | cut -c1-160 || true; }

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
    local fp=""
    for _ in $(seq 1 50); do
      fp=$("${TOOL[@]}" fingerprint "$SRV_LOG" 2>/dev/null || true)
      [[ -n $fp ]] && break
      sleep 0.1
    done
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
  fi
  RUST_LOG=$BENCH_TUNNEL_LOG start_bg "$AGT_LOG" "$CULVERT_BIN" agent \
    --server "$scheme://127.0.0.1:$ctrl" --token-file "$dir/agent.token" \
    "${expose[@]}" "${verify[@]}" "${CULVERT_AGENT_EXTRA[@]}"
  AGT_PID=$LAST_PID
}

iperf_once() { # iperf_once COL VARIANT PORT N: one run; sets ONCE_GBPS, ONCE_CPUS, ONCE_CPUA
  local col=$1 v=$2 port=$3 json=$RUN/$1/iperf-$2-$4.json
  local s0=0 a0=0 s1=0 a1=0 out bytes
  if [[ -n $SRV_PID ]]; then s0=$(cpu_ticks "$SRV_PID") a0=$(cpu_ticks "$AGT_PID"); fi
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
  if [[ -n $SRV_PID ]]; then s1=$(cpu_ticks "$SRV_PID") a1=$(cpu_ticks "$AGT_PID"); fi
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

iperf_run() { # iperf_run COL VARIANT PORT: BENCH_REPEAT runs; their medians go in the table
  local col=$1 v=$2 port=$3 i gbps=() cpus=() cpua=()
  for ((i = 1; i <= BENCH_REPEAT; i++)); do
    if ! iperf_once "$col" "$v" "$port" "$i"; then
      put "$col" "gbps_$v" "fail"
      return
    fi
    gbps+=("$ONCE_GBPS") cpus+=("$ONCE_CPUS") cpua+=("$ONCE_CPUA")
    ((i == BENCH_REPEAT)) || sleep 0.5
  done
  put "$col" "gbps_$v" "$(printf '%s\n' "${gbps[@]}" | median)"
  put "$col" "cpus_$v" "$(printf '%s\n' "${cpus[@]}" | grep -v '—' | median)"
  put "$col" "cpua_$v" "$(printf '%s\n' "${cpua[@]}" | grep -v '—' | median)"
  log "$col ${VARGS[$v]:-1 stream}: ${gbps[*]} Gbit/s"
}

tunnel_alive() { [[ -z $SRV_PID ]] || { alive "$SRV_PID" && alive "$AGT_PID"; }; }

# start_tunnel COL OFFSET: starts the tunnel for COL on fresh ports from OFFSET (control
# port OFFSET+1, public ports OFFSET+2..OFFSET+5) and waits until an echo (a datagram for
# UDP columns) goes through it; sets PI/PE (public iperf3/echo ports), SRV_PID/AGT_PID,
# or SETUP_ERR.
start_tunnel() {
  local col=$1 o=$2
  SRV_PID='' AGT_PID='' SRV_LOG='' AGT_LOG='' SETUP_ERR=''
  PI=$((o + 2)) PE=$((o + 3))
  case $col in
  direct) PI=$IB PE=$ECHO_PORT ;;
  direct-udp) PI=$IB PE=$UECHO_PORT ;;
  culvert-*) setup_culvert "$col" "$o" ;;
  rathole-*) setup_rathole "$col" "$o" ;;
  esac
  if [[ -z $SETUP_ERR && -n $SRV_PID ]]; then
    local ready=0
    if is_udp_col "$col"; then
      # TCP control port listening, both UDP ports bound, and a datagram echoed back.
      "${TOOL[@]}" wait-listen --timeout 20 "$PI" 2>/dev/null &&
        "${TOOL[@]}" wait-listen --udp --timeout 20 "$PI" "$PE" 2>/dev/null &&
        "${TOOL[@]}" wait-udp-echo --timeout 15 "$PE" 2>/dev/null && ready=1
    else
      "${TOOL[@]}" wait-listen --timeout 20 "$PI" "$PE" 2>/dev/null &&
        "${TOOL[@]}" wait-echo --timeout 15 "$PE" 2>/dev/null && ready=1
    fi
    if ((!ready)); then
      if ! alive "$SRV_PID"; then
        SETUP_ERR="server exited: $(last_line "$SRV_LOG")"
      elif ! alive "$AGT_PID"; then
        SETUP_ERR="agent exited: $(last_line "$AGT_LOG")"
      else
        SETUP_ERR="tunnel not ready in time (logs in target/bench/run/logs/$col-$PHASE-*)"
      fi
    fi
  fi
  [[ -z $SETUP_ERR ]]
}
stop_tunnel() {
  [[ -z $AGT_PID ]] || stop_pid "$AGT_PID"
  [[ -z $SRV_PID ]] || stop_pid "$SRV_PID"
  AGT_PID='' SRV_PID=''
}
na_column() { # na_column COL REASON
  local short=${2//|//}
  ((${#short} <= 90)) || short="${short:0:87}..."
  put "$1" status "n/a: $short"
  note "$1: n/a — ${2//|//}"
}

# run_column COL INDEX. The tunnel runs twice, on fresh processes: once for the
# connection-shaped tests (idle RSS, idle connections, round trips, new connections),
# once for the bulk iperf3 runs, so that neither phase's retained memory shows in the
# other's RSS figures.
run_column() {
  local col=$1 o=$((BASE + 2 + $2 * 12)) v a b c d r
  IB=$o
  log "== $col"
  SETUP_ERR=''
  case $col in
  culvert-*) SETUP_ERR=$CULVERT_NA ;;
  rathole-*) SETUP_ERR=$RATHOLE_NA ;;
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
    put "$col" rss_idle_s "$(mb "$(status_kb "$SRV_PID" VmRSS)")"
    put "$col" rss_idle_a "$(mb "$(status_kb "$AGT_PID" VmRSS)")"
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
      put "$col" rss_conn_s "$(mb "$(status_kb "$SRV_PID" VmRSS)")"
      put "$col" rss_conn_a "$(mb "$(status_kb "$AGT_PID" VmRSS)")"
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

  # --- 64-byte request/response
  if have_time 20 && tunnel_alive; then
    local rr=$RUN/$col/rr.json
    mkdir -p "$RUN/$col"
    if timeout $((BENCH_SECONDS + 20)) "${TOOL[@]}" rr "$PE" --count "$BENCH_RR_COUNT" --seconds "$BENCH_SECONDS" \
      >"$rr" 2>"$RUN/logs/$col-rr.err" && r=$("${TOOL[@]}" json-get "$rr" rps p50_us p99_us); then
      read -r a b c <<<"$r"
      put "$col" rr_rps "$a"
      put "$col" rr_p50 "$b"
      put "$col" rr_p99 "$c"
      log "$col round trips: $a/s p50 ${b}µs p99 ${c}µs"
    else
      put "$col" rr_rps "fail"
      note "$col: round-trip test failed: $(last_line "$RUN/logs/$col-rr.err")"
    fi
  fi

  # --- new connections per second
  if have_time 20 && tunnel_alive; then
    local cps=$RUN/$col/cps.json
    if timeout $((BENCH_SECONDS + 30)) "${TOOL[@]}" cps "$PE" --count "$BENCH_CPS_COUNT" --seconds "$BENCH_SECONDS" \
      --workers "$BENCH_CPS_WORKERS" >"$cps" 2>"$RUN/logs/$col-cps.err" &&
      r=$("${TOOL[@]}" json-get "$cps" cps ok errors last_error); then
      read -r a b c d <<<"$r"
      put "$col" cps "$a"
      log "$col new connections: $a/s ($b ok, $c errors)"
      ((c == 0)) || note "$col: $c of $((b + c)) new connections failed ($d)"
    else
      put "$col" cps "fail"
      note "$col: new-connections test failed: $(last_line "$RUN/logs/$col-cps.err")"
    fi
    sleep 1
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
    if ! { echo 5 >"/proc/$SRV_PID/clear_refs" && echo 5 >"/proc/$AGT_PID/clear_refs"; } 2>/dev/null; then
      note "$col: could not reset VmHWM; peak RSS covers the whole process life"
    fi
  fi
  for v in "${VARIANTS[@]}"; do
    if ! have_time $(((BENCH_SECONDS + 10) * BENCH_REPEAT)); then
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
    put "$col" rss_peak_s "$(mb "$(status_kb "$SRV_PID" VmHWM)")"
    put "$col" rss_peak_a "$(mb "$(status_kb "$AGT_PID" VmHWM)")"
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
  if [[ -n $SRV_PID ]]; then s0=$(cpu_ticks "$SRV_PID") a0=$(cpu_ticks "$AGT_PID"); fi
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
  if [[ -n $SRV_PID ]]; then s1=$(cpu_ticks "$SRV_PID") a1=$(cpu_ticks "$AGT_PID"); fi
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
  local col=$1 o=$((BASE + 2 + $2 * 12)) v a b c d e f r
  IB=$o
  log "== $col"
  SETUP_ERR=''
  case $col in
  culvert-*) SETUP_ERR=$CULVERT_NA ;;
  rathole-*) SETUP_ERR=$RATHOLE_NA ;;
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
    if ! { echo 5 >"/proc/$SRV_PID/clear_refs" && echo 5 >"/proc/$AGT_PID/clear_refs"; } 2>/dev/null; then
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
    put "$col" urss_peak_a "$(mb "$(status_kb "$AGT_PID" VmHWM)")"
  elif [[ -n $SRV_PID ]]; then
    note "$col: a tunnel process exited during the UDP runs (logs in target/bench/run/logs/$col-udp-*)"
  else
    put "$col" urss_peak_s "—"
    put "$col" urss_peak_a "—"
  fi
  stop_tunnel
  stop_iperf
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
idx=0
IFS=',' read -r -a ALL_COLS <<<"$ALL_COLUMNS"
for col in "${ALL_COLS[@]}"; do
  if wants "$col"; then
    mkdir -p "$RUN/$col"
    if is_udp_col "$col"; then run_udp_column "$col" "$idx"; else run_column "$col" "$idx"; fi
  else
    put "$col" status "not run (BENCH_ONLY)"
  fi
  idx=$((idx + 1))
done

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
  echo "Machine: $(nproc) cores, $(uname -sr); iperf3 $(iperf3 --version 2>/dev/null | head -n1 | awk '{print $2}');" \
    "rathole $RATHOLE_VERSION (features $RATHOLE_FEATURES); Culvert at $culvert_rev;" \
    "load average before measuring: $LOADAVG (other work on the machine skews throughput more than CPU-s/GB)."
  if wants_any "$TCP_COLUMNS"; then
    repeat=""
    ((BENCH_REPEAT == 1)) || repeat=" (each cell the median of $BENCH_REPEAT runs, throughput and CPU-s/GB taken separately)"
    echo "Each iperf3 run ${BENCH_SECONDS} s$repeat; CPU-s/GB = (utime+stime delta of the process) ÷ GB received by iperf3;" \
      "round trips: ≤ $BENCH_RR_COUNT sequential 64-byte echoes or ${BENCH_SECONDS} s; new connections:" \
      "≤ $BENCH_CPS_COUNT or ${BENCH_SECONDS} s; peak RSS is the VmHWM of the tunnel processes over the bulk runs, on a fresh start (the connection tests run on another)." \
      "Ratios are Culvert ÷ rathole: above 1 is better for rows marked higher-is-better, below 1 for lower-is-better."
    echo
    "${TOOL[@]}" table "$METRICS" "$RES"
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
