#!/bin/bash
# Cost of logs and traces: FindMissingBlobs latency and Execute throughput of
# `memobuild server` with tracing off (MEMOBUILD_LOG=off), with the default
# text logs at info, and with JSON logs plus spans exported over OTLP (to a
# port nothing listens on: spans are built and batched, the export fails),
# in rotation. Metrics are on in every mode (they cannot be turned off).
#   BIN=DIR (where memobuild and memobuild-loadtest are; default target/release)
#   ROUNDS=N (default 3)
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
  sleep 1.5
  fm=$($LT find-missing --endpoint $ep --digests 1000 --requests 3000 --concurrency 16 --json 2>>"$S.lt")
  ex=$($LT execute --endpoint $ep --actions 300 --concurrency 32 --skip-cache-lookup --json 2>>"$S.lt")
  kill $PID; wait $PID 2>/dev/null
  echo "{\"mode\":\"$mode\",\"round\":$r,\"find_missing\":$fm,\"execute\":$ex}"
}
for r in $(seq "${ROUNDS:-3}"); do for m in off text otlp; do run $m "$r"; done; done
rm -rf "$D"
