#!/usr/bin/env bash
# Builds MemoBuild's base images locally (no internet needed beyond the Debian mirror
# apt already uses) and caches them as tags of ONE OCI image layout:
#
#   $MEMOBUILD_BASE_CACHE/oci      (default /var/cache/memobuild/base-images/oci)
#     tags: busybox  debian  node  python  golang  rust  gcc
#
# Usage:
#   scripts/base-images.sh [all]          build every image that is not built yet
#   scripts/base-images.sh busybox        build only busybox (seconds; for the tests)
#   scripts/base-images.sh push REGISTRY  push every built image, e.g. to 127.0.0.1:5000:
#       REGISTRY/memobuild-base/busybox:1
#       REGISTRY/memobuild-base/debian:bookworm
#       REGISTRY/memobuild-base/{node,python,golang,rust,gcc}:bookworm
#   scripts/base-images.sh list           print the layout path and its tags
#
# Idempotent: a tag only appears in the layout once its image is complete (work is done
# under a temporary tag, then renamed), and existing tags are skipped. Delete a tag
# (`umoci rm --image $CACHE/oci:TAG`) or the whole cache dir to rebuild.
# debian is `debootstrap --variant=minbase bookworm`; node/python/golang/rust/gcc are
# debian's layer plus one layer from `apt-get install` in a chroot.
# Env: MEMOBUILD_BASE_CACHE (cache dir), MEMOBUILD_DEBIAN_MIRROR (default: from apt sources).
# Needs root.
set -euo pipefail

CACHE="${MEMOBUILD_BASE_CACHE:-/var/cache/memobuild/base-images}"
LAYOUT="$CACHE/oci"
WORK="$CACHE/work"
DEB_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf '[base-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

need_tools() {
  local missing=() t pkg
  for t in "$@"; do
    case "$t" in
      umoci) pkg=umoci; command -v umoci >/dev/null || missing+=("$pkg") ;;
      skopeo) pkg=skopeo; command -v skopeo >/dev/null || missing+=("$pkg") ;;
      busybox) pkg=busybox-static  # the static one: it must run inside the image
               [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=("$pkg") ;;
      debootstrap) pkg=debootstrap; command -v debootstrap >/dev/null || missing+=("$pkg") ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

has_tag() { [ -f "$LAYOUT/index.json" ] && umoci ls --layout "$LAYOUT" 2>/dev/null | grep -qx "$1"; }

init_layout() {
  mkdir -p "$CACHE" "$WORK"
  [ -f "$LAYOUT/index.json" ] || umoci init --layout "$LAYOUT"
}

# Turns the temporary tag into the final one (the "image is complete" marker).
finish_tag() { # tmp final
  umoci tag --image "$LAYOUT:$1" "$2"
  umoci rm --image "$LAYOUT:$1"
  umoci gc --layout "$LAYOUT"
}

image_size() { # tag -> "compressed layers MB"
  local tag=$1 total=0 d
  local manifest
  command -v python3 >/dev/null || { echo "size unknown (no python3)"; return; }
  manifest=$(python3 - "$LAYOUT" "$tag" <<'EOF'
import json, sys, os
layout, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(layout, "index.json")))
for m in idx["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
        h = m["digest"].split(":")[1]
        man = json.load(open(os.path.join(layout, "blobs", "sha256", h)))
        print(" ".join(str(l["size"]) for l in man["layers"]))
EOF
)
  for d in $manifest; do total=$((total + d)); done
  echo "$(awk -v b="$total" 'BEGIN{printf "%.1f", b/1048576}') MB compressed, $(echo "$manifest" | wc -w) layer(s)"
}

timed() { # name cmd...
  local name=$1; shift
  local t0=$SECONDS
  "$@"
  log "$name: built in $((SECONDS - t0)) s, $(image_size "$name")"
}

# ---------------------------------------------------------------- busybox
build_busybox() {
  local tmp=tmp-busybox b="$WORK/busybox"
  rm -rf "$b"; umoci rm --image "$LAYOUT:$tmp" 2>/dev/null || true
  umoci new --image "$LAYOUT:$tmp"
  umoci unpack --image "$LAYOUT:$tmp" "$b" >/dev/null
  local r="$b/rootfs"
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/home/app" "$r/proc" "$r/sys" "$r/dev" "$r/var" "$r/usr/bin" "$r/usr/sbin" "$r/sbin"
  cp /bin/busybox "$r/bin/busybox"
  chroot "$r" /bin/busybox --install -s
  chmod 1777 "$r/tmp"
  chmod 0700 "$r/root"
  cat > "$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat > "$r/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nogroup:x:65534:
EOF
  chown 1000:1000 "$r/home/app"
  umoci repack --image "$LAYOUT:$tmp" "$b" >/dev/null
  umoci config --image "$LAYOUT:$tmp" --config.env "PATH=$DEB_PATH" --config.cmd /bin/sh \
    --history.created_by "memobuild base-images.sh: busybox-static $(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null || echo '?')"
  finish_tag "$tmp" busybox
  rm -rf "$b"
}

# ---------------------------------------------------------------- debian
debian_mirror() {
  if [ -n "${MEMOBUILD_DEBIAN_MIRROR:-}" ]; then echo "$MEMOBUILD_DEBIAN_MIRROR"; return; fi
  local m
  m=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for(i=2;i<=NF;i++) print $i}'
         grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' | awk '{print $2}'
       } | grep -E '/debian/?$' | grep -v security | head -n1)
  [ -n "$m" ] || die "no Debian mirror found in apt sources; set MEMOBUILD_DEBIAN_MIRROR"
  echo "${m%/}"
}

# Mounts for running apt/dpkg in a chroot; undone by chroot_down (also on exit).
MOUNTED=()
chroot_up() { # rootfs
  local r=$1
  mkdir -p "$r/proc" "$r/dev" "$r/sys"
  mount -t proc proc "$r/proc"; MOUNTED+=("$r/proc")
  mount --rbind /dev "$r/dev"; mount --make-rslave "$r/dev"; MOUNTED+=("$r/dev")
  mount --rbind /sys "$r/sys"; mount --make-rslave "$r/sys"; MOUNTED+=("$r/sys")
  # The host's resolv.conf, only while we are in the chroot.
  rm -f "$r/etc/resolv.conf"; cp /etc/resolv.conf "$r/etc/resolv.conf"
  # No daemons started by maintainer scripts.
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
}
chroot_down() { # rootfs
  local r=$1 m
  for m in "${MOUNTED[@]}"; do umount -R "$m" 2>/dev/null || umount -lR "$m" 2>/dev/null || true; done
  MOUNTED=()
  rm -f "$r/etc/resolv.conf" "$r/usr/sbin/policy-rc.d"
}
cleanup_mounts() { local m; for m in "${MOUNTED[@]}"; do umount -lR "$m" 2>/dev/null || true; done; }
trap cleanup_mounts EXIT

# Leaves the rootfs like Debian's official images: no apt lists/caches, empty /dev etc.
slim_rootfs() { # rootfs
  local r=$1
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
         "$r"/var/cache/apt/archives/partial/* "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old \
         "$r"/var/log/apt/* "$r"/var/log/dpkg.log "$r"/var/log/alternatives.log "$r"/var/log/bootstrap.log \
         "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/*/LC_MESSAGES/*.mo 2>/dev/null || true
  find "$r"/usr -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
}

build_debian() {
  local tmp=tmp-debian b="$WORK/debian" mirror
  mirror=$(debian_mirror)
  rm -rf "$b"; umoci rm --image "$LAYOUT:$tmp" 2>/dev/null || true
  umoci new --image "$LAYOUT:$tmp"
  umoci unpack --image "$LAYOUT:$tmp" "$b" >/dev/null
  log "debian: debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$b/rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  local r="$b/rootfs"
  # Keep apt from pulling recommends/docs into derived images, like the official image.
  cat > "$r/etc/apt/apt.conf.d/90memobuild" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
  cat > "$r/etc/dpkg/dpkg.cfg.d/90memobuild-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*/LC_MESSAGES/*.mo
EOF
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
  echo bookworm-memobuild > "$r/etc/hostname"
  rm -rf "$r"/dev/* "$r"/proc/* "$r"/sys/*
  slim_rootfs "$r"
  umoci repack --image "$LAYOUT:$tmp" "$b" >/dev/null
  umoci config --image "$LAYOUT:$tmp" --config.env "PATH=$DEB_PATH" --config.cmd /bin/bash \
    --history.created_by "memobuild base-images.sh: debootstrap --variant=minbase bookworm $mirror"
  finish_tag "$tmp" debian
  rm -rf "$b"
}

# ---------------------------------------------------------------- debian + packages
build_variant() { # name cmd packages...
  local name=$1 cmd=$2; shift 2
  local tmp="tmp-$name" b="$WORK/$name"
  rm -rf "$b"; umoci rm --image "$LAYOUT:$tmp" 2>/dev/null || true
  umoci tag --image "$LAYOUT:debian" "$tmp"
  umoci unpack --image "$LAYOUT:$tmp" "$b" >/dev/null
  local r="$b/rootfs"
  chroot_up "$r"
  log "$name: apt-get install $*"
  if ! chroot "$r" /usr/bin/env -i PATH="$DEB_PATH" HOME=/root DEBIAN_FRONTEND=noninteractive \
      sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" && apt-get clean' sh "$@" \
      > "$WORK/$name-apt.log" 2>&1; then
    chroot_down "$r"; tail -n 30 "$WORK/$name-apt.log" >&2
    die "$name: apt-get install failed (log: $WORK/$name-apt.log)"
  fi
  chroot_down "$r"
  slim_rootfs "$r"
  umoci repack --image "$LAYOUT:$tmp" "$b" >/dev/null
  umoci config --image "$LAYOUT:$tmp" --config.env "PATH=$DEB_PATH" --config.cmd "$cmd" \
    --history.created_by "memobuild base-images.sh: apt-get install $*"
  finish_tag "$tmp" "$name"
  rm -rf "$b"
}

# name -> "cmd packages..."
VARIANTS=(node python golang rust gcc)
variant_spec() {
  case "$1" in
    node) echo "node nodejs npm" ;;
    python) echo "python3 python3" ;;
    golang) echo "/bin/bash golang-go ca-certificates" ;;
    rust) echo "/bin/bash rustc cargo" ;;
    gcc) echo "/bin/bash g++" ;;
  esac
}

ensure() { # tag
  local tag=$1
  if has_tag "$tag"; then log "$tag: cached ($(image_size "$tag"))"; return; fi
  log "$tag: building"
  case "$tag" in
    busybox) timed busybox build_busybox ;;
    debian) timed debian build_debian ;;
    *) local spec; spec=$(variant_spec "$tag"); [ -n "$spec" ] || die "unknown image $tag"
       # shellcheck disable=SC2086
       timed "$tag" build_variant "$tag" $spec ;;
  esac
}

with_lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
}

push_all() { # registry
  local reg=$1 tag dest
  need_tools skopeo umoci
  [ -f "$LAYOUT/index.json" ] || die "no layout at $LAYOUT; build first"
  for tag in busybox debian "${VARIANTS[@]}"; do
    has_tag "$tag" || { log "$tag: not built, skipped"; continue; }
    case "$tag" in busybox) dest="$reg/memobuild-base/busybox:1" ;; *) dest="$reg/memobuild-base/$tag:bookworm" ;; esac
    log "push $tag -> $dest"
    skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:$tag" "docker://$dest"
  done
}

mode="${1:-all}"
case "$mode" in
  busybox)
    need_tools umoci busybox; with_lock; init_layout; ensure busybox ;;
  all|"")
    need_tools umoci busybox debootstrap; with_lock; init_layout
    t0=$SECONDS
    ensure busybox; ensure debian
    for v in "${VARIANTS[@]}"; do ensure "$v"; done
    log "all images ready in $LAYOUT ($((SECONDS - t0)) s)" ;;
  debian|node|python|golang|rust|gcc)
    need_tools umoci debootstrap; with_lock; init_layout
    [ "$mode" = debian ] || ensure debian
    ensure "$mode" ;;
  push)
    [ -n "${2:-}" ] || die "usage: $0 push REGISTRY (e.g. 127.0.0.1:5000)"
    with_lock; push_all "$2" ;;
  list)
    echo "$LAYOUT"; [ -f "$LAYOUT/index.json" ] && umoci ls --layout "$LAYOUT" | grep -v '^tmp-' || true ;;
  -h|--help|help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
  *) die "unknown mode '$mode' (all|busybox|debian|node|python|golang|rust|gcc|push REGISTRY|list)" ;;
esac
