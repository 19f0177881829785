#!/usr/bin/env python3
"""How portfwd's costs grow with the number of listeners: start-up time, the main process's
memory, and the cost of creating a connection process, for 1 and for 1,000 listeners (one
config line each: a port range). Prints a Markdown table for docs/benchmarks.md ("Many
listeners"). Usage: bench/listeners.py [PORTFWD] [CONNECTIONS]"""
import os, socket, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/portfwd"
CONNS = int(sys.argv[2]) if len(sys.argv) > 2 else 500

def echo_backend():
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(512)
    def serve(c):
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
        c.close()
    def loop():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]

def free_block(n, start=20000):
    p = start
    while p + n < 32768:
        held = []
        try:
            for i in range(n):
                s = socket.socket(); s.bind(("127.0.0.1", p + i)); held.append(s)
            for s in held: s.close()
            return p
        except OSError:
            for s in held: s.close()
            p += len(held) + 1
    raise SystemExit("no free block")

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def measure(n, backend):
    first = free_block(n)
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "setup.config")
    open(cfg, "w").write(f"127.0.0.1:{first}-{first + n - 1} -> 127.0.0.1:{backend}\n")
    t0 = time.monotonic()
    p = subprocess.Popen([BIN, "--config", cfg], stderr=subprocess.DEVNULL)
    last = first + n - 1
    while True:
        try:
            socket.create_connection(("127.0.0.1", last)).close(); break
        except OSError:
            if time.monotonic() - t0 > 30: raise
            time.sleep(0.001)
    startup = (time.monotonic() - t0) * 1000
    time.sleep(0.5)  # let that first connection end
    rss = rss_kib(p.pid)
    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    t1 = time.monotonic()
    for i in range(CONNS):
        c = socket.create_connection(("127.0.0.1", first + (i % n)))
        c.sendall(b"x"); c.recv(1); c.close()
    per_conn = (time.monotonic() - t1) * 1e6 / CONNS
    p.terminate(); p.wait()
    return startup, rss, fds, per_conn

backend = echo_backend()
print(f"| listeners | start-up ms (until the last listener accepts) | main RSS KiB | main descriptors | µs per connection ({CONNS} sequential, 1 byte echoed) |")
print("|---|---|---|---|---|")
for n in (1, 1000, 1, 1000):
    s, r, f, c = measure(n, backend)
    print(f"| {n} | {s:.0f} | {r} | {f} | {c:.0f} |")
