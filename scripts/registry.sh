#!/usr/bin/env bash
# A local OCI registry (Debian's docker-registry 2.8, plain http) on 127.0.0.1:PORT.
#
#   scripts/registry.sh start [PORT]    default 5000; idempotent (exits 0 if it already answers)
#   scripts/registry.sh stop [PORT]
#   scripts/registry.sh status [PORT]
#
# State: /var/lib/memobuild-registry/<PORT>/{data,registry.yml,registry.pid,registry.log}
# (override the base dir with MEMOBUILD_REGISTRY_DIR). Deletes are enabled.
# Clients must treat it as insecure (e.g. skopeo --tls-verify=false).
set -euo pipefail

cmd="${1:-}"
PORT="${2:-5000}"
BASE="${MEMOBUILD_REGISTRY_DIR:-/var/lib/memobuild-registry}"
DIR="$BASE/$PORT"
PIDFILE="$DIR/registry.pid"
URL="http://127.0.0.1:$PORT/v2/"

log() { printf '[registry] %s\n' "$*" >&2; }

answers() { curl -sf -o /dev/null --max-time 2 "$URL"; }

running_pid() { # prints the pid if the pid file names a live docker-registry
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  if answers; then
    log "already answering at $URL"; return 0
  fi
  if ! command -v docker-registry >/dev/null; then
    log "installing docker-registry"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >&2
  fi
  command -v curl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >&2; }
  mkdir -p "$DIR/data"
  cat > "$DIR/registry.yml" <<EOF
version: 0.1
storage:
  filesystem: {rootdirectory: $DIR/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$PORT}
log: {level: warn}
EOF
  # The Debian package's own service may hold a pid; we only manage ours.
  setsid docker-registry serve "$DIR/registry.yml" >"$DIR/registry.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 100); do
    if answers; then log "up at $URL (pid $(cat "$PIDFILE"), data $DIR/data)"; return 0; fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 0.1
  done
  log "registry did not come up; log:"; tail -n 20 "$DIR/registry.log" >&2
  exit 1
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  else
    log "not running (no live pid in $PIDFILE)"
  fi
  rm -f "$PIDFILE"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "up at $URL"; else echo "down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status [PORT]" >&2; exit 2 ;;
esac
