#!/usr/bin/env bash
# Builds MemoBuild's own images with MemoBuild (`memobuild build`), from the
# base images scripts/base-images.sh makes locally, and checks them in a
# private dockerd:
#   memobuild/memobuild:dev   deploy/Dockerfile (the release binary + containerd, runc)
#   memobuild/postgres:dev    deploy/images/postgres   (for docker-compose.yml)
#   memobuild/redis:dev       deploy/images/redis
#   memobuild/s3:dev          deploy/images/s3         (moto)
# Checks: `memobuild --version`, containerd and runc run inside the image, and
# deploy/docker-compose.yml passes the compose schema. With --up it also brings
# the compose cluster up in that dockerd and runs a remote build against it.
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
cleanup() {
  local rc=$?
  if [ -n "$dockerd_pid" ]; then
    if $up && ! $keep; then
      docker-compose -p mbdev -f deploy/docker-compose.yml down -v >/dev/null 2>&1 || true
    fi
    if ! $keep; then
      kill "$dockerd_pid" 2>/dev/null || true
      wait "$dockerd_pid" 2>/dev/null || true
    fi
  fi
  if $keep; then log "kept $work (DOCKER_HOST=$DOCKER_HOST)"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT

# 1. Base images, in the local registry the Dockerfiles name.
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
docker run --rm --network none --entrypoint runc memobuild/memobuild:dev --version >/dev/null ||
  die "runc does not run in the image"
log "memobuild/memobuild:dev runs: $got; $(docker image inspect -f '{{.Size}}' memobuild/memobuild:dev) bytes"

bash deploy/check-compose.sh

# 6. The compose cluster, for real, in the private dockerd.
if $up; then
  command -v docker-compose >/dev/null || die "--up needs docker-compose (apt-get install docker-compose)"
  docker-compose -p mbdev -f deploy/docker-compose.yml up -d
  for _ in $(seq 120); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' mbdev_scheduler_1 2>/dev/null)" = healthy ] && break
    sleep 1
  done
  docker-compose -p mbdev -f deploy/docker-compose.yml ps
  mkdir -p "$work/app"
  printf 'FROM scratch\nCOPY hello.txt /\n' >"$work/app/Dockerfile"
  echo "built on the compose cluster" >"$work/app/hello.txt"
  "$bin" remote build --endpoint grpc://127.0.0.1:8981 --output "type=oci,dest=$work/app.tar" "$work/app" ||
    { docker-compose -p mbdev -f deploy/docker-compose.yml logs --tail 30 >&2; die "remote build on the compose cluster failed"; }
  log "remote build on the compose cluster: ok ($work/app.tar)"
fi
log "done"
