#!/usr/bin/env python3
"""A one-hop TCP relay for scripts/splice-probe.sh: copy (recv_into + send) or splice
(socket -> pipe -> socket, no user-space copy) in the client->target direction.

Usage: splice-relay.py copy|splice LISTEN_PORT TARGET_PORT CONNECTIONS

Accepts CONNECTIONS connections on 127.0.0.1:LISTEN_PORT (iperf3: its control connection and
one per stream), relays each to 127.0.0.1:TARGET_PORT in a child process (target->client
always copies: iperf3's replies are small), and exits when all are done, printing its CPU seconds (its own and its children's). An alarm bounds the
whole run to 300 s.
"""
import fcntl
import os
import resource
import signal
import socket
import sys

F_SETPIPE_SZ = 1031
READ = 256 * 1024


def copy_up(c, t):
    buf = bytearray(READ)
    mv = memoryview(buf)
    while True:
        n = c.recv_into(buf)
        if n == 0:
            return
        t.sendall(mv[:n])


def splice_up(c, t):
    r, w = os.pipe()
    size = int(os.environ.get("SPLICE_PIPE", str(1024 * 1024)))
    fcntl.fcntl(r, F_SETPIPE_SZ, size)
    cf, tf = c.fileno(), t.fileno()
    while True:
        n = os.splice(cf, w, size)
        if n == 0:
            return
        while n:
            n -= os.splice(r, tf, n)


def relay(mode, c, t):
    for s in (c, t):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if os.fork() == 0:
        buf = bytearray(65536)
        try:
            while True:
                n = t.recv_into(buf)
                if n == 0:
                    break
                c.sendall(memoryview(buf)[:n])
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        os._exit(0)
    try:
        (copy_up if mode == "copy" else splice_up)(c, t)
        t.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    os.wait()
    os._exit(0)


def main():
    mode, lport, tport, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if mode not in ("copy", "splice"):
        sys.exit("mode: copy or splice")
    signal.alarm(300)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", lport))
    ls.listen(16)
    children = []
    for _ in range(conns):
        c, _ = ls.accept()
        t = socket.create_connection(("127.0.0.1", tport), timeout=10)
        t.settimeout(None)
        pid = os.fork()
        if pid == 0:
            signal.alarm(300)
            ls.close()
            relay(mode, c, t)
        children.append(pid)
        c.close()
        t.close()
    ls.close()
    for pid in children:
        os.waitpid(pid, 0)
    # CPU seconds of the relay: its own and every child's (each child waited for its own).
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime:.3f}")


if __name__ == "__main__":
    main()
