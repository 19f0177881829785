#!/usr/bin/env bash
# The seed's stop-script: stops every portfwd daemon that scripts/port-forward.sh started.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/stop-script.sh [OPTIONS] [CONFIG]

Stops every portfwd daemon that scripts/port-forward.sh started in the run
directory (--run-dir DIR, else $PORTFWD_RUN_DIR, else run/ beside CONFIG,
the launcher's default; CONFIG defaults to the repository's setup.config),
and reports each one. It works the same from any current directory.

For each RUN/NAME.pid:
  * if it names a running portfwd that owns that pid file (its
    /proc/PID/comm is portfwd and its command line names the file), the
    daemon gets SIGTERM (SIGQUIT with --now) and the script waits for it to
    exit, at most --timeout seconds (plus the daemon's own --drain-timeout,
    if it was started with one and --now is not given);
  * otherwise the pid file is stale (process gone, or some other process):
    it is reported and removed, and nothing is signalled.
The daemon removes its pid file when it exits; the script removes what is
left. NAME.conf and NAME.log stay.

SIGTERM closes the listening sockets at once; connections already
established are processes of their own and run on until their peers close
(unless the daemon was started with --drain-timeout). The script lists
those left running. With --now (SIGQUIT) they are ended too, and the
script waits until they are gone (if the daemon leaves any behind, the
script kills their process groups with SIGKILL and says so).

Options:
  --now            also end established connections (SIGQUIT)
  --timeout SECS   how long to wait for each daemon to exit (default 10)
  --run-dir DIR    the launcher's run directory (default: run/ in CONFIG's
                   directory, or $PORTFWD_RUN_DIR; a relative DIR is taken
                   from the current directory)
  -h, --help       this help

Exit status: 0 every daemon stopped (or there was nothing to stop); 1 a
daemon could not be signalled or did not exit in time (it is named; its pid
file is kept); 2 usage error.
USAGE
}

die() {
    echo "stop-script.sh: $*" >&2
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib/rundir.sh
source "$here/lib/rundir.sh"

run_dir=""
config=""
now=0
timeout=10
while [[ $# -gt 0 ]]; do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --now)
        now=1
        shift
        ;;
    --timeout)
        [[ $# -ge 2 ]] || die "--timeout needs a number of seconds (see --help)"
        timeout=$2
        shift 2
        ;;
    --timeout=*)
        timeout=${1#--timeout=}
        shift
        ;;
    --run-dir | --run-dir=*)
        take_run_dir_option "$@" || die "--run-dir needs a directory (see --help)"
        run_dir=$pf_run_dir
        shift "$pf_shift"
        ;;
    -*) die "unexpected argument '$1' (see --help)" ;;
    *)
        [[ -z $config ]] || die "only one CONFIG may be given ('$config' and '$1'; see --help)"
        config=$1
        shift
        ;;
    esac
done
if [[ ! $timeout =~ ^[0-9]+$ ]] || ((10#$timeout == 0)); then
    die "--timeout must be a whole number of seconds greater than 0, not '$timeout'"
fi

config=${config:-$root/setup.config}
if [[ -z $run_dir && -z ${PORTFWD_RUN_DIR:-} && ! -f $config ]]; then
    die "config file '$config' not found (give its path, or --run-dir; see --help)"
fi
run_dir=$(resolve_run_dir "$run_dir" "$config") || die "cannot find the directory of '$config'"
if [[ ! -d $run_dir ]]; then
    echo "nothing to stop: no run directory $run_dir"
    exit 0
fi
run=$(cd -- "$run_dir" && pwd -P)
lock_run_dir "$run" 30 || die "another port-forward.sh or stop-script.sh holds $run/.lock"

shopt -s nullglob
pidfiles=("$run"/*.pid)
if ((${#pidfiles[@]} == 0)); then
    echo "nothing to stop: no pid file in $run"
    exit 0
fi

# Milliseconds since the epoch (bash's SECONDS counts whole seconds: too coarse for a deadline).
now_ms() {
    local us=${EPOCHREALTIME//[.,]/}
    echo $((10#$us / 1000))
}

# A process is alive while /proc/PID/stat exists and it is not a zombie (pid 1 may be slow to
# reap, or not reap at all, in a container).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# The --drain-timeout a daemon was started with, in whole seconds rounded up, plus a second (the
# daemon needs a moment to end what is left), or 0 if it was started without one.
drain_of() {
    local arg prev="" drain=""
    while IFS= read -r -d '' arg; do
        case $prev in --drain-timeout) drain=$arg ;; esac
        case $arg in --drain-timeout=*) drain=${arg#--drain-timeout=} ;; esac
        prev=$arg
    done <"/proc/$1/cmdline" 2>/dev/null || true
    if [[ $drain =~ ^([0-9]+)(\.[0-9]*)?$ ]]; then
        echo $((10#${BASH_REMATCH[1]} + 2))
    else
        echo 0
    fi
}

if ((now)); then sig=QUIT; else sig=TERM; fi
names=() pids=() files=() deadlines=() waits=() groups=()
problems=0 stale=0
for pidf in "${pidfiles[@]}"; do
    name=$(basename -- "$pidf" .pid)
    inspect_pid_file "$pidf"
    if [[ $pf_state != running ]]; then
        echo "stale pid file $pidf ($pf_why): removed, nothing signalled"
        rm -f -- "$pidf"
        stale=$((stale + 1))
        continue
    fi
    pid=$pf_pid
    # Its connection processes, recorded before the signal: once the daemon is gone they are
    # orphans and no longer found through it.
    conns=$(connection_procs "$pid" | tr '\n' ' ')
    wait_secs=$timeout
    ((now)) || wait_secs=$((timeout + $(drain_of "$pid")))
    if ! kill -s "$sig" "$pid" 2>"/dev/null"; then
        if alive "$pid"; then
            echo "stop-script.sh: cannot send SIG$sig to $name (pid $pid): permission denied?" >&2
            problems=$((problems + 1))
            continue
        fi
    fi
    names+=("$name") pids+=("$pid") files+=("$pidf") groups+=("$conns")
    deadlines+=($(($(now_ms) + wait_secs * 1000))) waits+=("$wait_secs")
done

# Wait for every signalled daemon at once, each up to its own deadline.
pending=${#pids[@]}
declare -A done_at=()
while ((pending > 0)); do
    pending=0
    for ((i = 0; i < ${#pids[@]}; i++)); do
        [[ -z ${done_at[$i]:-} ]] || continue
        if ! alive "${pids[i]}"; then
            done_at[$i]=gone
        elif (($(now_ms) >= deadlines[i])); then
            done_at[$i]=timeout
        else
            pending=$((pending + 1))
        fi
    done
    ((pending == 0)) || sleep 0.05
done

stopped=0
for ((i = 0; i < ${#pids[@]}; i++)); do
    name=${names[i]} pid=${pids[i]} pidf=${files[i]}
    if [[ ${done_at[$i]} == timeout ]]; then
        echo "stop-script.sh: $name (pid $pid) did not exit within ${waits[i]}s of SIG$sig; pid file $pidf kept (try --now, or kill -KILL $pid)" >&2
        problems=$((problems + 1))
        continue
    fi
    note=""
    if [[ -e $pidf ]]; then
        rm -f -- "$pidf"
        note=" (its pid file was left behind: removed)"
    fi
    # Established connections: their processes, seen before the signal.
    read -ra conns <<<"${groups[i]}"
    if ((now)); then
        end=$(($(now_ms) + timeout * 1000))
        while (($(now_ms) < end)); do
            left=0
            for c in ${conns[@]+"${conns[@]}"}; do proc_alive "$c" && left=1 && break; done
            ((left)) || break
            sleep 0.05
        done
    fi
    left=()
    for c in ${conns[@]+"${conns[@]}"}; do
        if proc_alive "$c"; then
            g=${c##*:}
            [[ " ${left[*]} " == *" $g "* ]] || left+=("$g")
        fi
    done
    if ((${#left[@]} == 0)); then
        echo "stopped $name (pid $pid, SIG$sig)$note"
    elif ((now)); then
        for g in "${left[@]}"; do kill -s KILL -- "-$g" 2>/dev/null || true; done
        echo "stopped $name (pid $pid, SIG$sig)$note"
        echo "stop-script.sh: WARNING: $name left ${#left[@]} connection(s) running after SIGQUIT (process groups ${left[*]}): killed them with SIGKILL" >&2
    else
        echo "stopped $name (pid $pid, SIG$sig)$note; ${#left[@]} established connection(s) left running (process groups ${left[*]}; --now ends them)"
    fi
    stopped=$((stopped + 1))
done

echo "$stopped stopped, $stale stale pid file(s) removed, $problems problem(s) (run directory $run)"
((problems == 0)) || exit 1
