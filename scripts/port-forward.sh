#!/usr/bin/env bash
# The seed's launcher: one portfwd daemon per mapping of setup.config.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/port-forward.sh [OPTIONS] [CONFIG] [-- PORTFWD_OPTION...]
       scripts/port-forward.sh --status [--run-dir DIR] [CONFIG]

Starts one portfwd daemon per mapping of CONFIG (default: the repository's
setup.config), the way the seed's port-forward.sh did, and reports what it
started. With --status, reports what runs instead and starts nothing.

  1. Finds the binary: $PORTFWD_BIN if set, else release/portfwd in the
     target directory cargo reports for this repository (CARGO_TARGET_DIR
     is honoured), built with `cargo build --release` if it is missing.
  2. Validates the whole file with `portfwd --check-config CONFIG`. If any
     line is wrong, every error is printed (FILE:LINE:COL: message) and
     nothing is started.
  3. For each mapping, in the run directory (--run-dir DIR, else
     $PORTFWD_RUN_DIR, else run/ beside CONFIG: the same from any current
     directory), writes NAME.conf (that mapping alone, as one canonical
     config line) and runs
       portfwd --daemonize --config NAME.conf --pid-file NAME.pid \
               --log-file NAME.log [PORTFWD_OPTION...]
     which returns once the daemon listens. NAME comes from the listening
     address: any_7005 for "7005 -> ..." (every interface), 127.0.0.1_7006
     for "127.0.0.1:7006 -> ...", v6_--1_7007 for "[::1]:7007 -> ...".
  4. A mapping whose daemon is already running (NAME.pid names a live
     process called portfwd whose command line names that pid file) is
     refused: reported, not started again. A stale pid file (process gone,
     or not that portfwd) is reported and replaced.

Each daemon is on its own: `kill -HUP PID` reloads its NAME.conf, `kill
-USR1 PID` logs its stats, NAME.log holds its log lines. Stop them all with
scripts/stop-script.sh (same CONFIG, or same --run-dir).

PORTFWD_OPTION... (after --) are given to every daemon, e.g.
  scripts/port-forward.sh setup.config -- --drain-timeout 30 --verbose

Config lines: [BIND:]PORT -> HOST:PORT [key=value ...]; # comments; blank
lines. BIND is an IPv4 address or [IPv6]; without it the mapping listens on
every interface (IPv6 and IPv4).

Options:
  --run-dir DIR   where the .conf, .pid and .log files go (default: run/ in
                  CONFIG's directory, or $PORTFWD_RUN_DIR; a relative DIR
                  is taken from the current directory); created if missing
  --status        report each daemon of the run directory: its pid, its
                  mapping, the config it was written from, the addresses it
                  listens on, and its live connections (connection
                  processes); a stale pid file is reported, not removed
  -h, --help      this help

Exit status: 0 every mapping was started; 1 at least one mapping was not
started (already running, or its daemon failed: the reason is printed; the
others were started and keep running); 2 usage or config error, or no
binary: nothing was started.
With --status: 0 every pid file names a running daemon; 1 a pid file is
stale; 3 nothing runs; 2 usage error.
USAGE
}

die() {
    echo "port-forward.sh: $*" >&2
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib/rundir.sh
source "$here/lib/rundir.sh"
# shellcheck source=scripts/lib/binary.sh
source "$here/lib/binary.sh"
# shellcheck source=scripts/lib/status.sh
source "$here/lib/status.sh"

config=""
run_dir=""
status_only=0
daemon_opts=()
while [[ $# -gt 0 ]]; do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --run-dir | --run-dir=*)
        take_run_dir_option "$@" || die "--run-dir needs a directory (see --help)"
        run_dir=$pf_run_dir
        shift "$pf_shift"
        ;;
    --status)
        status_only=1
        shift
        ;;
    --)
        shift
        daemon_opts=("$@")
        break
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
        [[ -z $config ]] || die "only one CONFIG may be given ('$config' and '$1'; see --help)"
        config=$1
        shift
        ;;
    esac
done
config=${config:-$root/setup.config}

if ((status_only)); then
    ((${#daemon_opts[@]} == 0)) || die "--status starts nothing: PORTFWD_OPTION... makes no sense with it"
    if [[ -z $run_dir && -z ${PORTFWD_RUN_DIR:-} && ! -f $config ]]; then
        die "config file '$config' not found (give its path, or --run-dir; see --help)"
    fi
    run=$(resolve_run_dir "$run_dir" "$config") || die "cannot find the directory of '$config'"
    [[ ! -d $run ]] || run=$(cd -- "$run" && pwd -P)
    status=0
    show_status "$run" || status=$?
    exit "$status"
fi

[[ -f $config ]] || die "config file '$config' not found (give its path, or see --help)"
[[ -r $config ]] || die "config file '$config' is not readable"
config_abs=$(cd "$(dirname -- "$config")" && pwd -P)/$(basename -- "$config")
run_dir=$(resolve_run_dir "$run_dir" "$config") || die "cannot find the directory of '$config'"

# --- the binary -------------------------------------------------------------------------------
bin=$(find_portfwd_bin port-forward.sh "$root") || die "no portfwd binary; nothing started"

# --- validate the whole file before anything starts -------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/port-forward.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
status=0
"$bin" --check-config "$config" >"$tmp/mappings" 2>"$tmp/errors" </dev/null || status=$?
if ((status != 0)); then
    cat "$tmp/errors" >&2
    die "$config is not valid (portfwd --check-config exit status $status); nothing started"
fi

# Each stdout line is one mapping in canonical form: BIND:PORT -> HOST:PORT [key=value ...].
lines=() names=() binds=()
while IFS= read -r line || [[ -n $line ]]; do
    [[ -n ${line//[[:space:]]/} ]] || continue
    read -r listen arrow _ <<<"$line"
    if [[ $arrow != "->" || ! $listen =~ ^(.+):([0-9]+)$ ]]; then
        die "unexpected line from 'portfwd --check-config': '$line'"
    fi
    bind=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}
    case $bind in
    "[::]") name=any ;;
    "["*"]")
        name=${bind:1:${#bind}-2}
        name=v6_${name//:/-}
        ;;
    *) name=$bind ;;
    esac
    name=${name//[^A-Za-z0-9._-]/_}_$port
    for ((i = 0; i < ${#names[@]}; i++)); do
        if [[ ${names[i]} == "$name" ]]; then
            die "$config has two mappings listening on $bind:$port ('${lines[i]}' and '$line'); nothing started"
        fi
    done
    lines+=("$line") names+=("$name") binds+=("$bind:$port")
done <"$tmp/mappings"
((${#lines[@]} > 0)) || die "$config has no mappings; nothing started"

# --- start one daemon per mapping ---------------------------------------------------------------
run=$(make_run_dir "$run_dir") || die "cannot create the run directory '$run_dir'"
[[ -w $run ]] || die "the run directory '$run' is not writable"
lock_run_dir "$run" 30 || die "another port-forward.sh or stop-script.sh holds $run/.lock"

started=0 refused=0 failed=0
for ((i = 0; i < ${#lines[@]}; i++)); do
    line=${lines[i]} name=${names[i]}
    conf=$run/$name.conf pidf=$run/$name.pid logf=$run/$name.log
    if [[ -e $pidf ]]; then
        inspect_pid_file "$pidf"
        if [[ $pf_state == running ]]; then
            note=""
            if [[ -f $conf ]] && ! grep -qxF -- "$line" "$conf"; then
                note=" with a different mapping in $conf (stop it first, or edit that file and kill -HUP $pf_pid)"
            fi
            echo "port-forward.sh: refused $name ($line): already running as pid $pf_pid$note" >&2
            refused=$((refused + 1))
            continue
        fi
        echo "port-forward.sh: stale pid file $pidf ($pf_why): replacing it" >&2
        rm -f -- "$pidf"
    fi
    {
        echo "# Written by scripts/port-forward.sh from $config_abs; this daemon's mapping."
        echo "# Edit it and run 'kill -HUP \$(cat $pidf)' to reload."
        echo "$line"
    } >"$conf.tmp"
    mv -f -- "$conf.tmp" "$conf"

    # The daemon must not keep the lock (fd 9) or our stdout/stderr (a pipe the caller may be
    # reading to its end): its launching process's output goes to a file we print.
    status=0
    "$bin" --daemonize --config "$conf" --pid-file "$pidf" --log-file "$logf" \
        ${daemon_opts[@]+"${daemon_opts[@]}"} </dev/null >"$tmp/out" 2>&1 9>&- || status=$?
    if ((status != 0)); then
        sed 's/^/  /' "$tmp/out" >&2
        echo "port-forward.sh: FAILED $name ($line): portfwd exit status $status (log: $logf)" >&2
        failed=$((failed + 1))
        continue
    fi
    # portfwd returns only once the daemon listens and its pid file is written.
    inspect_pid_file "$pidf"
    if [[ $pf_state != running ]]; then
        sed 's/^/  /' "$tmp/out" >&2
        echo "port-forward.sh: FAILED $name ($line): portfwd exited 0 but $pidf does not name a running daemon (${pf_why:-no pid file})" >&2
        failed=$((failed + 1))
        continue
    fi
    echo "started $name: $line (pid $pf_pid, log $logf)"
    started=$((started + 1))
done

summary="$started started, $refused already running, $failed failed (run directory $run)"
hint="stop with: $root/scripts/stop-script.sh --run-dir $run"
if ((refused + failed > 0)); then
    echo "port-forward.sh: $summary" >&2
    ((started == 0)) || echo "$hint"
    exit 1
fi
echo "$summary; $hint"
