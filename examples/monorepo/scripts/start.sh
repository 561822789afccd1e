#!/bin/sh
# Runs both services in one container (the default `all` target): worker in the
# background, api in the foreground; stopping the container stops both.
set -eu
/usr/local/bin/worker -config "${WORKER_CONFIG:-/srv/config/worker.json}" &
worker=$!
trap 'kill "$worker" 2>/dev/null || true' EXIT INT TERM
/usr/local/bin/api -addr "${API_ADDR:-:8080}"
