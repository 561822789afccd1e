#!/usr/bin/env bash
# Checks deploy/docker-compose.yml, and its override for hosts without
# CAP_SYS_RESOURCE, against the Compose Specification's JSON schema (check-jsonschema, installed by scripts/install-deps.sh), and with
# Debian's docker-compose when it is installed (semantic checks: anchors,
# depends_on, volumes). Fast: part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")"
check=${CHECK_JSONSCHEMA:-/opt/memobuild-k8s/venv/bin/check-jsonschema}
[ -x "$check" ] || { echo "$check not found: run scripts/install-deps.sh" >&2; exit 1; }
"$check" --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.no-sys-resource.yml
if command -v docker-compose >/dev/null; then
  docker-compose -f docker-compose.yml config -q
  docker-compose -f docker-compose.yml -f docker-compose.no-sys-resource.yml config -q
  echo "docker-compose config: ok"
fi
