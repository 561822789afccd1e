#!/usr/bin/env bash
# MemoBuild's main job on embedded defaults (until image builds exist): start
# `memobuild server` and build a real Bazel workspace on it as remote executor,
# twice, with `bazel clean` in between: the first build runs every action on
# memobuild's worker, the second is served from its cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/env.sh

cargo build --release --locked -p memobuild-cli
memobuild="$CARGO_TARGET_DIR/release/memobuild"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT

"$memobuild" server --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --state-dir "$work/state" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do
  address=$(sed -n 's/.*memobuild listening address=//p' "$work/server.log")
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { cat "$work/server.log"; echo "memobuild server did not start" >&2; exit 1; }
admin=$(sed -n 's/.*admin listening.*address=//p' "$work/server.log")
echo "memobuild server on $address (metrics: http://$admin/metrics)"

cp -r tests/bazel-workspace "$work/ws"
rm -f "$work/ws"/bazel-*
cd "$work/ws"
bazel=(bazel "--output_user_root=$work/bazel")
"${bazel[@]}" build //... "--remote_executor=grpc://$address" 2>&1 | grep -E "processes|Elapsed"
"${bazel[@]}" clean 2>/dev/null
"${bazel[@]}" build //... "--remote_executor=grpc://$address" 2>&1 | grep -E "processes|Elapsed"
"${bazel[@]}" shutdown 2>/dev/null
curl -s "http://$admin/metrics" | grep -E '^memobuild_(cas_(stored|read|written)|scheduler_actions_total)'
