"""Stand-in kexec installer tarballs: the upstream layout, a faithful `run`, a stub `kexec`."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from tests.support.cpio import gzip_newc

# Our own POSIX sh script doing what upstream's kexec/run does (see the design notes): carry
# authorized keys, host keys and the `ip --json` state into a gzip'd newc cpio appended to the
# initrd, load the kernel with ./kexec, print the success line, detach, then `kexec -e`.
RUN = r"""#!/bin/sh
set -eux
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
INITRD_TMP=$(mktemp -d "$SCRIPT_DIR/initrd.XXXXXX")
trap 'rm -rf "$INITRD_TMP"' EXIT
kexec_extra_flags=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kexec-extra-flags) kexec_extra_flags="$2"; shift ;;
  esac
  shift
done
mkdir -p "$INITRD_TMP/ssh"
extract_keys() {
  for file in "$1/.ssh/authorized_keys" "$1/.ssh/authorized_keys2" "$2"; do
    if [ -n "$file" ] && [ -e "$file" ]; then
      grep -o -E '(ssh-|ecdsa-|sk-)[^ ]+ [^ ]+' "$file" >> "$INITRD_TMP/ssh/authorized_keys" || true
    fi
  done
}
extract_keys /root /etc/ssh/authorized_keys.d/root
if [ -n "${DOAS_USER-}" ]; then SUDO_USER="$DOAS_USER"; fi
if [ -n "${SUDO_USER-}" ]; then
  extract_keys "$(getent passwd "$SUDO_USER" | cut -d: -f6)" "/etc/ssh/authorized_keys.d/$SUDO_USER"
fi
for p in /etc/ssh/ssh_host_*; do
  if [ -e "$p" ]; then cp -a "$p" "$INITRD_TMP/ssh"; fi
done
"$SCRIPT_DIR/ip" --json addr > "$INITRD_TMP/addrs.json"
"$SCRIPT_DIR/ip" -4 --json route > "$INITRD_TMP/routes-v4.json"
"$SCRIPT_DIR/ip" -6 --json route > "$INITRD_TMP/routes-v6.json"
[ -f /etc/machine-id ] && cp /etc/machine-id "$INITRD_TMP/machine-id"
(cd "$INITRD_TMP" && find . -type f | cpio -o -H newc --quiet | gzip -9) >> "$SCRIPT_DIR/initrd"
syscall=""
if printf '%s\n' "6.1" "$(uname -r)" | sort -c -V 2>/dev/null; then syscall="--kexec-syscall-auto"; fi
if ! "$SCRIPT_DIR/kexec" --load "$SCRIPT_DIR/bzImage" $syscall $kexec_extra_flags \
    --initrd="$SCRIPT_DIR/initrd" --no-checks --command-line "init=/init console=ttyS0"; then
  echo "kexec failed, dumping dmesg"
  dmesg 2>&1 | tail -n 100
  exit 1
fi
echo "machine will boot into nixos in 6s..."
if [ -w /dev/kmsg ] && { : > /dev/kmsg; } 2>/dev/null; then exec > /dev/kmsg 2>&1; else exec > /dev/null 2>&1; fi
nohup sh -c "sleep 6 && '$SCRIPT_DIR/kexec' -e" > /dev/null 2>&1 &
"""

# A stand-in for kexec-tools. On a loopback test machine (which has /run/nkw-machine) it asks the
# harness to "boot" the loaded initrd; elsewhere loading succeeds and executing does nothing.
KEXEC_STUB = r"""#!/bin/sh
dir=/run/nkw-machine
echo "uid=$(id -u) $*" >> "$(dirname "$0")/kexec.log"
case "$1" in
  --load)
    if [ -e "$dir/refuse" ]; then echo "kexec_file_load failed: Operation not permitted" >&2; exit 1; fi
    if [ -d "$dir" ]; then printf '%s\n' "$@" > "$dir/loaded"; fi ;;
  -e)
    if [ -d "$dir" ] && [ -e "$dir/loaded" ] && [ ! -e "$dir/stuck" ]; then : > "$dir/exec"; fi ;;
esac
exit 0
"""

KEXEC_REFUSE = r"""#!/bin/sh
echo "uid=$(id -u) $*" >> "$(dirname "$0")/kexec.log"
[ "$1" = -e ] && exit 0
echo "kexec_file_load failed: Operation not permitted" >&2
exit 1
"""

IP_STUB = b'#!/bin/sh\nPATH="$PATH:/usr/sbin:/sbin"\nexec ip "$@"\n'


def standin_tarball(
    path: Path,
    *,
    kexec: str = KEXEC_STUB,
    size: int = 256 * 1024,
    extra: dict[str, bytes] | None = None,
    skip: tuple[str, ...] = (),
) -> Path:
    """Write a tar.gz with kexec/{run,bzImage,initrd,kexec,ip}; the initrd holds ``size`` random bytes."""
    initrd = gzip_newc({"init": (0o755, b"#!/bin/sh\n"), "padding": (0o644, os.urandom(size))})
    files = {
        "kexec/run": (RUN.encode(), 0o755),
        "kexec/bzImage": (os.urandom(4096), 0o644),
        "kexec/initrd": (initrd, 0o644),
        "kexec/kexec": (kexec.encode(), 0o755),
        "kexec/ip": (IP_STUB, 0o755),
    }
    for name, data in (extra or {}).items():
        files[name] = (data, 0o644)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        dir_info = tarfile.TarInfo("kexec")
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        tar.addfile(dir_info)
        for name, (data, mode) in files.items():
            if name in skip:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path
