# shellcheck shell=bash
# Shared by port-forward.sh and demo.sh: which portfwd binary to run. Sourced, not run.

# Prints the path of the portfwd binary, or prints why there is none (naming PORTFWD_BIN) on
# stderr and returns 1.
#   1. $PORTFWD_BIN, if set: it must be an executable file.
#   2. Else the release build in the target directory cargo reports (`cargo metadata`, which
#      honours CARGO_TARGET_DIR and build.target-dir), built with `cargo build --release` if it
#      is missing. Without cargo: $CARGO_TARGET_DIR, else the repository's target/.
# $1: the calling script's name, for messages; $2: the repository's root.
find_portfwd_bin() {
    local prog=$1 root=$2 target="" bin
    if [[ -n ${PORTFWD_BIN:-} ]]; then
        if [[ ! -f $PORTFWD_BIN || ! -x $PORTFWD_BIN ]]; then
            echo "$prog: PORTFWD_BIN='$PORTFWD_BIN' is not an executable file" >&2
            return 1
        fi
        printf '%s\n' "$PORTFWD_BIN"
        return 0
    fi
    if command -v cargo >/dev/null; then
        # One line of JSON; a path with a '"' in it is not supported.
        target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" \
            2>/dev/null | grep -o '"target_directory":"[^"]*"' | head -n 1) || target=""
        target=${target#'"target_directory":"'}
        target=${target%'"'}
    fi
    if [[ -z $target ]]; then
        target=${CARGO_TARGET_DIR:-$root/target}
        [[ $target == /* ]] || target=$PWD/$target
    fi
    bin=$target/release/portfwd
    if [[ ! -x $bin ]]; then
        if ! command -v cargo >/dev/null; then
            echo "$prog: no portfwd binary at $bin and no cargo to build it; set PORTFWD_BIN to the binary" >&2
            return 1
        fi
        echo "$prog: $bin is missing; building it (cargo build --release)" >&2
        if ! cargo build --release --manifest-path "$root/Cargo.toml" >&2; then
            echo "$prog: cargo build --release failed; set PORTFWD_BIN to a portfwd binary to use one built elsewhere" >&2
            return 1
        fi
        if [[ ! -x $bin ]]; then
            echo "$prog: cargo build --release did not produce $bin; set PORTFWD_BIN to the binary" >&2
            return 1
        fi
    fi
    printf '%s\n' "$bin"
}
