#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: loopback-only load clients (TCP and UDP), echo
backends (TCP and UDP), port picking, iperf3/pgbench/perf-stat parsing, medians and the
markdown tables.

Every loop here is bounded both in count and in time, and every socket goes to
127.0.0.1 only.
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time

HOST = "127.0.0.1"


def _die(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------- ports


def cmd_freeblock(a):
    """Print the first port of N consecutive ports that are free on 127.0.0.1 for both
    TCP and UDP, chosen outside the kernel's ephemeral range so that no outgoing
    connection can take them: above it when there is room (the test suite takes its
    ports from 20000-32767, below it, so a benchmark beside a test run does not collide
    with it), else below it."""
    lo, hi = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_lo, eph_hi = (int(x) for x in f.read().split()[:2])
        if 65535 - eph_hi > 4 * a.n:
            lo, hi = eph_hi + 1, 65535
        else:
            hi = min(hi, eph_lo)
    except (OSError, ValueError):
        pass
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - a.n)
        socks = []
        ok = True
        try:
            for p in range(base, base + a.n):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((HOST, p))
        except OSError:
            ok = False
        finally:
            for s in socks:
                s.close()
        if ok:
            print(base)
            return
    _die("no free block of ports found")


def cmd_port_free(a):
    """Exit 0 when a TCP listener could bind 127.0.0.1:PORT now (SO_REUSEADDR, as tokio's
    listeners do), 1 otherwise."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, a.port))
        s.listen(1)
    except OSError:
        sys.exit(1)
    finally:
        s.close()


def _listening_ports():
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":  # TCP_LISTEN
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def _udp_bound_ports():
    ports = set()
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def cmd_wait_listen(a):
    """Wait until something listens on each port (read from /proc, no connection made);
    with --udp, until a UDP socket is bound to each port."""
    deadline = time.monotonic() + a.timeout
    want = set(a.ports)
    ports = _udp_bound_ports if a.udp else _listening_ports
    while time.monotonic() < deadline:
        if want <= ports():
            return
        time.sleep(0.05)
    kind = "UDP ports not bound" if a.udp else "ports not listening"
    _die(f"{kind} after {a.timeout}s: {sorted(want - ports())}")


def _echo_once(port, timeout, payload=b"x"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(len(payload) - len(got))
            if not chunk:
                raise ConnectionError("closed before echo")
            got += chunk
        if got != payload:
            raise ConnectionError("wrong echo")


def cmd_wait_echo(a):
    """Wait until one byte sent to PORT comes back (proves the whole data path)."""
    deadline = time.monotonic() + a.timeout
    last = None
    while time.monotonic() < deadline:
        try:
            _echo_once(a.port, 2.0)
            return
        except OSError as e:
            last = e
            time.sleep(0.1)
    _die(f"no echo through port {a.port} after {a.timeout}s: {last}")


# --------------------------------------------------------------------------- echo backend


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.t.write(data)

    def eof_received(self):
        return False  # close our side too


def cmd_echo_server(a):
    """TCP echo server on 127.0.0.1:PORT; exits by itself after --max-seconds."""

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, HOST, a.port, backlog=4096, reuse_address=True)
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        loop.call_later(a.max_seconds, lambda: stop.done() or stop.set_result(None))
        async with server:
            await stop

    asyncio.run(main())


def cmd_udp_echo_server(a):
    """UDP echo server on 127.0.0.1:PORT: every datagram goes back to its sender.
    Exits on SIGTERM or by itself after --max-seconds."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((HOST, a.port))
    s.settimeout(0.2)
    end = time.monotonic() + a.max_seconds
    while not stop and time.monotonic() < end:
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        try:
            s.sendto(data, peer)
        except OSError:
            pass
    s.close()


def _udp_echo_once(s, seq, size, timeout):
    """Send one datagram carrying SEQ on the connected socket S and wait up to TIMEOUT
    seconds for the datagram that echoes it; older replies are skipped. Returns the
    round-trip time in ns, or None on timeout (or an ICMP error)."""
    payload = seq.to_bytes(8, "big") + b"u" * (size - 8)
    t0 = time.perf_counter_ns()
    limit = t0 + int(timeout * 1e9)
    try:
        s.send(payload)
    except OSError:
        return None
    while True:
        left = (limit - time.perf_counter_ns()) / 1e9
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            data = s.recv(65535)
        except socket.timeout:
            return None
        except OSError:  # e.g. ECONNREFUSED from an ICMP port unreachable
            return None
        if len(data) >= 8 and int.from_bytes(data[:8], "big") == seq:
            return time.perf_counter_ns() - t0


def cmd_wait_udp_echo(a):
    """Wait until a datagram sent to PORT comes back (proves the UDP data path)."""
    deadline = time.monotonic() + a.timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((HOST, a.port))
        seq = 1
        while time.monotonic() < deadline:
            if _udp_echo_once(s, seq, 16, 0.5) is not None:
                return
            seq += 1
            time.sleep(0.05)
    _die(f"no UDP echo through port {a.port} after {a.timeout}s")


# --------------------------------------------------------------------------- load clients


def _pct(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


RR_WARMUP = 50  # untimed round trips per connection before measuring


def cmd_rr(a):
    """Sequential 64-byte request/response round trips over one connection (--conns 1),
    or over --conns connections at once, each doing sequential round trips (aggregate
    rate, latency percentiles over all of them). Bounded by --count round trips in total
    and by --seconds."""
    if a.conns > 1:
        return _rr_multi(a)
    payload = os.urandom(64)
    lat = []
    s = socket.create_connection((HOST, a.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Warm the path (first stream open, data-channel creation, ...), untimed.
    _rr_warm(s, payload)
    pc = time.perf_counter_ns
    t_start = pc()
    deadline = t_start + int(a.seconds * 1e9)
    buf = bytearray(64)
    view = memoryview(buf)
    while len(lat) < a.count:
        t0 = pc()
        if t0 > deadline:
            break
        s.sendall(payload)
        got = 0
        while got < 64:
            n = s.recv_into(view[got:], 64 - got)
            if n == 0:
                _die("connection closed during round trips")
            got += n
        lat.append(pc() - t0)
    elapsed = (pc() - t_start) / 1e9
    s.close()
    if not lat:
        _die("no round trip completed")
    lat.sort()
    print(
        json.dumps(
            {
                "count": len(lat),
                "conns": 1,
                "warmup": RR_WARMUP,
                "seconds": elapsed,
                "rps": len(lat) / elapsed if elapsed > 0 else None,
                "p50_us": _pct(lat, 0.50) / 1000,
                "p99_us": _pct(lat, 0.99) / 1000,
            }
        )
    )


def _rr_warm(s, payload):
    """RR_WARMUP blocking round trips on S (first stream open, data-channel creation...)."""
    for _ in range(RR_WARMUP):
        s.sendall(payload)
        got = 0
        while got < len(payload):
            chunk = s.recv(len(payload) - got)
            if not chunk:
                _die("connection closed during warm-up")
            got += len(chunk)


def _rr_multi(a):
    """--conns connections, each with one 64-byte request outstanding at a time; one
    thread drives them all with epoll (no GIL hand-offs between client threads)."""
    import select

    size = 64
    payload = os.urandom(size)
    socks = []
    for _ in range(a.conns):
        s = socket.create_connection((HOST, a.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    for s in socks:
        _rr_warm(s, payload)
    ep = select.epoll()
    pc = time.perf_counter_ns
    state = {}  # fd -> [socket, bytes received, send time, buffer view]
    lat = []
    issued = 0
    t_start = pc()
    deadline = t_start + int(a.seconds * 1e9)
    hard_end = time.monotonic() + a.seconds + 15  # a stuck connection cannot hang us
    for s in socks:
        s.setblocking(False)
        st = [s, 0, 0, memoryview(bytearray(size))]
        state[s.fileno()] = st
        ep.register(s.fileno(), select.EPOLLIN)
        if issued < a.count:
            st[2] = pc()
            if s.send(payload) != size:
                _die("short send of a 64-byte request")
            issued += 1
        else:
            ep.unregister(s.fileno())
            del state[s.fileno()]
    t_last = t_start
    while state:
        if time.monotonic() > hard_end:
            _die(f"{len(state)} connections got no echo in time")
        for fd, _ev in ep.poll(1.0):
            st = state.get(fd)
            if st is None:
                continue
            try:
                n = st[0].recv_into(st[3][st[1]:], size - st[1])
            except BlockingIOError:
                continue
            if n == 0:
                _die("connection closed during round trips")
            st[1] += n
            if st[1] < size:
                continue
            now = pc()
            lat.append(now - st[2])
            t_last = now
            st[1] = 0
            if issued < a.count and now < deadline:
                st[2] = pc()
                if st[0].send(payload) != size:
                    _die("short send of a 64-byte request")
                issued += 1
            else:
                ep.unregister(fd)
                del state[fd]
    elapsed = (t_last - t_start) / 1e9
    ep.close()
    for s in socks:
        s.close()
    if not lat:
        _die("no round trip completed")
    lat.sort()
    print(
        json.dumps(
            {
                "count": len(lat),
                "conns": a.conns,
                "warmup": RR_WARMUP * a.conns,
                "seconds": elapsed,
                "rps": len(lat) / elapsed if elapsed > 0 else None,
                "p50_us": _pct(lat, 0.50) / 1000,
                "p99_us": _pct(lat, 0.99) / 1000,
            }
        )
    )


def cmd_udp_rr(a):
    """Sequential SIZE-byte UDP round trips from one socket (one flow): send, wait for
    the echo up to --timeout-ms, next. A timeout counts as a lost round trip. Bounded
    by --count and --seconds, and stops after 50 timeouts in a row."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((HOST, a.port))
    timeout = a.timeout_ms / 1000
    seq = 0
    # Warm the flow (flow setup at the tunnel's both ends), untimed.
    warm_ok = 0
    for _ in range(50):
        seq += 1
        if _udp_echo_once(s, seq, a.size, timeout) is not None:
            warm_ok += 1
            if warm_ok >= 20:
                break
    if warm_ok == 0:
        _die("no UDP echo came back during warm-up")
    lat = []
    lost = 0
    in_a_row = 0
    pc = time.perf_counter_ns
    t_start = pc()
    deadline = t_start + int(a.seconds * 1e9)
    while len(lat) + lost < a.count and pc() < deadline and in_a_row < 50:
        seq += 1
        rtt = _udp_echo_once(s, seq, a.size, timeout)
        if rtt is None:
            lost += 1
            in_a_row += 1
        else:
            lat.append(rtt)
            in_a_row = 0
    elapsed = (pc() - t_start) / 1e9
    s.close()
    if not lat:
        _die(f"no UDP round trip completed ({lost} timed out)")
    lat.sort()
    print(
        json.dumps(
            {
                "count": len(lat),
                "lost": lost,
                "loss_percent": 100 * lost / (len(lat) + lost),
                "seconds": elapsed,
                "rps": len(lat) / elapsed if elapsed > 0 else None,
                "p50_us": _pct(lat, 0.50) / 1000,
                "p99_us": _pct(lat, 0.99) / 1000,
                "stopped_early": in_a_row >= 50,
            }
        )
    )


def cmd_cps(a):
    """New connections per second: connect, send 1 byte, read the echo, close.
    Several threads; bounded by --count in total and by --seconds."""
    lock = threading.Lock()
    state = {"left": a.count, "ok": 0, "err": 0, "last_err": None}
    deadline = time.monotonic() + a.seconds

    def worker():
        while True:
            with lock:
                if state["left"] <= 0:
                    return
                state["left"] -= 1
            if time.monotonic() > deadline:
                return
            try:
                _echo_once(a.port, 5.0)
                with lock:
                    state["ok"] += 1
            except OSError as e:
                with lock:
                    state["err"] += 1
                    state["last_err"] = repr(e)
                if state["err"] > 100:
                    return

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic() + 10))
    elapsed = time.monotonic() - t0
    print(
        json.dumps(
            {
                "ok": state["ok"],
                "errors": state["err"],
                "last_error": state["last_err"],
                "seconds": elapsed,
                "cps": state["ok"] / elapsed if elapsed > 0 else None,
            }
        )
    )


def cmd_hold(a):
    """Open N connections through PORT, check each with a 1-byte echo, print
    'READY <n>' and hold them until SIGTERM or --max-seconds."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    deadline = time.monotonic() + a.open_seconds
    socks = []
    err = None
    while len(socks) < a.n and time.monotonic() < deadline:
        try:
            s = socket.create_connection((HOST, a.port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"h")
            if s.recv(1) != b"h":
                raise ConnectionError("no echo")
            socks.append(s)
        except OSError as e:
            err = repr(e)
            break
    print(f"READY {len(socks)}" + (f" error={err}" if err else ""), flush=True)
    end = time.monotonic() + a.max_seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while time.monotonic() < end:
        time.sleep(0.2)
    for s in socks:
        s.close()


# --------------------------------------------------------------------------- parsing


def cmd_iperf_parse(a):
    """Print 'GBIT_PER_S BYTES' from an iperf3 -J result (receiver side)."""
    with open(a.file) as f:
        d = json.load(f)
    if "error" in d:
        _die(d["error"])
    end = d["end"]
    recv = end["sum_received"]
    print(f"{recv['bits_per_second'] / 1e9:.3f} {int(recv['bytes'])}")


def cmd_iperf_udp_parse(a):
    """Print 'MBIT_PER_S LOST_PERCENT JITTER_MS BYTES' from an iperf3 -u -J result, all
    from the receiving side (the server's numbers for client→server, the client's with
    -R): end.sum_received when iperf3 writes it, else the receiver's end.sum."""
    with open(a.file) as f:
        d = json.load(f)
    if "error" in d:
        _die(d["error"])
    end = d["end"]
    recv = end.get("sum_received")
    if recv is None or "lost_percent" not in recv:
        reverse = d.get("start", {}).get("test_start", {}).get("reverse", 0)
        if reverse:
            recv = end["sum"]
        else:
            srv = d.get("server_output_json")
            if not srv:
                _die("no receiver-side numbers (needs --get-server-output)")
            recv = srv["end"]["sum"]
    bps = recv["bits_per_second"]
    print(
        f"{bps / 1e6:.1f} {recv.get('lost_percent', 0):.3f} "
        f"{recv.get('jitter_ms', 0):.3f} {int(recv['bytes'])}"
    )


def _find_fingerprint(path):
    """The SHA-256 fingerprint in the first line of PATH mentioning 'fingerprint', or None."""
    try:
        f = open(path, errors="replace")
    except FileNotFoundError:
        return None
    with f:
        for line in f:
            if "fingerprint" not in line.lower():
                continue
            m = re.search(r"((?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2})", line)
            if not m:
                m = re.search(r"(?<![0-9A-Fa-f])([0-9A-Fa-f]{64})(?![0-9A-Fa-f])", line)
            if m:
                return m.group(1)
    return None


def cmd_fingerprint(a):
    """Print the SHA-256 fingerprint found in a line mentioning 'fingerprint'; with --wait,
    look again every 0.1 s for up to that many seconds (a server still starting)."""
    deadline = time.monotonic() + a.wait
    while True:
        fp = _find_fingerprint(a.file)
        if fp:
            print(fp)
            return
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.1)


def cmd_json_get(a):
    """Print fields of a JSON object read from a file, space separated."""
    with open(a.file) as f:
        d = json.load(f)
    out = []
    for k in a.keys:
        v = d.get(k)
        out.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
    print(" ".join(out))


def _median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def cmd_row_medians(a):
    """Medians of the markdown table rows in FILE (`| label | n | n | ... |`), one row per
    label in first-seen order: the first --ints columns as integers, the rest to --decimals
    places (one unless given). For the measuring scripts that print a row per round."""
    rows = {}
    with open(a.file) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 2:
                continue
            rows.setdefault(cells[0], []).append([float(c) for c in cells[1:]])
    for label, rs in rows.items():
        meds = [_median(list(col)) for col in zip(*rs)]
        out = [f"{m:.0f}" if i < a.ints else f"{m:.{a.decimals}f}" for i, m in enumerate(meds)]
        print(f"| {label} | " + " | ".join(out) + " |")


def cmd_json_median(a):
    """Print, for each of the comma-separated KEYS, the median of its numeric values over
    the JSON objects in FILES (files that do not parse are skipped), space separated;
    an empty field when no file has a number for that key."""
    docs = []
    for fn in a.files:
        try:
            with open(fn) as f:
                docs.append(json.load(f))
        except (OSError, ValueError):
            pass
    out = []
    for k in a.keys.split(","):
        vals = [d[k] for d in docs if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)]
        m = _median(vals)
        out.append("" if m is None else f"{m:.6g}")
    print(" ".join(out))


def cmd_pgbench_parse(a):
    """Turn pgbench's text output into JSON: tps (without initial connection time),
    average latency in ms, transactions processed and failed."""
    with open(a.file, errors="replace") as f:
        text = f.read()
    d = {}
    m = re.search(r"^tps = ([0-9.]+)", text, re.M)
    if m:
        d["tps"] = float(m.group(1))
    m = re.search(r"^latency average = ([0-9.]+) ms", text, re.M)
    if m:
        d["lat_ms"] = float(m.group(1))
    m = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    if m:
        d["processed"] = int(m.group(1))
    m = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    d["failed"] = int(m.group(1)) if m else 0
    if "tps" not in d:
        errs = [ln for ln in text.splitlines() if "error" in ln.lower() or "fatal" in ln.lower()]
        _die("no tps in pgbench output" + (f": {errs[-1][:160]}" if errs else ""))
    print(json.dumps(d))


# --------------------------------------------------------------------------- syscalls


def _perf_stat_counts(fn):
    """Syscall counts by name from a `perf stat -x, -e 'syscalls:sys_enter_*'` file."""
    counts = {}
    with open(fn, errors="replace") as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or not parts[2].startswith("syscalls:sys_enter_"):
                continue
            try:
                n = int(float(parts[0]))
            except ValueError:  # <not counted>, <not supported>
                continue
            if n:
                name = parts[2][len("syscalls:sys_enter_"):]
                counts[name] = counts.get(name, 0) + n
    return counts


def cmd_sys_per(a):
    """One line of a process's system calls by name per unit (a round trip, say), most
    frequent first (those under 0.005 left out), from a `perf stat -x, -e
    'syscalls:sys_enter_...'` file."""
    counts = _perf_stat_counts(a.file)
    per = ", ".join(
        f"{k} {v / a.per:.2f}"
        for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
        if v / a.per >= 0.005
    )
    print(f"  {a.label} system calls per {a.unit}: {per or 'none counted'}")


def cmd_sys_table(a):
    """Markdown tables from the syscall mode's records (COLUMN<TAB>LOAD<TAB>ROLE<TAB>KEY
    <TAB>VALUE; ROLE '-' holds the load's denominators 'bytes' or 'rts', KEY 'perf' the
    path of a perf stat file): per GB for bulk loads, per round trip for 'rr'."""
    recs = {}
    order_cols, order_loads = [], []
    with open(a.records) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            col, load, role, key, val = line.split("\t", 4)
            if col not in order_cols:
                order_cols.append(col)
            if load not in order_loads:
                order_loads.append(load)
            recs[(col, load, role, key)] = val
    labels = dict(x.split("=", 1) for x in a.labels.split(";") if "=" in x)
    roles = [("srv", "server"), ("agt", "agent/client")]
    out = []
    for load in order_loads:
        per_rt = load == "rr"
        unit = "round trip" if per_rt else "GB"
        cols = [c for c in order_cols if any(k[0] == c and k[1] == load for k in recs)]
        if not cols:
            continue
        unit_key = "rts" if per_rt else "bytes"
        denom, pdenom, procs = {}, {}, []
        counts = {}
        for c in cols:
            # the bare run's denominator, and the perf run's for the syscall counts
            for dd, k in ((denom, unit_key), (pdenom, unit_key + "_perf")):
                try:
                    d = float(recs[(c, load, "-", k)])
                    dd[c] = d if per_rt else d / 1e9
                except (KeyError, ValueError):
                    dd[c] = None
            for r, rname in roles:
                procs.append((c, r, f"{c} {rname}"))
                fn = recs.get((c, load, r, "perf"))
                try:
                    counts[(c, r)] = _perf_stat_counts(fn) if fn else None
                except OSError:
                    counts[(c, r)] = None
        out.append(f"#### {labels.get(load, load)}: per {unit}")
        out.append("")
        dn = []
        what = "round trips" if per_rt else "bytes"
        for c in cols:
            v = recs.get((c, load, "-", unit_key))
            v2 = recs.get((c, load, "-", unit_key + "_perf"))
            if v is not None:
                t = f"{c}: {int(float(v)):,} {what}"
                if v2 is not None:
                    t += f" (the run counting syscalls: {int(float(v2)):,})"
                dn.append(t)
        if dn:
            out.append("Measured over " + "; ".join(dn) + ".")
            out.append("")
        hdr = ["per " + unit] + [p[2] for p in procs] + [f"{c} total" for c in cols]
        ratio = len(cols) == 2
        if ratio:
            hdr.append(f"{cols[0]} ÷ {cols[1]} (totals)")
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")

        def val(c, r, key):
            if key.startswith("sc:"):
                cs = counts.get((c, r))
                if cs is None:
                    return None
                if key == "sc:*":
                    return float(sum(cs.values()))
                return float(cs.get(key[3:], 0))
            try:
                return float(recs[(c, load, r, key)])
            except (KeyError, ValueError):
                return None

        def row(label, key, scale=1.0):
            cells = [label]
            tots = []
            dens = pdenom if key.startswith("sc:") else denom
            def cell(x):
                return "<0.001" if 0 < x < 0.0005 else _fmt(x)

            for c, r, _ in procs:
                v = val(c, r, key)
                d = dens.get(c)
                cells.append("" if v is None or not d else cell(v * scale / d))
            for c in cols:
                vs = [val(c, r, key) for r, _ in roles]
                d = dens.get(c)
                if any(v is None for v in vs) or not d:
                    cells.append("")
                    tots.append(None)
                else:
                    t = sum(vs) * scale / d
                    cells.append(cell(t))
                    tots.append(t)
            if ratio:
                r = ""
                if None not in tots and tots[1]:
                    q = tots[0] / tots[1]
                    r = "0×" if q == 0 else ">100×" if q > 100 else "<0.01×" if q < 0.01 else f"{q:.2f}×"
                cells.append(r)
            out.append("| " + " | ".join(cells) + " |")

        row("CPU seconds" if not per_rt else "CPU µs", "cpu_s", 1.0 if not per_rt else 1e6)
        row("voluntary context switches", "vcsw")
        row("involuntary context switches", "ivcsw")
        row("syscalls, all", "sc:*")
        top = {}
        for (c, r), cs in counts.items():
            for name, n in (cs or {}).items():
                d = pdenom.get(c)
                if d:
                    top[name] = max(top.get(name, 0), n / d)
        for name in sorted(top, key=lambda n: -top[n])[: a.top]:
            row(f"`{name}`", "sc:" + name)
        out.append("")
    print("\n".join(out).rstrip())


# --------------------------------------------------------------------------- table

COLUMNS = ["direct", "culvert-ws", "culvert-wss", "rathole-tcp", "rathole-tls", "wstunnel-ws", "wstunnel-wss", "bore"]
RATIOS = [("culvert-ws", "rathole-tcp"), ("culvert-wss", "rathole-tls")]


def _fmt(v):
    if v is None:
        return ""
    try:
        x = float(v)
    except ValueError:
        return v
    if x == 0:
        return "0"
    if abs(x) >= 999.5:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def cmd_table(a):
    """Render results.tsv (column<TAB>metric-key<TAB>value) and metrics.tsv
    (metric-key<TAB>label<TAB>better) into one markdown table; --columns and --ratios
    (X/Y,...) choose other columns than the TCP ones."""
    metrics = []
    with open(a.metrics) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                key, label, better = line.split("\t")
                metrics.append((key, label, better))
    vals = {}
    with open(a.results) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                col, key, val = line.split("\t", 2)
                vals[(col, key)] = val
    columns = a.columns.split(",") if a.columns else COLUMNS
    ratios = [tuple(r.split("/", 1)) for r in a.ratios.split(",")] if a.ratios else RATIOS
    best = [c for c in a.best.split(",") if c] if a.best else []
    peers = [c for c in a.peers.split(",") if c] if a.peers else []
    # Columns left out by BENCH_ONLY are not shown, nor ratios that need them.
    ran = lambda c: not vals.get((c, "status"), "").startswith("not run")
    columns = [c for c in columns if ran(c)]
    ratios = [(x, y) for x, y in ratios if x in columns and y in columns]
    peers = [p for p in peers if p in columns]
    best = [c for c in best if c in columns] if peers else []

    def num(c, key):
        try:
            return float(vals[(c, key)])
        except (KeyError, ValueError):
            return None

    hdr = ["metric"] + columns + [f"{x} ÷ best peer" for x in best] + [f"{x} ÷ {y}" for x, y in ratios]
    rows = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|"]
    for key, label, better in metrics:
        cells = [label + {"up": " (higher is better)", "down": " (lower is better)"}.get(better, "")]
        for c in columns:
            cells.append(_fmt(vals.get((c, key), "")))
        # The best peer of this row: highest value for higher-is-better rows, lowest
        # for lower-is-better ones, among the peers that have a number.
        bp = None
        if better in ("up", "down"):
            cand = [(num(p, key), p) for p in peers if num(p, key) is not None]
            if cand:
                pick = max if better == "up" else min
                bv = pick(v for v, _ in cand)
                bp = next((p, v) for v, p in cand if v == bv)
        for x in best:
            vx = num(x, key)
            cells.append(f"{vx / bp[1]:.2f}× {bp[0]}" if bp and vx is not None and bp[1] != 0 else "")
        for x, y in ratios:
            r = ""
            vx, vy = num(x, key), num(y, key)
            if better in ("up", "down") and vx is not None and vy:
                r = f"{vx / vy:.2f}×"
            cells.append(r)
        rows.append("| " + " | ".join(cells) + " |")
    print("\n".join(rows))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("freeblock")
    s.add_argument("n", type=int)
    s.set_defaults(f=cmd_freeblock)

    s = sub.add_parser("port-free")
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_port_free)

    s = sub.add_parser("wait-listen")
    s.add_argument("--timeout", type=float, default=20)
    s.add_argument("--udp", action="store_true")
    s.add_argument("ports", type=int, nargs="+")
    s.set_defaults(f=cmd_wait_listen)

    s = sub.add_parser("wait-echo")
    s.add_argument("--timeout", type=float, default=20)
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_wait_echo)

    s = sub.add_parser("echo-server")
    s.add_argument("port", type=int)
    s.add_argument("--max-seconds", type=float, default=900)
    s.set_defaults(f=cmd_echo_server)

    s = sub.add_parser("udp-echo-server")
    s.add_argument("port", type=int)
    s.add_argument("--max-seconds", type=float, default=900)
    s.set_defaults(f=cmd_udp_echo_server)

    s = sub.add_parser("wait-udp-echo")
    s.add_argument("--timeout", type=float, default=20)
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_wait_udp_echo)

    s = sub.add_parser("udp-rr")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=20000)
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--timeout-ms", type=float, default=500)
    s.set_defaults(f=cmd_udp_rr)

    s = sub.add_parser("rr")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=20000)
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--conns", type=int, default=1)
    s.set_defaults(f=cmd_rr)

    s = sub.add_parser("cps")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=10000)
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--workers", type=int, default=8)
    s.set_defaults(f=cmd_cps)

    s = sub.add_parser("hold")
    s.add_argument("port", type=int)
    s.add_argument("n", type=int)
    s.add_argument("--open-seconds", type=float, default=30)
    s.add_argument("--max-seconds", type=float, default=60)
    s.set_defaults(f=cmd_hold)

    s = sub.add_parser("iperf-parse")
    s.add_argument("file")
    s.set_defaults(f=cmd_iperf_parse)

    s = sub.add_parser("iperf-udp-parse")
    s.add_argument("file")
    s.set_defaults(f=cmd_iperf_udp_parse)

    s = sub.add_parser("fingerprint")
    s.add_argument("file")
    s.add_argument("--wait", type=float, default=0.0)
    s.set_defaults(f=cmd_fingerprint)

    s = sub.add_parser("json-get")
    s.add_argument("file")
    s.add_argument("keys", nargs="+")
    s.set_defaults(f=cmd_json_get)

    s = sub.add_parser("table")
    s.add_argument("metrics")
    s.add_argument("results")
    s.add_argument("--columns", default="")
    s.add_argument("--ratios", default="")
    s.add_argument("--best", default="", help="columns that get a 'X ÷ best peer' ratio column")
    s.add_argument("--peers", default="", help="the peer columns the best is chosen among")
    s.set_defaults(f=cmd_table)

    s = sub.add_parser("row-medians")
    s.add_argument("file")
    s.add_argument("--ints", type=int, default=1)
    s.add_argument("--decimals", type=int, default=1)
    s.set_defaults(f=cmd_row_medians)
    s = sub.add_parser("json-median")
    s.add_argument("keys")
    s.add_argument("files", nargs="*")
    s.set_defaults(f=cmd_json_median)

    s = sub.add_parser("pgbench-parse")
    s.add_argument("file")
    s.set_defaults(f=cmd_pgbench_parse)

    s = sub.add_parser("sys-per")
    s.add_argument("file")
    s.add_argument("--per", type=float, required=True, help="the count to divide by")
    s.add_argument("--unit", default="round trip")
    s.add_argument("--label", default="process")
    s.set_defaults(f=cmd_sys_per)

    s = sub.add_parser("sys-table")
    s.add_argument("records")
    s.add_argument("--top", type=int, default=10, help="syscalls shown by name (most frequent)")
    s.add_argument("--labels", default="", help="LOAD=label;... headings of the loads")
    s.set_defaults(f=cmd_sys_table)

    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
