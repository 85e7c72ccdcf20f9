#!/usr/bin/env bash
# The cluster row of the benchmarks: new connections/s and round-trip latency (and, for the
# record, throughput) through haproxy in front of three cluster servers sharing a
# PostgreSQL registry, through one cluster server that forwards every connection to the
# server holding the agent, and through one server without a cluster, all measured with
# `culvert bench --target … --json` against an agent's built-in bench service.
#
#   scripts/cluster-bench.sh      # uses target/profiling/culvert (cargo build --profile profiling -p culvert)
#   CULVERT_BIN=... ROUNDS=3 SECS=2 scripts/cluster-bench.sh
#
# On this 2-core machine the point is the cost of the registry and of the forwarding hop,
# not scaling: the three servers, haproxy, PostgreSQL, the agents and the load generator
# share the same two cores. Each target is measured ROUNDS times, interleaved; the table
# shows medians. Needs PostgreSQL (pg_config --bindir) and haproxy (scripts/test.sh
# installs both). Everything runs on loopback and stops by itself; the processes started
# here are stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${CULVERT_BIN:-target/profiling/culvert}")"
rounds="${ROUNDS:-3}"; secs="${SECS:-2}"
[ -x "$bin" ] || { echo "$bin not found: cargo build --profile profiling -p culvert" >&2; exit 1; }
haproxy="$(command -v haproxy || echo /usr/sbin/haproxy)"
[ -x "$haproxy" ] || { echo "haproxy not found: apt-get install haproxy" >&2; exit 1; }
pgbin="$(pg_config --bindir)"
work="$(mktemp -d /tmp/culvert-cluster-bench.XXXXXX)"; pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${pgpid:-}" ] && kill -INT "$pgpid" 2>/dev/null && sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
wait_for() { # wait_for FILE PATTERN: the first line of FILE matching PATTERN, within 60 s
  for _ in $(seq 600); do grep -m1 -E "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for /$2/ in $1:" >&2; tail -20 "$1" >&2; exit 1
}
public_port() { wait_for "$1" "service=$2 .*public_port=" | sed -E 's/.*public_port=([0-9]+).*/\1/'; }

# PostgreSQL, as the postgres user when run as root.
[ "$(id -u)" = 0 ] && chown postgres:postgres "$work"
as_pg "$pgbin/initdb" -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
pgport=$(port)
as_pg "$pgbin/postgres" -D "$work/pg" -p "$pgport" -k "$work/pg" -c listen_addresses=127.0.0.1 -c fsync=off >"$work/pg.log" 2>&1 &
pgpid=$!
wait_for "$work/pg.log" "ready to accept connections" >/dev/null
url="postgres://postgres@127.0.0.1:$pgport/postgres"

export RUST_LOG=warn,culvert=info,culvert_agent=info,culvert_server=info
range_base=$(( 21000 + RANDOM % 200 * 10 ))

# One server without a cluster, and its agent.
"$bin" token new --name solo --tokens "$work/solo.toml" >"$work/solo.token"
solo=$(port)
"$bin" server --listen "127.0.0.1:$solo" --insecure-plain --tokens "$work/solo.toml" \
  --port-range "$range_base-$((range_base + 4))" --public-bind 127.0.0.1 >"$work/solo.log" 2>&1 & pids+=($!)
wait_for "$work/solo.log" "tunnel endpoint ready" >/dev/null
"$bin" agent --server "ws://127.0.0.1:$solo" --token-file "$work/solo.token" --bench-service bench \
  >"$work/solo-agent.log" 2>&1 & pids+=($!)
solo_port=$(public_port "$work/solo-agent.log" bench)

# Three cluster servers, public ports on 127.0.0.2-4.
crange="$((range_base + 5))-$((range_base + 9))"
listens=()
for i in 1 2 3; do
  l=$(port); listens+=("$l")
  "$bin" server --listen "127.0.0.1:$l" --insecure-plain --port-range "$crange" --public-bind "127.0.0.$((i + 1))" \
    --cluster "$url" --cluster-id "s$i" >"$work/s$i.log" 2>&1 & pids+=($!)
  wait_for "$work/s$i.log" "tunnel endpoint ready" >/dev/null
done
"$bin" token new --name spread --cluster "$url" >"$work/spread.token"
"$bin" token new --name one --cluster "$url" >"$work/one.token"
# An agent on all three servers (pool 3: one connection each).
"$bin" agent --server "ws://127.0.0.1:${listens[0]}" --server "ws://127.0.0.1:${listens[1]}" \
  --server "ws://127.0.0.1:${listens[2]}" --pool 3 --token-file "$work/spread.token" --bench-service bench \
  >"$work/spread-agent.log" 2>&1 & pids+=($!)
spread_port=$(public_port "$work/spread-agent.log" bench)
# An agent on s1 only, reached through s2: every connection takes the forwarding hop.
"$bin" agent --server "ws://127.0.0.1:${listens[0]}" --token-file "$work/one.token" --bench-service fwd \
  >"$work/one-agent.log" 2>&1 & pids+=($!)
fwd_port=$(public_port "$work/one-agent.log" fwd)

front=$(port)
cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 2000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend culvert
  bind 127.0.0.1:$front
  default_backend servers
backend servers
  balance roundrobin
  server s1 127.0.0.2:$spread_port
  server s2 127.0.0.3:$spread_port
  server s3 127.0.0.4:$spread_port
EOF
"$haproxy" -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & pids+=($!)

# Every target must answer before measuring (the servers learn of a service within a
# heartbeat).
reach() {
  for _ in $(seq 300); do
    python3 - "$1" "$2" <<'PY' && return 0
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
    sleep 0.2
  done
  echo "$1:$2 never answered" >&2; tail -5 "$work"/*.log >&2; exit 1
}
reach 127.0.0.1 "$solo_port"; reach 127.0.0.1 "$front"; reach 127.0.0.3 "$fwd_port"
for ip in 127.0.0.2 127.0.0.3 127.0.0.4; do reach "$ip" "$spread_port"; done
sleep 2

targets=("one server, no cluster=127.0.0.1:$solo_port" "cluster, haproxy over 3 servers=127.0.0.1:$front"
         "cluster, forwarded (agent on s1, client to s2)=127.0.0.3:$fwd_port")
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    name="${t%%=*}"; addr="${t#*=}"
    echo "round $r: $name ($addr)" >&2
    "$bin" bench --target "$addr" --no-direct --duration "$secs" --json >"$work/r$r-$(echo "$name" | tr -c 'a-z0-9' _).json"
  done
done

python3 - "$work" "$rounds" "${targets[@]}" <<'PY'
import json, statistics, sys, re
work, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = [("new connections/s, 8 clients", lambda v: v["tunnel"]["connections"]["per_s"], "{:,.0f}"),
        ("round trips/s, 1 connection", lambda v: v["tunnel"]["latency"]["count"] / v["tunnel"]["latency"]["secs"], "{:,.0f}"),
        ("round trip p50 µs", lambda v: v["tunnel"]["latency"]["p50_us"], "{:,.0f}"),
        ("round trip p99 µs", lambda v: v["tunnel"]["latency"]["p99_us"], "{:,.0f}"),
        ("upload MiB/s, 1 stream", lambda v: v["tunnel"]["upload_1"]["mib_per_s"], "{:,.0f}"),
        ("download MiB/s, 1 stream", lambda v: v["tunnel"]["download_1"]["mib_per_s"], "{:,.0f}")]
names = [t.split("=", 1)[0] for t in targets]
print("| metric (median of %d) | %s |" % (rounds, " | ".join(names)))
print("|---|" + "---:|" * len(names))
for label, get, fmt in rows:
    cells = []
    for n in names:
        # The file names the shell made: the name with every other character than a-z 0-9
        # as _ (echo's newline included).
        stem = re.sub(r"[^a-z0-9]", "_", n + "\n")
        vals = []
        for r in range(1, rounds + 1):
            with open(f"{work}/r{r}-{stem}.json") as f:
                vals.append(get(json.load(f)))
        cells.append(fmt.format(statistics.median(vals)))
    print("| %s | %s |" % (label, " | ".join(cells)))
PY
