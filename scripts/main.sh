#!/usr/bin/env bash
# MemoBuild's main job on embedded defaults: build a real multi-stage
# Dockerfile (examples/go: go vet, go test and a static build in a golang
# image, shipped on busybox) with `memobuild build`, from base images built
# locally and served by a local registry. Then build it again unchanged (no
# step runs), change one source file (only the steps that read it run), and
# run the image with runc.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/env.sh

cargo build --release --locked -p memobuild-cli
memobuild="$CARGO_TARGET_DIR/release/memobuild"
registry=127.0.0.1:5000
bash scripts/registry.sh start 5000
bash scripts/base-images.sh busybox
bash scripts/base-images.sh golang
bash scripts/base-images.sh push "$registry"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r examples/go "$work/go"
state="$work/state"
build() {
  "$memobuild" build --state-dir "$state" --progress plain --build-arg "REGISTRY=$registry" \
    -t memobuild-example/go:latest -o "type=oci,dest=$work/image.tar" "$work/go"
}

echo "== cold build"
time build
echo "== unchanged rebuild"
time build
echo "== one source file changed"
echo "// touched by scripts/main.sh" >>"$work/go/internal/stats/stats.go"
time build
"$memobuild" explain-cache --state-dir "$state" "$work/go"

echo "== the image, checked and run by independent tools"
skopeo inspect "oci-archive:$work/image.tar:latest" | grep -E '"(Digest|Architecture)"'
mkdir "$work/layout" && tar -xf "$work/image.tar" -C "$work/layout"
umoci unpack --image "$work/layout:latest" "$work/bundle" >/dev/null
sed -i 's/"terminal": *true/"terminal":false/' "$work/bundle/config.json"
echo "the quick brown fox jumps over the lazy dog the end" >"$work/bundle/rootfs/tmp/input.txt"
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["process"]["args"] = config["process"]["args"] + ["/tmp/input.txt"]
json.dump(config, open(path, "w"))
PY
runc run --bundle "$work/bundle" "memobuild-main-$$"
