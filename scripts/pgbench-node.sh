#!/usr/bin/env bash
# pgbench through node-to-node tunnels vs direct, on loopback, profiling build (release
# with line tables).
#
# Starts a throwaway PostgreSQL (as the postgres user when run as root), two
# `culvert node` processes with TLS (certificates from `culvert cert new`), node B next
# to PostgreSQL (allow-listing it) and node A with a forward tunnel to it, plus a
# reverse tunnel from B exposing it on a port of A. Then runs the same pgbench against
# PostgreSQL directly, through the forward tunnel and through the reverse tunnel, and
# prints one table (tps and average latency). Every process started here is stopped by
# its PID on exit; everything listens on 127.0.0.1.
#
# Usage: scripts/pgbench-node.sh
# Environment (optional):
#   PGB_SECONDS=15     duration of each pgbench run (-T)
#   PGB_CLIENTS=4      concurrent clients (-c)
#   PGB_MODE=tpcb      tpcb (pgbench's default read-write script) or select (-S)
#   BENCH_NO_BUILD=1   reuse target/profiling/culvert
set -euo pipefail

cd "$(dirname "$0")/.."
SECS=${PGB_SECONDS:-15}
CLIENTS=${PGB_CLIENTS:-4}
MODE=${PGB_MODE:-tpcb}

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    cargo build --profile profiling --locked -p culvert >&2
fi
CULVERT=${CARGO_TARGET_DIR:-$PWD/target}/profiling/culvert
source scripts/lib/pg.sh
pg_tools || exit 1

source scripts/lib/procs.sh
procs_init culvert-pgbench
chmod 755 "$WORK"   # postgres (another user under root) must reach its data directory

# PostgreSQL. Started as a simple command in the background: setpriv execs postgres, so
# the PID recorded is the postmaster's, the one cleanup stops.
pg_init_cluster "$WORK/pg"
PG_PORT=$(free_port)
pg_server_cmd "$WORK/pg" "$PG_PORT" 50
"${PG_SERVER_CMD[@]}" >"$WORK/pg.log" 2>&1 &
PIDS+=($!)
pg_wait_ready "$PG_PORT" 20 || true

# Two nodes, TLS between them, each trusting the other's certificate file.
cd "$WORK"
"$CULVERT" cert new --cert a.crt --key a.key >/dev/null 2>&1
"$CULVERT" cert new --cert b.crt --key b.key >/dev/null 2>&1
"$CULVERT" token new --name node-a --tokens b-tokens.toml >a-to-b.token 2>/dev/null
"$CULVERT" token new --name node-b --tokens a-tokens.toml >b-to-a.token 2>/dev/null
A_LISTEN=$(free_port); B_LISTEN=$(free_port); A_ADMIN=$(free_port); B_ADMIN=$(free_port)
FWD=$(free_port); REV=$(( (RANDOM % 500) + 27000 ))
cat >a.toml <<TOML
[node]
listen = "127.0.0.1:$A_LISTEN"
tls_cert = "a.crt"
tls_key = "a.key"
tokens = "a-tokens.toml"
port_range = "27000-27499"
public_bind = "127.0.0.1"
admin = "127.0.0.1:$A_ADMIN"
[[tunnel]]
name = "pg"
peer = "wss://127.0.0.1:$B_LISTEN/"
token_file = "a-to-b.token"
direction = "forward"
listen = "127.0.0.1:$FWD"
target = "127.0.0.1:$PG_PORT"
ca = "b.crt"
TOML
cat >b.toml <<TOML
[node]
listen = "127.0.0.1:$B_LISTEN"
tls_cert = "b.crt"
tls_key = "b.key"
tokens = "b-tokens.toml"
port_range = "28000-28099"
public_bind = "127.0.0.1"
allow = ["127.0.0.1:$PG_PORT"]
admin = "127.0.0.1:$B_ADMIN"
[[tunnel]]
name = "pg-back"
peer = "wss://127.0.0.1:$A_LISTEN/"
token_file = "b-to-a.token"
direction = "reverse"
listen = "$REV"
target = "127.0.0.1:$PG_PORT"
ca = "a.crt"
TOML
RUST_LOG=warn "$CULVERT" node --config b.toml >b.log 2>&1 & PIDS+=($!)
RUST_LOG=warn "$CULVERT" node --config a.toml >a.log 2>&1 & PIDS+=($!)
for _ in $(seq 100); do
    "$PSQL" -h 127.0.0.1 -p "$REV" -U postgres -Xtc 'select 1' >/dev/null 2>&1 \
        && "$PSQL" -h 127.0.0.1 -p "$FWD" -U postgres -Xtc 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
done

"$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
ARGS=(-c "$CLIENTS" -j 2 -T "$SECS" -n)
[[ $MODE == select ]] && ARGS+=(-S)
echo "pgbench ${ARGS[*]} (mode $MODE), PostgreSQL $("$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -XtAc 'show server_version'), $(nproc) CPUs"
echo
echo "| path | tps | latency avg (ms) |"
echo "|---|---:|---:|"
for row in "direct:$PG_PORT" "node forward tunnel (wss):$FWD" "node reverse tunnel (wss):$REV"; do
    name=${row%:*}; port=${row##*:}
    out=$("$PGBENCH" -h 127.0.0.1 -p "$port" -U postgres "${ARGS[@]}" postgres 2>&1)
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\).*/\1/p' <<<"$out")
    echo "| $name | ${tps:-failed} | ${lat:-?} |"
done
