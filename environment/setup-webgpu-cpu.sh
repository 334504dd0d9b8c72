#!/usr/bin/env bash
# WebGPU on a machine without a GPU: a private copy of Mesa 25 lavapipe (the Vulkan CPU rasteriser)
# from bookworm-backports, for Dawn (the `webgpu` npm package). Idempotent; a second run only checks.
#
#   environment/setup-webgpu-cpu.sh          # install/extract, then print what to export
#   environment/setup-webgpu-cpu.sh --force  # download and extract the backports packages again
#
# Why: Debian 12's own lavapipe (Mesa 22.3) is rejected by Dawn ("Vulkan
# shaderUniform*ArrayDynamicIndexing required"); Mesa 25.0.7 from bookworm-backports works.
#
# What it changes:
#   - the system: `apt-get install libvulkan1 mesa-vulkan-drivers` (bookworm). Those bring the
#     Vulkan loader and the shared libraries the newer driver links against (libllvm15, libxcb-*,
#     libwayland-client0, ...). The system's apt sources and package set are otherwise untouched.
#   - the repository: .cache/lavapipe/ (git-ignored) gets the backports driver and the libdrm it
#     needs, downloaded with a private apt state (private sources list, package lists and cache in
#     a temporary folder) and unpacked with `dpkg-deb -x`, never installed with dpkg.
#
# useBackend("webgpu") finds .cache/lavapipe by itself. Other programs need the two variables this
# script prints at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
DEST="$REPO/.cache/lavapipe"
ICD="$DEST/lvp_icd.x86_64.json"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The backports packages to unpack: the driver, and the libdrm version it needs (2.4.123; bookworm
# has 2.4.114). Everything else it links against comes from the bookworm packages installed below.
BPO_PACKAGES=(mesa-vulkan-drivers libdrm2 libdrm-amdgpu1)

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    *) echo "setup-webgpu-cpu: unknown option $arg (use --force)" >&2; exit 2 ;;
  esac
done

[ "$(dpkg --print-architecture)" = amd64 ] || { echo "setup-webgpu-cpu: only amd64 is supported (found $(dpkg --print-architecture))" >&2; exit 1; }
grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null \
  || echo "setup-webgpu-cpu: warning: this is not Debian 12 (bookworm); the backports driver may not match the system libraries" >&2

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "setup-webgpu-cpu: need root (or sudo) for apt-get install" >&2; exit 1; }
  SUDO=sudo
fi

# 1. System packages (bookworm). apt-get update only when the package is unknown to apt.
missing=()
for p in libvulkan1 mesa-vulkan-drivers; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup-webgpu-cpu: installing ${missing[*]} (bookworm)"
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then $SUDO apt-get update -qq; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The backports driver, unpacked privately.
if [ "$force" = 1 ] || [ ! -f "$DEST/.complete" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/sources.list.d" "$tmp/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main" >"$tmp/sources.list"
  # Every path apt would read or write for its package lists points into $tmp; the system's
  # sources, lists and cache are neither read nor changed.
  APT_PRIVATE=(
    -o "Dir::Etc::sourcelist=$tmp/sources.list"
    -o "Dir::Etc::sourceparts=$tmp/sources.list.d"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "Dir::Cache::archives=$tmp/cache/archives"
    -o "APT::Get::List-Cleanup=false"
  )
  # apt drops to the _apt user for downloads, which cannot write into a private mktemp folder.
  [ "$(id -u)" = 0 ] && APT_PRIVATE+=(-o "APT::Sandbox::User=root")
  echo "setup-webgpu-cpu: downloading ${BPO_PACKAGES[*]} from bookworm-backports"
  apt-get "${APT_PRIVATE[@]}" update -qq
  targets=()
  for p in "${BPO_PACKAGES[@]}"; do targets+=("$p/bookworm-backports"); done
  (cd "$tmp/debs" && apt-get "${APT_PRIVATE[@]}" download -qq "${targets[@]}")
  rm -rf "$DEST.new"
  mkdir -p "$DEST.new/root"
  for deb in "$tmp/debs"/*.deb; do
    dpkg-deb -x "$deb" "$DEST.new/root"
    echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" >>"$DEST.new/packages.txt"
  done
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
  touch "$DEST/.complete"
fi

LIBDIR="$DEST/root/usr/lib/x86_64-linux-gnu"
DRIVER="$LIBDIR/libvulkan_lvp.so"
[ -f "$DRIVER" ] || { echo "setup-webgpu-cpu: $DRIVER is missing after extraction; run again with --force" >&2; exit 1; }

# 3. The ICD manifest. The packaged one names just "libvulkan_lvp.so", which the loader would look
# up on the system library path; ours names the private driver by a path relative to the manifest
# (the Vulkan loader resolves such a path against the manifest's folder), so the checkout can move.
# With VK_ICD_FILENAMES pointing here, the loader opens this driver and no other.
api="$(sed -n 's/.*"api_version": *"\([0-9.]*\)".*/\1/p' "$DEST/root/usr/share/vulkan/icd.d/lvp_icd.json")"
cat >"$ICD" <<EOF
{
    "ICD": {
        "api_version": "${api:-1.4.305}",
        "library_path": "./root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so"
    },
    "file_format_version": "1.0.0"
}
EOF

# 4. Check that every library the driver needs resolves.
unresolved="$(ldd "$DRIVER" | grep 'not found' || true)"
if [ -n "$unresolved" ]; then
  echo "setup-webgpu-cpu: the driver needs libraries that are not installed:" >&2
  echo "$unresolved" >&2
  exit 1
fi

echo "setup-webgpu-cpu: lavapipe ready in $DEST ($(grep '^mesa-vulkan-drivers' "$DEST/packages.txt" || echo '?'))"
echo "useBackend(\"webgpu\") finds it by itself. For other programs (vulkaninfo, a plain Dawn script):"
echo "  export VK_ICD_FILENAMES=$ICD"
# The package declares libdrm >= 2.4.123, but lavapipe itself imports only libdrm functions that
# bookworm's 2.4.114 has too (nm -D), and Dawn finds it with VK_ICD_FILENAMES alone. The private
# libdrm matters only for the hardware drivers (radv, intel) shipped in the same package.
echo "Optional, only for the hardware Vulkan drivers in the same package (lavapipe does not need it):"
echo "  export LD_LIBRARY_PATH=$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
