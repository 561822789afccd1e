#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine (as root): installs what it
# needs and starts PostgreSQL if it is not running, then runs formatting, lints
# and every test, including real Bazel and PostgreSQL against the real server,
# then each fuzz target for a bounded time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/services.sh
source scripts/env.sh
# The Debian g++ image Bazel's container-image test builds C++ in (cached
# under /var/cache/memobuild/base-images after the first run).
bash scripts/base-images.sh gcc

# The Helm chart: lint, render and validate every profile (no cluster needed).
/opt/memobuild-k8s/venv/bin/python helm/tests/check_chart.py
bash deploy/check-compose.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Every fuzz target for a bounded time; a crash fails the run and names its input.
bash scripts/fuzz.sh
