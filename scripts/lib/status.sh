# shellcheck shell=bash
# port-forward.sh --status: what runs in a run directory. Sourced after rundir.sh, not run.
# shellcheck disable=SC2154 # pf_pid, pf_state, pf_why are set by inspect_pid_file (rundir.sh)

# Prints a /proc/net/tcp{,6} address (hex, in the kernel's byte order) as ADDR:PORT or [ADDR]:PORT.
hex_to_addr() {
    local hex=${1%:*} port=$((16#${1#*:})) i w groups=() out best=0 bestat=-1 run=0 at=0
    if ((${#hex} == 8)); then
        printf '%d.%d.%d.%d:%d\n' $((16#${hex:6:2})) $((16#${hex:4:2})) $((16#${hex:2:2})) \
            $((16#${hex:0:2})) "$port"
        return
    fi
    # IPv6: four 32-bit words, each in host (little-endian) order.
    for ((i = 0; i < 32; i += 8)); do
        w=${hex:i:8}
        w=${w:6:2}${w:4:2}${w:2:2}${w:0:2}
        groups+=("$(printf '%x' $((16#${w:0:4})))" "$(printf '%x' $((16#${w:4:4})))")
    done
    # Compress the longest run of zero groups (two or more) to "::".
    for ((i = 0; i < 8; i++)); do
        if [[ ${groups[i]} == 0 ]]; then
            ((run == 0)) && at=$i
            run=$((run + 1))
            if ((run > best)); then best=$run bestat=$at; fi
        else
            run=0
        fi
    done
    if ((best >= 2)); then
        out=$(
            IFS=:
            echo "${groups[*]:0:bestat}::${groups[*]:bestat+best}"
        )
    else
        out=$(
            IFS=:
            echo "${groups[*]}"
        )
    fi
    printf '[%s]:%d\n' "$out" "$port"
}

# The addresses PID listens on (TCP, state LISTEN), from its descriptors and its network
# namespace's /proc/PID/net/tcp and tcp6; one per line.
listening_addrs() {
    local pid=$1 inodes=" " link fd table _sl addr _rem st inode
    for fd in "/proc/$pid/fd/"*; do
        link=$(readlink -- "$fd" 2>/dev/null) || continue
        [[ $link == "socket:["*"]" ]] || continue
        link=${link#'socket:['}
        inodes+="${link%]} "
    done
    for table in "/proc/$pid/net/tcp" "/proc/$pid/net/tcp6"; do
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        while read -r _sl addr _rem st _ _ _ _ _ inode _; do
            if [[ $st == 0A && $inodes == *" $inode "* ]]; then hex_to_addr "$addr"; fi
        done < <(tail -n +2 -- "$table" 2>/dev/null)
    done
}

# Live connection processes of a daemon: its children that are not zombies (each connection has
# one: portfwd-conn, then portfwd-c2s with its own child, portfwd-s2c). Clients still waiting
# for their first byte have no process yet and are not counted.
live_connections() {
    local pid kids n=0 stat
    kids=$(cat "/proc/$1/task/"*/children 2>/dev/null) || true
    for pid in $kids; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        [[ ${stat##*) } == Z* ]] || n=$((n + 1))
    done
    echo "$n"
}

# Reports every daemon of the run directory RUN. Exit status (as an init script's status):
# 0 every pid file names a running daemon, 1 a pid file is stale (its daemon is gone), 3 nothing
# runs (no pid file, or no run directory).
show_status() {
    local run=$1 pidf name conf mapping source listen conns total=0 running=0 stale=0 daemon_conf
    local prev arg
    if [[ ! -d $run ]]; then
        echo "nothing running: no run directory $run"
        return 3
    fi
    shopt -s nullglob
    local pidfiles=("$run"/*.pid)
    shopt -u nullglob
    if ((${#pidfiles[@]} == 0)); then
        echo "nothing running: no pid file in $run"
        return 3
    fi
    for pidf in "${pidfiles[@]}"; do
        name=$(basename -- "$pidf" .pid)
        inspect_pid_file "$pidf"
        if [[ $pf_state != running ]]; then
            echo "stale $name: $pidf ($pf_why)"
            stale=$((stale + 1))
            continue
        fi
        # The config the daemon runs: the --config of its command line.
        daemon_conf="" prev=""
        while IFS= read -r -d '' arg; do
            [[ $prev == --config || $prev == -c ]] && daemon_conf=$arg
            [[ $arg == --config=* ]] && daemon_conf=${arg#--config=}
            prev=$arg
        done <"/proc/$pf_pid/cmdline" 2>/dev/null || true
        conf=${daemon_conf:-$run/$name.conf}
        mapping=$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' -- "$conf" 2>/dev/null | head -n 1) || true
        source=$(sed -n '1s/^# Written by scripts\/port-forward.sh from \(.*\); this daemon.s mapping\.$/\1/p' -- "$conf" 2>/dev/null) || true
        listen=$(listening_addrs "$pf_pid" | sort -u | paste -sd, -)
        conns=$(live_connections "$pf_pid")
        echo "running $name (pid $pf_pid): ${mapping:-?}; listening on ${listen:-nothing}; $conns live connection(s); config $conf${source:+ (from $source)}"
        running=$((running + 1)) total=$((total + conns))
    done
    echo "$running running, $stale stale pid file(s), $total live connection(s) (run directory $run)"
    ((stale == 0)) || return 1
    ((running > 0)) || return 3
    return 0
}
