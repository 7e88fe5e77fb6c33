#!/usr/bin/env bash
# Installs the Debian packages the tests need (a real OpenSSH server, sudo, curl, cpio...).
# Runs as root (CI) or through sudo; does nothing when everything is already there.
set -euo pipefail

need=()
check() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ] || need+=("$3"); }
check sshd /usr/sbin/sshd openssh-server
check ssh /usr/bin/ssh openssh-client
check ssh-keygen /usr/bin/ssh-keygen openssh-client
check sudo /usr/bin/sudo sudo
check curl /usr/bin/curl curl
check cpio /usr/bin/cpio cpio
check setsid /usr/bin/setsid util-linux
check useradd /usr/sbin/useradd passwd
check python3 /usr/bin/python3 python3
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
[ -e /usr/lib/x86_64-linux-gnu/libEGL.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/libEGL.so.1 ] || need+=(libegl1)
check unshare /usr/bin/unshare util-linux
# The QEMU test bed (tests/vm/build.sh also downloads the Debian cloud kernel itself).
check qemu-system-x86_64 /usr/bin/qemu-system-x86_64 qemu-system-x86
check busybox /usr/bin/busybox busybox-static
# bench/vm_install.py with nixos-anywhere: its kexec phase runs bash on the server.
check bash-static /bin/bash-static bash-static
# QEMU's iPXE ROMs: the netboot tests boot the VM from the network.
[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || need+=(ipxe-qemu)
check kexec /usr/sbin/kexec kexec-tools
check jq /usr/bin/jq jq
check dash /usr/bin/dash dash
check openssl /usr/bin/openssl openssl
# Packaging checks: the desktop file and metainfo validators, Nix (parse and evaluate only).
check desktop-file-validate /usr/bin/desktop-file-validate desktop-file-utils
check appstreamcli /usr/bin/appstreamcli appstream
check nix-instantiate /usr/bin/nix-instantiate nix-bin
# The AppImage: its runtime (C, linked statically against libsquashfuse, libfuse3 and the
# squashfs decompressors), mksquashfs, fusermount3, and objdump for the glibc floor check.
check cc /usr/bin/cc gcc
check make /usr/bin/make make
check objdump /usr/bin/objdump binutils
check mksquashfs /usr/bin/mksquashfs squashfs-tools
check fusermount3 /usr/bin/fusermount3 fuse3
for lib in libsquashfuse_ll.a:libsquashfuse-dev libfuse3.a:libfuse3-dev libzstd.a:libzstd-dev \
           liblzma.a:liblzma-dev libz.a:zlib1g-dev liblz4.a:liblz4-dev liblzo2.a:liblzo2-dev; do
  [ -e "/usr/lib/$(uname -m)-linux-gnu/${lib%%:*}" ] || need+=("${lib##*:}")
done
# The Flatpak manifest, checked offline (--show-manifest): its runtimes are not reachable.
check flatpak-builder /usr/bin/flatpak-builder flatpak-builder
ldconfig -p | grep -q libfontconfig.so.1 || need+=(libfontconfig1)
ldconfig -p | grep -q libxkbcommon.so.0 || need+=(libxkbcommon0)
ldconfig -p | grep -q libglib-2.0.so.0 || need+=(libglib2.0-0)
fc-list 2>/dev/null | grep -qi dejavu || need+=(fonts-dejavu-core)
# A real X server and the xcb platform's libraries: `make screenshots`, and the test that reads
# the window's WM_CLASS (xwininfo, xprop).
check Xvfb /usr/bin/Xvfb xvfb
check xauth /usr/bin/xauth xauth
check xprop /usr/bin/xprop x11-utils
check xwininfo /usr/bin/xwininfo x11-utils
for lib in libxcb-cursor.so.0:libxcb-cursor0 libxkbcommon-x11.so.0:libxkbcommon-x11-0 \
           libxcb-icccm.so.4:libxcb-icccm4 libxcb-keysyms.so.1:libxcb-keysyms1 \
           libxcb-shape.so.0:libxcb-shape0 libxcb-render-util.so.0:libxcb-render-util0 \
           libxcb-image.so.0:libxcb-image0 libxcb-xkb.so.1:libxcb-xkb1; do
  ldconfig -p | grep -q "${lib%%:*}" || need+=("${lib##*:}")
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "Installing Debian packages for the tests: ${need[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
