# Sourced by scripts that measure one plain ws:// Culvert tunnel on loopback.
# Needs TOOL (benchtool.py command array) and PIDS (scripts/lib/procs.sh: stopped on exit).

# start_ws_tunnel BIN DIR CTRL_PORT PUBLIC_PORT --expose SPEC...: a token in DIR, a server on
# 127.0.0.1:CTRL_PORT owning PUBLIC_PORT, an agent with the given --expose flags; waits until
# the public port listens. Sets SRV_PID and AGT_PID (also appended to PIDS).
start_ws_tunnel() {
  local bin=$1 dir=$2 ctrl=$3 pub=$4
  shift 4
  timeout 20 "$bin" token new --name bench --tokens "$dir/tokens.toml" >"$dir/token" 2>/dev/null
  RUST_LOG=warn "$bin" server --listen "127.0.0.1:$ctrl" --tokens "$dir/tokens.toml" \
    --port-range "$pub-$pub" --public-bind 127.0.0.1 --insecure-plain >"$dir/server.log" 2>&1 &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  "${TOOL[@]}" wait-listen --timeout 15 "$ctrl"
  RUST_LOG=warn "$bin" agent --server "ws://127.0.0.1:$ctrl" --token-file "$dir/token" "$@" \
    >"$dir/agent.log" 2>&1 &
  AGT_PID=$!
  PIDS+=("$AGT_PID")
  "${TOOL[@]}" wait-listen --timeout 15 "$pub"
  sleep 1
}
