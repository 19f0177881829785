#!/usr/bin/env bash
# Compare portfwd with the course's original C server (and any other forwarder
# with the seed's CLI) on one scenario suite; print a side-by-side table.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/compare.sh [OPTIONS] [BINARY...]

Builds portfwd, the harness's portfwd-compare and, through it, the C reference
(harness/reference/server.c, cc -fopenmp), runs the comparison scenarios against the C reference, portfwd and every
BINARY given, and prints a Markdown table: scenario, C reference, portfwd,
one column per extra BINARY. Exits 0 when portfwd behaves as documented,
1 when it does not, 2 on a setup error.

BINARY is [LABEL=]PATH[,ARG...]: a forwarder taking the seed's CLI
(PATH [ARG...] PORT HOSTNAME HOST_PORT). It is assumed to bind every address.

Options:
  --release        build and run the release profile (default: debug)
  --only IDS       comma-separated scenario ids (see --list)
  --list           list the scenarios and portfwd's documented behaviour
  --wait-ms N      how long to wait for an EOF/banner that may never come (default 2000)
  --format F       table (default), kv (machine-readable) or both
  --no-reference   leave out the C reference column
  -h, --help       this help

Everything runs on 127.0.0.0/8; seed_case2 uses 127.0.0.41:8005/8006,
127.0.0.52:8008, 127.0.0.53:8009 and 127.0.0.44 (the seed's four machines).
USAGE
}

die() { echo "compare.sh: $*" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=debug
cargo_flags=()
pass=()
extras=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --release) profile=release; cargo_flags=(--release); shift ;;
        --only|--wait-ms|--format)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            pass+=("$1" "$2"); shift 2 ;;
        --list|--no-reference) pass+=("$1"); shift ;;
        --) shift; extras+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) extras+=("$1"); shift ;;
    esac
done

command -v cargo >/dev/null || die "cargo not found"
command -v cc >/dev/null || die "cc not found (the C reference is built with cc -fopenmp)"
for spec in "${extras[@]+"${extras[@]}"}"; do
    path=${spec#*=}
    [[ "$spec" == */*=* || "$spec" != *=* ]] && path=$spec
    path=${path%%,*}
    [[ -x "$path" ]] || die "extra binary not executable: $path"
done

cd "$root"
# Binaries go where cargo puts them: $CARGO_TARGET_DIR if set, ./target otherwise.
bin="${CARGO_TARGET_DIR:-target}/$profile"
echo "compare.sh: building portfwd and portfwd-compare ($profile)" >&2
cargo build -q "${cargo_flags[@]+"${cargo_flags[@]}"}" -p portfwd --bin portfwd -p harness --bin portfwd-compare \
    || die "cargo build failed"
reference="$("$bin/portfwd-compare" --build-reference "${bin%/*}/reference/server")" \
    || die "building the C reference failed"

exec "$bin/portfwd-compare" \
    --reference "$reference" \
    --portfwd "$bin/portfwd" \
    "${pass[@]+"${pass[@]}"}" "${extras[@]+"${extras[@]}"}"
