#!/usr/bin/env bash
# One iperf3 UDP run through a Culvert tunnel on loopback, with the kernel's UDP receive
# buffer drops, the server's datagram-queue drops and its full-socket reply drops next to
# iperf3's loss: a quick way to see where datagrams are lost, and to compare two binaries
# run after run.
#
# Usage: scripts/udp-loss.sh [RATE] [-R]      e.g. scripts/udp-loss.sh 1G -R
# Environment (optional):
#   CULVERT_BIN=path   binary to run (default target/profiling/culvert, built if missing)
#   WSS=1              wss:// with a self-signed certificate instead of ws://
#   UDP_SECONDS=4      iperf3 -t
# Needs iperf3 (scripts/bench.sh installs it). Everything listens on 127.0.0.1; every
# process started here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1G}
DIR=${2:-}
BIN=${CULVERT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/profiling/culvert}
[[ -x $BIN ]] || cargo build --profile profiling --locked -p culvert >&2
command -v iperf3 >/dev/null || { echo "iperf3 missing: apt-get install iperf3 (or run scripts/bench.sh once)" >&2; exit 1; }

source scripts/lib/procs.sh
procs_init culvert-udp-loss
rcvbuf_errors() { awk '/^Udp:/ && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp; }

if [[ -n ${WSS:-} ]]; then SMODE=--self-signed AMODE=--insecure-skip-verify SCHEME=wss
else SMODE=--insecure-plain AMODE= SCHEME=ws; fi
IPERF=$(free_port) CTRL=$(free_port) ADMIN=$(free_port)
PUB=$(( (RANDOM % 400) + 29000 ))
"$BIN" token new --name bench --tokens "$WORK/t.toml" >"$WORK/a.token" 2>/dev/null
iperf3 -s -p "$IPERF" >"$WORK/iperf.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn "$BIN" server $SMODE --listen "127.0.0.1:$CTRL" --tokens "$WORK/t.toml" \
    --port-range "$PUB-$((PUB + 3))" --udp-port-range "$PUB-$((PUB + 3))" --public-bind 127.0.0.1 \
    --admin "127.0.0.1:$ADMIN" >"$WORK/server.log" 2>&1 & PIDS+=($!)
sleep 0.5
# iperf3's TCP control connection and its UDP data share the public port number.
# shellcheck disable=SC2086
RUST_LOG=warn "$BIN" agent $AMODE --server "$SCHEME://127.0.0.1:$CTRL" --token-file "$WORK/a.token" \
    --expose "iperf=tcp://127.0.0.1:$IPERF@$PUB" --expose "iperfudp=udp://127.0.0.1:$IPERF@$PUB" \
    >"$WORK/agent.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do grep -q "public_port=$PUB" "$WORK/agent.log" 2>/dev/null && break; sleep 0.1; done
r0=$(rcvbuf_errors)
# shellcheck disable=SC2086
line=$(iperf3 -c 127.0.0.1 -p "$PUB" -u -l 1200 -w 2M -b "$RATE" -t "${UDP_SECONDS:-4}" $DIR 2>&1 | grep receiver || true)
r1=$(rcvbuf_errors)
dropped=$(python3 - "$ADMIN" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
drops = {d: next((l.split()[-1] for l in body.splitlines()
                  if l.startswith(f'culvert_datagrams_dropped_total{{direction="{d}"}}')), "?")
         for d in ("send", "recv")}
full = sum(float(l.split()[-1]) for l in body.splitlines()
           if l.startswith("culvert_udp_dropped_total{") and 'reason="socket_full"' in l)
print(f"{drops['send']}/{drops['recv']} server_socket_full_drops={int(full)}")
PY
)
echo "$(basename "$BIN") ${SCHEME} -b $RATE ${DIR:-(client->service)}: $(awk '{print $7, $8, $12, $13}' <<<"$line") kernel_rcvbuf_drops=$((r1 - r0)) server_queue_drops(send/recv)=$dropped"
