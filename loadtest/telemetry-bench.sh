#!/bin/bash
# Cost of logs and traces: FindMissingBlobs latency and Execute throughput of
# `memobuild server` with tracing off (MEMOBUILD_LOG=off), with the default
# text logs at info, and with JSON logs plus spans exported over OTLP (to a
# port nothing listens on: spans are built and batched, the export fails),
# in rotation. Metrics are on in every mode (they cannot be turned off).
# Besides latency and throughput, each pass reports the server's CPU seconds
# (from /proc), which a machine shared with other work disturbs less.
#   BIN=DIR (where memobuild and memobuild-loadtest are; default target/release)
#   ROUNDS=N (default 3)
#   MODES="off text otlp" (the default; any of them)
#   PERF=DIR: record each server's CPU samples with call stacks (perf record
#   --call-graph dwarf -F 999) in DIR/MODE-ROUND.data; loadtest/perf-share.sh gives
#   the share of them in given functions (the metrics', say).
set -u
T=${BIN:-target/release}
T=$(cd "$T" && pwd)
LT=$T/memobuild-loadtest
MB=$T/memobuild
D=$(mktemp -d)
run() { # mode round
  mode=$1; r=$2; S=$D/state-$mode-$r; mkdir -p "$S"
  env=(MEMOBUILD_LOG=info); ep=grpc://127.0.0.1:37477
  case $mode in
    off) env=(MEMOBUILD_LOG=off);;
    otlp) env=(MEMOBUILD_LOG=info MEMOBUILD_LOG_FORMAT=json OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:37479);;
  esac
  env "${env[@]}" "$MB" server --listen 127.0.0.1:37477 --admin-listen 127.0.0.1:37478 --state-dir "$S" 2>"$S.log" &
  PID=$!
  for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/37477) 2>/dev/null && break; sleep 0.2; done
  if [ -n "${PERF:-}" ]; then
    perf record -q --call-graph dwarf -F 999 -p $PID -o "$PERF/$mode-$r.data" 2>>"$S.perf" &
    PERF_PID=$!
    sleep 1
  fi
  c0=$(cpu $PID)
  fm=$($LT find-missing --endpoint $ep --digests 1000 --requests 3000 --concurrency 16 --json 2>>"$S.lt")
  c1=$(cpu $PID)
  ex=$($LT execute --endpoint $ep --actions 300 --concurrency 32 --skip-cache-lookup --server-pid $PID --json 2>>"$S.lt")
  if [ -n "${PERF:-}" ]; then kill -INT $PERF_PID; wait $PERF_PID; fi
  kill $PID; wait $PID 2>/dev/null
  fm_cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
  echo "{\"mode\":\"$mode\",\"round\":$r,\"find_missing_server_cpu_seconds\":$fm_cpu,\"find_missing\":$fm,\"execute\":$ex}"
}
# User + system CPU ticks of process $1.
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for r in $(seq "${ROUNDS:-3}"); do for m in ${MODES:-off text otlp}; do run $m "$r"; done; done
rm -rf "$D"
