"""Stand-in kexec installer tarballs: the upstream layout, a faithful `run`, a stub `kexec`."""

from __future__ import annotations

import base64
import io
import os
import re
import tarfile
from pathlib import Path

from tests.support.cpio import gzip_newc

# Our own POSIX sh script doing what upstream's kexec/run does (see kexec-run.sh), shared with
# the QEMU test bed.
RUN = (Path(__file__).parent / "kexec-run.sh").read_text()
# The same in the form Nix fills in upstream's (see kexec-run-nix.sh): `fill_run` completes it.
NIX_RUN = (Path(__file__).parent / "kexec-run-nix.sh").read_text()
_SAFE = re.compile(r"[A-Za-z0-9,._+:@%/-]+")  # nixpkgs lib.escapeShellArg's unquoted set


def escape_shell_args(words: list[str]) -> str:
    """nixpkgs' ``lib.escapeShellArgs``: what Nix writes into ``kernelParams="..."``."""
    return " ".join(w if _SAFE.fullmatch(w) else "'" + w.replace("'", "'\\''") + "'" for w in words)


def fill_run(text: str, init: str, params: list[str]) -> str:
    """A ``run`` with ``@init@`` and ``@kernelParams@`` filled in, as upstream's module does."""
    return text.replace("@init@", init).replace("@kernelParams@", escape_shell_args(params))


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


def kernel_image(arch: str, *, efi: bool = True) -> bytes:
    """8 KiB shaped like the start of a Linux kernel for ``arch``: an x86_64 bzImage (boot
    sector, "HdrS" setup header) or an arm64 Image ("ARM\\x64" at 0x38), each with an EFI
    stub's PE header naming the machine when ``efi``, as distribution kernels have."""
    head = bytearray(os.urandom(8192))
    head[0:2] = b"MZ" if efi else b"\x00\x00"
    if arch == "x86_64":
        head[0x1FE:0x200] = b"\x55\xaa"
        head[0x202:0x206] = b"HdrS"
        machine = 0x8664
    else:
        head[0x38:0x3C] = b"ARM\x64"
        machine = 0xAA64
    head[0x3C:0x40] = (0x80 if efi else 0).to_bytes(4, "little")
    if efi:
        head[0x80:0x84] = b"PE\0\0"
        head[0x84:0x86] = machine.to_bytes(2, "little")
    else:
        head[0x80:0x84] = b"\0\0\0\0"
    return bytes(head)


def standin_tarball(
    path: Path,
    *,
    kexec: str = KEXEC_STUB,
    size: int = 256 * 1024,
    extra: dict[str, bytes] | None = None,
    skip: tuple[str, ...] = (),
    links: dict[str, str] | None = None,
    kernel: bytes | None = None,
    run: str = RUN,
) -> Path:
    """Write a tar.gz with kexec/{run,bzImage,initrd,kexec,ip}; the initrd holds ``size`` random bytes."""
    initrd = gzip_newc({"init": (0o755, b"#!/bin/sh\n"), "padding": (0o644, os.urandom(size))})
    files = {
        "kexec/run": (run.encode(), 0o755),
        "kexec/bzImage": (os.urandom(4096) if kernel is None else kernel, 0o644),
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
        for name, target in (links or {}).items():  # symlinks, after the files, in order
            link = tarfile.TarInfo(name)
            link.type = tarfile.SYMTYPE
            link.linkname = target
            tar.addfile(link)
    path.write_bytes(buf.getvalue())
    return path


# A legacy kexec-bundle for the loopback machine: like nixos-generators' it is one shell script
# that unpacks its initrd and kexecs into it at once; its "kexec" is the machine's stub (the
# requests it leaves in /run/nkw-machine). Its initrd carries only the keys it was built with,
# so the system it boots makes a host key of its own, as a real bundle's does.
MACHINE_BUNDLE = r"""#!/bin/sh
# kexec-bundle stand-in (self-extracting): unpack, then kexec -e
set -e
d=$(mktemp -d /root/kexec-bundle.XXXXXX)
sed '1,/^__INITRD__$/d' "$0" | base64 -d > "$d/initrd"
: > "$d/bzImage"
printf '%s\n' --load "$d/bzImage" "--initrd=$d/initrd" > /run/nkw-machine/loaded
: > /run/nkw-machine/exec
exit 0
__INITRD__
"""


def machine_bundle(path: Path, authorized_keys: bytes) -> Path:
    """Write a kexec-bundle for the loopback machine whose system accepts these keys."""
    initrd = gzip_newc({"ssh/authorized_keys": (0o600, authorized_keys)})
    path.write_bytes(MACHINE_BUNDLE.encode() + base64.b64encode(initrd) + b"\n")
    path.chmod(0o755)
    return path
