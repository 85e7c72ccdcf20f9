# Sourced by scripts that compare Culvert with wstunnel (or bore) on one workload: starts
# either tunnel over ws:// or wss:// (bore: its plain TCP) exposing one local service on one
# public port.
# Needs TOOL (benchtool.py command array), PIDS (processes stopped by PID on exit),
# CULVERT_BIN and WSTUNNEL_BIN (peer_bins sets all but PIDS; BORE_BIN too when scripts/bench.sh
# installed bore); use_variant picks the binary of a variant.

# peer_bins NAME: TOOL, and CULVERT_BIN and WSTUNNEL_BIN unless given (CULVERT_DEFAULT keeps
# the first for use_variant) (the profiling build
# and the wstunnel scripts/bench.sh builds, under ROOT); exits 2 naming NAME when either is
# missing.
peer_bins() {
  CULVERT_BIN=${CULVERT_BIN:-$ROOT/target/profiling/culvert}
  CULVERT_DEFAULT=$CULVERT_BIN
  WSTUNNEL_BIN=${WSTUNNEL_BIN:-$(ls -d "$ROOT"/target/bench/wstunnel-*/bin/wstunnel 2>/dev/null | head -n1)}
  BORE_BIN=${BORE_BIN:-$(ls -d "$ROOT"/target/bench/bore-*/bin/bore 2>/dev/null | head -n1)}
  TOOL=(python3 "$ROOT/scripts/bench/benchtool.py")
  local b
  for b in "$CULVERT_BIN" "$WSTUNNEL_BIN"; do
    [[ -x $b ]] || { echo "$1: $b missing: build it (scripts/bench.sh builds both)" >&2; exit 2; }
  done
}

# use_variant VARIANT: a variant of the measuring scripts is `culvert`, `wstunnel`, `bore` or
# `culvert:BIN` (another Culvert build, or a wrapper that adds flags or environment). Sets
# WHICH (culvert, wstunnel or bore) and CULVERT_BIN (BIN, or the one peer_bins chose).
use_variant() {
  WHICH=${1%%:*}
  case $WHICH in
    culvert | wstunnel | bore) ;;
    # Anything else used to start wstunnel under another name.
    *) echo "use_variant: unknown variant '$1' (culvert, culvert:BIN, wstunnel or bore)" >&2; exit 2 ;;
  esac
  CULVERT_BIN=$CULVERT_DEFAULT
  [[ $1 != *:* ]] || CULVERT_BIN=${1#*:}
  if [[ $WHICH == bore && ! -x ${BORE_BIN:-} ]]; then
    echo "use_variant: bore missing: scripts/bench.sh installs it (target/bench/bore-*)" >&2
    exit 2
  fi
}

# start_peer_tunnel culvert|wstunnel ws|wss DIR CTRL_PORT PUBLIC_PORT TARGET_PORT: the server
# on 127.0.0.1:CTRL_PORT, the agent (wstunnel: its client, -R) exposing
# 127.0.0.1:TARGET_PORT on 127.0.0.1:PUBLIC_PORT; waits until the public port listens. Culvert
# over wss uses --self-signed and pins its fingerprint; wstunnel uses its built-in certificate
# (its client checks none by default). bore (plain TCP, the scheme ignored) listens on its
# fixed control port 7835 on 127.0.0.1, which must be free, and `bore local` asks for
# PUBLIC_PORT. Sets SRV_PID and AGT_PID (also appended to PIDS).
start_peer_tunnel() {
  local which=$1 scheme=$2 dir=$3 ctrl=$4 pub=$5 target=$6
  if [[ $which == culvert ]]; then
    local mode=--insecure-plain verify=()
    [[ $scheme == ws ]] || mode=--self-signed
    rm -f "$dir/tokens.toml"
    "$CULVERT_BIN" token new --name peer --tokens "$dir/tokens.toml" >"$dir/agent.token" 2>/dev/null
    RUST_LOG=warn,culvert::run=info "$CULVERT_BIN" server --listen "127.0.0.1:$ctrl" --tokens "$dir/tokens.toml" \
      --port-range "$pub-$pub" --public-bind 127.0.0.1 $mode 2>"$dir/server.log" &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    "${TOOL[@]}" wait-listen --timeout 15 "$ctrl"
    if [[ $scheme == wss ]]; then
      local fp
      fp=$("${TOOL[@]}" fingerprint --wait 5 "$dir/server.log") ||
        { echo "start_peer_tunnel: no fingerprint in the server's log" >&2; return 1; }
      verify=(--fingerprint "$fp")
    fi
    RUST_LOG=warn "$CULVERT_BIN" agent --server "$scheme://127.0.0.1:$ctrl" --token-file "$dir/agent.token" \
      --expose "svc=tcp://127.0.0.1:$target@$pub" "${verify[@]}" 2>"$dir/agent.log" &
    AGT_PID=$!
  elif [[ $which == bore ]]; then
    # Its control port is fixed: another listener there would answer the wait below.
    "${TOOL[@]}" port-free 7835 || { echo "start_peer_tunnel: bore's control port 7835 is in use" >&2; return 1; }
    "$BORE_BIN" server --bind-addr 127.0.0.1 --min-port "$pub" --max-port "$pub" >"$dir/server.log" 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    "${TOOL[@]}" wait-listen --timeout 15 7835
    "$BORE_BIN" local "$target" --local-host 127.0.0.1 --to 127.0.0.1 --port "$pub" >"$dir/agent.log" 2>&1 &
    AGT_PID=$!
  else
    "$WSTUNNEL_BIN" --no-color --log-lvl ERROR server "$scheme://127.0.0.1:$ctrl" >"$dir/server.log" 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    "${TOOL[@]}" wait-listen --timeout 15 "$ctrl"
    "$WSTUNNEL_BIN" --no-color --log-lvl ERROR client -R "tcp://127.0.0.1:$pub:127.0.0.1:$target" \
      "$scheme://127.0.0.1:$ctrl" >"$dir/agent.log" 2>&1 &
    AGT_PID=$!
  fi
  PIDS+=("$AGT_PID")
  "${TOOL[@]}" wait-listen --timeout 15 "$pub"
}
