#!/usr/bin/env bash
# Where the time of the 2,000-client test goes, phase by phase: one `redis-benchmark -c 2000`
# run through one forwarder under `perf sched record`, then the CPU time of each kind of process
# (and idle) in 100 ms buckets, and the main process's own run and runqueue-wait time. Shows
# when a forwarder does its per-connection work: while redis-benchmark opens its connections
# (before its clock starts) or once the requests flow. Loopback only; everything it starts it
# stops by pid. Needs perf, redis-server, redis-benchmark (bench/run.sh installs them).
#
#   bench/redis-phases.sh [data|accept|socat]   (default: data)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-data}"
# shellcheck source=scripts/lib/binary.sh
source "$ROOT/scripts/lib/binary.sh"
# $PORTFWD (this script's old name for it) or $PORTFWD_BIN, else cargo's release build.
if [ "$MODE" != socat ]; then
    PF=$(PORTFWD_BIN="${PORTFWD:-${PORTFWD_BIN:-}}" find_portfwd_bin redis-phases.sh "$ROOT")
fi
TMP="$(mktemp -d /tmp/redis-phases.XXXXXX)"
ulimit -n 20000 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --maxclients 10000 \
    --daemonize no >"$TMP/redis.log" 2>&1 &
RPID=$!
FPID=""
cleanup() {
    [ -n "$FPID" ] && kill "$FPID" 2>/dev/null
    kill "$RPID" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
sleep 0.5
LPORT=$(free_port)
case "$MODE" in
    data) setsid "$PF" --bind 127.0.0.1 --max-per-source off "$LPORT" 127.0.0.1 "$RPORT" 2>"$TMP/fwd.log" & ;;
    accept) setsid "$PF" --bind 127.0.0.1 --max-per-source off --dispatch accept "$LPORT" 127.0.0.1 "$RPORT" 2>"$TMP/fwd.log" & ;;
    socat) setsid socat "TCP-LISTEN:$LPORT,bind=127.0.0.1,fork,reuseaddr,backlog=4096" \
        "TCP:127.0.0.1:$RPORT" 2>"$TMP/fwd.log" & ;;
    *) echo "usage: $0 [data|accept|socat]" >&2; exit 2 ;;
esac
FPID=$!
sleep 0.5
read -r run0 wait0 _ < "/proc/$FPID/schedstat"
perf sched record -a -o "$TMP/sched.data" -- sleep 6 >/dev/null 2>&1 &
PERF=$!
sleep 0.5
start=$(awk '{print $1}' /proc/uptime)
redis-benchmark -p "$LPORT" -c 2000 -n 20000 -t get -q 2>&1 | tr '\r' '\n' | grep -E '^GET' | tail -n 1
read -r run1 wait1 _ < "/proc/$FPID/schedstat"
wait "$PERF" || true
echo "main thread of the forwarder during the run: $(( (run1 - run0) / 1000000 )) ms running," \
     "$(( (wait1 - wait0) / 1000000 )) ms runnable but waiting for a CPU"
perf sched timehist -i "$TMP/sched.data" 2>/dev/null | awk -v start="$start" '
    NR > 3 && $1 + 0 >= start {
        b = int(($1 - start) * 10); split($3, a, "["); k = a[1]
        if (k == "<idle>") k = "idle"
        else if (k ~ /^portfwd-acc/) k = "accept-threads"
        else if (k == "portfwd") k = "main"
        else if (k ~ /^(portfwd-|socat)/) k = "connections"
        else if (k ~ /^redis-server/) k = "redis-server"
        else if (k ~ /^redis-benchmark/) k = "redis-benchmark"
        else k = "other"
        ms[b, k] += $6
        if (k != "idle" && k != "other" && b > last) last = b
    }
    END {
        n = split("idle main accept-threads connections redis-benchmark redis-server other", kinds, " ")
        printf "%-6s", "t (s)"; for (i = 1; i <= n; i++) printf " %15s", kinds[i]; printf "\n"
        for (b = 0; b <= last; b++) {
            printf "%-6.1f", b / 10
            for (i = 1; i <= n; i++) printf " %15.0f", ms[b, kinds[i]]
            printf "\n"
        }
        print "(CPU-ms in each 100 ms bucket, both CPUs; all of the socat processes count as connections)"
    }'
