#!/usr/bin/env bash
# The disk tools the NixOS installer ships and a minimal Debian lacks (gptfdisk's sgdisk,
# parted's partprobe, dosfstools, e2fsprogs' mkfs.ext4, mdadm, and curl, which the install's
# check of the binary cache uses), from Debian's packages, each
# with its own loader and libraries so it runs on any release; cached by the hash of this
# script and lib.sh.
# Prints the path of a tarball holding nkw-disk-tools/ (put it on the PATH).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${NKW_TESTBED_CACHE:-/var/cache/nixos-kexec-wizard-testbed}
key=$(cat "$0" "$HERE/lib.sh" | sha256sum | cut -c1-16)
out="$CACHE/disk-tools-$key.tar.gz"
if [ -f "$out" ]; then echo "$out"; exit 0; fi

need=()
for pair in sgdisk:gdisk partprobe:parted mkfs.fat:dosfstools mke2fs:e2fsprogs curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing Debian packages for the disk tools: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# mdadm is taken from its package, not installed: its scripts would start a monitor here.
(cd "$work" && apt-get download mdadm >/dev/null 2>&1 \
  || { apt-get update -qq >&2 && apt-get download mdadm >/dev/null; })
dpkg -x "$work"/mdadm_*.deb "$work/mdadm"
# shellcheck source=tests/vm/lib.sh
source "$HERE/lib.sh"  # needed_libs
d="$work/nkw-disk-tools"
mkdir -p "$d/lib"
# Each tool runs with its own loader and libraries, under its own name (--argv0: mke2fs takes
# the file system to make from the name it was called by, mkfs.ext4).
bundle() {  # binary, names...
  local bin=$1 lib loader; shift
  cp -L "$bin" "$d/lib/${bin##*/}.bin"
  for lib in $(needed_libs "$bin"); do cp -L "$lib" "$d/lib/"; done
  loader=$(basename "$(needed_libs "$bin" | grep '/ld-linux' | head -n 1)")
  for name in "$@"; do
    cat > "$d/$name" <<WRAP
#!/bin/sh
here=\$(cd "\$(dirname "\$(readlink -f "\$0")")" && pwd)
exec "\$here/lib/$loader" --library-path "\$here/lib" --argv0 "\$0" "\$here/lib/${bin##*/}.bin" "\$@"
WRAP
    chmod 755 "$d/$name"
  done
}
bundle /usr/sbin/sgdisk sgdisk
bundle /usr/sbin/partprobe partprobe
bundle /usr/sbin/mkfs.fat mkfs.fat mkfs.vfat
bundle /usr/sbin/mke2fs mke2fs mkfs.ext4
bundle "$work/mdadm/sbin/mdadm" mdadm
bundle "$(command -v curl)" curl
mkdir -p "$CACHE"
tar -czf "$out.tmp" -C "$work" nkw-disk-tools
mv "$out.tmp" "$out"
echo "$out"
