# A private dockerd (Debian's docker.io 20.10, BuildKit on) to compare with,
# sourced by scripts/bench-incremental.sh and scripts/conformance.sh:
#
#   dockerd_start DIR REGISTRY   starts one with all its state under DIR, its
#                                socket at DIR/docker.sock, no network of its
#                                own, REGISTRY (HOST:PORT, plain http) trusted;
#                                returns when it answers, fails with its log
#   dockerd_stop DIR             stops it, waits for it to exit and unmounts
#                                what it left mounted under DIR

dockerd_start() {
  local D=$1 registry=$2
  mkdir -p "$D"
  cat > "$D/daemon.json" <<EOF
{"data-root": "$D/data", "exec-root": "$D/exec", "pidfile": "$D/dockerd.pid",
 "hosts": ["unix://$D/docker.sock"], "bridge": "none", "iptables": false,
 "ip-forward": false, "ip-masq": false, "storage-driver": "overlay2",
 "insecure-registries": ["$registry"], "features": {"buildkit": true}}
EOF
  setsid /usr/sbin/dockerd --config-file "$D/daemon.json" >"$D/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 150); do
    DOCKER_HOST="unix://$D/docker.sock" /usr/bin/docker version >/dev/null 2>&1 && break
    sleep 0.2
  done
  DOCKER_HOST="unix://$D/docker.sock" /usr/bin/docker version --format 'dockerd {{.Server.Version}} up' >&2 \
    || { tail -n 30 "$D/dockerd.log" >&2; return 1; }
}

dockerd_stop() {
  local D=$1 pid
  if [ -f "$D/dockerd.pid" ]; then
    pid=$(cat "$D/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  { grep -o " $D/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
