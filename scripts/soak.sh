#!/usr/bin/env bash
# Soak: a server and two agents under churn for MINUTES, then a leak check.
# Usage: scripts/soak.sh MINUTES        (CI runs `scripts/soak.sh 1`; 10 locally)
#
# Runs the ignored test crates/culvert/tests/soak.rs with CULVERT_SOAK_SECONDS=MINUTES*60.
# It starts `culvert server` and two agents (pool 2, 1 s heartbeats, one dialing through a
# fault-injecting relay) on loopback, and until the deadline: checks echoes byte for byte,
# drops connections mid-transfer with a reset, runs `culvert access` sessions with a 3 s TTL
# through a live transfer, restarts an agent every 20 s (SIGTERM and SIGKILL in turn) and
# black-holes the relay for 3 s every 25 s. Every 2 s it samples RSS and descriptors of the
# server and of each agent's current process.
#
# It prints, for the server and each agent, RSS and descriptor slopes (per minute, least
# squares after the first 20 % of the run; an agent's over its longest-lived process), the
# ports back in the pool, whether both ends' stream tables agree at the end (streams open 0
# on server and agents), action and failure counts, and a table of checks. Hard checks
# (streams left open, ports leaked, descriptors above setup + 8, a byte mismatch, a hang, a
# panic, an agent that does not recover) make it exit non-zero; the RSS slope and failures
# outside fault windows are reported only. CULVERT_SOAK_SEED=HEX replays the random choices;
# CULVERT_SOAK_VERBOSE=1 prints examples of the failures in each fault window.
# The churn runs for MINUTES; setup, the quiet wait and teardown add well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt 1440 ]; then
  echo "usage: $0 MINUTES   (a whole number of minutes, 1 to 1440)" >&2
  exit 2
fi
export CULVERT_SOAK_SECONDS=$(( 10#$1 * 60 ))

echo "== soak: building" >&2
cargo build -p culvert --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p culvert --locked --test soak --no-run
  echo "== soak: ${CULVERT_SOAK_SECONDS} s of churn" >&2
  exec cargo nextest run -p culvert --locked --test soak --run-ignored only --no-capture
else
  cargo test -p culvert --locked --test soak --no-run
  echo "== soak: ${CULVERT_SOAK_SECONDS} s of churn" >&2
  exec cargo test -p culvert --locked --test soak -- --ignored --nocapture
fi
