#!/usr/bin/env python3
"""Turn a run of bench/bench.py into docs/benchmarks.md, docs/bench-*.png and
the run's summary.csv.

usage: report.py [RUN]

RUN is a run's folder, bench/results/<stamp>/, or its raw.csv (default: the
newest run in bench/results/). The run's analysis.md, if someone wrote one, is
included as its analysis section; its profile-*.txt are excerpted; bench/levers.md
(what each performance lever was measured to be worth) is included as "Levers".
"""
import argparse
import csv
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

from rows import FORKING_PEERS, LABELS, ROWS, SHORT  # bench/rows.py (the script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
DOCS = os.path.join(ROOT, "docs")


def load(raw):
    samples = defaultdict(list)
    with open(raw) as f:
        for r in csv.DictReader(f):
            samples[(r["row"], r["metric"])].append(float(r["value"]))
    return samples


def pct(vals, p):
    v = sorted(vals)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(samples):
    s = {}
    for (row, metric), vals in samples.items():
        if metric == "firstbyte_ms":
            s[(row, "firstbyte_p50_ms")] = pct(vals, 50)
            s[(row, "firstbyte_p99_ms")] = pct(vals, 99)
            s[(row, "firstbyte_n")] = len(vals)
        elif metric.endswith("_errors") or metric in ("mem_leftover_procs", "mem_open_errors",
                                                      "mem_still_established"):
            s[(row, metric)] = max(vals)          # worst repetition
            s[(row, metric + "_sum")] = sum(vals)
        else:
            s[(row, metric)] = statistics.median(vals)
        s[(row, metric + "_reps")] = len(vals)
    return s


def fmt(v, nd=None):
    if v is None:
        return "–"
    if nd is None:
        a = abs(v)
        nd = 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 1 else 3
    return f"{v:,.{nd}f}"


def cell(s, row, metric, nd=None, ratio=True):
    v = s.get((row, metric))
    if v is None:
        return "–"
    d = s.get(("direct", metric))
    if ratio and row != "direct" and d:
        return f"{fmt(v, nd)} ({v / d:.2f}×)"
    return fmt(v, nd)


def best_peer(s, metric, higher_is_better):
    """(row, value) of the best forking peer measured for `metric`, or (None, None)."""
    got = [(r, s.get((r, metric))) for r in FORKING_PEERS if s.get((r, metric)) is not None]
    if not got:
        return None, None
    return (max if higher_is_better else min)(got, key=lambda rv: rv[1])


def targets(s, rows):
    """(target text, portfwd value, bound, pass?, unit): the targets of issue 16, each a ratio
    to a row measured in the same run."""
    g = lambda r, m: s.get((r, m))
    out = []

    def add(text, val, bound, ok, unit):
        if val is None or bound is None:
            out.append((text, fmt(val), fmt(bound), "not measured", unit))
        else:
            out.append((text, fmt(val), fmt(bound), "**pass**" if ok(val, bound) else "**MISS**",
                        unit))
    ge = lambda v, b: v >= b
    le = lambda v, b: v <= b
    p = "portfwd"
    v = g("floor", "connrate_rps")
    add("connection rate ≥ 0.9 × the shape's floor", g(p, "connrate_rps"),
        0.9 * v if v else None, ge, "conn/s")
    peer, v = best_peer(s, "connrate_rps", True)
    add(f"connection rate ≥ 1.3 × the best of sslh, xinetd, socat ({peer or '–'})",
        g(p, "connrate_rps"), 1.3 * v if v else None, ge, "conn/s")
    add("memory per held connection (system) ≤ 150 KiB", g(p, "mem_sys_kib_per_conn"),
        150.0 if g(p, "mem_sys_kib_per_conn") is not None else None, le, "KiB")
    held, procs = g(p, "mem_held"), g(p, "mem_procs_held")
    add("processes per held connection ≤ 2", procs / held if procs and held else None,
        2.0 if procs and held else None, lambda v, b: v <= b + 0.01, "processes")
    peer, v = best_peer(s, "redis_wall_s", False)
    add(f"2,000 clients: whole run ≤ the best forking peer's ({peer or '–'})",
        g(p, "redis_wall_s"), v, le, "s")
    add("2,000 clients: no errors", g(p, "redis_errors_sum"), 0.0 if g(p, "redis_errors_sum")
        is not None else None, le, "errors (all reps)")
    v = g("haproxy", "ka_p99_ms")
    add("keep-alive p99 ≤ 1.2 × haproxy", g(p, "ka_p99_ms"), 1.2 * v if v else None, le, "ms")
    h = g("haproxy", "tput1_gbps")
    add("1-stream throughput ≥ 1.25 × haproxy", g(p, "tput1_gbps"),
        1.25 * h if h else None, ge, "Gbit/s")
    v = g(p, "connrate_rps")
    add("routing (when=tls: + when=http) keeps ≥ 90% of the connection rate",
        g("portfwd-tls", "connrate_rps"), 0.9 * v if v else None, ge, "conn/s")
    return out


def fork_floor_section(s, rows):
    """The ceiling that the cost of a process puts on a two-fork forwarder, from this run."""
    f = s.get(("direct", "forkfloor_cpu_us"))
    if not f:
        return []
    cpus = os.cpu_count() or 1
    ceiling = cpus * 1e6 / (2 * f)
    out = ["## The fork floor", "",
           f"The cheapest process this machine can make, a raw `clone(SIGCHLD)` of a static "
           f"C program that exits at once and is reaped (`bench/forkfloor.c`), costs "
           f"**{f:.0f} CPU-µs** per round here (median; wall "
           f"{fmt(s.get(('direct', 'forkfloor_wall_us')), 0)} µs). A forwarder that forks twice "
           f"per connection spends at least twice that, so on {cpus} CPUs it cannot exceed "
           f"**{ceiling:,.0f} new connections/s** even if its TCP work, the client's and the "
           f"backend's cost nothing."]
    floor = s.get(("floor", "connrate_rps"))
    if floor:
        out[-1] += (f" The shape's floor (`bench/floor.c`, which does nothing but accept, fork, "
                    f"connect, fork and splice) reached {floor:,.0f} conn/s in this run: "
                    f"{floor / ceiling:.0%} of that ceiling.")
    pf, sc = s.get(("portfwd", "connrate_cpu_us")), s.get(("socat", "connrate_cpu_us"))
    if pf:
        out[-1] += (f" portfwd used {pf:,.0f} CPU-µs per connection in the connection-rate "
                    f"test, {pf / (2 * f):.1f} × its two bare forks")
        out[-1] += f"; socat, which forks once, {sc:,.0f}." if sc else "."
    out.append("")
    return out


def plots(s, rows, stamp):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        print("matplotlib missing, no plots:", e)
        return []
    files = []
    names = [SHORT[r] for r in rows]
    colors = ["#888888" if r == "direct" else "#d62728" if r == "portfwd"
              else "#ff9896" if r in ("portfwd-accept", "portfwd-tls", "portfwd-alt")
              else "#2ca02c" if r == "floor" else "#1f77b4" for r in rows]

    def grouped(fname, title, ylabel, series, log=False):
        if not any((s.get((r, m)) or 0) > 0 for _l, m, _h in series for r in rows):
            return
        fig, ax = plt.subplots(figsize=(9, 4.6))
        n = len(series)
        width = 0.8 / n
        for i, (lab, metric, hatch) in enumerate(series):
            vals = [s.get((r, metric)) or 0 for r in rows]
            if log:
                vals = [v if v > 0 else float("nan") for v in vals]
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(rows))]
            bars = ax.bar(xs, vals, width, label=lab, color=colors, hatch=hatch,
                          edgecolor="black", linewidth=0.5)
            for x, v in zip(xs, vals):
                if v and v == v:
                    ax.annotate(fmt(v), (x, v), ha="center", va="bottom", fontsize=7,
                                rotation=90 if n > 1 else 0, xytext=(0, 2),
                                textcoords="offset points")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (run {stamp}, median)")
        if log:
            ax.set_yscale("log")
        if n > 1:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=n,
                      frameon=False)
        ax.margins(y=0.2)
        fig.tight_layout()
        path = os.path.join(DOCS, fname)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(fname)

    grouped("bench-throughput.png", "iperf3 bulk throughput", "Gbit/s",
            [("1 stream", "tput1_gbps", ""), ("4 streams", "tput4_gbps", "//")])
    grouped("bench-rates.png", "Request rates", "requests/s (log)",
            [("new connection per request (wrk, Connection: close)", "connrate_rps", ""),
             ("kept-alive (wrk)", "ka_rps", "//"),
             ("2,000 clients (redis-benchmark GET)", "redis_rps", "..")], log=True)
    grouped("bench-latency.png", "Latency", "ms (log)",
            [("keep-alive p50", "ka_p50_ms", ""), ("keep-alive p99", "ka_p99_ms", "//"),
             ("first byte p50", "firstbyte_p50_ms", "..")], log=True)
    grouped("bench-memory.png", "Memory per held idle connection", "KiB per connection",
            [("system-wide (MemAvailable + per-CPU free pages)", "mem_sys_kib_per_conn", ""),
             ("sum of PSS of the forwarder's processes", "mem_pss_kib_per_conn", "//")])
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="report.py [-h] [RUN]")
    ap.add_argument("run", nargs="?", metavar="RUN",
                    help="a run's folder or its raw.csv (default: the newest in bench/results/)")
    args = ap.parse_args()
    if args.run:
        run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run) or "."
    else:
        # Folder names are UTC stamps: the last in name order is the newest.
        runs = sorted(glob.glob(os.path.join(RESULTS, "*", "raw.csv")))
        if not runs:
            sys.exit("no run found in bench/results/ (no */raw.csv)")
        run_dir = os.path.dirname(runs[-1])
    run_dir = os.path.abspath(run_dir)
    raw = os.path.join(run_dir, "raw.csv")
    if not os.path.exists(raw):
        sys.exit(f"no raw.csv in {run_dir}")
    meta_path = os.path.join(run_dir, "raw.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    stamp = meta.get("date_utc", os.path.basename(run_dir))
    samples = load(raw)
    s = summarize(samples)
    rows = [r for r in ROWS if any(k[0] == r for k in s)]
    os.makedirs(DOCS, exist_ok=True)

    # summary CSV
    metrics = sorted({k[1] for k in s if not k[1].endswith("_reps")})
    summary = os.path.join(run_dir, "summary.csv")
    with open(summary, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row"] + metrics)
        for r in rows:
            w.writerow([r] + ["" if s.get((r, m)) is None else f"{s[(r, m)]:.6g}"
                              for m in metrics])

    pngs = plots(s, rows, stamp)
    P = meta.get("params", {})
    L = []
    A = L.append
    A("# Benchmarks")
    A("")
    A("Generated by `bench/report.py` from "
      f"`{os.path.relpath(raw, ROOT)}`; do not edit by hand — rerun `bench/run.sh`.")
    A("")
    A("## How to reproduce")
    A("")
    A("    bench/run.sh            # full run, about 20 minutes on 2 cores")
    A("    bench/run.sh --quick    # smoke run, 3 minutes, fewer and shorter repetitions")
    A("    bench/run.sh --quick --rows portfwd,floor,socat --tests connrate --reps 5 \\")
    A("        --alt OTHER/portfwd # a lever: two portfwd builds interleaved in one run")
    A("    bench/redis-phases.sh data|accept|socat   # where the 2,000-client test's time goes")
    A("")
    A("`run.sh` installs the missing peers with apt-get, builds portfwd "
      "(`cargo build --release`) and the C reference (`harness/reference/server.c`, through `portfwd-compare --build-reference`), runs "
      "`bench/bench.py` (a folder per run: `bench/results/<stamp>/raw.csv`, `raw.json`, profiles) "
      "and then `bench/report.py` (this file, `docs/bench-*.png`, "
      "`bench/results/<stamp>/summary.csv`).")
    A("")
    A("## This run")
    A("")
    A(f"- date (UTC): {stamp}; wall time of the measurements {meta.get('duration_s', '?')} s"
      f"{'; **quick mode**' if meta.get('quick') else ''}")
    A(f"- machine: {meta.get('ncpu', '?')} CPUs ({meta.get('cpu', '?')}), "
      f"{(meta.get('mem_total_kib') or 0) // 1024} MiB RAM, Linux {meta.get('kernel', '?')}")
    A(f"- other work on the machine: load average (1/5/15 min) {' '.join(str(meta.get('loadavg_start', '?')).split()[:3])} "
      f"at the start and {' '.join(str(meta.get('loadavg_end', '?')).split()[:3])} at the end; "
      f"{meta.get('procs_start', '?')} processes on the machine at the start, "
      f"{meta.get('procs_end', '?')} at the end")
    bins = meta.get("binaries") or {}
    for k, v in bins.items():
        A(f"- {k}: `{v.get('path')}`, {v.get('size')} bytes, built {v.get('mtime_utc')} UTC "
          "(the run uses a copy taken at its start)")
    A(f"- portfwd at git {meta.get('git_rev') or '(no commit)'}; peers: " + "; ".join(
        v for v in meta.get("versions", {}).values() if v))
    for n in meta.get("notes", []):
        A(f"- note: {n}")
    A("- The machine is shared with other work (builds, tests) while this runs, so absolute "
      "figures are noisy; every row is measured inside the same run with the rows "
      "interleaved in each repetition, and the ratios to *direct* of the same run are what "
      "to compare. Loopback only: client, forwarder and backend share the 2 CPUs.")
    A("")
    A("## Results")
    A("")
    A("Each cell: the median over the repetitions, and in brackets the ratio to *direct* "
      "(no forwarder). For throughput and rates higher is better; for latency and memory "
      "lower is better.")
    A("")
    A("### Throughput and request rates")
    A("")
    A("| forwarder | 1 stream Gbit/s | 4 streams Gbit/s | new conn per request, req/s "
      "| forwarder CPU-µs per new conn | kept-alive req/s | 2,000 clients whole run s "
      "| 2,000 clients req/s (own clock) | 2,000 clients errors |")
    A("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        A(f"| {LABELS[r]} | {cell(s, r, 'tput1_gbps', 2)} | {cell(s, r, 'tput4_gbps', 2)} "
          f"| {cell(s, r, 'connrate_rps', 0)} | {fmt(s.get((r, 'connrate_cpu_us')), 0)} "
          f"| {cell(s, r, 'ka_rps', 0)} "
          f"| {cell(s, r, 'redis_wall_s', 2)} | {cell(s, r, 'redis_rps', 0)} "
          f"| {fmt(s.get((r, 'redis_errors_sum')), 0)} |")
    A("")
    A("*CPU-µs per new conn*: user + system time of the forwarder's processes during the "
      "connection-rate test (its processes, alive or zombie, and the children they reaped) "
      "divided by the requests wrk completed. The C reference does not reap its children, so its figure misses "
      "them; sslh's (about 130 µs in trial runs, less than one fork costs) evidently misses its "
      "connection processes' time too.")
    A("")
    A("*2,000 clients*: *whole run* is the wall time of the whole redis-benchmark command, "
      "connecting included (about 1.5 s of it is redis-benchmark opening its 2,000 "
      "connections, for every row): the comparison figure. redis-benchmark's own rate "
      "(*own clock*) starts its clock once it has opened all its connections, so a forwarder "
      "that does its per-connection work at accept (socat, sslh, xinetd, the floor, "
      "`--dispatch accept`) does part of it before the clock starts, and one that waits for "
      "the first byte (portfwd's default) does it all on the clock.")
    A("")
    A("### Latency")
    A("")
    A("| forwarder | kept-alive p50 ms | kept-alive p99 ms | first byte → backend p50 ms "
      "| first byte → backend p99 ms | forwarder CPU-µs per conn, one at a time |")
    A("|---|---|---|---|---|---|")
    for r in rows:
        A(f"| {LABELS[r]} | {cell(s, r, 'ka_p50_ms', 3)} | {cell(s, r, 'ka_p99_ms', 3)} "
          f"| {cell(s, r, 'firstbyte_p50_ms', 3)} | {cell(s, r, 'firstbyte_p99_ms', 3)} "
          f"| {fmt(s.get((r, 'firstbyte_cpu_us')), 0)} |")
    A("")
    A("*one at a time*: the forwarder's CPU (as for the connection rate) during the first-byte "
      "test, whose clients connect one after the other, divided by its connections: the cost "
      "of a connection when clients do not come in bursts.")
    A("")
    nmem = P.get("mem_conns", "?")
    A(f"### Memory for {nmem:,} idle connections" if isinstance(nmem, int)
      else "### Memory for idle connections")
    A("")
    A("| forwarder | system KiB/conn | PSS of forwarder KiB/conn | cross-check KiB/conn "
      "| drift-corrected system KiB/conn | raw MemAvailable KiB/conn | processes while held "
      "| leftover processes after close | backend connections still open after close |")
    A("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        left = s.get((r, "mem_leftover_procs"))
        A(f"| {LABELS[r]} | {cell(s, r, 'mem_sys_kib_per_conn', 1)} "
          f"| {cell(s, r, 'mem_pss_kib_per_conn', 1, ratio=False)} "
          f"| {cell(s, r, 'mem_parts_kib_per_conn', 1, ratio=False)} "
          f"| {cell(s, r, 'mem_sys_drift_corr_kib_per_conn', 1, ratio=False)} "
          f"| {cell(s, r, 'mem_raw_avail_kib_per_conn', 1, ratio=False)} "
          f"| {fmt(s.get((r, 'mem_procs_held')), 0)} "
          f"| {'–' if left is None else fmt(left, 0)} "
          f"| {fmt(s.get((r, 'mem_still_established')), 0)} |")
    A("")
    A("Where the system-wide figure goes (growth per connection of each /proc/meminfo "
      "field, KiB; median):")
    A("")
    A("| forwarder | AnonPages | KernelStack | PageTables | Slab |")
    A("|---|---|---|---|---|")
    for r in rows:
        A(f"| {LABELS[r]} | {fmt(s.get((r, 'mem_anonpages_kib_per_conn')), 1)} "
          f"| {fmt(s.get((r, 'mem_kernelstack_kib_per_conn')), 1)} "
          f"| {fmt(s.get((r, 'mem_pagetables_kib_per_conn')), 1)} "
          f"| {fmt(s.get((r, 'mem_slab_kib_per_conn')), 1)} |")
    A("")
    A("*system*: drop of MemAvailable plus the free pages parked in per-CPU lists "
      "(`count:` of the pagesets in /proc/zoneinfo) between before and while holding, "
      "divided by the number of connections; it includes the client's and the backend's "
      "side, which is what *direct* measures alone. *cross-check*: growth of AnonPages + "
      "KernelStack + PageTables + Slab from /proc/meminfo. *drift-corrected*: the same "
      "system figure taken against the mean of the samples before opening and after the "
      "forwarder was stopped, which cancels a steady drift caused by other work on the "
      "machine. *raw MemAvailable*: without the per-CPU pages. *PSS*: growth of the sum of "
      "`Pss:` in /proc/PID/smaps_rollup over the forwarder's processes (its session). "
      "*leftover*: forwarder processes beyond the ones it had before the connections "
      "opened, counted once the client sockets are closed and the process count has been "
      "stable for 1.5 s. Worst repetition for leftovers and still-open connections.")
    A("")
    for p in pngs:
        A(f"![{p}]({p})")
    A("")
    if "portfwd" in rows:
        A("## Targets (portfwd, ratios measured in this run)")
        A("")
        A("| target | portfwd | bound | result | unit |")
        A("|---|---|---|---|---|")
        for t in targets(s, rows):
            A(f"| {t[0]} | {t[1]} | {t[2]} | {t[3]} | {t[4]} |")
        A("")
    else:
        A("## Targets")
        A("")
        A("portfwd was not measured in this run (see the notes above).")
        A("")
    for line in fork_floor_section(s, rows):
        A(line)
    levers = os.path.join(ROOT, "bench", "levers.md")
    if os.path.exists(levers):
        A("## Levers")
        A("")
        A(open(levers).read().strip())
        A("")
    ana = os.path.join(run_dir, "analysis.md")
    if os.path.exists(ana):
        A("## Analysis of this run")
        A("")
        A(open(ana).read().strip())
        A("")
    A("## Method")
    A("")
    A(f"- Repetitions: {P.get('reps', '?')} per figure (kept-alive: "
      f"{P.get('ka_reps', P.get('reps', '?'))}, memory: {P.get('mem_reps', '?')}); "
      "in each repetition every row runs once, in alternating order, and each forwarder "
      "is started fresh for each measurement and killed (process group) afterwards.")
    A("- Every server runs in the foreground with a config written to a temp dir, on a "
      "free port below 32768 on 127.0.0.1 (portfwd and the C reference bind all interfaces "
      "by design). Forwarders: portfwd `PORT 127.0.0.1 BACKEND_PORT` (default dispatch); "
      "C reference `server PORT 127.0.0.1 BACKEND_PORT`; "
      "`socat TCP-LISTEN:PORT,fork,reuseaddr,backlog=4096 TCP:...`; "
      "`sslh -f -n -p 127.0.0.1:PORT --anyprot 127.0.0.1:BACKEND_PORT` (Debian's sslh, its "
      "fork build); `xinetd -dontfork` with one service `redirect = 127.0.0.1 BACKEND_PORT`, "
      "`instances` and `per_source` UNLIMITED, `cps = 1000000 1`, `flags = NOLIBWRAP`, no "
      "connection logging; the shape's floor `floor PORT BACKEND_PORT` (`bench/floor.c`, "
      "built with `cc -O2 -static`; only where the shape's cost shows: connection rate, "
      "2,000 clients, first byte, memory); `rinetd -f`; "
      "`haproxy -db` (mode tcp, default threads); nginx `stream` with `daemon off`, "
      "`worker_processes auto`.")
    A(f"- Bulk throughput: `iperf3 -c … -t {P.get('iperf_dur', '?')}` with 1 and with "
      "`-P 4` streams, through the forwarder to an `iperf3 -s` backend (started fresh per "
      "measurement); the figure is the receiver's sum.")
    A(f"- New connection per request: `wrk -t1 -c{P.get('wrk_close_conns', '?')} "
      f"-d{P.get('wrk_dur', '?')}s -H 'Connection: close'` to an nginx backend (1 worker, "
      "`return 200`).")
    A(f"- Kept-alive: `wrk -t1 -c{P.get('wrk_ka_conns', '?')} -d{P.get('wrk_dur', '?')}s "
      "--latency` to the same backend; p50/p99 from wrk's latency distribution, the median "
      "over the repetitions.")
    A(f"- 2,000 concurrent clients: `redis-benchmark -c {P.get('redis_clients', '?')} "
      f"-n {P.get('redis_n', '?')} -t get` to a redis-server backend. Errors: a non-zero "
      "exit or any output line mentioning an error, reset, refusal or timeout.")
    A(f"- First byte: {P.get('fb_samples', '?')} connections per repetition; the client "
      "sends one byte right after `connect()` returns and the time runs until the backend "
      "(a listener in the harness) has accepted the forwarder's connection and read that "
      "byte. For forwarders that connect inward on accept this includes only the relay; "
      "for portfwd and the C reference it includes their fork and inward connect.")
    A(f"- Idle memory: {P.get('mem_conns', '?')} connections through the forwarder to the "
      "nginx backend, one byte sent on each (so fork-on-first-data forwarders fork), "
      "measured once the backend holds them all and the process count is stable, then "
      "closed.")
    A("")
    # raw.json names the profiles where bench.py wrote them; they are in the run's folder.
    prof = [os.path.relpath(os.path.join(run_dir, os.path.basename(p)), ROOT)
            for p in meta.get("profiles") or []]
    if prof:
        A("## Profiles")
        A("")
        A("`perf record -a -g` over the whole machine while one forwarder carries one "
          "workload, attributed by process name (client, backend and any other work on the "
          "machine appear under their own names; each file says how many other processes "
          "with the forwarder's name were running). Full reports: "
          + ", ".join(f"`{p}`" for p in prof) + ".")
        A("")
        for p in prof:
            path = os.path.join(ROOT, p)
            if not os.path.exists(path):
                continue
            txt = open(path).read().splitlines()
            A(f"### {os.path.basename(p)}")
            A("")
            A("```")
            sec = None
            shown = 0
            for line in txt:
                if line.startswith("## "):
                    sec = line
                    A(line)
                    shown = 0
                    continue
                if sec and "load generator" in sec:
                    continue
                if sec and "comm,dso,sym" in sec and shown >= 25:
                    continue
                if line.strip() and not line.strip().startswith("Performance counter"):
                    A(line)
                    shown += 1
            A("```")
            A("")
    # The "Many listeners" section comes from bench/listeners.py, not from this run: carried over.
    path = os.path.join(DOCS, "benchmarks.md")
    kept = ""
    if os.path.exists(path):
        old = open(path).read()
        at = old.find("\n## Many listeners")
        kept = old[at:] if at >= 0 else ""
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n" + kept)
    print("wrote docs/benchmarks.md,", ", ".join("docs/" + p for p in pngs),
          "and", os.path.relpath(summary, ROOT))
    if tradeoff_in_readme(s, os.path.relpath(run_dir, ROOT)):
        print("wrote the trade-off paragraph of README.md")


def tradeoff_in_readme(s, run):
    """Writes README.md's paragraph on what this design costs, between its two markers, from this
    run's figures: the README states them without keeping a second copy to drift."""
    path = os.path.join(ROOT, "README.md")
    begin, end = "<!-- tradeoff: written by bench/report.py -->", "<!-- /tradeoff -->"
    try:
        text = open(path).read()
    except OSError:
        return False
    if begin not in text or end not in text:
        return False
    g = lambda r, m: s.get((r, m))
    pf, hp = g("portfwd", "connrate_rps"), g("haproxy", "connrate_rps")
    mem, mem_hp = g("portfwd", "mem_sys_kib_per_conn"), g("haproxy", "mem_sys_kib_per_conn")
    tput, tput_hp = g("portfwd", "tput1_gbps"), g("haproxy", "tput1_gbps")
    floor = g("floor", "connrate_rps")
    if None in (pf, hp, mem, tput, tput_hp):
        return False
    para = (
        f"**The trade-off.** A process per connection costs what an event loop does not. In the "
        f"last full benchmark run ([{run}]({run}/), 2 CPUs, loopback, "
        f"[docs/benchmarks.md](docs/benchmarks.md)) portfwd accepted {pf:,.0f} new connections a "
        f"second where haproxy took {hp:,.0f} ({pf / hp:.2f}×)"
        + (f"; the least any forwarder of this shape can cost, a bare C program that forks twice "
           f"per connection, reached {floor:,.0f}" if floor else "")
        + f". Each held connection cost {mem:,.0f} KiB of the system's memory (two processes)"
        + (f" where haproxy needs {mem_hp:,.0f} KiB" if mem_hp else "")
        + f". In exchange every connection runs apart from the others, bytes move with `splice(2)` "
        f"({tput:.1f} Gbit/s on one stream, haproxy {tput_hp:.1f}), a FIN and a reset are passed "
        f"on exactly, and nothing one client does can stall another. For tens of thousands of new "
        f"connections a second per core, use an event loop; for isolation, exact TCP semantics "
        f"and bulk streams, portfwd."
    )
    a, b = text.index(begin) + len(begin), text.index(end)
    with open(path, "w") as f:
        f.write(text[:a] + "\n" + para + "\n" + text[b:])
    return True


if __name__ == "__main__":
    main()
