# shellcheck shell=bash disable=SC2034  # the variables set here are used by the caller
# Shared by the measuring scripts: a throwaway PostgreSQL cluster on 127.0.0.1.
# initdb and postgres refuse to run as root, so under root they run as the `postgres`
# user (setpriv); the cluster's directory must then be reachable by that user.
#
# Usage: source scripts/lib/pg.sh
#   pg_tools || exit 1          sets PG_BINDIR, PGBENCH, PSQL and PG_AS (the
#                               prefix that runs a command as postgres when root, else empty)
#   pg_init_cluster DIR         initdb into DIR/data (DIR is created; its parents must be
#                               reachable by postgres, e.g. chmod 755 on a mktemp -d)
#   pg_server_cmd DIR PORT [MAX_CONNECTIONS]
#                               sets PG_SERVER_CMD: the postgres command line (fsync off,
#                               listening on 127.0.0.1:PORT, socket in DIR/data). Start it
#                               in the background as a simple command, e.g.
#                               `"${PG_SERVER_CMD[@]}" >log 2>&1 & PIDS+=($!)`: setpriv
#                               execs postgres, so $! is the postmaster's PID.
#   pg_wait_ready PORT SECONDS  waits (bounded) until `select 1` works on PORT
#   pg_stop PID                 a fast shutdown (SIGINT: SIGTERM would wait for its
#                               clients) of the postmaster PID, waiting at most 10 s

pg_tools() {
    PG_BINDIR=$(pg_config --bindir 2>/dev/null || true)
    local p
    for p in initdb postgres; do
        if [[ -z $PG_BINDIR || ! -x $PG_BINDIR/$p ]]; then
            echo "PostgreSQL missing (${PG_BINDIR:-pg_config}/$p); run scripts/test.sh once to install it" >&2
            return 1
        fi
    done
    PGBENCH=$(command -v pgbench || echo "$PG_BINDIR/pgbench")
    PSQL=$(command -v psql || echo "$PG_BINDIR/psql")
    PG_AS=()
    if [[ $(id -u) == 0 ]]; then PG_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
}

pg_init_cluster() {
    local dir=$1
    mkdir -p "$dir"
    if [[ $(id -u) == 0 ]]; then
        chown -R postgres:postgres "$dir"
        if ! "${PG_AS[@]}" test -w "$dir"; then
            echo "pg_init_cluster: the postgres user cannot reach $dir (a parent directory is not searchable)" >&2
            return 1
        fi
    fi
    "${PG_AS[@]}" "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 >/dev/null
}

pg_server_cmd() {
    local dir=$1 port=$2 maxc=${3:-50}
    PG_SERVER_CMD=("${PG_AS[@]}" "$PG_BINDIR/postgres" -D "$dir/data" -p "$port" -k "$dir/data"
        -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections="$maxc")
}

pg_wait_ready() {
    local port=$1 secs=${2:-20} end
    end=$((SECONDS + secs))
    while ((SECONDS < end)); do
        PGCONNECT_TIMEOUT=3 timeout 5 "$PSQL" -h 127.0.0.1 -p "$port" -U postgres -Xtc 'select 1' \
            >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

pg_stop() {
    local pid=$1
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# pg_start_pgbench DIR PORT: a throwaway cluster in DIR/pg (DIR made reachable for the
# postgres user), PostgreSQL on 127.0.0.1:PORT and pgbench's tables (scale 10); logs in DIR.
# Sets PG_PID (the caller stops it with pg_stop). Returns non-zero, with the log on stderr,
# when any step fails.
pg_start_pgbench() {
    local dir=$1 port=$2
    chmod 755 "$dir"
    pg_init_cluster "$dir/pg" >"$dir/pg-init.log" 2>&1 || { cat "$dir/pg-init.log" >&2; return 1; }
    pg_server_cmd "$dir/pg" "$port" 100
    "${PG_SERVER_CMD[@]}" >"$dir/postgres.log" 2>&1 &
    PG_PID=$!
    pg_wait_ready "$port" 30 || { echo "PostgreSQL did not start:" >&2; tail -5 "$dir/postgres.log" >&2; return 1; }
    timeout 300 "$PGBENCH" -h 127.0.0.1 -p "$port" -U postgres -i -s 10 -q postgres >"$dir/pgbench-init.log" 2>&1 ||
        { cat "$dir/pgbench-init.log" >&2; return 1; }
}
