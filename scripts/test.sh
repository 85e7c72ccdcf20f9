#!/usr/bin/env bash
# Runs Culvert's whole test suite, installing what the tests need when it is missing.
# Usage: scripts/test.sh [extra args passed to the test runner]
set -euo pipefail
cd "$(dirname "$0")/.."

# Programs the end-to-end tests start for real (nothing is mocked), as command:package.
# Each missing one is installed from Debian's packages before the tests run.
required=(
  # PostgreSQL behind the tunnel (crates/culvert/tests/postgres.rs): server, psql, pgbench;
  # under root, initdb and postgres run as the postgres user through setpriv.
  pg_config:postgresql
  psql:postgresql-client
  pgbench:postgresql
  setpriv:util-linux
  # Descriptor limits of the server and agent under test (crates/culvert/tests/fd_limit.rs).
  prlimit:util-linux
  # DNS behind the tunnel (tests/tests/udp_dns.rs): dnsmasq answers dig through a UDP service.
  # dnsmasq-base is the program alone: the dnsmasq package would also start a system-wide
  # resolver on port 53.
  dnsmasq:dnsmasq-base
  dig:dnsutils
  # The agent in a network namespace behind a veth link (crates/culvert/tests/faults_netns.rs),
  # with a python3 echo service inside the namespace; UDP clients behind a link shaped with
  # tc (crates/culvert/tests/udp_netns.rs).
  ip:iproute2
  tc:iproute2
  python3:python3
  # An HTTP proxy the agent reaches the server through (crates/culvert/tests/proxy.rs);
  # tinyproxy-bin is the program alone, without a system-wide proxy service.
  tinyproxy:tinyproxy-bin
  # Callers of HTTP services through the server's HTTP ingress (crates/culvert/tests/http_services.rs).
  curl:curl
  # The HTTPS ingress's socket reads, counted on the server process (the same test file).
  strace:strace
  # The L4 balancer in front of a cluster of servers (crates/culvert/tests/cluster.rs) and,
  # writing PROXY headers, in front of the HTTP ingress (crates/culvert/tests/http_proxy_protocol.rs).
  haproxy:haproxy
)
missing=()
for entry in "${required[@]}"; do
  prog="${entry%%:*}"
  command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || missing+=("${entry#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test dependencies: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
