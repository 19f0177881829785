#!/usr/bin/env bash
# The one command for the benchmark of docs/benchmarks.md. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/run.sh [--quick] [--no-install] [--rows LIST] [--tests LIST] [--portfwd PATH]

Benchmarks portfwd against direct (no forwarder), the C reference of the
seed's server, socat (fork), rinetd, haproxy (mode tcp) and nginx stream (and
a routed portfwd listener against sslh), on loopback only, and writes:
  bench/results/<stamp>/          the run's folder: raw.csv (one line per
                                  sample), raw.json (machine, params),
                                  profile-*.txt, README.md (to complete),
                                  summary.csv (medians per forwarder and metric)
  docs/benchmarks.md              tables, ratios to direct, targets pass/miss
  docs/bench-*.png                plots

  --quick        short smoke run (a minute or two): 1 repetition of 1 s,
                 500 idle connections, no profiles
  --no-install   do not apt-get install missing peers
  --rows LIST    comma-separated subset of
                 direct,portfwd,portfwd-accept,portfwd-tls,sslh,cref,socat,
                 rinetd,haproxy,nginx (portfwd-tls: a when=tls:NAME +
                 when=http listener; sslh: sslh-fork on the same routes;
                 both run only connrate and firstbyte)
  --tests LIST   comma-separated subset of
                 iperf,connrate,keepalive,redis,firstbyte,forkfloor,memory,
                 profile
                 (add strace for an strace -f -c profile of portfwd)
  --portfwd PATH measure this portfwd binary instead of building
                 target/release/portfwd
  -h, --help     this text

Installs missing peers with apt-get (socat rinetd sslh haproxy nginx
libnginx-mod-stream iperf3 wrk redis-server redis-tools python3-matplotlib,
linux-perf for the profiles), builds portfwd with `cargo build --release` and
the C reference from harness/reference/server.c (its row is skipped with a
note if that fails). A full run takes about 12 minutes on 2 cores.
Every server is started in the foreground with its own config in a temp dir
and killed by pid; nothing is left running.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
INSTALL=1
PYARGS=()
PORTFWD_BIN=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --quick) PYARGS+=(--quick) ;;
        --no-install) INSTALL=0 ;;
        --rows|--tests|--portfwd) [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
                        PYARGS+=("$1" "$2"); [ "$1" = --portfwd ] && PORTFWD_BIN="$2"; shift ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[run.sh] %s\n' "$*"; }

# ---- peers
need=()
command -v socat >/dev/null || need+=(socat)
command -v rinetd >/dev/null || need+=(rinetd)
[ -x /usr/sbin/sslh-fork ] || [ -x /usr/sbin/sslh ] || need+=(sslh)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
if ! [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] && ! nginx -V 2>&1 | grep -q -- '--with-stream[^=]'; then
    need+=(libnginx-mod-stream)
fi
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v perf >/dev/null || need+=(linux-perf)
command -v cc >/dev/null || need+=(gcc)
PY=""
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then PY="$p"; break; fi
done
[ -n "$PY" ] || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$INSTALL" = 1 ] && command -v apt-get >/dev/null; then
        log "installing: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Debian's packages may try to start their services; keep them from it.
        had_policy=1
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            had_policy=0
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
        fi
        apt-get install -y -qq "${need[@]}" || log "apt-get install failed; missing rows will be skipped"
        [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
    else
        log "missing (not installed): ${need[*]}"
    fi
fi
if [ -z "$PY" ]; then
    for p in python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then PY="$p"; break; fi
    done
fi
if [ -z "$PY" ]; then
    if [ "$INSTALL" = 1 ] && python3 -m pip install -q matplotlib 2>/dev/null; then PY=python3
    else PY=python3; log "matplotlib unavailable: no plots"; fi
fi

# ---- binaries
if [ -n "$PORTFWD_BIN" ]; then
    log "measuring the given portfwd binary: $PORTFWD_BIN"
elif command -v cargo >/dev/null; then
    log "cargo build --release"
    if ! cargo build --release 2>&1 | tail -n 3; then :; fi
fi
if [ -n "$PORTFWD_BIN" ]; then :
elif [ -x target/release/portfwd ]; then
    log "portfwd: $(ls -l --time-style=+%H:%M:%S target/release/portfwd | awk '{print $6}') target/release/portfwd"
else
    log "target/release/portfwd missing: its row will be skipped"
fi
# The C reference: the harness's one build of it (harness/reference/server.c).
TOOLS="${CARGO_TARGET_DIR:-target}/release"
if command -v cargo >/dev/null && cargo build --release -q -p harness --bin portfwd-compare \
    && "$TOOLS/portfwd-compare" --build-reference target/reference/server >/dev/null; then
    log "built target/reference/server"
else
    log "C reference failed to build: its row will be skipped"
    rm -f target/reference/server
fi

# ---- measure and report
RUN="$("$PY" bench/bench.py "${PYARGS[@]+"${PYARGS[@]}"}" | tail -n 1)"
"$PY" bench/report.py "$RUN"
log "done: docs/benchmarks.md"
