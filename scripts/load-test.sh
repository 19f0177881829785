#!/usr/bin/env bash
# The seed's test case 1 ("maximum active sockets"): ramp echo clients through
# each forwarder and report connections held, requests answered, errors and
# latency percentiles as the count grows.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/load-test.sh [OPTIONS] [BINARY...]

Runs portfwd-load (a Rust epoll client with an echo backend) against the C
reference (harness/reference/server.c, built with cc -fopenmp), portfwd, and
every BINARY given ([LABEL=]PATH[,ARG...], a forwarder with the seed's CLI),
one after the other, with the seed's parameters: a new client every 2 ms,
10 µs between a reply and the next request, each client waiting for its reply.

Default (CI size): 1,000 clients, held 3 s.

Options:
  --full           the seed's 20,000 concurrent clients, held 15 s; raises
                   kernel.pid_max (the C reference needs 2 processes per
                   connection) and the open-file limit, and spreads clients
                   over 127.0.1.1-127.0.1.4 so ephemeral ports do not run out.
                   (portfwd is always given --max-connections above the client
                   count and --max-per-source off.)
                   Needs root; prints what it could not raise.
  --clients N      number of clients (overrides the mode's default)
  --hold-secs S    how long to hold all clients after the ramp
  --request-interval-us N
                   pause between a reply and the next request (seed: 10);
                   a large value (e.g. 5000000) measures how many connections
                   are held when the CPU is not saturated by requests
  --only WHICH     reference | portfwd | extra (run only that kind)
  --release        build the release profile (default: debug; --full implies release)
  -h, --help       this help

Output: one table per forwarder (a row every tenth of the ramp, 0.2-2 s),
then a summary line per forwarder. Columns: clients spawned, held (connected),
served (had at least one reply), requests answered, req/s, errors, stalled
(waiting > 1 s for a reply), latency percentiles over the interval, the
forwarder's process count and its main process's open descriptors.
USAGE
}

die() { echo "load-test.sh: $*" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
full=0
clients=""
hold=""
only=""
load_args=()
profile=debug
extras=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --full) full=1; profile=release; shift ;;
        --release) profile=release; shift ;;
        --clients) [[ $# -ge 2 ]] || die "--clients needs a value"; clients=$2; shift 2 ;;
        --hold-secs) [[ $# -ge 2 ]] || die "--hold-secs needs a value"; hold=$2; shift 2 ;;
        --request-interval-us) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--request-interval-us needs a number"
            load_args+=(--request-interval-us "$2"); shift 2 ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a value"; only=$2; shift 2 ;;
        --) shift; extras+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) extras+=("$1"); shift ;;
    esac
done
[[ -z "$clients" || "$clients" =~ ^[0-9]+$ ]] || die "--clients must be a number"
[[ -z "$hold" || "$hold" =~ ^[0-9]+$ ]] || die "--hold-secs must be a number"
case "$only" in ""|reference|portfwd|extra) ;; *) die "--only must be reference, portfwd or extra" ;; esac

if [[ $full -eq 1 ]]; then
    clients=${clients:-20000}
    hold=${hold:-15}
    load_args+=(--sources 127.0.1.1,127.0.1.2,127.0.1.3,127.0.1.4 --max-secs 900)
    need_fds=$((clients * 2 + 8192))
    # The C reference keeps ~2 processes per connection alive (plus zombies):
    # the default pid_max of 32768 stops it near 16,000 connections.
    if [[ $(cat /proc/sys/kernel/pid_max) -lt 4194304 ]]; then
        sysctl -qw kernel.pid_max=4194304 2>/dev/null \
            || echo "load-test.sh: could not raise kernel.pid_max (now $(cat /proc/sys/kernel/pid_max))" >&2
    fi
    if [[ $(cat /proc/sys/kernel/threads-max) -lt 200000 ]]; then
        sysctl -qw kernel.threads-max=200000 2>/dev/null || true
    fi
    # portfwd-load spreads clients and echo backends over processes of at most
    # 12,000 sockets each, but the C reference's main process keeps every
    # client socket open, so it needs ulimit -n above the client count.
    ulimit -Hn "$need_fds" 2>/dev/null || true
    ulimit -n "$need_fds" 2>/dev/null \
        || echo "load-test.sh: could not raise ulimit -n to $need_fds (now $(ulimit -n)); the C reference's main process will stop accepting near that many connections" >&2
    echo "load-test.sh: full mode: pid_max=$(cat /proc/sys/kernel/pid_max) threads-max=$(cat /proc/sys/kernel/threads-max) ulimit -n=$(ulimit -n) ephemeral ports=$(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range)" >&2
else
    clients=${clients:-1000}
    hold=${hold:-3}
fi

command -v cargo >/dev/null || die "cargo not found"
command -v cc >/dev/null || die "cc not found (the C reference is built with cc -fopenmp)"
cd "$root"
cargo_flags=()
[[ $profile == release ]] && cargo_flags=(--release)
# Binaries go where cargo puts them: $CARGO_TARGET_DIR if set, ./target otherwise.
bin="${CARGO_TARGET_DIR:-target}/$profile"
echo "load-test.sh: building portfwd and the harness tools ($profile)" >&2
cargo build -q "${cargo_flags[@]+"${cargo_flags[@]}"}" -p portfwd --bin portfwd \
    -p harness --bin portfwd-load --bin portfwd-compare || die "cargo build failed"
load="$bin/portfwd-load"
reference="$("$bin/portfwd-compare" --build-reference "${bin%/*}/reference/server")" \
    || die "building the C reference failed"

run() { # label path [args...]
    local label=$1 path=$2
    shift 2
    local fargs=()
    for a in "$@"; do fargs+=(--forwarder-arg "$a"); done
    echo
    "$load" --forwarder "$path" --label "$label" --clients "$clients" --hold-secs "$hold" \
        "${load_args[@]+"${load_args[@]}"}" "${fargs[@]+"${fargs[@]}"}" | tee -a "$summary_file"
}

summary_file=$(mktemp)
trap 'rm -f "$summary_file"' EXIT
status=0
if [[ -z "$only" || "$only" == reference ]]; then
    run "C reference" "$reference" || status=1
fi
if [[ -z "$only" || "$only" == portfwd ]]; then
    # portfwd caps live connections per mapping (--max-connections, by default a
    # quarter of kernel.pid_max and at most 10,000; the rest wait in the backlog)
    # and per client address (--max-per-source, default 256; this tool sends up to
    # 10,000 clients from one address): lift both above the client count.
    run portfwd "$bin/portfwd" --max-connections "$((clients + 1000))" --max-per-source off || status=1
fi
if [[ -z "$only" || "$only" == extra ]]; then
    for spec in "${extras[@]+"${extras[@]}"}"; do
        label=${spec%%=*}; rest=${spec#*=}
        [[ "$spec" == *=* && "$label" != */* ]] || { label=$(basename "${spec%%,*}"); rest=$spec; }
        IFS=, read -r -a parts <<<"$rest"
        [[ -x "${parts[0]}" ]] || die "extra binary not executable: ${parts[0]}"
        run "$label" "${parts[@]}" || status=1
    done
fi
echo
echo "== summaries ($clients clients, hold ${hold} s) =="
grep '^summary:' "$summary_file" || true
exit $status
