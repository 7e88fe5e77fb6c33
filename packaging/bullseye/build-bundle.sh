#!/usr/bin/env bash
# Builds the one-dir bundle inside a Debian 11 (bullseye) root, so that it needs glibc 2.31 at
# most: debootstrap, CPython 3.11 compiled there from Debian's bookworm source package (bullseye
# has only 3.9), the locked dependencies with PySide6 6.9.3 (the newest whose wheels are
# manylinux_2_28; 6.10 on are manylinux_2_34), PyInstaller. Root only. Output: OUT (default
# build/bullseye/dist/nixos-kexec-wizard). Slow the first time (about 15 min on 2 cores); the root
# is kept in build/bullseye/root for the next run.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${BULLSEYE_ROOT:-$PWD/build/bullseye/root}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
pyside=${PYSIDE_VERSION:-6.9.3}
out=${OUT:-$PWD/build/bullseye/dist}
inroot() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

if [ ! -e "$root/etc/debian_version" ]; then
  debootstrap --variant=minbase bullseye "$root" "$mirror"
fi
if [ ! -x "$root/opt/py311/bin/python3.11" ]; then
  echo "deb-src $mirror bookworm main" > "$root/etc/apt/sources.list.d/bookworm-src.list"
  inroot apt-get update -qq
  inroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential dpkg-dev binutils ca-certificates libssl-dev zlib1g-dev libffi-dev \
    libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libexpat1-dev uuid-dev \
    libncursesw5-dev libgdbm-dev libfontconfig1 libxkbcommon0 libglib2.0-0 libegl1 libgl1 \
    libdbus-1-3 >/dev/null
  inroot sh -c 'mkdir -p /usr/src/py && cd /usr/src/py && apt-get source -qq --download-only python3.11 \
    && rm -rf src && dpkg-source -x --skip-patches python3.11_*.dsc src >/dev/null && cd src \
    && ./configure -q --enable-shared --prefix=/opt/py311 LDFLAGS=-Wl,-rpath,/opt/py311/lib \
    && make -s -j"$(nproc)" >/dev/null 2>&1 && make -s install >/dev/null 2>&1'
fi
mkdir -p "$root/src"
mountpoint -q "$root/src" || mount --bind "$PWD" "$root/src"
trap 'umount "$root/src"' EXIT
grep -v -i -E '^#|^pyside6|^shiboken6' requirements.lock > "$root/tmp/constraints.txt"
# pip inside trusts what pip outside trusts (a proxy's CA, where there is one).
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/tmp/host-ca.crt"
inroot sh -c "[ -x /opt/venv/bin/python ] || /opt/py311/bin/python3.11 -m venv /opt/venv"
inroot /opt/venv/bin/pip install -q --disable-pip-version-check --cert /tmp/host-ca.crt -c /tmp/constraints.txt \
  paramiko requests keyring platformdirs pyinstaller pyinstaller-hooks-contrib \
  "PySide6-Essentials==$pyside" "shiboken6==$pyside"
inroot sh -c "cd /src && /opt/venv/bin/python -m PyInstaller --noconfirm --log-level WARN \
  --distpath /tmp/nkw-dist --workpath /tmp/nkw-work packaging/pyinstaller/nixos-kexec-wizard.spec"
rm -rf "$out" && mkdir -p "$out"
cp -a "$root/tmp/nkw-dist/nixos-kexec-wizard" "$out/"
echo "$out/nixos-kexec-wizard ($(du -sm "$out/nixos-kexec-wizard" | cut -f1) MB)"
