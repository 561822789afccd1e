#!/usr/bin/env bash
# `memobuild-loadtest builds` against a fresh all-in-one `memobuild server`
# for each build count, RUN steps on a busybox base image served by a local
# registry. What BENCHMARKS.md's "Remote builds (loadtest builds)" ran.
#
#   loadtest/builds-bench.sh [COUNT ...]      default: 10 100 1000
#
# Env: PROFILE (debug or release, default debug: the binaries are built with
# it), BIN_DIR (take memobuild and memobuild-loadtest from there instead of
# building them), REGISTRY_PORT (default 5391), SERVER_PORT (default 37191), MIX
# (default 60:30:10), EXTRA (more loadtest flags, e.g. --json).
# Needs root (the server's worker runs RUN steps in containerd). Everything
# it starts (registry, servers and their private containerd) it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

PROFILE="${PROFILE:-debug}"
REGISTRY_PORT="${REGISTRY_PORT:-5391}"
SERVER_PORT="${SERVER_PORT:-37191}"
MIX="${MIX:-60:30:10}"
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(10 100 1000)
[ "$(id -u)" = 0 ] || { echo "builds-bench: must run as root" >&2; exit 1; }

if [ -z "${BIN_DIR:-}" ]; then
  profile_flag=()
  [ "$PROFILE" = release ] && profile_flag=(--release)
  cargo build "${profile_flag[@]}" -p memobuild-cli -p memobuild-loadtest
  BIN_DIR="$CARGO_TARGET_DIR/$PROFILE"
fi
memobuild="$BIN_DIR/memobuild"
loadtest="$BIN_DIR/memobuild-loadtest"

work=$(mktemp -d)
server_pid=
started_registry=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "$started_registry" ]; then bash scripts/registry.sh stop "$REGISTRY_PORT" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The base image: busybox-static in one layer, pushed to the local registry.
if ! curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$REGISTRY_PORT/v2/"; then
  bash scripts/registry.sh start "$REGISTRY_PORT"
  started_registry=1
fi
bash scripts/base-images.sh busybox
base="127.0.0.1:$REGISTRY_PORT/memobuild-base/busybox:1"
skopeo copy -q --dest-tls-verify=false \
  "oci:${MEMOBUILD_BASE_CACHE:-/var/cache/memobuild/base-images}/oci:busybox" "docker://$base"

echo "machine: $(nproc) cores; $(free -g | awk '/^Mem:/ {print $2 " GiB memory"}'); load $(cut -d' ' -f1-3 /proc/loadavg); profile $PROFILE"
for count in "${COUNTS[@]}"; do
  state="$work/state-$count"
  mkdir -p "$state"
  "$memobuild" server --listen "127.0.0.1:$SERVER_PORT" --state-dir "$state" >"$work/server-$count.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q "memobuild listening" "$work/server-$count.log" && break
    sleep 0.1
  done
  echo "== $count builds (server pid $server_pid)"
  # shellcheck disable=SC2086 # EXTRA is a list of flags
  "$loadtest" builds --endpoint "grpc://127.0.0.1:$SERVER_PORT" --builds "$count" --mix "$MIX" \
    --base "$base" --server-pid "$server_pid" ${EXTRA:-} || echo "(loadtest exited $?)"
  kill "$server_pid"
  wait "$server_pid" || true
  server_pid=
done
