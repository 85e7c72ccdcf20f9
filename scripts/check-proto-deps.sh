#!/usr/bin/env bash
# The protocol core must stay sans-IO: no tokio (or any async runtime) among its
# normal or build dependencies. Dev-dependencies are not shipped and not checked.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p culvert-proto -e normal,build --locked --prefix none)
if grep -Eq '^(tokio|async-std|smol|mio) ' <<<"$tree"; then
  echo "culvert-proto depends on an IO runtime:" >&2
  grep -E '^(tokio|async-std|smol|mio) ' <<<"$tree" >&2
  exit 1
fi
echo "culvert-proto dependency tree is IO-free ($(wc -l <<<"$tree") entries)"
