# Sourced by the scripts: cargo on PATH and a target dir shared across clones
# (a cache only: a cold one works, just slower).
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/memobuild-target}"
