#!/usr/bin/env bash
# Incremental rebuilds, MemoBuild vs Docker 20.10's BuildKit (issue #18, BENCHMARKS.md).
#
#   scripts/bench-incremental.sh run [RUNS]   set up, time every case, tear down
#   scripts/bench-incremental.sh setup DIR    set up under DIR and leave it running;
#                                             DIR/cases.tsv lists each case's two commands
#   scripts/bench-incremental.sh time DIR [RUNS]   time the cases of a set-up DIR
#   scripts/bench-incremental.sh teardown DIR
#
# Both builders run warm, as a user's edit-rebuild loop does: MemoBuild is the
# release binary ($MEMOBUILD, default $CARGO_TARGET_DIR/release/memobuild) with
# one state dir and a long-running containerd (--containerd-address), BuildKit
# is a private dockerd. Every case is built once by both before timing. RUN
# steps use --network none on both. Each case's context exists twice (one per
# builder), so that a "changed" case really changes a file before every build.
# Timing: whole-process wall time, A and B alternating (one warm-up pair, then
# RUNS pairs, default 7); medians and the median of the per-pair ratios.
#
# Cases:
#   small-noop-oci   multi-stage busybox image, nothing changed, OCI tar written
#                    (BuildKit in Docker 20.10 has no oci exporter: for it,
#                    in every case, the output is the image in the daemon)
#   debian-noop-oci  the 48 MB Debian-based image, nothing changed, OCI tar written
#   debian-noop      the same, no output
#   debian-onefile   app.txt changed: COPY + RUN + four COPY re-run, OCI tar
#   bigctx-onefile   one file changed in a 200 MB, 2,000-file context
#   busybox-workdir  app.txt changed in front of WORKDIR + COPY steps only
#   node-onefile     a Node-style context (package*.json, src/, and 20,000 files of
#                    node_modules the Dockerfile does not name): src/index.js changed
#   example-NAME     with EXAMPLES="python go node" (each needs its base image, which
#                    setup builds with scripts/base-images.sh: minutes the first time):
#                    examples/NAME with a new file in its sources, so every step from
#                    the COPY of the sources on re-runs (its tests, its build), OCI tar
# Needs root (containerd, dockerd, base images).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/env.sh"
source "$ROOT/scripts/dockerd.sh"
MEMOBUILD=${MEMOBUILD:-$CARGO_TARGET_DIR/release/memobuild}
log() { printf '[bench-incremental] %s\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ------------------------------------------------------------------ the cases
write_cases() {
  local W=$1 registry=$2 c
  for side in mb bk; do
    c="$W/ctx-$side"
    mkdir -p "$c/small" "$c/debian/c" "$c/bigctx/data" "$c/bigctx/config" "$c/workdir" "$c/node/src"
    cat > "$c/small/Dockerfile" <<EOF
FROM $registry/memobuild-base/busybox:1 AS build
WORKDIR /src
COPY . .
RUN cat a.txt b.txt > /joined.txt
FROM $registry/memobuild-base/busybox:1
COPY --from=build /joined.txt /app/joined.txt
CMD ["cat", "/app/joined.txt"]
EOF
    echo a > "$c/small/a.txt"; echo b > "$c/small/b.txt"
    cat > "$c/debian/Dockerfile" <<EOF
FROM $registry/memobuild-base/debian:bookworm
WORKDIR /app
COPY app.txt ./
RUN wc -c app.txt > /app/size.txt
COPY a.txt ./
COPY b.txt ./
COPY c ./c
COPY d.txt /srv/
CMD ["cat", "/app/size.txt"]
EOF
    for f in app a b d; do echo "$f" > "$c/debian/$f.txt"; done
    for i in 1 2 3; do echo "$i" > "$c/debian/c/$i.txt"; done
    cat > "$c/bigctx/Dockerfile" <<EOF
FROM $registry/memobuild-base/busybox:1
WORKDIR /app
COPY config/ ./config/
COPY data/f0007.bin ./
RUN ls -l /app > /app/listing.txt
EOF
    echo "key=value" > "$c/bigctx/config/app.conf"
    python3 - "$c/bigctx/data" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(2000):
    p = os.path.join(d, "f%04d.bin" % i)
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(os.urandom(100 * 1024))
PY
    cat > "$c/workdir/Dockerfile" <<EOF
FROM $registry/memobuild-base/busybox:1
WORKDIR /app
COPY app.txt ./
WORKDIR /app/data
COPY a.txt b.txt ./
WORKDIR /srv/www
COPY a.txt ./
EOF
    for f in app a b; do echo "$f" > "$c/workdir/$f.txt"; done
    cat > "$c/node/Dockerfile" <<EOF
FROM $registry/memobuild-base/busybox:1
WORKDIR /app
COPY package*.json ./
RUN wc -c package.json package-lock.json > /app/deps.txt
COPY src/ ./src/
CMD ["cat", "/app/src/index.js"]
EOF
    echo '{"name": "app"}' > "$c/node/package.json"
    echo '{"lockfileVersion": 3}' > "$c/node/package-lock.json"
    echo 'console.log("hi")' > "$c/node/src/index.js"
    python3 - "$c/node/node_modules" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(1000):
    pkg = os.path.join(d, "pkg%04d" % i)
    os.makedirs(pkg, exist_ok=True)
    for j in range(20):
        with open(os.path.join(pkg, "f%02d.js" % j), "w") as f:
            f.write("module.exports = %d;\n" % j)
PY
  done
  for name in ${EXAMPLES:-}; do
    for side in mb bk; do
      rm -rf "$W/ctx-$side/example-$name"
      cp -r "$ROOT/examples/$name" "$W/ctx-$side/example-$name"
      sed -i "s|^ARG REGISTRY=.*|ARG REGISTRY=$registry|" "$W/ctx-$side/example-$name/Dockerfile"
    done
  done
}

# Where an example's sources take a new file (the first COPY of sources).
example_stamp() {
  case "$1" in
    python) echo src/inventory/stamp.txt ;;
    *) echo stamp.txt ;;
  esac
}

# The base image an example builds on.
example_base() {
  case "$1" in
    go) echo golang ;;
    *) echo "$1" ;;
  esac
}

# The command of one build: NAME CASE OUTPUT(oci|none) CHANGED-FILE(or -).
mb_command() {
  local W=$1 case=$2 output=$3 changed=$4 out=()
  [ "$output" = oci ] && out=(-o "type=oci,dest=$W/out/mb-$case.tar")
  local build="$MEMOBUILD build --state-dir $W/mb-state --containerd-address $W/containerd/containerd.sock --network none --progress quiet -t bench/$case:1 ${out[*]} $W/ctx-mb/$case"
  wrap "$W/ctx-mb/$case" "$changed" "$build"
}

# Docker 20.10's BuildKit has no oci exporter: its output is always the
# image in the daemon's store.
bk_command() {
  local W=$1 case=$2 changed=$4
  local build="env DOCKER_HOST=unix://$W/dockerd/docker.sock DOCKER_BUILDKIT=1 /usr/bin/docker build -q --network none -t bench/$case:1 $W/ctx-bk/$case"
  wrap "$W/ctx-bk/$case" "$changed" "$build"
}

# A build, after changing a file when the case says so.
wrap() {
  local ctx=$1 changed=$2 build=$3
  if [ "$changed" = - ]; then
    echo "sh -c 'exec $build >/dev/null'"
  else
    echo "sh -c 'date +%s%N > $ctx/$changed && exec $build >/dev/null'"
  fi
}

list_cases() {
  local W=$1
  # name case output changed-file
  { printf '%s\n' \
    "small-noop-oci small oci -" \
    "debian-noop-oci debian oci -" \
    "debian-noop debian none -" \
    "debian-onefile debian oci app.txt" \
    "bigctx-onefile bigctx none data/f0007.bin" \
    "busybox-workdir workdir none app.txt" \
    "node-onefile node none src/index.js"
    for name in ${EXAMPLES:-}; do echo "example-$name example-$name oci $(example_stamp "$name")"; done
  } |
  while read -r name case output changed; do
    printf '%s\t%s\t%s\n' "$name" "$(mb_command "$W" "$case" "$output" "$changed")" \
      "$(bk_command "$W" "$case" "$output" "$changed")"
  done
}

# ------------------------------------------------------------------ daemons
setup() {
  local W=$1
  mkdir -p "$W/out" "$W/containerd" "$W/dockerd"
  [ -x "$MEMOBUILD" ] || { log "no $MEMOBUILD: cargo build --release -p memobuild-cli"; exit 1; }
  bash "$ROOT/scripts/base-images.sh" busybox >&2
  bash "$ROOT/scripts/base-images.sh" debian >&2
  local port; port=$(free_port)
  echo "$port" > "$W/registry.port"
  bash "$ROOT/scripts/registry.sh" start "$port" >&2
  local registry="127.0.0.1:$port" layout="${MEMOBUILD_BASE_CACHE:-/var/cache/memobuild/base-images}/oci"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:busybox" "docker://$registry/memobuild-base/busybox:1"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:debian" "docker://$registry/memobuild-base/debian:bookworm"
  for name in ${EXAMPLES:-}; do
    local base; base=$(example_base "$name")
    bash "$ROOT/scripts/base-images.sh" "$base" >&2
    skopeo copy -q --dest-tls-verify=false "oci:$layout:$base" "docker://$registry/memobuild-base/$base:bookworm"
  done

  local S="$W/containerd"
  cat > "$S/config.toml" <<EOF
version = 2
root = "$S/root"
state = "$S/state"
[grpc]
  address = "$S/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
EOF
  setsid containerd --config "$S/config.toml" >"$S/containerd.log" 2>&1 </dev/null &
  echo $! > "$S/containerd.pid"

  dockerd_start "$W/dockerd" "$registry"
  for _ in $(seq 150); do [ -S "$S/containerd.sock" ] && break; sleep 0.2; done

  write_cases "$W" "$registry"
  list_cases "$W" > "$W/cases.tsv"
  log "warming both builders"
  while IFS=$'\t' read -r name a b; do
    sh -c "$a" || { log "$name: MemoBuild failed: $a"; exit 1; }
    sh -c "$b" || { log "$name: BuildKit failed: $b"; exit 1; }
  done < "$W/cases.tsv"
}

teardown() {
  local W=$1 pid
  dockerd_stop "$W/dockerd"
  if [ -f "$W/containerd/containerd.pid" ]; then
    pid=$(cat "$W/containerd/containerd.pid"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  [ -f "$W/registry.port" ] && bash "$ROOT/scripts/registry.sh" stop "$(cat "$W/registry.port")" >/dev/null 2>&1 || true
  { grep -o " $W/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$W" 2>/dev/null || { sleep 1; rm -rf "$W"; }
}

# ------------------------------------------------------------------ timing
time_cases() {
  local W=$1 runs=${2:-7}
  python3 - "$W/cases.tsv" "$runs" <<'PY'
import statistics, subprocess, sys, time
cases, runs = sys.argv[1], int(sys.argv[2])
def once(cmd):
    start = time.monotonic()
    rc = subprocess.run(cmd, shell=True).returncode
    if rc != 0:
        sys.exit(f"failed ({rc}): {cmd}")
    return time.monotonic() - start
print(f"| case | MemoBuild | BuildKit | ratio |\n|---|---|---|---|")
for line in open(cases):
    name, a, b = line.rstrip("\n").split("\t")
    once(a); once(b)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(once(a)); tb.append(once(b))
    ratio = statistics.median(x / y for x, y in zip(ta, tb))
    print(f"| {name} | {statistics.median(ta)*1000:.0f} ms | {statistics.median(tb)*1000:.0f} ms | {ratio:.2f} |", flush=True)
PY
}

case "${1:-}" in
  setup) setup "$2" ;;
  time) time_cases "$2" "${3:-7}" ;;
  teardown) teardown "$2" ;;
  run)
    W=$(mktemp -d /var/tmp/mb-bench-incr.XXXXXX)
    trap 'teardown "$W"' EXIT
    setup "$W"
    time_cases "$W" "${2:-7}"
    ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
