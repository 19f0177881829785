#!/usr/bin/env python3
"""portfwd benchmark harness.

Runs every measurement on loopback against each forwarder and writes the run into
a folder of its own, bench/results/<stamp>/: raw.csv (one line per sample),
raw.json (machine, parameters, versions), profile-*.txt and a README.md to
complete. bench/report.py turns raw.csv into docs/benchmarks.md,
docs/bench-*.png and the run's summary.csv.

Normally started by bench/run.sh, which installs peers and builds binaries.
Every server is started here in the foreground, in its own process group, with
its own config in a temp dir, and is killed by pid (process group = its pid)
when its measurement ends; an atexit/signal handler kills whatever is left.
"""
import argparse
import atexit
import csv
import ctypes
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

from rows import ROWS, ROW_TESTS  # bench/rows.py (the script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
PORTFWD = os.path.join(ROOT, "target", "release", "portfwd")
CREF = os.path.join(ROOT, "target", "reference", "server")
# sslh's one-process-per-connection build (Debian's sslh package ships it as /usr/sbin/sslh).
SSLH = next((p for p in ("/usr/sbin/sslh-fork", "/usr/sbin/sslh") if os.access(p, os.X_OK)), "sslh")
# The rows that route on the first bytes, and the name their TLS clients ask for.
ROUTED_ROWS = {"portfwd-tls", "sslh-routes"}
BENCH_SNI = "bench.example.com"
PORTFWD_ALT = None  # --alt: a second portfwd binary, the portfwd-alt row
FLOOR = None       # bench/floor.c built static into TMP by build_c() (main)

# ---------------------------------------------------------------- utilities

TMP = tempfile.mkdtemp(prefix="portfwd-bench-")
os.chmod(TMP, 0o755)
LIVE = {}          # pid -> name of every server we started and not yet stopped
USED_PORTS = set()
LOG = None


def log(*a):
    msg = " ".join(str(x) for x in a)
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)
    if LOG:
        LOG.write(f"[{stamp}] {msg}\n")
        LOG.flush()


def set_subreaper():
    """Orphans of forwarders re-parent to us (not to init) so we can reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception as e:  # pragma: no cover
        log("warning: cannot become subreaper:", e)


def reap():
    for _ in range(100000):
        try:
            pid, _st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port():
    """A port below the ephemeral range (32768+) that is free right now."""
    for _ in range(2000):
        p = random.randint(20000, 32000)
        if p in USED_PORTS:
            continue
        ok = True
        for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                s.bind((addr, p))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            USED_PORTS.add(p)
            return p
    raise RuntimeError("no free port found below 32768")


def tcp_table():
    """Yield (local_port, remote_port, state) of every IPv4/IPv6 TCP socket."""
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    yield lport, rport, parts[3]
        except FileNotFoundError:
            pass


def is_listening(port):
    return any(lp == port and st == "0A" for lp, _rp, st in tcp_table())


def established_on(port):
    """Established sockets whose local port is `port` (i.e. server side)."""
    return sum(1 for lp, _rp, st in tcp_table() if lp == port and st == "01")


def wait_listen(port, proc, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        if is_listening(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


class Server:
    """A foreground server in its own process group; stop() kills it by pid."""

    def __init__(self, name, argv, port, cwd=None):
        self.name = name
        self.port = port
        self.logpath = os.path.join(TMP, f"{name}-{port}.log")
        self.logf = open(self.logpath, "w")
        self.p = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=cwd or TMP,
                                  start_new_session=True)
        self.pid = self.p.pid
        LIVE[self.pid] = name
        if port is not None and not wait_listen(port, self.p):
            tail = self.tail()
            self.stop()
            raise RuntimeError(f"{name} did not listen on {port}: {tail}")

    def tail(self, n=600):
        try:
            with open(self.logpath) as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def procs(self):
        return session_procs(self.pid)

    def stop(self):
        if self.pid not in LIVE:
            return
        kill_group(self.pid)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        LIVE.pop(self.pid, None)
        self.logf.close()
        reap()


def kill_group(pgid):
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        end = time.time() + wait
        while time.time() < end:
            reap()
            if not session_procs(pgid, include_zombies=False):
                return
            time.sleep(0.05)


def cleanup(*_a):
    for pid in list(LIVE):
        try:
            kill_group(pid)
        except Exception:
            pass
        LIVE.pop(pid, None)
    reap()
    shutil.rmtree(TMP, ignore_errors=True)


def on_signal(sig, _frm):
    log(f"signal {sig}: cleaning up")
    cleanup()
    sys.exit(128 + sig)


def proc_stat(pid):
    """(comm, fields after the comm) of /proc/PID/stat, or None if the process is gone.
    fields[0] is the state, [3] the session, [11..14] utime stime cutime cstime."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            st = os.read(fd, 1024).decode("ascii", "replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    return st[st.find("(") + 1:st.rfind(")")], st[st.rfind(")") + 2:].split()


def all_proc_stats():
    """(pid, comm, fields) for every process on the machine."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(d)
            if st:
                yield int(d), st[0], st[1]


def session_procs(sid, include_zombies=False):
    """pids of live processes whose session id is `sid` (a server's pid)."""
    return [pid for pid, _comm, rest in all_proc_stats()
            if int(rest[3]) == sid and (include_zombies or rest[0] not in "ZX")]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(srv):
    """CPU seconds (user + system) used so far by a forwarder's session: every process still in
    it (zombies too), plus what each of them has collected from the children it reaped (cutime +
    cstime, which include their own reaped children; a connection process that reaped its pump,
    sslh's listener process that reaped its connection processes). Children reaped by someone
    else (orphans of a forwarder that does not wait) are missed."""
    ticks = 0
    for _pid, _comm, rest in all_proc_stats():
        if int(rest[3]) != srv.pid:
            continue
        ticks += sum(int(x) for x in rest[11:15])      # utime stime cutime cstime
    return ticks / CLK_TCK


def cpu_us_per(srv, cpu0, n):
    """CPU-µs of a forwarder's session per connection since `cpu0` (a `tree_cpu_s` reading),
    once the last connections' processes have had time to finish and be reaped."""
    time.sleep(0.3)
    return (tree_cpu_s(srv) - cpu0) * 1e6 / n


def build_c(name):
    """bench/NAME.c built into TMP, static when the toolchain allows; its path, or None."""
    exe = os.path.join(TMP, name)
    if os.path.exists(exe):
        return exe
    src = os.path.join(ROOT, "bench", name + ".c")
    for static in (["-static"], []):
        if run(["cc", "-O2", *static, "-o", exe, src], 60)[0] == 0:
            return exe
    return None


def fork_floor(rounds):
    """(cpu_us, wall_us) per clone+exit+wait of a trivial process (bench/forkfloor.c), or None."""
    exe = build_c("forkfloor")
    if not exe:
        return None
    rc, out, err = run([exe, str(rounds)], 120)
    if rc != 0:
        log("  forkfloor failed:", err[-300:])
        return None
    cpu, wall = (float(x) for x in out.split())
    return cpu, wall


def pss_kib(pids):
    tot = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        tot += int(line.split()[1])
                        break
        except OSError:
            pass
    return tot


def meminfo():
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0])
    pcp = 0
    with open("/proc/zoneinfo") as f:
        prev_cpu = False
        for line in f:
            t = line.strip()
            if prev_cpu and t.startswith("count:"):
                pcp += int(t.split()[1])
            prev_cpu = t.startswith("cpu:")
    m["pcp_kib"] = pcp * (os.sysconf("SC_PAGE_SIZE") // 1024)
    m["avail_adj"] = m["MemAvailable"] + m["pcp_kib"]
    m["parts"] = (m.get("AnonPages", 0) + m.get("KernelStack", 0) +
                  m.get("PageTables", 0) + m.get("Slab", 0))
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    v = line.split()
                    m["tcp_mem_kib"] = int(v[v.index("mem") + 1]) * 4
    except (OSError, ValueError):
        m["tcp_mem_kib"] = 0
    return m


def mem_sample(n=9, gap=0.05):
    """Median of n samples of each meminfo figure."""
    samples = []
    for _ in range(n):
        samples.append(meminfo())
        time.sleep(gap)
    keys = ["avail_adj", "MemAvailable", "pcp_kib", "parts", "AnonPages",
            "KernelStack", "PageTables", "Slab", "tcp_mem_kib"]
    return {k: statistics.median(s.get(k, 0) for s in samples) for k in keys}


def run(argv, timeout):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=timeout, text=True)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return -999, out, "timeout"


# ------------------------------------------------------------- forwarders


def start_forwarder(row, bport, wrap=None):
    """start_forwarder_once, retried once on a fresh port if it does not come up."""
    try:
        return start_forwarder_once(row, bport, wrap)
    except RuntimeError as e:
        log(f"  {row} did not start ({e}); retrying once on another port")
        time.sleep(1.0)
        return start_forwarder_once(row, bport, wrap)


def start_forwarder_once(row, bport, wrap=None):
    """Start forwarder `row` towards 127.0.0.1:bport; returns (Server|None, port).
    `wrap` (a list) is put in front of the command, e.g. perf record ... --."""
    if row == "direct":
        return None, bport
    lport = free_port()
    d = os.path.join(TMP, f"{row}-{lport}")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    # Every client here comes from 127.0.0.1: portfwd's default cap of 256 connections from one
    # address would refuse most of the 2,000-client and memory tests' clients (the peers have no
    # such cap), so the benchmark turns it off.
    one_source = ["--max-per-source", "off"]
    if row == "portfwd":
        argv = [PORTFWD, *one_source, str(lport), "127.0.0.1", str(bport)]
    elif row == "portfwd-alt":
        argv = [PORTFWD_ALT, *one_source, str(lport), "127.0.0.1", str(bport)]
    elif row == "portfwd-accept":
        argv = [PORTFWD, *one_source, "--dispatch", "accept", str(lport), "127.0.0.1", str(bport)]
    elif row == "portfwd-tls":
        conf = os.path.join(d, "routes.config")
        with open(conf, "w") as f:
            f.write(f"127.0.0.1:{lport} -> 127.0.0.1:{bport} when=tls:{BENCH_SNI}\n"
                    f"127.0.0.1:{lport} -> 127.0.0.1:{bport} when=http\n")
        argv = [PORTFWD, *one_source, "--config", conf]
    elif row == "sslh-routes":
        # sslh-fork (one process per connection, like portfwd); -t: its timeout route, unused.
        argv = [SSLH, "-f", "-n", "-p", f"127.0.0.1:{lport}", "--tls", f"127.0.0.1:{bport}",
                "--http", f"127.0.0.1:{bport}"]
    elif row == "cref":
        argv = [CREF, str(lport), "127.0.0.1", str(bport)]
    elif row == "floor":
        argv = [FLOOR, str(lport), str(bport)]
    elif row == "socat":
        argv = ["socat", f"TCP-LISTEN:{lport},bind=127.0.0.1,fork,reuseaddr,backlog=4096",
                f"TCP:127.0.0.1:{bport}"]
    elif row == "sslh":
        # Debian's sslh is its fork build (one process per connection); --anyprot takes
        # whatever the client sends first to the backend. -n: no reverse lookups.
        argv = [SSLH, "-f", "-n", "-p", f"127.0.0.1:{lport}", "--anyprot",
                f"127.0.0.1:{bport}"]
    elif row == "xinetd":
        # A redirect service: xinetd forks a process per connection that connects to the
        # backend and relays. Its defaults would throttle a benchmark (instances, cps), and
        # tcp wrappers would read /etc/hosts.allow per connection: all off.
        conf = os.path.join(d, "xinetd.conf")
        with open(conf, "w") as f:
            f.write(f"""defaults
{{
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
    log_on_success =
    log_on_failure =
}}
service portfwd-bench
{{
    type = UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    bind = 127.0.0.1
    port = {lport}
    redirect = 127.0.0.1 {bport}
    flags = NOLIBWRAP
}}
""")
        argv = ["xinetd", "-dontfork", "-f", conf, "-pidfile", os.path.join(d, "xinetd.pid"),
                "-filelog", os.path.join(d, "xinetd.log")]
    elif row == "rinetd":
        conf = os.path.join(d, "rinetd.conf")
        with open(conf, "w") as f:
            f.write(f"127.0.0.1 {lport} 127.0.0.1 {bport}\n")
        argv = ["rinetd", "-f", "-c", conf]
    elif row == "haproxy":
        conf = os.path.join(d, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind 127.0.0.1:{lport}
    backlog 4096
    default_backend be
backend be
    server s1 127.0.0.1:{bport}
""")
        argv = ["haproxy", "-db", "-f", conf]
    elif row == "nginx":
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 30000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 12000; }}
stream {{
    server {{
        listen 127.0.0.1:{lport} backlog=4096;
        proxy_pass 127.0.0.1:{bport};
        proxy_timeout 1h;
    }}
}}
""")
        argv = ["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf]
    else:
        raise ValueError(row)
    return Server(row, (wrap or []) + argv, lport, cwd=d), lport


# --------------------------------------------------------------- backends


def start_iperf3():
    port = free_port()
    return Server("iperf3", ["iperf3", "-s", "-p", str(port), "-B", "127.0.0.1"], port)


def start_nginx_backend():
    port = free_port()
    d = os.path.join(TMP, f"nginx-backend-{port}")
    os.makedirs(d)
    os.chmod(d, 0o755)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 30000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 12000; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
    client_header_timeout 3600s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "hello from the backend\\n"; }}
    }}
}}
""")
    return Server("nginx-backend", ["nginx", "-p", d, "-e", os.path.join(d, "error.log"),
                                    "-c", conf], port, cwd=d)


def start_redis():
    port = free_port()
    d = os.path.join(TMP, f"redis-{port}")
    os.makedirs(d)
    conf = os.path.join(d, "redis.conf")
    with open(conf, "w") as f:
        f.write(f"""bind 127.0.0.1
port {port}
daemonize no
protected-mode no
save ""
appendonly no
maxclients 20000
tcp-backlog 4096
timeout 0
dir {d}
logfile ""
""")
    return Server("redis", ["redis-server", conf], port, cwd=d)


# ----------------------------------------------------------- measurements

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk_ms(tok):
    m = re.match(r"([\d.]+)(us|ms|s)$", tok)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else None


def wrk(port, conns, dur, close):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/")
    rc, out, err = run(argv, dur + 30)
    res = {"rc": rc}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rate"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res["p" + pct] = _wrk_ms(m.group(1)) if m else None
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        # with Connection: close, a read error is how wrk sees an orderly close
        # racing a new request; count connect/write/timeout and non-2xx.
        errs += int(m.group(1)) + int(m.group(3)) + int(m.group(4))
        res["read_errors"] = int(m.group(2))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    res["errors"] = errs
    if not res["rate"]:
        res["p50"] = res["p99"] = None   # no request completed: no latency
    if res["rate"] is None:
        log("  wrk failed:", rc, out[-300:], err[-300:])
    return res


def iperf3(port, streams, dur):
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(dur), "-J",
            "--connect-timeout", "5000"]
    if streams > 1:
        argv += ["-P", str(streams)]
    rc, out, err = run(argv, dur + 30)
    try:
        j = json.loads(out)
        return j["end"]["sum_received"]["bits_per_second"] / 1e9
    except Exception:
        log("  iperf3 failed:", rc, out[-400:], err[-300:])
        return None


def redis_bench(port, clients, n):
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients),
            "-n", str(n), "-t", "get", "--csv"]
    t0 = time.time()
    rc, out, err = run(argv, 120)
    wall = time.time() - t0
    rate = None
    for line in out.splitlines():
        parts = [p.strip('"') for p in line.split(",")]
        if parts and parts[0] == "GET" and len(parts) > 1:
            try:
                rate = float(parts[1])
            except ValueError:
                pass
    text = out + "\n" + err
    errs = len([l for l in text.splitlines()
                if re.search(r"error|could not connect|reset|refused|timeout", l, re.I)])
    if rc != 0 and errs == 0:
        errs = 1
    if rate is None:
        log("  redis-benchmark failed:", rc, text[-400:])
    return {"rate": rate, "errors": errs, "rc": rc, "wall": wall}


def client_hello(name):
    """The first bytes a TLS client sends asking for `name` (Python's ssl, into a memory BIO)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def first_byte(port_of_row, lst, samples, deadline, payload=b"x"):
    """Latency from the client's first bytes (`payload`, sent right after
    connect() returns) until the backend (our listener `lst`) has read the
    first of them."""
    out = []
    for _ in range(samples):
        if time.time() > deadline:
            break
        c = socket.create_connection(("127.0.0.1", port_of_row), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        c.sendall(payload)
        try:
            b, _ = lst.accept()
            b.settimeout(5)
            got = b.recv(1)
            t1 = time.perf_counter()
            if got == payload[:1]:
                out.append((t1 - t0) * 1000.0)
            b.close()
        except socket.timeout:
            pass
        c.close()
        time.sleep(0.003)
    return out


def idle_memory(row, bport, nconn, settle):
    """Open nconn connections through `row` to the nginx backend on bport,
    send one byte on each, then measure memory; close and count leftovers."""
    srv, port = start_forwarder(row, bport)
    res = {}
    socks = []
    try:
        time.sleep(settle)
        reap()
        procs0 = srv.procs() if srv else []
        pss0 = pss_kib(procs0)
        base_est = established_on(bport)
        m0 = mem_sample()
        t0 = time.time()
        for i in range(nconn):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"G")
                socks.append(s)
            except OSError as e:
                res.setdefault("open_errors", 0)
                res["open_errors"] = res["open_errors"] + 1
                if res["open_errors"] > 50:
                    break
        # wait (bounded) until the backend holds all of them
        end = time.time() + 30
        while time.time() < end and established_on(bport) - base_est < len(socks):
            time.sleep(0.1)
        held = established_on(bport) - base_est
        res["open_s"] = time.time() - t0
        # wait for the forwarder's process count to settle
        if srv:
            last, stable_since = -1, time.time()
            end = time.time() + 20
            while time.time() < end:
                n = len(srv.procs())
                if n != last:
                    last, stable_since = n, time.time()
                elif time.time() - stable_since > 1.0:
                    break
                time.sleep(0.5)
        time.sleep(settle)
        m1 = mem_sample()
        procs1 = srv.procs() if srv else []
        pss1 = pss_kib(procs1)
        res["held"] = held
        res["procs_held"] = len(procs1)
        nc = max(len(socks), 1)
        res["sys_kib_per_conn"] = (m0["avail_adj"] - m1["avail_adj"]) / nc
        res["raw_avail_kib_per_conn"] = (m0["MemAvailable"] - m1["MemAvailable"]) / nc
        res["parts_kib_per_conn"] = (m1["parts"] - m0["parts"]) / nc
        res["tcpmem_kib_per_conn"] = (m1["tcp_mem_kib"] - m0["tcp_mem_kib"]) / nc
        res["pss_kib_per_conn"] = (pss1 - pss0) / nc if srv else None
        for k in ("AnonPages", "KernelStack", "PageTables", "Slab"):
            res[k.lower() + "_kib_per_conn"] = (m1[k] - m0[k]) / nc
        for s in socks:
            s.close()
        socks = []
        # wait (bounded) for the backend to see them close; give up early when
        # the count stops moving (a forwarder that never passes the FIN on)
        end = time.time() + 30
        last, stable_since = -1, time.time()
        while time.time() < end:
            n = established_on(bport)
            if n <= base_est:
                break
            if n != last:
                last, stable_since = n, time.time()
            elif time.time() - stable_since > 3.0:
                break
            time.sleep(0.1)
        res["still_established"] = max(0, established_on(bport) - base_est)
        if srv:
            last, stable_since = -1, time.time()
            end = time.time() + 15
            while time.time() < end:
                reap()
                n = len(srv.procs())
                if n != last:
                    last, stable_since = n, time.time()
                elif time.time() - stable_since > 1.5:
                    break
                time.sleep(0.5)
            res["leftover_procs"] = len(srv.procs()) - len(procs0)
        else:
            res["leftover_procs"] = None
        # Drift check: memory once the forwarder is gone too. Other work on the
        # machine moves MemAvailable; held - mean(before, after) cancels a
        # linear drift.
        if srv:
            srv.stop()
        time.sleep(settle)
        m2 = mem_sample()
        res["sys_drift_corr_kib_per_conn"] = (
            (m0["avail_adj"] + m2["avail_adj"]) / 2 - m1["avail_adj"]) / nc
    finally:
        for s in socks:
            s.close()
        if srv:
            srv.stop()
    return res


# ----------------------------------------------------------------- profile


def perf_by_syscall(data, freq, reqs, unit="connection"):
    """From `perf script` call chains: for each process name (comm), which
    syscall (or page fault) each sample was under; returns report lines."""
    rc, out, _err = run(["perf", "script", "-i", data, "-F", "comm,ip,sym"], 300)
    if rc != 0 or not out:
        return []
    from collections import Counter
    tot, by = Counter(), Counter()
    comm, frames = None, []

    def flush():
        if comm is None:
            return
        tot[comm] += 1
        key = "user space / other"
        for f in frames:
            m = re.match(r"__(?:x64|do)_sys_(\w+)", f)
            if m:
                key = "syscall " + m.group(1)
                break
            if "exc_page_fault" in f:
                key = "page fault"
                break
            if f in ("ret_from_fork", "schedule_tail", "ret_from_fork_asm"):
                key = "return from fork"
                break
        by[(comm, key)] += 1
    for line in out.splitlines():
        if not line.strip():
            flush()
            comm, frames = None, []
        elif not line[0].isspace():
            flush()
            comm, frames = line.split()[0], []
        else:
            p = line.split()
            if len(p) >= 2:
                frames.append(p[1].split("+")[0])
    flush()
    lines = []
    for c, t in tot.most_common(8):
        lines.append(f"{c}: {t} samples" + (f" = {t / freq * 1e6 / reqs:.0f} CPU-us per "
                                             f"{unit}" if reqs else ""))
        for (cc, k), v in by.most_common():
            if cc == c and v / t >= 0.02:
                lines.append(f"    {v / t * 100:5.1f}%  {k}")
    return lines


def other_procs_named(prefixes, exclude_sid):
    """Processes with these name prefixes that are not the forwarder's (other
    work on the shared machine, which a system-wide profile would mix in)."""
    return sum(1 for _pid, comm, rest in all_proc_stats()
               if comm.startswith(prefixes) and int(rest[3]) != exclude_sid)


def profile(row, kind, bport, dur, outdir):
    """Where the CPU goes while forwarder `row` carries one workload.

    perf: `perf record -a -g` over the whole machine in the middle of the load
    (sampling the forwarder's processes with inheritance under-counts
    short-lived children, e.g. their exit), attributed by process name.
    strace (kind ending in -strace): the forwarder runs under `strace -f -c`."""
    tool = "strace" if kind.endswith("-strace") else "perf"
    if not shutil.which(tool):
        return None
    load_kind = kind.replace("-strace", "")
    data = os.path.join(TMP, f"{tool}-{row}-{kind}.out")
    freq = 499
    wrap = ["strace", "-f", "-c", "-o", data, "--"] if tool == "strace" else None
    srv, port = start_forwarder(row, bport, wrap=wrap)
    path = os.path.join(outdir, f"profile-{row}-{kind}.txt")
    prefixes = ("portfwd",) if row == "portfwd" else (row,)
    try:
        time.sleep(0.5)
        if load_kind == "connrate":
            load = ["wrk", "-t1", "-c32", f"-d{dur}s", "-H", "Connection: close",
                    f"http://127.0.0.1:{port}/"]
        elif load_kind == "keepalive":
            load = ["wrk", "-t1", "-c8", f"-d{dur}s", "--latency",
                    f"http://127.0.0.1:{port}/"]
        else:
            load = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(dur)]
        others0 = other_procs_named(prefixes, srv.pid)
        loadp = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True)
        window = max(1, dur - 2)
        rec_err = ""
        stat_err = ""
        if tool == "perf":
            time.sleep(1.0)
            _rc, _o, rec_err = run(["perf", "record", "-a", "-g", "-F", str(freq), "-o", data,
                                    "--", "sleep", str(window)], window + 60)

        try:
            load_out, _ = loadp.communicate(timeout=dur + 30)
        except subprocess.TimeoutExpired:
            loadp.kill()
            load_out, _ = loadp.communicate()
        others1 = other_procs_named(prefixes, srv.pid)
        if tool == "strace":
            try:
                os.kill(srv.pid, signal.SIGINT)
                srv.p.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        srv.stop()
        reqs = None
        m = re.search(r"(\d+) requests in", load_out)
        if m:
            reqs = int(m.group(1))
        rps = None
        m = re.search(r"Requests/sec:\s+([\d.]+)", load_out)
        if m:
            rps = float(m.group(1))
        with open(path, "w") as f:
            if tool == "strace":
                f.write(f"# {row} under `{' '.join(load[:-1])} ...` for {dur}s; the forwarder "
                        f"ran under `strace -f -c` (follows forks; slows it down)\n")
            else:
                f.write(f"# {row} under `{' '.join(load[:-1])} ...` for {dur}s; "
                        f"`perf record -a -g -F {freq}` over the whole machine for {window}s "
                        f"in the middle of it\n")
            f.write(f"# other processes named {'/'.join(prefixes)}* on the machine (not this "
                    f"forwarder's): {others0} before, {others1} after\n")
            f.write("## load generator output\n" + load_out[-1200:] + "\n")
            if stat_err:
                f.write("## perf stat -a for 1 s right after the sampling window (whole "
                        "machine)\n" + stat_err.strip() + "\n")
            if tool == "strace":
                try:
                    txt = open(data).read()
                except OSError:
                    txt = "(no strace output)"
                f.write(f"## strace -f -c of the forwarder's processes"
                        f"{f' ({reqs} requests, one connection each)' if reqs else ''}\n")
                f.write(txt + "\n")
            else:
                conns = rps * window if rps else None
                _rc, repc, _ = run(["perf", "report", "-i", data, "--no-children", "-n",
                                    "--stdio", "--sort", "comm", "-g", "none"], 180)
                _rc, rep, _ = run(["perf", "report", "-i", data, "--no-children",
                                   "--stdio", "--sort", "comm,dso,sym", "-g", "none",
                                   "--percent-limit", "0.8"], 180)
                total = mine = 0
                rows_c = []
                for l in repc.splitlines():
                    v = l.split()
                    if len(v) >= 3 and v[0].endswith("%") and v[1].isdigit():
                        total += int(v[1])
                        if v[2].startswith(prefixes):
                            mine += int(v[1])
                        rows_c.append((l, int(v[1])))
                f.write(f"## all samples: {total} at {freq} Hz = {total / freq:.2f} CPU-s in "
                        f"{window} s on {os.cpu_count()} CPUs; processes named "
                        f"{'/'.join(prefixes)}*: {mine / freq:.2f} CPU-s")
                if conns:
                    unit = "request" if load_kind == "keepalive" else "new connection"
                    f.write(f"; at {rps:.0f} {unit}s/s that is "
                            f"{mine / freq * 1e6 / conns:.0f} CPU-us per {unit}")
                unit = "request" if load_kind == "keepalive" else "new connection"
                f.write("\n## perf report --sort comm (percent, samples"
                        + (f", CPU-us per {unit}" if conns else "") + ")\n")
                for l, n in rows_c[:12]:
                    if conns:
                        l += (f"   {n / freq * 1e6 / conns:8.1f} us/"
                              + ("request" if load_kind == "keepalive" else "conn"))
                    f.write(l + "\n")
                f.write("## where each process kind spends its samples (syscall or page "
                        "fault the sample was under, from the call chains)\n")
                f.write("\n".join(perf_by_syscall(
                    data, freq, conns, "request" if load_kind == "keepalive" else "connection"))
                    + "\n")
                f.write("## perf report --sort comm,dso,sym (>= 0.8% of all samples)\n")
                f.write("\n".join([l for l in rep.splitlines()
                                   if l.strip() and not l.startswith("#")][:45]) + "\n")
        log(f"  profile written: {os.path.relpath(path, ROOT)}")
    finally:
        srv.stop()
        try:
            os.unlink(data)
        except OSError:
            pass
    return path


# -------------------------------------------------------------------- main


def write_readme(run_dir, meta):
    """The run's README: the facts bench.py knows; what the run showed is for a person to add."""
    mib = (meta.get("mem_total_kib") or 0) // 1024
    lines = [
        f"# Run {meta['date_utc']}",
        "",
        f"- **What**: {'quick' if meta['quick'] else 'full'} benchmark run (bench/bench.py, "
        f"{meta['params']['reps']} repetition(s)); rows {', '.join(meta['rows'])}.",
        f"- **portfwd**: {meta.get('git_rev') or '(no commit)'}.",
        f"- **Machine**: {meta.get('ncpu')} CPUs ({meta.get('cpu')}), {mib} MiB, "
        f"Linux {meta.get('kernel')}.",
        "- **What it showed**: (to write: the figures that matter, or see analysis.md).",
        "- **Files**: `raw.csv`, `raw.json`"
        + (", `profile-*.txt`" if meta.get("profiles") else "")
        + "; `summary.csv` once bench/report.py has run.",
    ]
    with open(os.path.join(run_dir, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")



def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (1-2 min)")
    ap.add_argument("--rows", default=",".join(r for r in ROWS if r != "portfwd-alt"),
                    help="comma-separated subset of: " + ",".join(ROWS))
    ap.add_argument("--tests", default="iperf,connrate,keepalive,redis,firstbyte,forkfloor,memory,profile",
                    help="comma-separated subset of tests; add 'strace' for an strace -f -c "
                         "profile of portfwd (slow)")
    ap.add_argument("--portfwd", default=None, metavar="PATH",
                    help="portfwd binary to measure (default target/release/portfwd)")
    ap.add_argument("--alt", default=None, metavar="PATH",
                    help="a second portfwd binary, measured as the row portfwd-alt "
                         "(interleaved with portfwd: for comparing two builds)")
    ap.add_argument("--reps", type=int, default=None, metavar="N",
                    help="repetitions of every test (default 3, 1 with --quick; keep-alive "
                         "5, 2 with --quick)")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="the run's folder (default bench/results/<stamp>/, <stamp>-quick/ "
                         "with --quick)")
    args = ap.parse_args()
    global LOG, PORTFWD, CREF, FLOOR, PORTFWD_ALT
    if args.portfwd:
        PORTFWD = os.path.abspath(args.portfwd)

    q = args.quick
    P = {
        "reps": 1 if q else 3,
        # p99 of a 3-second run moves by more than the target's margin from one repetition to
        # the next: more repetitions, the median of them.
        "ka_reps": 2 if q else 5,
        "iperf_dur": 1 if q else 2,
        "wrk_dur": 1 if q else 3,
        "wrk_close_conns": 32,
        "wrk_ka_conns": 8,
        "redis_clients": 2000,
        "redis_n": 10000 if q else 20000,
        "fb_samples": 40 if q else 300,
        "mem_conns": 500 if q else 2000,
        "mem_reps": 1 if q else 3,
        "profile_dur": 4 if q else 5,
        "fork_rounds": 1000 if q else 3000,
    }
    if args.reps:
        P["reps"] = P["mem_reps"] = P["ka_reps"] = args.reps
    notes = []
    rows = [r for r in args.rows.split(",") if r]
    if args.alt and not os.access(args.alt, os.X_OK):
        sys.exit(f"--alt {args.alt}: not an executable")
    if args.alt:
        PORTFWD_ALT = os.path.abspath(args.alt)
        if "portfwd-alt" not in rows:
            rows.insert(rows.index("portfwd") + 1 if "portfwd" in rows else 0, "portfwd-alt")
    elif "portfwd-alt" in rows:
        notes.append("portfwd-alt: no --alt binary given, row skipped")
        rows.remove("portfwd-alt")
    tests = set(t for t in args.tests.split(",") if t)
    if q:
        tests.discard("profile")
    for r in ("portfwd", "portfwd-accept", "portfwd-tls"):
        if r in rows and not os.access(PORTFWD, os.X_OK):
            notes.append(f"{r}: target/release/portfwd missing, row skipped")
            rows.remove(r)
    if "cref" in rows and not os.access(CREF, os.X_OK):
        notes.append("cref: harness/reference/server.c not built (source missing or build "
                     "failed), row skipped")
        rows.remove("cref")
    if "floor" in rows:
        FLOOR = build_c("floor")
        if not FLOOR:
            notes.append("floor: bench/floor.c did not build (cc missing?), row skipped")
            rows.remove("floor")
    for r, exe in (("socat", "socat"), ("rinetd", "rinetd"), ("haproxy", "haproxy"),
                   ("nginx", "nginx"), ("sslh", SSLH), ("sslh-routes", SSLH), ("xinetd", "xinetd")):
        if r in rows and not shutil.which(exe):
            notes.append(f"{r}: {exe} not installed, row skipped")
            rows.remove(r)

    # Run from a copy, so a rebuild during the run cannot swap the binary under us.
    bins = {}
    for name, path in (("portfwd", PORTFWD), ("cref", CREF), ("portfwd-alt", PORTFWD_ALT)):
        if name in rows or (name == "portfwd" and "portfwd-accept" in rows):
            st = os.stat(path)
            os.makedirs(os.path.join(TMP, "bin"), exist_ok=True)
            dst = os.path.join(TMP, "bin", {"portfwd": "portfwd", "cref": "server"}.get(name, name))
            shutil.copy2(path, dst)
            bins[name] = {"path": os.path.relpath(path, ROOT) if path.startswith(ROOT)
                          else path, "size": st.st_size,
                          "mtime_utc": datetime.datetime.fromtimestamp(
                              st.st_mtime, datetime.timezone.utc).strftime("%H:%M:%S")}
            if name == "portfwd":
                PORTFWD = dst
            elif name == "cref":
                CREF = dst
            else:
                PORTFWD_ALT = dst
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(args.out or os.path.join(RESULTS, stamp + ("-quick" if q else "")))
    os.makedirs(run_dir, exist_ok=True)
    raw_path = os.path.join(run_dir, "raw.csv")
    LOG = open(os.path.join(TMP, "bench.log"), "w")
    nofile = raise_nofile()
    set_subreaper()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    # the sources the binary was built from: taken at the start of the run
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True).stdout.strip()
        if dirty:
            rev += " + uncommitted changes in src/"
    except Exception:
        rev = ""
    if args.portfwd:
        rev = f"(binary given with --portfwd: {args.portfwd})"
    t_start = time.time()
    load_start = open("/proc/loadavg").read().strip()
    procs_start = sum(1 for d in os.listdir("/proc") if d.isdigit())
    log(f"rows: {rows}; tests: {sorted(tests)}; params: {P}; nofile: {nofile}")
    for n in notes:
        log("note:", n)

    fcsv = open(raw_path, "w", newline="")
    w = csv.writer(fcsv)
    w.writerow(["row", "metric", "rep", "value", "unit"])

    def rec(row, metric, rep, value, unit):
        if value is None:
            return
        w.writerow([row, metric, rep, f"{value:.6g}" if isinstance(value, float) else value,
                    unit])
        fcsv.flush()

    def each_rep(name, fn, reps):
        """Interleave rows inside each repetition, so slow drifts in machine
        load hit every row alike."""
        for rep in range(reps):
            order = rows[:]
            if rep % 2:
                order.reverse()
            for row in order:
                if row in ROW_TESTS and name not in ROW_TESTS[row]:
                    continue
                try:
                    fn(row, rep)
                except Exception as e:
                    log(f"  {name} {row} rep {rep}: ERROR {e}")
                    rec(row, f"{name}_failed", rep, 1, "count")

    # -- bulk throughput
    if "iperf" in tests:
        log("== iperf3 bulk throughput")

        def t_iperf(row, rep):
            for streams in (1, 4):
                ip = start_iperf3()
                srv = None
                try:
                    srv, port = start_forwarder(row, ip.port)
                    g = iperf3(port, streams, P["iperf_dur"])
                    log(f"  {row:8s} rep {rep} {streams} stream(s): {g} Gbit/s")
                    rec(row, f"tput{streams}_gbps", rep, g, "Gbit/s")
                finally:
                    if srv:
                        srv.stop()
                    ip.stop()
        each_rep("iperf", t_iperf, P["reps"])

    web = start_nginx_backend() if tests & {"connrate", "keepalive", "memory", "profile"} else None

    if "connrate" in tests:
        log("== wrk, Connection: close (new connection per request)")

        def t_close(row, rep):
            srv, port = start_forwarder(row, web.port)
            cpu = None
            try:
                cpu0 = tree_cpu_s(srv) if srv else None
                r = wrk(port, P["wrk_close_conns"], P["wrk_dur"], close=True)
                if srv and r.get("requests"):
                    cpu = cpu_us_per(srv, cpu0, r["requests"])
            finally:
                if srv:
                    srv.stop()
            r["cpu_us_per_conn"] = None if cpu is None else round(cpu, 1)
            log(f"  {row:8s} rep {rep}: {r}")
            rec(row, "connrate_rps", rep, r["rate"], "req/s")
            rec(row, "connrate_cpu_us", rep, cpu, "CPU-us/conn")
            rec(row, "connrate_errors", rep, r["errors"], "count")
            rec(row, "connrate_read_errors", rep, r.get("read_errors"), "count")
        each_rep("connrate", t_close, P["reps"])

    if "keepalive" in tests:
        log("== wrk --latency, kept-alive connections")

        def t_ka(row, rep):
            srv, port = start_forwarder(row, web.port)
            try:
                r = wrk(port, P["wrk_ka_conns"], P["wrk_dur"], close=False)
            finally:
                if srv:
                    srv.stop()
            log(f"  {row:8s} rep {rep}: {r}")
            if srv and (not r["rate"] or r["errors"]):
                log(f"  {row} log tail: {srv.tail(300)!r}")
            rec(row, "ka_rps", rep, r["rate"], "req/s")
            rec(row, "ka_p50_ms", rep, r["p50"], "ms")
            rec(row, "ka_p99_ms", rep, r["p99"], "ms")
            rec(row, "ka_errors", rep, r["errors"], "count")
        each_rep("keepalive", t_ka, P["ka_reps"])

    if "redis" in tests:
        log(f"== redis-benchmark, {P['redis_clients']} concurrent clients")
        rds = start_redis()

        def t_redis(row, rep):
            srv, port = start_forwarder(row, rds.port)
            try:
                time.sleep(0.5)
                r = redis_bench(port, P["redis_clients"], P["redis_n"])
            finally:
                if srv:
                    srv.stop()
            log(f"  {row:8s} rep {rep}: {r}")
            if srv and (not r["rate"] or r["errors"]):
                log(f"  {row} log tail: {srv.tail(300)!r}")
            rec(row, "redis_rps", rep, r["rate"], "req/s")
            rec(row, "redis_wall_s", rep, r["wall"], "s")
            rec(row, "redis_errors", rep, r["errors"], "count")
            time.sleep(1.0)  # let the backend drop the closed clients
        try:
            each_rep("redis", t_redis, P["reps"])
        finally:
            rds.stop()

    if "firstbyte" in tests:
        log("== first byte: client send() -> backend recv()")
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lport = free_port()
        lst.bind(("127.0.0.1", lport))
        lst.listen(1024)
        lst.settimeout(5)

        def t_fb(row, rep):
            srv, port = start_forwarder(row, lport)
            cpu = None
            try:
                time.sleep(0.5)
                cpu0 = tree_cpu_s(srv) if srv else None
                # The routed rows get what a TLS client says first; the rest one byte.
                payload = client_hello(BENCH_SNI) if row in ROUTED_ROWS else b"x"
                s = first_byte(port, lst, P["fb_samples"], time.time() + 30, payload)
                if srv and s:
                    cpu = cpu_us_per(srv, cpu0, len(s))
            finally:
                if srv:
                    srv.stop()
            if s:
                log(f"  {row:8s} rep {rep}: n={len(s)} median {statistics.median(s):.3f} ms"
                    + ("" if cpu is None else f", {cpu:.0f} CPU-us per connection"))
            for v in s:
                rec(row, "firstbyte_ms", rep, v, "ms")
            rec(row, "firstbyte_cpu_us", rep, cpu, "CPU-us/conn")
        each_rep("firstbyte", t_fb, P["reps"])
        lst.close()

    if "forkfloor" in tests:
        log("== fork floor: clone + exit + wait of a trivial process (bench/forkfloor.c)")
        for rep in range(P["reps"]):
            ff = fork_floor(P["fork_rounds"])
            log(f"  rep {rep}: {ff} (cpu_us, wall_us per round)")
            if ff:
                rec("direct", "forkfloor_cpu_us", rep, ff[0], "CPU-us")
                rec("direct", "forkfloor_wall_us", rep, ff[1], "us")

    if "memory" in tests:
        log(f"== {P['mem_conns']} idle connections: memory and leftovers")

        def t_mem(row, rep):
            r = idle_memory(row, web.port, P["mem_conns"], 1.0)
            log(f"  {row:8s} rep {rep}: " + ", ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
            for k, unit in (("sys_kib_per_conn", "KiB"), ("raw_avail_kib_per_conn", "KiB"),
                            ("sys_drift_corr_kib_per_conn", "KiB"),
                            ("parts_kib_per_conn", "KiB"), ("tcpmem_kib_per_conn", "KiB"),
                            ("pss_kib_per_conn", "KiB"), ("leftover_procs", "count"),
                            ("anonpages_kib_per_conn", "KiB"), ("kernelstack_kib_per_conn", "KiB"),
                            ("pagetables_kib_per_conn", "KiB"), ("slab_kib_per_conn", "KiB"),
                            ("procs_held", "count"), ("held", "count"),
                            ("still_established", "count"), ("open_errors", "count")):
                rec(row, "mem_" + k, rep, r.get(k), unit)
            time.sleep(1.0)
        each_rep("memory", t_mem, P["mem_reps"])

    profiles = []
    if "profile" in tests:
        log("== profiles (perf record -a -g during the load) for portfwd and haproxy")
        for row in [r for r in ("portfwd", "haproxy") if r in rows]:
            kinds = ("connrate", "tput1", "keepalive") + (("connrate-strace",) if row == "portfwd"
                                             and "strace" in tests else ())
            for kind in kinds:
                try:
                    if kind == "tput1":
                        ip = start_iperf3()
                        try:
                            p = profile(row, kind, ip.port, P["profile_dur"], run_dir)
                        finally:
                            ip.stop()
                    else:
                        dur = P["profile_dur"] if "strace" not in kind else 2
                        p = profile(row, kind, web.port, dur, run_dir)
                    if p:
                        profiles.append(os.path.relpath(p, ROOT))
                except Exception as e:
                    log(f"  profile {row} {kind}: ERROR {e}")

    if web:
        web.stop()
    fcsv.close()

    def ver(argv):
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=10)
            return p.stdout.strip().splitlines()[0] if p.stdout.strip() else ""
        except Exception:
            return ""
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    meta = {
        "date_utc": stamp,
        "duration_s": round(time.time() - t_start),
        "quick": q,
        "params": P,
        "rows": rows,
        "notes": notes,
        "profiles": profiles,
        "kernel": platform.release(),
        "cpu": cpu,
        "ncpu": os.cpu_count(),
        "mem_total_kib": meminfo().get("MemTotal"),
        "loadavg_start": load_start,
        "loadavg_end": open("/proc/loadavg").read().strip(),
        "procs_start": procs_start,
        "procs_end": sum(1 for d in os.listdir("/proc") if d.isdigit()),
        "git_rev": rev,
        "binaries": bins,
        "versions": {
            "socat": ver(["socat", "-V"])[:80] if shutil.which("socat") else "",
            "haproxy": ver(["haproxy", "-v"]),
            "nginx": ver(["nginx", "-v"]),
            "rinetd": ver(["rinetd", "-v"]),
            "iperf3": ver(["iperf3", "--version"]),
            "wrk": ver(["wrk", "--version"]),
            "redis": ver(["redis-server", "--version"]),
            "sslh": ver(["sslh", "-V"]) if shutil.which("sslh") else "",
            "xinetd": ("xinetd " + ver(["xinetd", "-version"])) if shutil.which("xinetd")
            else "",
        },
    }
    # socat -V prints a banner first; find the version line
    try:
        sv = subprocess.run(["socat", "-V"], stdout=subprocess.PIPE, text=True).stdout
        m = re.search(r"socat version (\S+)", sv)
        meta["versions"]["socat"] = "socat " + m.group(1) if m else meta["versions"]["socat"]
    except Exception:
        pass
    with open(os.path.join(run_dir, "raw.json"), "w") as f:
        json.dump(meta, f, indent=1)
    write_readme(run_dir, meta)
    shown = os.path.relpath(run_dir, ROOT) if run_dir.startswith(ROOT + os.sep) else run_dir
    log(f"done in {meta['duration_s']} s; results: {shown}/")
    print(run_dir)


if __name__ == "__main__":
    main()
