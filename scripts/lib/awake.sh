# shellcheck shell=bash
# Shared by the measuring scripts: keeps every vCPU busy at the lowest priority, so that
# none halts between the messages of a latency measurement (on a VM a halted vCPU's wake-up
# can cost more than the round trip itself; see BENCHMARKS.md, "Halted vCPUs").
#
# Usage: source scripts/lib/awake.sh; keep_awake SECONDS
#   starts one `nice -n 19` busy loop per CPU, each ending by itself after SECONDS, and
#   appends their PIDs to the caller's PIDS array (which the caller stops on exit). Not
#   neutral: the loops also take CPU from bulk transfers.

keep_awake() {
    local secs=$1 _
    for _ in $(seq 1 "$(nproc)"); do
        nice -n 19 timeout "$secs" sh -c 'while :; do :; done' &
        PIDS+=("$!")
    done
}
