#!/usr/bin/env bash
# One cold build of an example, for the cold-build benchmark in BENCHMARKS.md:
# clears the tool's cache, syncs and drops the page cache, then times the
# build alone and appends its seconds to TIMES_FILE.
#
#   scripts/bench-cold.sh memobuild|buildkit EXAMPLE TIMES_FILE
#
# memobuild: the release binary, a fresh --state-dir (its private containerd
# and every base layer start empty). buildkit: a Docker daemon's BuildKit at
# $DOCKER_HOST (Debian's docker.io), after `docker system prune -af`.
# Both use the bases on the registry at $REGISTRY (default 127.0.0.1:5000) and
# run RUN steps without network.
set -euo pipefail
tool=$1 example=$2 times=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/env.sh"
REGISTRY=${REGISTRY:-127.0.0.1:5000}
context="$ROOT/examples/$example"
state=/var/tmp/memobuild-bench-state

case $tool in
  memobuild)
    rm -rf "$state"
    run=("$CARGO_TARGET_DIR/release/memobuild" build --state-dir "$state" --progress plain
      --build-arg "REGISTRY=$REGISTRY" "$context")
    ;;
  buildkit)
    /usr/bin/docker system prune -af >/dev/null
    dockerfile="$context/Dockerfile"
    if grep -q '^RUN <<' "$dockerfile"; then
      # The daemon's built-in Dockerfile frontend predates heredocs (and it
      # cannot fetch the frontend a syntax directive names: no internet).
      dockerfile=$(mktemp)
      python3 - "$context/Dockerfile" > "$dockerfile" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
def chain(m):
    cmds = [l.strip() for l in m.group(2).replace("\\\n", " ").splitlines() if l.strip()]
    return "RUN " + " && ".join(cmds) + "\n"
src = re.sub(r"^# *syntax=.*\n", "", src, flags=re.M)
sys.stdout.write(re.sub(r"RUN <<(\w+)\n(.*?)\n\1\n", chain, src, flags=re.S))
PY
    fi
    run=(env DOCKER_BUILDKIT=1 /usr/bin/docker build --network=none --build-arg "REGISTRY=$REGISTRY"
      -f "$dockerfile" -t "bench-$example" "$context")
    ;;
  *) echo "unknown tool $tool (memobuild or buildkit)" >&2; exit 2 ;;
esac

sync
echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s.%N)
"${run[@]}" > /dev/null 2>&1
end=$(date +%s.%N)
echo "$end - $start" | bc >> "$times"
