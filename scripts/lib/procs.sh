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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
