#!/usr/bin/env bash
# RSS of a ws server and agent on loopback, idle and then holding N idle tunneled
# connections, split into anonymous and file-backed pages (the binary's own pages are most
# of an idle process's RSS). The same hold as scripts/bench.sh's RSS rows, without the rest.
#
#   scripts/idle-rss.sh [BIN] [N]      # BIN: target/profiling/culvert, N: 1000
#
# Prints: "idle S A conns S A" in MB, each as total(aANON,fFILE). Everything on 127.0.0.1,
# every process stopped by PID, the hold bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/profiling/culvert}
N=${2:-1000}
TOOL=(python3 scripts/bench/benchtool.py)
. scripts/lib/procs.sh
. scripts/lib/ws-tunnel.sh
procs_init culvert-idle-rss
W=$WORK
BASE=$("${TOOL[@]}" freeblock 4)
CTRL=$BASE ECHO=$((BASE + 1)) PUB=$((BASE + 2))
"${TOOL[@]}" echo-server --max-seconds 300 "$ECHO" >/dev/null 2>&1 &
PIDS+=($!)
"${TOOL[@]}" wait-listen --timeout 15 "$ECHO"
start_ws_tunnel "$BIN" "$W" "$CTRL" "$PUB" --expose "echo=tcp://127.0.0.1:$ECHO@$PUB"
sp=$SRV_PID ap=$AGT_PID
rss() {
  awk '/^VmRSS/ { r = $2 } /^RssAnon/ { a = $2 } /^RssFile/ { f = $2 }
    END { printf "%.1f(a%.1f,f%.1f)", r / 1024, a / 1024, f / 1024 }' "/proc/$1/status"
}
idle="$(rss "$sp") $(rss "$ap")"
"${TOOL[@]}" hold "$PUB" "$N" --open-seconds 40 --max-seconds 60 >"$W/hold.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 450); do grep -q '^READY' "$W/hold.log" && break; sleep 0.1; done
sleep 1
echo "idle $idle conns $(rss "$sp") $(rss "$ap") ($(head -n1 "$W/hold.log"))"
