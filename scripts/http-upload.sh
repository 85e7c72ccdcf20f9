#!/usr/bin/env bash
# One caller's transfer through the HTTPS ingress: a PUT of UPLOAD_MIB MiB (curl, one
# connection; with UPLOAD_DOWN=1 a GET of as much) to the server's HTTP ingress over TLS,
# through an agent (wss) to its HTTP service, a python3 sink that counts the body and
# answers its length. Per culvert binary:
# throughput, CPU-s per GB of the server and of the agent, and with UPLOAD_STRACE=1 the
# server's socket reads per GB (strace slows the server: read the reads, not the speed, of
# those rounds). Alternating rounds, fresh processes each, medians at the end.
#
#   scripts/http-upload.sh                                   # target/profiling/culvert, 3 rounds of 1 GiB
#   UPLOAD_VARIANTS="/path/to/old /path/to/new" UPLOAD_ROUNDS=5 scripts/http-upload.sh
#   UPLOAD_STRACE=1 UPLOAD_ROUNDS=1 scripts/http-upload.sh
#   UPLOAD_BACKEND_TLS=1 UPLOAD_DOWN=1 scripts/http-upload.sh   # an https:// backend; a GET of the same size
#   UPLOAD_HTTP=2 scripts/http-upload.sh                     # the caller speaks HTTP/2 (default 1.1)
#
# UPLOAD_BACKEND_TLS=1 puts the sink behind TLS (python's ssl, a certificate made by openssl
# for localhost) and gives the agent an `https://localhost` service verified with that
# certificate as its CA file: the agent's TLS to backends is what changes between rounds.
# UPLOAD_DOWN=1 measures the other way: a GET of UPLOAD_MIB MiB of zeros from the sink.
#
# Needs curl and python3 (strace for UPLOAD_STRACE=1, openssl for UPLOAD_BACKEND_TLS=1).
# Everything on 127.0.0.1; every process stopped by its PID; each transfer bounded by curl's
# --max-time.
set -euo pipefail
cd "$(dirname "$0")/.."
variants=${UPLOAD_VARIANTS:-${CULVERT_BIN:-target/profiling/culvert}}
rounds=${UPLOAD_ROUNDS:-3}
mib=${UPLOAD_MIB:-1024}
with_strace=${UPLOAD_STRACE:-0}
backend_tls=${UPLOAD_BACKEND_TLS:-0}
down=${UPLOAD_DOWN:-0}
# UPLOAD_HTTP=2: the caller speaks HTTP/2 to the ingress (ALPN); 1.1 (the default) forces it.
case ${UPLOAD_HTTP:-1.1} in
  2) curl_version=(--http2) ;;
  *) curl_version=(--http1.1) ;;
esac
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "http-upload: $tool missing (apt-get install $tool)" >&2; exit 2; }
done
if [[ $backend_tls == 1 ]]; then
  command -v openssl >/dev/null || { echo "http-upload: openssl missing (apt-get install openssl)" >&2; exit 2; }
fi
if [[ $with_strace == 1 ]]; then
  command -v strace >/dev/null || { echo "http-upload: strace missing (apt-get install strace)" >&2; exit 2; }
fi
for b in $variants; do [[ -x $b ]] || { echo "http-upload: $b is not an executable" >&2; exit 2; }; done
work=$(mktemp -d /tmp/http-upload.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# A sparse file: reading it costs curl no disk and little CPU.
truncate -s "$((mib << 20))" "$work/upload.bin"

backend=$(port)
backend_url="http://127.0.0.1:$backend"
if [[ $backend_tls == 1 ]]; then
  # Not a CA (an end-entity certificate trusted as its own issuer, as `culvert server
  # --self-signed` makes them).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$work/backend.key" -out "$work/backend.pem" 2>/dev/null
  backend_url="https://localhost:$backend"
fi
python3 - "$backend" "$backend_tls" "$work" <<'PY' &
# The sink: HTTP/1.1, one thread per connection; reads a Content-Length or chunked body into
# one reused buffer and answers its length; a GET of /download?n=N answers N zero bytes.
# With TLS on, each connection is wrapped first.
import socket, ssl, sys, threading
tls = None
if sys.argv[2] == "1":
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[3] + "/backend.pem", sys.argv[3] + "/backend.key")
def serve(c):
    if tls is not None:
        try:
            c = tls.wrap_socket(c, server_side=True)
        except (OSError, ssl.SSLError):
            c.close()
            return
    f = c.makefile("rb", buffering=1 << 20)
    buf = bytearray(1 << 20)
    try:
        while True:
            head = []
            while True:
                line = f.readline(65536)
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                head.append(line.decode("latin-1").strip().lower())
            if head[0].startswith("get ") and "/download?n=" in head[0]:
                n = int(head[0].split("/download?n=", 1)[1].split()[0])
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                zeros = bytes(1 << 20)
                while n > 0:
                    k = min(n, len(zeros))
                    c.sendall(zeros if k == len(zeros) else zeros[:k])
                    n -= k
                continue
            length = next((int(h.split(":", 1)[1]) for h in head if h.startswith("content-length:")), None)
            got = 0
            def take(n):
                nonlocal got
                while n > 0:
                    k = f.readinto(memoryview(buf)[:min(n, len(buf))])
                    if not k:
                        raise ConnectionError("body cut")
                    n -= k
                    got += k
            if length is not None:
                take(length)
            elif any(h.startswith("transfer-encoding:") and "chunked" in h for h in head):
                while True:
                    size = int(f.readline(1024).split(b";")[0], 16)
                    if size == 0:
                        while f.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    take(size)
                    f.readline(16)
            body = str(got).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (ConnectionError, ValueError, OSError):
        pass
    finally:
        c.close()
s = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)

# one BIN: a fresh server and agent, one upload; prints a row
one() {
  local bin=$1 tunnel http started=${#pids[@]} srv agt fp s0 a0 s1 a1 out st=""
  tunnel=$(port) http=$(port)
  rm -f "$work/tokens.toml"
  "$bin" token new --name agent --tenant acme --tokens "$work/tokens.toml" >"$work/agent.token" 2>/dev/null
  "$bin" token new --name caller --role http --access acme/api --tokens "$work/tokens.toml" >"$work/caller.token" 2>/dev/null
  "$bin" server --listen "127.0.0.1:$tunnel" --tokens "$work/tokens.toml" --self-signed \
    --http-listen "127.0.0.1:$http" >"$work/server.log" 2>&1 &
  srv=$!
  pids+=("$srv")
  fp=$(python3 scripts/bench/benchtool.py fingerprint --wait 10 "$work/server.log") ||
    { echo "http-upload: no fingerprint in the server's log" >&2; cat "$work/server.log" >&2; exit 1; }
  local ca=""
  [[ $backend_tls == 1 ]] && ca="ca = \"$work/backend.pem\""
  cat >"$work/agent.toml" <<EOF
[agent]
server = "wss://127.0.0.1:$tunnel"
token_file = "$work/agent.token"
fingerprint = "$fp"

[[agent.service]]
name = "api"
url = "$backend_url"
$ca
EOF
  "$bin" agent --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
  agt=$!
  pids+=("$agt")
  local auth url
  auth="Authorization: Bearer $(cat "$work/caller.token")"
  url="https://127.0.0.1:$http/t/acme/api/upload"
  local ready=0
  for _ in $(seq 1 100); do
    [[ $(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' -H "$auth" "$url") == 200 ]] && { ready=1; break; }
    sleep 0.2
  done
  ((ready)) || { echo "http-upload: the service never answered through the ingress" >&2; cat "$work/agent.log" >&2; exit 1; }
  if [[ $with_strace == 1 ]]; then
    strace -f -c -e trace=read,readv,recvfrom,recvmsg -o "$work/strace.txt" -p "$srv" 2>"$work/strace.log" &
    st=$!
    pids+=("$st")
    for _ in $(seq 1 50); do grep -q attached "$work/strace.log" && break; sleep 0.1; done
    grep -q attached "$work/strace.log" || { echo "http-upload: strace did not attach" >&2; cat "$work/strace.log" >&2; exit 1; }
  fi
  s0=$(ticks "$srv") a0=$(ticks "$agt")
  if [[ $down == 1 ]]; then
    out=$(curl -sk "${curl_version[@]}" --max-time 300 -H "$auth" -o /dev/null -w '%{size_download} %{time_total}' \
      "https://127.0.0.1:$http/t/acme/api/download?n=$((mib << 20))")
  else
    out=$(curl -sk "${curl_version[@]}" --max-time 300 -H "$auth" -H 'Expect:' -T "$work/upload.bin" -w ' %{time_total}' "$url")
  fi
  s1=$(ticks "$srv") a1=$(ticks "$agt")
  local reads="-"
  if [[ -n $st ]]; then
    kill -INT "$st" 2>/dev/null || true
    wait "$st" 2>/dev/null || true
    reads=$(awk '$NF ~ /^(read|readv|recvfrom|recvmsg)$/ {n += $4} END {print n + 0}' "$work/strace.txt")
  fi
  python3 - "$bin" "$HZ" "$mib" "$out" $((s1 - s0)) $((a1 - a0)) "$reads" <<'PY'
import sys
bin_, hz, mib, out, s, a, reads = sys.argv[1:8]
got, secs = out.split()
gb = int(got) / 1e9
assert int(got) == int(mib) << 20, f"the sink got {got} bytes"
per = lambda t: float(t) / float(hz) / gb
r = "-" if reads == "-" else f"{int(reads) / gb:.0f}"
print(f"| {bin_} | {int(got) * 8 / float(secs) / 1e9:.2f} | {per(s):.3f} | {per(a):.3f} | {r} |")
PY
  local p
  for p in "${pids[@]:$started}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=("${pids[@]:0:$started}")
}

header="| culvert | Gbit/s | server CPU-s/GB | agent CPU-s/GB | server socket reads/GB |"
what="one PUT"
[[ $down == 1 ]] && what="one GET"
echo "HTTPS ingress, $what of $mib MiB per round to a ${backend_url%%:*}:// backend, $rounds alternating rounds:"
echo
echo "$header"
echo "|---|---:|---:|---:|---:|"
for _ in $(seq 1 "$rounds"); do
  for b in $variants; do one "$b" | tee -a "$work/rows"; done
done
echo
echo "medians:"
echo
echo "$header"
echo "|---|---:|---:|---:|---:|"
python3 - "$work/rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = [c.strip() for c in line.strip().strip("|").split("|")]
    rows.setdefault(f[0], []).append(f[1:])
for name, rs in rows.items():
    cols = []
    for i in range(len(rs[0])):
        v = [float(r[i]) for r in rs if r[i] != "-"]
        cols.append(f"{statistics.median(v):g}" if v else "-")
    print(f"| {name} | " + " | ".join(cols) + " |")
PY
