#!/usr/bin/env bash
# Reference check of examples/*: builds each with buildah (not MemoBuild) against the
# local registry, RUN steps without network, and smoke-runs the results.
#
#   scripts/examples-buildah.sh [--cold] [REGISTRY] [EXAMPLE...]
#     REGISTRY default 127.0.0.1:5000 (scripts/registry.sh start; scripts/base-images.sh push)
#     --cold: remove buildah's images first, so bases are pulled and nothing is cached
#
# Buildah older than 1.33 (Debian 12 ships 1.28) has no `RUN <<EOF` heredocs: for it
# the heredoc RUNs are rewritten to `RUN cmd1 && cmd2 ...` in a temporary Dockerfile.
set -euo pipefail

cold=0
if [ "${1:-}" = --cold ]; then cold=1; shift; fi
REGISTRY="${1:-127.0.0.1:5000}"; [ $# -gt 0 ] && shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
EXAMPLES=("$@"); [ ${#EXAMPLES[@]} -gt 0 ] || EXAMPLES=(go rust node python monorepo)

command -v buildah >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2; }
curl -sf "http://$REGISTRY/v2/" >/dev/null || { echo "no registry at $REGISTRY (scripts/registry.sh start)" >&2; exit 1; }

if [ "$cold" = 1 ]; then buildah rm -a >/dev/null 2>&1 || true; buildah rmi -a -f >/dev/null 2>&1 || true; fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dockerfile_for() { # example -> path of a Dockerfile buildah can parse
  local src="$ROOT/examples/$1/Dockerfile"
  if grep -q '^RUN <<' "$src"; then
    python3 - "$src" > "$tmp/$1.Dockerfile" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
def conv(m):
    cmds = [l.strip() for l in m.group(2).replace("\\\n", " ").splitlines() if l.strip()]
    return "RUN " + " && ".join(cmds) + "\n"
sys.stdout.write(re.sub(r"RUN <<(\w+)\n(.*?)\n\1\n", conv, src, flags=re.S))
EOF
    echo "$tmp/$1.Dockerfile"
  else
    echo "$src"
  fi
}

bud() { # example tag [extra args]
  local ex=$1 tag=$2; shift 2
  local t0=$SECONDS
  if buildah bud --format docker --tls-verify=false --network=none --build-arg "REGISTRY=$REGISTRY" \
      -f "$(dockerfile_for "$ex")" -t "$tag" "$@" "$ROOT/examples/$ex" > "$tmp/$tag.log" 2>&1; then
    echo "BUILD ok   $tag ($((SECONDS - t0)) s)"
  else
    echo "BUILD FAIL $tag ($((SECONDS - t0)) s)"; tail -n 30 "$tmp/$tag.log"; return 1
  fi
}

run_in() { # image cmd...  (prints output, fails if the command fails)
  local img=$1 c rc=0; shift
  c=$(buildah from "$img")
  buildah run --network=none "$c" -- "$@" || rc=$?
  buildah rm "$c" >/dev/null
  return $rc
}

check() { # label expected-substring image cmd...
  local label=$1 want=$2 out; shift 2
  if out=$(run_in "$@" 2>&1) && grep -qF -- "$want" <<<"$out"; then echo "RUN   ok   $label"
  else echo "RUN   FAIL $label"; echo "$out" | tail -n 10; return 1; fi
}

fail=0
for ex in "${EXAMPLES[@]}"; do
  case "$ex" in
    go) bud go mbx-go && check "go: textstat" "textstat 0.1.0" mbx-go /usr/local/bin/textstat -version || fail=1 ;;
    rust) bud rust mbx-rust && check "rust: rpn" "14" mbx-rust /usr/local/bin/rpn "3 4 + 2 *" || fail=1 ;;
    node) bud node mbx-node && check "node: server + /slug" '"slug":"hello-world"' mbx-node sh -c \
        'cd /app && (node server.js >/dev/null 2>&1 &) && sleep 1 && node -e "fetch(\"http://127.0.0.1:8080/slug?text=Hello%20World\").then(r=>r.text()).then(console.log)"' || fail=1 ;;
    python) bud python mbx-python && check "python: inventory" "total value 48.29" mbx-python python3 -m inventory /app/inventory/sample.csv || fail=1 ;;
    monorepo)
      bud monorepo mbx-mono && check "monorepo: both services healthy" HEALTHY mbx-mono sh -c \
        '(start >/dev/null 2>&1 &); sleep 1; api -healthcheck && worker -healthcheck && echo HEALTHY' || fail=1
      bud monorepo mbx-mono-api --target api && check "monorepo --target api" "api 0.1.0" mbx-mono-api /usr/local/bin/api -version || fail=1
      bud monorepo mbx-mono-worker --target worker && check "monorepo --target worker" "worker 0.1.0" mbx-mono-worker /usr/local/bin/worker -version || fail=1 ;;
    *) echo "unknown example $ex"; fail=1 ;;
  esac
done
exit $fail
