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
