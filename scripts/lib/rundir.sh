# shellcheck shell=bash
# shellcheck disable=SC2034 # pf_* are read by the scripts that source this file
# Shared by port-forward.sh and stop-script.sh: the run directory and its pid files.
# Sourced, not run. Each daemon the launcher starts owns three files in the run directory:
#   NAME.conf  its one-line config (portfwd --config; reload it with kill -HUP PID)
#   NAME.pid   its pid (written by portfwd once it listens, removed by portfwd on a clean exit)
#   NAME.log   its log (appended)

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
        pf_why="process $pf_pid has exited (a zombie not yet reaped)"
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

# The connection processes of a daemon: its direct children (portfwd-conn / portfwd-c2s; the
# portfwd-s2c pumps are their children and share their process group). Prints "PID PGID" lines.
connection_groups() {
    local main=$1 child stat rest
    local children
    children=$(cat "/proc/$main/task/"*/children 2>/dev/null) || true
    for child in $children; do
        stat=$(cat "/proc/$child/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        # rest: state ppid pgrp ...
        read -r _ _ pgrp _ <<<"$rest"
        printf '%s %s\n' "$child" "$pgrp"
    done
}

# Whether a live (not zombie) process is left in process group $1. Orphaned connection processes
# are reparented to pid 1, which in a container may never reap them, so kill -0 is not enough.
group_alive() {
    local f stat state pgrp
    for f in /proc/[0-9]*/stat; do
        { read -r stat <"$f"; } 2>/dev/null || continue
        read -r state _ pgrp _ <<<"${stat##*) }"
        [[ $pgrp == "$1" && $state != Z ]] && return 0
    done
    return 1
}
