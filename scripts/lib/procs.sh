# Shared by the measuring scripts: a scratch directory, processes recorded by PID and
# stopped by PID on exit, and free loopback ports.
# Usage: source scripts/lib/procs.sh; procs_init PREFIX   (then: PIDS+=($!) per process)

procs_init() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap procs_cleanup EXIT
}

procs_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}

# procs_stop_from N: stops (by PID) the processes recorded in PIDS from index N on, and
# forgets them: what one round of a measuring script started.
procs_stop_from() {
    local pid
    for pid in "${PIDS[@]:$1}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    PIDS=("${PIDS[@]:0:$1}")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# hold_idle PORT N LOG: opens N tunneled connections through PORT (each checked with a
# one-byte echo), keeps them open and idle (recorded in PIDS, bounded to an hour), and
# returns once they are open. N=0 does nothing. Needs TOOL (scripts/lib/peer-tunnel.sh).
hold_idle() {
    local port=$1 n=$2 log=$3 _
    [[ $n -gt 0 ]] || return 0
    "${TOOL[@]}" hold "$port" "$n" --open-seconds 30 --max-seconds 3600 >"$log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 350); do grep -q '^READY' "$log" && break; sleep 0.1; done
    grep -q "^READY $n\$" "$log" || { echo "hold_idle: $(cat "$log")" >&2; return 1; }
}
