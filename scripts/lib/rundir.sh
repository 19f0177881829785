# shellcheck shell=bash
# shellcheck disable=SC2034 # pf_* are read by the scripts that source this file
# Shared by port-forward.sh and stop-script.sh: the run directory, its option and its pid files.
# Sourced, not run. Each daemon the launcher starts owns three files in the run directory:
#   NAME.conf  its one-line config (portfwd --config; reload it with kill -HUP PID)
#   NAME.pid   its pid (written by portfwd once it listens, removed by portfwd on a clean exit)
#   NAME.log   its log (appended)

# The option shared by port-forward.sh and stop-script.sh: if $1 is --run-dir DIR or
# --run-dir=DIR, sets pf_run_dir to DIR and pf_shift to the number of arguments it took.
# Returns 1 if DIR is missing or empty. Call it with the caller's remaining arguments ("$@").
take_run_dir_option() {
    pf_run_dir="" pf_shift=0
    case $1 in
    --run-dir)
        [[ $# -ge 2 && -n $2 ]] || return 1
        pf_run_dir=$2 pf_shift=2
        ;;
    --run-dir=*)
        pf_run_dir=${1#--run-dir=} pf_shift=1
        [[ -n $pf_run_dir ]] || return 1
        ;;
    *) return 1 ;;
    esac
}

# Prints the run directory as an absolute path (not created): $1 (--run-dir) if not empty, else
# $PORTFWD_RUN_DIR, else run/ beside the config file $2, so that the launcher and the stop agree
# from any current directory. A relative DIR is taken from the current directory.
resolve_run_dir() {
    local dir=${1:-${PORTFWD_RUN_DIR:-}} conf_dir
    if [[ -z $dir ]]; then
        conf_dir=$(cd -- "$(dirname -- "$2")" 2>/dev/null && pwd -P) || return 1
        dir=$conf_dir/run
    fi
    [[ $dir == /* ]] || dir=$PWD/$dir
    printf '%s\n' "$dir"
}

# Makes the run directory (if needed) and prints its absolute, symlink-free path.
# $1: the directory as given (may be relative).
make_run_dir() {
    local dir=$1
    mkdir -p -- "$dir" || return 1
    (cd -- "$dir" && pwd -P)
}

# Takes an exclusive lock on RUN/.lock on descriptor 9 so that a launcher and a stop never work
# on the same run directory at once. Waits at most $2 seconds. Commands that must not inherit the
# lock (the daemons) are run with 9>&-.
lock_run_dir() {
    local run=$1 secs=$2
    command -v flock >/dev/null || return 0
    exec 9>"$run/.lock"
    flock -w "$secs" 9
}

# Inspects one pid file and sets:
#   pf_pid    the pid it names ("" if none could be read)
#   pf_state  running | stale
#   pf_why    for stale: why (empty, not a number, process gone, not portfwd, another portfwd)
# "running" means: /proc/PID/comm is portfwd AND its command line names this pid file, so a pid
# reused by an unrelated process (or by another portfwd) is never taken for ours.
inspect_pid_file() {
    local file=$1 line comm stat arg prev found=0
    pf_pid="" pf_state=stale pf_why=""
    line=$(head -n 1 -- "$file" 2>/dev/null) || line=""
    line=${line//[[:space:]]/}
    if [[ -z $line ]]; then
        pf_why="empty pid file"
        return 0
    fi
    if [[ ! $line =~ ^[0-9]+$ ]] || ((line < 2)); then
        pf_why="not a pid: '$line'"
        return 0
    fi
    pf_pid=$line
    if ! comm=$(cat "/proc/$pf_pid/comm" 2>/dev/null); then
        pf_why="process $pf_pid is gone"
        return 0
    fi
    stat=$(cat "/proc/$pf_pid/stat" 2>/dev/null) || stat=""
    if [[ ${stat##*) } == Z* ]]; then
        pf_why="process $pf_pid has exited, not yet reaped"
        return 0
    fi
    if [[ $comm != portfwd ]]; then
        pf_why="process $pf_pid is '$comm', not portfwd"
        return 0
    fi
    prev=""
    while IFS= read -r -d '' arg; do
        if [[ $prev == --pid-file && $arg == "$file" || $arg == "--pid-file=$file" ]]; then
            found=1
            break
        fi
        prev=$arg
    done <"/proc/$pf_pid/cmdline" 2>/dev/null || true
    if ((found == 0)); then
        pf_why="process $pf_pid is a portfwd that does not own this pid file"
        return 0
    fi
    pf_state=running
}

# The connection processes of a daemon: its children (portfwd-conn / portfwd-c2s, each the leader
# of its own process group) and their children (portfwd-s2c). Prints "PID:STARTTIME:PGID" words;
# STARTTIME tells a live process from a later one that reuses its pid.
connection_procs() {
    local pid kids stat fields
    kids=$(cat "/proc/$1/task/"*/children 2>/dev/null) || true
    for pid in $kids; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -ra fields <<<"${stat##*) }"
        # fields: 0 state, 1 ppid, 2 pgrp, ... 19 starttime
        printf '%s:%s:%s\n' "$pid" "${fields[19]}" "${fields[2]}"
        [[ $1 != "${fields[1]}" ]] || connection_procs "$pid"
    done
}

# Whether the process PID:STARTTIME[:...] is still alive (a zombie is not: orphans are reparented to
# pid 1, which in a container may never reap them).
proc_alive() {
    local pid start stat fields
    IFS=: read -r pid start _ <<<"$1"
    { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
    read -ra fields <<<"${stat##*) }"
    [[ ${fields[0]} != Z && ${fields[19]} == "$start" ]]
}
