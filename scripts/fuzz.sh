#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (scripts/test.sh
# runs it in CI). Installs cargo-fuzz when missing. cargo-fuzz is made for
# nightly; RUSTC_BOOTSTRAP=1 lets the stable toolchain take what it passes.
#
#   FUZZ_SECONDS      seconds per target (default 25)
#   FUZZ_TARGETS      the targets to run (default: all four)
#   FUZZ_TARGET_DIR   cargo's target dir (default /var/tmp/memobuild-fuzz-target)
#
# Each target starts from its seeds in fuzz/corpus/<target> (read-only) and
# keeps what it finds in $FUZZ_TARGET_DIR/corpus/<target>. A crash, a
# timeout or an out-of-memory input fails the script: libFuzzer writes the
# input to fuzz/artifacts/<target>/ and the last lines name it. Replay it on
# stable Rust with
#   cargo run --manifest-path fuzz/Cargo.toml --bin replay -- --target=<target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

seconds="${FUZZ_SECONDS:-25}"
targets=(${FUZZ_TARGETS:-dockerfile resource_name directory decompress})
target_dir="${FUZZ_TARGET_DIR:-/var/tmp/memobuild-fuzz-target}"
unset CARGO_TARGET_DIR
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# The crates under test are memory-safe Rust (the C in zstd is not
# instrumented either way), so no sanitizer: a faster build and more runs.
# Panics, timeouts and runaway memory are what the targets look for.
flags=(--sanitizer none --release --debug-assertions --fuzz-dir fuzz --target-dir "$target_dir")

started=$(date +%s)
# One target at a time: `cargo fuzz build` alone would also build the
# `replay` binary, which is not a libFuzzer target and does not link so.
for target in "${targets[@]}"; do
  cargo fuzz build "${flags[@]}" "$target"
done
echo "fuzz: built the targets in $(($(date +%s) - started)) s" >&2

for target in "${targets[@]}"; do
  found="$target_dir/corpus/$target"
  mkdir -p "$found" "fuzz/artifacts/$target"
  log="$target_dir/fuzz-$target.log"
  echo "fuzz: $target for $seconds s" >&2
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: 2 GiB is a leak.
  if ! cargo fuzz run "${flags[@]}" "$target" "$found" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED; the input that did it:" >&2
    ls -1 "fuzz/artifacts/$target/"* >&2 || true
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  echo "fuzz: $target ok: ${runs:-?} runs, ${speed:-?} execs/s, corpus $(ls "$found" | wc -l) new inputs" >&2
done
