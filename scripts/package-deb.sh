#!/usr/bin/env bash
# Builds a Debian package of portfwd with `cargo deb`: the release binary, its manual page and
# shell completions (generated from the binary's own clap definition), the docs, the example
# setup.config and the systemd unit (docs/portfwd.service, installed disabled).
#
#   scripts/package-deb.sh [--install-tool] [-- CARGO_DEB_ARGS...]
#
# --install-tool  install cargo-deb with `cargo install --locked cargo-deb` if it is missing.
# Prints the path of the .deb on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

install_tool=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --install-tool) install_tool=1 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "package-deb.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if ! cargo deb --version >/dev/null 2>&1; then
    if [ "$install_tool" = 1 ]; then
        cargo install --locked cargo-deb >&2
    else
        echo "package-deb.sh: cargo-deb is not installed (run with --install-tool, or: cargo install --locked cargo-deb)" >&2
        exit 2
    fi
fi

cargo build --release --locked -p portfwd >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/portfwd"

# cargo-deb takes these paths relative to the package root, so they live in ./target/assets
# whatever CARGO_TARGET_DIR says.
assets="$ROOT/target/assets"
mkdir -p "$assets"
"$bin" --man | gzip -9n >"$assets/portfwd.1.gz"
"$bin" --completions bash >"$assets/portfwd.bash"
"$bin" --completions zsh >"$assets/_portfwd"
"$bin" --completions fish >"$assets/portfwd.fish"

cargo deb --no-build -p portfwd "${extra[@]}"
