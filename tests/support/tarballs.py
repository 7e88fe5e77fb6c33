"""Stand-in kexec installer tarballs with the upstream layout and a run script that never reboots."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

# Behaves like upstream's kexec/run up to the kexec itself: traces with set -x, gathers the
# authorized keys `run` would carry (written to carried-keys beside it so tests can check them),
# prints the success line and exits, or fails like a refused kexec.
STANDIN_RUN = r"""#!/bin/sh
set -eux
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
OUT="$SCRIPT_DIR/carried-keys"
: > "$OUT"
for p in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2; do
  if [ -r "$p" ]; then grep -o -E '(ssh-|ecdsa-|sk-)[^ ]+ [^ ]+' "$p" >> "$OUT" || true; fi
done
user=${SUDO_USER:-${DOAS_USER:-}}
if [ -n "$user" ]; then
  home=$(getent passwd "$user" | cut -d: -f6)
  for p in "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys2"; do
    if [ -r "$p" ]; then grep -o -E '(ssh-|ecdsa-|sk-)[^ ]+ [^ ]+' "$p" >> "$OUT" || true; fi
  done
fi
id -u > "$SCRIPT_DIR/ran-as"
__BEHAVIOUR__
"""

SUCCESS = 'echo "machine will boot into nixos in 6s..."\nexit 0'
REFUSED = (
    "echo 'kexec_file_load failed: Operation not permitted' >&2\n"
    "echo 'kexec failed, dumping dmesg'\n"
    "echo '[ 1.0] Lockdown: kexec: kexec of unsigned images is restricted'\n"
    "exit 1"
)


def standin_tarball(
    path: Path,
    behaviour: str = SUCCESS,
    *,
    size: int = 256 * 1024,
    extra: dict[str, bytes] | None = None,
    skip: tuple[str, ...] = (),
) -> Path:
    """Write a tar.gz with kexec/{run,bzImage,initrd,kexec,ip} (``size`` random initrd bytes)."""
    files = {
        "kexec/run": (STANDIN_RUN.replace("__BEHAVIOUR__", behaviour).encode(), 0o755),
        "kexec/bzImage": (os.urandom(4096), 0o644),
        "kexec/initrd": (os.urandom(size), 0o644),
        "kexec/kexec": (b"#!/bin/sh\nexit 0\n", 0o755),
        "kexec/ip": (b"#!/bin/sh\nexit 0\n", 0o755),
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
