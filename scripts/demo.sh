#!/usr/bin/env bash
# portfwd in one command: two web servers, the shipped setup.config, a page through each mapping,
# the log, the process tree, and everything stopped again.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/demo.sh [-h|--help]

A tour of portfwd for a newcomer, in one command, from any directory:

  1. starts two small web servers (python3 -m http.server) on 127.0.0.1:8005
     and 127.0.0.1:8006, each serving a page that names it;
  2. launches the repository's setup.config (127.0.0.1:7005 -> 127.0.0.1:8005,
     127.0.0.1:7006 -> 127.0.0.1:8006) with scripts/port-forward.sh, one
     daemon per mapping, in a temporary run directory;
  3. fetches a page through each mapping with curl;
  4. opens one more connection through :7005 and sends half a request, so
     that the connection's processes exist, and shows the process tree
     (ps --forest): portfwd -> portfwd-c2s -> portfwd-s2c; then finishes
     that request;
  5. shows the daemons' log lines;
  6. stops everything with scripts/stop-script.sh, and removes what it made.

It needs the ports 7005, 7006, 8005 and 8006 of 127.0.0.1 free, python3
and curl; the release binary (in the target directory cargo reports,
CARGO_TARGET_DIR included) is built if missing, and $PORTFWD_BIN overrides
it. On any
failure, or Ctrl-C, it still stops what it started (only that: it kills
only the pids it started) and exits non-zero.
USAGE
}

die() {
    echo "demo.sh: $*" >&2
    exit 1
}

case ${1:-} in
-h | --help)
    usage
    exit 0
    ;;
"") ;;
*) die "unexpected argument '$1' (see --help)" ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
config=$root/setup.config
# shellcheck source=scripts/lib/binary.sh
source "$here/lib/binary.sh"

if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

command -v python3 >/dev/null || die "python3 is needed for the demo's web servers"
command -v curl >/dev/null || die "curl is needed to fetch the pages"
[[ -f $config ]] || die "$config is missing"
# Found (or built) once, before anything starts; port-forward.sh runs the same binary.
PORTFWD_BIN=$(find_portfwd_bin demo.sh "$root") || die "no portfwd binary"
export PORTFWD_BIN

# Every port the demo needs must be free: say which one is not, and who holds it if ss can tell.
busy=$(python3 - <<'PY'
import socket
for port in (8005, 8006, 7005, 7006):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        print(f"{port} ({e.strerror})")
    s.close()
PY
)
if [[ -n $busy ]]; then
    echo "demo.sh: these ports are in use, and the demo needs them: $(echo "$busy" | tr '\n' ' ')" >&2
    if command -v ss >/dev/null; then
        ss -ltnp 2>/dev/null | grep -E ':(7005|7006|8005|8006)\b' >&2 || true
    fi
    die "free them (or stop what holds them) and run the demo again"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/portfwd-demo.XXXXXX")
run=$tmp/run
backends=()
launched=0
held=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((held)); then exec 3>&- 3<&-; fi
    if ((launched)); then
        "$here/stop-script.sh" --now --run-dir "$run" >/dev/null 2>&1 || true
    fi
    for pid in ${backends[@]+"${backends[@]}"}; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf -- "$tmp"
    if ((status != 0)); then
        echo "demo.sh: failed (status $status); everything it started was stopped" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls a URL until it answers, at most $2 seconds.
wait_http() {
    local url=$1 end=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.1
    done
}

step "1. two web servers: 127.0.0.1:8005 and 127.0.0.1:8006 (python3 -m http.server)"
for port in 8005 8006; do
    mkdir -p "$tmp/www$port"
    echo "<h1>hello from the backend on 127.0.0.1:$port</h1>" >"$tmp/www$port/index.html"
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$tmp/www$port" \
        >"$tmp/http$port.log" 2>&1 </dev/null &
    backends+=("$!")
done
for port in 8005 8006; do
    wait_http "http://127.0.0.1:$port/" 10 || {
        cat "$tmp/http$port.log" >&2
        die "the web server on 127.0.0.1:$port did not start"
    }
    echo "127.0.0.1:$port answers"
done

step "2. launch setup.config: scripts/port-forward.sh $config --run-dir $run"
grep -v -e '^#' -e '^[[:space:]]*$' "$config" | sed 's/^/    /'
launched=1
"$here/port-forward.sh" --run-dir "$run" "$config"

step "3. a page through each mapping"
for port in 7005 7006; do
    echo "\$ curl -s http://127.0.0.1:$port/"
    page=$(curl -fsS --max-time 10 "http://127.0.0.1:$port/") || die "no page through :$port"
    echo "$page"
    [[ $page == *"127.0.0.1:$((port + 1000))"* ]] || die "the page through :$port is not the one of :$((port + 1000))"
done

step "4. the processes, with one connection open (half a request sent through :7005)"
exec 3<>/dev/tcp/127.0.0.1/7005
held=1
printf 'GET / HTTP/1.0\r\n' >&3
# The connection gets its processes once its first bytes arrive; wait (bounded) for its pump.
tree() { # PID... -> those pids and all their descendants
    local pid
    for pid in "$@"; do
        echo "$pid"
        # shellcheck disable=SC2046 # a list of pids
        tree $(cat "/proc/$pid/task/"*/children 2>/dev/null)
    done
}
mains=$(cat "$run"/*.pid)
end=$((SECONDS + 10))
# shellcheck disable=SC2046,SC2086 # lists of pids and paths
until grep -qx portfwd-s2c $(tree $mains | sed 's|.*|/proc/&/comm|') 2>/dev/null; do
    ((SECONDS < end)) || break
    sleep 0.05
done
# shellcheck disable=SC2086 # a list of pids
ps --forest -o pid,ppid,pgid,stat,comm -p "$(tree $mains | paste -sd,)"
printf '\r\n' >&3
echo
echo "the rest of the request sent; the answer through :7005 starts with: $(head -n 1 <&3)"
exec 3>&- 3<&-
held=0

step "5. the log lines (one file per daemon in $run)"
# Each connection's line is written when it ends; give the last one a moment (bounded).
end=$((SECONDS + 5))
until (($(cat "$run"/*.log | grep -c 'outcome=' || true) >= 3)) || ((SECONDS >= end)); do
    sleep 0.05
done
for log in "$run"/*.log; do
    echo "--- $(basename "$log")"
    cat "$log"
done

step "6. stop everything: scripts/stop-script.sh --run-dir $run"
"$here/stop-script.sh" --run-dir "$run"
launched=0
echo
echo "done: the demo's web servers are stopped next, and $tmp is removed."
echo "try it yourself: with something listening on 127.0.0.1:8005 and :8006, scripts/port-forward.sh"
echo "(the repository's setup.config), scripts/port-forward.sh --status, then scripts/stop-script.sh"
