#!/usr/bin/env bash
# The Dockerfile conformance suite (tests/conformance, issue #15).
#
#   scripts/conformance.sh [CASE...]             build each case with MemoBuild, compare with
#                                                BuildKit's stored result, print the table:
#                                                case, same/different, what differs
#   scripts/conformance.sh --refresh [CASE...]   rebuild the stored results with BuildKit
#                                                (Debian's docker.io 20.10 on a private dockerd)
#   scripts/conformance.sh --bench [CASE...]     total wall time of the corpus, MemoBuild vs
#                                                BuildKit, cold and no-op (BENCHMARKS.md);
#                                                MEMOBUILD_CONFORMANCE_BENCH_ROUNDS (default 3)
#
# CASE is a case name or a name prefix; none means every case. The comparison
# is also part of `cargo test --workspace` (cli/tests/conformance.rs); this
# script runs that test and prints its table. Needs root (base images, dockerd).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/dockerd.sh

mode=check
case "${1:-}" in
  --refresh) mode=refresh; shift ;;
  --bench) mode=bench; shift ;;
esac
cases=$(IFS=,; echo "$*")
log() { printf '[conformance] %s\n' "$*" >&2; }

if [ "$mode" = check ]; then
  status=0
  MEMOBUILD_CONFORMANCE_CASES="$cases" cargo test -q --workspace --locked --test conformance \
    -- --exact memobuild_builds_what_buildkit_builds >/dev/null 2>&1 || status=$?
  table="$CARGO_TARGET_DIR/tmp/conformance-table.txt"
  if [ -f "$table" ]; then cat "$table"; else log "no table: the test did not get that far (rerun with cargo test --workspace --locked --test conformance)"; fi
  exit $status
fi

# ---------------------------------------------------------------- refresh, bench: a dockerd
[ -x /usr/bin/docker ] && command -v dockerd >/dev/null || bash scripts/install-deps.sh
bash scripts/base-images.sh busybox
debian=$(grep -l '{{debian}}' tests/conformance/cases/*/Dockerfile tests/conformance/cases/*/reference.Dockerfile 2>/dev/null || true)
[ -z "$debian" ] || bash scripts/base-images.sh debian

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
registry="127.0.0.1:$port"
D=$(mktemp -d /tmp/mb-conf-dockerd.XXXXXX)
cleanup() {
  dockerd_stop "$D"
  bash scripts/registry.sh stop "$port" >/dev/null 2>&1 || true
  rm -rf "$D" 2>/dev/null || true
}
trap cleanup EXIT

bash scripts/registry.sh start "$port"
layout="${MEMOBUILD_BASE_CACHE:-/var/cache/memobuild/base-images}/oci"
skopeo copy -q --dest-tls-verify=false "oci:$layout:busybox" "docker://$registry/memobuild-base/busybox:1"
[ -z "$debian" ] || skopeo copy -q --dest-tls-verify=false "oci:$layout:debian" "docker://$registry/memobuild-base/debian:bookworm"

dockerd_start "$D" "$registry"

test_name=refresh_buildkit_results
[ "$mode" = bench ] && test_name=bench_corpus
MEMOBUILD_CONFORMANCE_DOCKER_HOST="unix://$D/docker.sock" MEMOBUILD_CONFORMANCE_REGISTRY="$registry" \
MEMOBUILD_CONFORMANCE_CASES="$cases" \
  cargo test --workspace --locked --test conformance -- --ignored "$test_name" --exact --nocapture
[ "$mode" = refresh ] && log "stored results are in tests/conformance/expected/; commit them with the cases"
true
