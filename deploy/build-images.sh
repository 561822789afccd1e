#!/usr/bin/env bash
# Builds MemoBuild's own images with MemoBuild (`memobuild build`), from the
# base images scripts/base-images.sh makes locally, and checks them in a
# private dockerd:
#   memobuild/memobuild:dev   deploy/Dockerfile (the release binary + containerd, runc, crun)
#   memobuild/postgres:dev    deploy/images/postgres   (for docker-compose.yml)
#   memobuild/redis:dev       deploy/images/redis
#   memobuild/s3:dev          deploy/images/s3         (moto)
# Checks: `memobuild --version`, containerd, runc and crun run inside the image, and
# deploy/docker-compose.yml passes the compose schema. With --up it also brings
# the compose cluster up in that dockerd, runs a remote build with a RUN step
# on it and a Bazel build (tests/bazel-workspace) with it as remote executor.
# On a host whose capability bounding set lacks CAP_SYS_RESOURCE the workers
# run with deploy/docker-compose.no-sys-resource.yml over the compose file.
#
# Usage: deploy/build-images.sh [--up] [--keep]   (as root)
# Env: MEMOBUILD_BIN (a built binary; default: cargo build --release),
#      MEMOBUILD_IMAGE_STATE (memobuild's state dir, kept between runs so
#      rebuilds hit the cache; default /var/tmp/memobuild-images-state).
# Needs the internet only for Debian's mirror (apt in RUN) and PyPI (moto).
# Not part of scripts/test.sh: a cold run takes minutes (release build,
# debootstrap, apt); see the timings it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

up=false keep=false
for arg in "$@"; do
  case "$arg" in
    --up) up=true ;;
    --keep) keep=true ;;
    *) echo "usage: $0 [--up] [--keep]" >&2; exit 2 ;;
  esac
done

log() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (memobuild build runs RUN steps in containerd)"

work=$(mktemp -d /tmp/mb-images.XXXXXX)
dockerd_pid=""
registry_started=false
compose=(docker-compose -p mbdev -f deploy/docker-compose.yml)
cleanup() {
  local rc=$?
  if [ -n "$dockerd_pid" ]; then
    if $up && ! $keep; then
      "${compose[@]}" down -v >/dev/null 2>&1 || true
    fi
    if ! $keep; then
      kill "$dockerd_pid" 2>/dev/null || true
      wait "$dockerd_pid" 2>/dev/null || true
    fi
  fi
  if $registry_started && ! $keep; then bash scripts/registry.sh stop 5000; fi
  if $keep; then log "kept $work (DOCKER_HOST=$DOCKER_HOST)"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT

# 1. Base images, in the local registry the Dockerfiles name.
bash scripts/registry.sh status 5000 >/dev/null || registry_started=true
bash scripts/registry.sh start 5000
bash scripts/base-images.sh debian
bash scripts/base-images.sh push 127.0.0.1:5000

# 2. The release binary.
bin="${MEMOBUILD_BIN:-}"
if [ -z "$bin" ]; then
  log "cargo build --release -p memobuild-cli"
  cargo build --release --locked -p memobuild-cli
  bin="$CARGO_TARGET_DIR/release/memobuild"
fi
[ -x "$bin" ] || die "no binary at $bin"

# 3. A private dockerd (no clash with any other), which `--load` loads into.
mkdir -p "$work/run"
export DOCKER_HOST="unix://$work/run/docker.sock"
setsid dockerd --data-root "$work/data" --exec-root "$work/run/exec" --pidfile "$work/dockerd.pid" \
  --host "$DOCKER_HOST" --iptables=false --ip-masq=false --bridge=none \
  >"$work/dockerd.log" 2>&1 </dev/null &
dockerd_pid=$!
for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version >/dev/null || die "dockerd did not start: $(tail -5 "$work/dockerd.log")"

# 4. The images, built by memobuild.
state="${MEMOBUILD_IMAGE_STATE:-/var/tmp/memobuild-images-state}"
build() { # tag dockerfile context
  local start=$SECONDS
  "$bin" build --state-dir "$state" --progress plain -t "$1" -f "$2" --load "$3" >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; die "memobuild build of $1 failed"; }
  log "built $1 in $((SECONDS - start)) s"
}
mkdir -p "$work/context"
cp "$bin" "$work/context/memobuild"
build memobuild/memobuild:dev deploy/Dockerfile "$work/context"
for image in postgres redis; do
  build "memobuild/$image:dev" "deploy/images/$image/Dockerfile" "deploy/images/$image"
done
# moto's wheels come from the host's pip (Python 3.11 as in bookworm).
mkdir -p "$work/s3"
python3 -m pip download -q --dest "$work/s3/wheels" --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  'moto[s3]==5.2.6' flask flask-cors
build memobuild/s3:dev deploy/images/s3/Dockerfile "$work/s3"

# 5. What a user checks first: the binary and the runtime tools run in the image.
want="memobuild $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
got=$(docker run --rm --network none memobuild/memobuild:dev --version)
[ "$got" = "$want" ] || die "memobuild --version in the image printed '$got', want '$want'"
docker run --rm --network none --entrypoint containerd memobuild/memobuild:dev --version >/dev/null ||
  die "containerd does not run in the image"
for runtime in runc crun; do
  docker run --rm --network none --entrypoint "$runtime" memobuild/memobuild:dev --version >/dev/null ||
    die "$runtime does not run in the image"
done
log "memobuild/memobuild:dev runs: $got; $(docker image inspect -f '{{.Size}}' memobuild/memobuild:dev) bytes"

bash deploy/check-compose.sh

# 6. The compose cluster, for real, in the private dockerd.
if $up; then
  command -v docker-compose >/dev/null || die "--up needs docker-compose (apt-get install docker-compose)"
  command -v bazel >/dev/null || die "--up needs bazel (apt-get install bazel-bootstrap)"
  # A privileged container asks runc for every capability the kernel knows.
  bounding=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  missing=$(((1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1 & ~bounding))
  if ((missing == 1 << 24)); then
    log "this host's capability bounding set lacks CAP_SYS_RESOURCE: workers run with docker-compose.no-sys-resource.yml"
    compose+=(-f deploy/docker-compose.no-sys-resource.yml)
  elif ((missing != 0)); then
    die "this host's capability bounding set lacks capabilities $(printf '%#x' "$missing") (bit = number): privileged workers cannot start"
  fi
  start=$SECONDS
  "${compose[@]}" up -d
  cluster=(--endpoint grpc://127.0.0.1:8981)
  for _ in $(seq 180); do
    [ "$("$bin" workers "${cluster[@]}" 2>/dev/null | tail -n +2 | wc -l)" = 2 ] && break
    sleep 1
  done
  "${compose[@]}" ps
  workers=$("$bin" workers "${cluster[@]}") || die "the compose scheduler does not answer"
  [ "$(tail -n +2 <<<"$workers" | wc -l)" = 2 ] ||
    { "${compose[@]}" logs --tail 30 >&2; die "two workers did not connect to the compose scheduler: $workers"; }
  log "compose cluster up, two workers connected, in $((SECONDS - start)) s"

  # A RUN step needs no base image here: busybox (static) is the step's shell.
  start=$SECONDS
  mkdir -p "$work/app"
  cp /bin/busybox "$work/app/busybox"
  printf '%s\n' 'FROM scratch' 'COPY busybox /bin/busybox' \
    'RUN ["/bin/busybox", "sh", "-c", "echo built on the compose cluster > /hello.txt"]' >"$work/app/Dockerfile"
  "$bin" remote build "${cluster[@]}" --progress plain --output "type=local,dest=$work/app-out" "$work/app" \
    >"$work/remote.log" 2>&1 ||
    { cat "$work/remote.log" >&2; "${compose[@]}" logs --tail 30 >&2; die "remote build on the compose cluster failed"; }
  [ "$(cat "$work/app-out/hello.txt")" = "built on the compose cluster" ] ||
    die "the RUN step's file is not in the remote build's output: $(ls -R "$work/app-out")"
  build_id=$(awk '/^build / { print $2; exit }' "$work/remote.log")
  run_step=$("$bin" builds inspect "${cluster[@]}" "$build_id" | grep RUN) ||
    die "build $build_id on the compose cluster shows no RUN step"
  ran_on=""
  for service in worker-1 worker-2; do
    grep -q " $(docker inspect -f '{{.Config.Hostname}}' "mbdev_${service}_1"):" <<<"$run_step" && ran_on=$service
  done
  [ -n "$ran_on" ] || die "the RUN step of build $build_id ran on no compose worker: $run_step"
  log "remote build with a RUN step on compose's $ran_on: ok in $((SECONDS - start)) s"

  # Bazel, with the compose scheduler as its remote executor and cache.
  start=$SECONDS
  mkdir -p "$work/bazel"
  tar -C tests/bazel-workspace --exclude='./bazel-*' -cf - . | tar -C "$work/bazel" -xf -
  bazel_run() { (cd "$work/bazel" && bazel --output_user_root="$work/bazel-root" "$@"); }
  bazel_run build --remote_executor=grpc://127.0.0.1:8981 //:chain_c //:indep_numbers >"$work/bazel.log" 2>&1 ||
    { cat "$work/bazel.log" >&2; bazel_run shutdown; die "bazel build against the compose cluster failed"; }
  bazel_run shutdown
  grep -E '^INFO: [0-9]+ processes' "$work/bazel.log" >&2
  grep -qE 'processes: .*[0-9]+ remote' "$work/bazel.log" && ! grep -qE 'processes: .*(local|linux-sandbox)' "$work/bazel.log" ||
    die "bazel did not run its actions on the compose cluster: $(cat "$work/bazel.log")"
  [ "$(tail -1 "$work/bazel/bazel-bin/chain_c.txt")" = 4 ] || die "bazel's chain_c.txt is wrong"
  # Bazel's actions are REAPI actions (kind="action"), counted by the worker that ran them.
  ran=0
  for port in 9092 9093; do
    n=$(curl -sf "127.0.0.1:$port/metrics" | awk '/^memobuild_worker_executions_total\{kind="action"/ { n += $2 } END { print n + 0 }')
    log "the worker on admin port $port ran $n actions"
    ran=$((ran + n))
  done
  ((ran >= 4)) || die "the compose workers ran $ran actions, fewer than the 4 bazel sent"
  log "bazel build on the compose cluster: ok in $((SECONDS - start)) s"
fi
log "done"
