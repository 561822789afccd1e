#!/bin/bash
# Execute throughput of distinct trivial actions on the all-in-one server
# (issue #16): 1,000 `/bin/true` actions, 32 in flight, skip_cache_lookup,
# a fresh server per run, on the host sandbox and in a container image.
#   BIN=DIR     where memobuild and memobuild-loadtest are (default $CARGO_TARGET_DIR/release)
#   ROUNDS=N    runs of each mode (default 3)
#   MODES="host image"
# The image is scripts/base-images.sh's busybox, pushed to a registry on
# 127.0.0.1:5000 (scripts/registry.sh). Prints one JSON line per run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/env.sh"
T=$(cd "${BIN:-$CARGO_TARGET_DIR/release}" && pwd)
LT=$T/memobuild-loadtest
MB=$T/memobuild
PORT=37477

image_property() {
  bash "$ROOT/scripts/base-images.sh" busybox >&2
  bash "$ROOT/scripts/registry.sh" start 5000 >&2
  local layout="${MEMOBUILD_BASE_CACHE:-/var/cache/memobuild/base-images}/oci"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:busybox" docker://127.0.0.1:5000/bench/busybox:1 >&2
  local digest
  digest=$(skopeo inspect --tls-verify=false docker://127.0.0.1:5000/bench/busybox:1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["Digest"])')
  echo "container-image=docker://127.0.0.1:5000/bench/busybox@$digest"
}

run() { # mode round
  local mode=$1 round=$2 state
  state=$(mktemp -d)
  local platform=()
  [ "$mode" = image ] && platform=(--platform "$IMAGE")
  "$MB" server --listen 127.0.0.1:$PORT --state-dir "$state" 2>"$state.log" &
  local pid=$!
  until grep -q "memobuild listening" "$state.log" || ! kill -0 $pid; do sleep 0.2; done
  # One untimed action first: the worker registered, the image pulled and unpacked.
  "$LT" execute --endpoint grpc://127.0.0.1:$PORT --actions 1 --concurrency 1 --skip-cache-lookup \
    "${platform[@]}" >/dev/null 2>>"$state.lt"
  local result
  result=$("$LT" execute --endpoint grpc://127.0.0.1:$PORT --actions 1000 --concurrency 32 --skip-cache-lookup \
    "${platform[@]}" --server-pid $pid --json 2>>"$state.lt")
  kill $pid; wait $pid 2>/dev/null || true
  echo "{\"mode\":\"$mode\",\"round\":$round,\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"execute\":$result}"
  rm -rf "$state" "$state.log" "$state.lt"
}

MODES=${MODES:-host image}
IMAGE=""
case " $MODES " in *" image "*) IMAGE=$(image_property) ;; esac
for round in $(seq "${ROUNDS:-3}"); do
  for mode in $MODES; do run "$mode" "$round"; done
done
