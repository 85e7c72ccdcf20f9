#!/usr/bin/env bash
# Requests/s and latency through the HTTP ingress (issue 15) against the same backend reached
# directly: wrk, keep-alive, a small GET, each target measured ROUNDS times, interleaved; for
# the ingress also the server's and the agent's CPU per request (/proc/PID/stat).
#
#   scripts/http-bench.sh            # uses target/release/culvert (cargo build --release -p culvert)
#   CULVERT_BIN=... ROUNDS=3 SECS=10 CONNS=16 scripts/http-bench.sh
#
# Everything runs on 127.0.0.1 and stops by itself. The backend is a small asyncio HTTP/1.1
# keep-alive responder (python3), so the backend costs the same in both columns.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CULVERT_BIN:-target/release/culvert}"
rounds="${ROUNDS:-3}"; secs="${SECS:-10}"; conns="${CONNS:-16}"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin not found: cargo build --release -p culvert" >&2; exit 1; }
work="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
backend=$(port); tunnel=$(port); http=$(port)
python3 - "$backend" <<'PY' &
import asyncio, sys
body = b'{"ok":true}'
resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
async def handle(r, w):
    buf = b""
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            buf += data
            n = buf.count(b"\r\n\r\n")
            if n:
                buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
                w.write(resp * n)
                await w.drain()
    except ConnectionError:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=512)
    async with s:
        await s.serve_forever()
asyncio.run(main())
PY
pids+=($!)
"$bin" token new --name agent --tenant acme --tokens "$work/tokens.toml" > "$work/agent.token"
"$bin" token new --name caller --role http --access acme/api --tokens "$work/tokens.toml" > "$work/caller.token"
"$bin" server --listen "127.0.0.1:$tunnel" --tokens "$work/tokens.toml" --insecure-plain \
  --http-listen "127.0.0.1:$http" > "$work/server.log" 2>&1 &
pids+=($!)
sleep 1
"$bin" agent --server "ws://127.0.0.1:$tunnel" --token-file "$work/agent.token" \
  --expose "api=http://127.0.0.1:$backend" > "$work/agent.log" 2>&1 &
pids+=($!)
auth="Authorization: Bearer $(cat "$work/caller.token")"
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "http://127.0.0.1:$http/t/acme/api/")" = 200 ] && break
  sleep 0.2
done
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; } # utime + stime, clock ticks
run() { # label url [header]
  local out s0 a0 s1 a1
  s0=$(ticks "${pids[1]}"); a0=$(ticks "${pids[2]}")
  if [ $# -eq 3 ]; then out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "$3" "$2"); else out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency "$2"); fi
  s1=$(ticks "${pids[1]}"); a1=$(ticks "${pids[2]}")
  local rps p50 p99 reqs cpu=""
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  if [ $# -eq 3 ] && [ "${reqs:-0}" -gt 0 ]; then
    # CPU of the server and the agent per request through them, in µs.
    cpu=$(awk -v s=$((s1 - s0)) -v a=$((a1 - a0)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf " server_cpu=%.1fus/req agent_cpu=%.1fus/req", s * 1e6 / hz / n, a * 1e6 / hz / n }')
  fi
  echo "$1 req/s=$rps p50=$p50 p99=$p99$cpu"
}
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c$conns -d${secs}s, GET, keep-alive"
for r in $(seq 1 "$rounds"); do
  run "round $r direct " "http://127.0.0.1:$backend/"
  run "round $r ingress" "http://127.0.0.1:$http/t/acme/api/" "$auth"
done
